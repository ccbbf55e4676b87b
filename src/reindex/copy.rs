//! The batches of a re-index: each read from Kafka, decoded as the daemon decodes, indexed,
//! then committed with the job's position in one PostgreSQL transaction; paced and reported.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::input::{Batch, Input, Read};
use super::{parked, progress};
use crate::admin::AdminError;
use crate::config::Settings;
use crate::mapping::Mapping;
use crate::model::{StoredRecord, TopicPartition};
use crate::pipeline::{self, Decoding};
use crate::redact::Redactor;
use crate::sink::SinkError;
use crate::sink::elastic::ElasticSink;
use crate::sink::postgres::{JobPartition, PgSink, Step};

/// How long the search store may refuse a batch (retried meanwhile) before the run stops; the
/// position stays where the last committed batch left it.
const STORE_BOUND: Duration = Duration::from_secs(120);
/// Records not written named one by one on stderr; the rest are only counted.
const NAMED: u64 = 20;
/// At most one progress line this often.
const EVERY: Duration = Duration::from_secs(1);

pub struct Copy<'a> {
    pub job: &'a str,
    pub settings: &'a Settings,
    /// The daemon's redaction (`LP_REDACT_*`), so a re-indexed record is redacted as its
    /// original row and document were.
    pub redactor: Redactor,
    pub mapping: &'a Mapping,
    pub pg: &'a PgSink,
    pub es: Option<&'a ElasticSink>,
    pub to_table: bool,
    pub max_rate: Option<u32>,
    pub batch: usize,
}

/// Where the run stands, for the pace and the progress line.
struct Run {
    started: Instant,
    printed: Instant,
    done: u64,
    total: u64,
    named: u64,
}

impl Copy<'_> {
    /// Reads every partition from its position to the end of its range.
    pub async fn run(&self, input: &Input<'_>, parts: &[JobPartition]) -> Result<(), AdminError> {
        let total = parts.iter().map(|p| (p.to - p.next).max(0) as u64).sum();
        let now = Instant::now();
        let mut run = Run {
            started: now,
            printed: now,
            done: 0,
            total,
            named: 0,
        };
        let mut pace = self
            .max_rate
            .map(|r| progress::Pace::new(r, Duration::ZERO));
        for p in parts.iter().filter(|p| p.next < p.to) {
            input.start(&p.tp, p.next)?;
            let mut next = p.next;
            while next < p.to {
                let read = input.read(&p.tp, next, p.to, self.batch).await?;
                let (after, records) = self.step(&p.tp, next, read, &mut run).await?;
                run.done += (after - next) as u64;
                next = after;
                if let Some(pace) = &mut pace {
                    tokio::time::sleep(pace.take(records, run.started.elapsed())).await;
                }
                if run.printed.elapsed() >= EVERY {
                    eprintln!(
                        "{}",
                        progress::line(run.done, run.total, run.started.elapsed())
                    );
                    run.printed = Instant::now();
                }
            }
        }
        eprintln!(
            "{}",
            progress::line(run.done, run.total, run.started.elapsed())
        );
        Ok(())
    }

    /// One batch: decoded, indexed, committed with the position; returns the new position and
    /// how many records the batch held.
    async fn step(
        &self,
        tp: &TopicPartition,
        from: i64,
        read: Read,
        run: &mut Run,
    ) -> Result<(i64, u64), AdminError> {
        let how = Decoding {
            max_record_bytes: self.settings.max_record_bytes,
            redactor: &self.redactor,
            mapping: self.mapping,
        };
        let Read { batch, next } = read;
        let held = match &batch {
            Batch::Raw(raws) => raws.len(),
            Batch::Stored(records) => records.len(),
        } as u64;
        let (mut records, undecodable) = match batch {
            Batch::Raw(raws) => {
                let (records, bad) = pipeline::decode_all(&raws, &tp.topic, how);
                let bad: Vec<(i64, String)> =
                    bad.into_iter().map(|(r, why)| (r.offset, why)).collect();
                (records, bad)
            }
            Batch::Stored(records) => (records, Vec::new()),
        };
        let mut note = |offset: i64, what: &str, why: &str| {
            run.named += 1;
            if run.named <= NAMED {
                eprintln!("reindex: {tp}@{offset}: {what}: {}", one_line(why));
            } else if run.named == NAMED + 1 {
                eprintln!("reindex: more records not written are only counted");
            }
        };
        for (offset, why) in &undecodable {
            note(*offset, "dead letter (decode)", why);
        }
        let mut refused = Vec::new();
        if let Some(es) = self.es {
            // Refused for their own content (a mapping conflict): counted and listed by offset,
            // and the run exits 3, since the target does not hold them; no row either, as in
            // the daemon.
            for (offset, why) in self.index_batch(es, tp, from, &records).await? {
                note(offset, "refused by the index", &why);
                refused.push(offset);
            }
            records.retain(|r| !refused.contains(&r.offset));
        }
        // Documents written, rows and position not: a kill here is what the resumed run must
        // make good without a document or row twice (`tests/reindex.rs` kills here).
        crate::failpoint::hit("reindex_before_commit").await;
        let open = (self.pg)
            .reindex_rows(tp, self.to_table.then_some(&records[..]))
            .await?;
        // Rows PostgreSQL refused for their content are dead letters, as in the daemon: their
        // documents go before the commit, so none is left without its row.
        let rows_refused: Vec<i64> = open.refused.iter().map(|(o, _)| *o).collect();
        for (offset, why) in &open.refused {
            note(*offset, "dead letter (row refused by PostgreSQL)", why);
        }
        if let Some(es) = self.es
            && !rows_refused.is_empty()
        {
            let gone = pipeline::documents_of(&records, &rows_refused);
            let never = CancellationToken::new();
            let delete = es.delete(tp, &gone, &never, |why| {
                tracing::warn!(partition = %tp, reason = why, "deleting refused rows' documents; retrying");
            });
            bounded(store_bound(), delete).await?;
        }
        records.retain(|r| !rows_refused.contains(&r.offset));
        open.commit(&Step {
            job: self.job,
            tp,
            expected_next: from,
            next,
            written: records.len() as i64,
            dead_letters: (undecodable.len() + rows_refused.len()) as i64,
            refused: &refused,
            rows_refused: &rows_refused,
        })
        .await?;
        Ok((next, held))
    }
}

impl Copy<'_> {
    /// Indexes the batch; returns the records refused for their own content (offset, why),
    /// ascending. Documents their index parked are sent again until taken: past the bound the
    /// run stops, the batch uncommitted (`parked`).
    async fn index_batch(
        &self,
        es: &ElasticSink,
        tp: &TopicPartition,
        from: i64,
        records: &[StoredRecord],
    ) -> Result<Vec<(i64, String)>, AdminError> {
        let indexed = bounded(store_bound(), self.index(es, tp, records)).await?;
        let pick =
            |r: &crate::sink::elastic::Rejection| (records[r.index].clone(), r.reason.clone());
        let mut rejected: Vec<_> = indexed.rejected.iter().map(pick).collect();
        let settled = parked::retry(
            indexed.parked.iter().map(pick).collect(),
            store_bound(),
            async |mut again: Vec<StoredRecord>, left| {
                // Sent alone, documents of one refusing index are retried inside the indexing
                // (no other document shows the store taking writes): a bound spent there
                // leaves them parked, with the store's last reason.
                let mut last = String::from("refused by its index");
                let never = CancellationToken::new();
                let send = es.index(tp, &again, &never, |why| last = why.to_string());
                match tokio::time::timeout(left, send).await {
                    Ok(indexed) => Ok(pipeline::take_refused(&mut again, indexed?)),
                    Err(_) => Ok(pipeline::Refused {
                        rejected: Vec::new(),
                        parked: again.into_iter().map(|r| (r, last.clone())).collect(),
                    }),
                }
            },
            |still| {
                let (r, why) = &still[0];
                eprintln!(
                    "reindex: {tp}: {} documents parked by index {} ({}); sending again",
                    still.len(),
                    es.index_name(r),
                    one_line(why)
                );
            },
        )
        .await?;
        match settled {
            parked::Settled::Taken { rejected: later } => rejected.extend(later),
            parked::Settled::Stuck { parked } => {
                let (r, why) = &parked[0];
                return Err(AdminError::Refused(format!(
                    "{tp}: index {} still refuses {} documents after {} s (first at offset {}): \
                     {}; the batch was not committed, the position stays at {from}: run again \
                     once the index takes writes",
                    es.index_name(r),
                    parked.len(),
                    store_bound().as_secs(),
                    r.offset,
                    one_line(why)
                )));
            }
        }
        let mut rejected: Vec<(i64, String)> = rejected
            .into_iter()
            .map(|(r, why)| (r.offset, why))
            .collect();
        rejected.sort_by_key(|r| r.0);
        Ok(rejected)
    }

    /// One indexing of `records`, store-wide refusals retried inside (see `ElasticSink::index`).
    async fn index(
        &self,
        es: &ElasticSink,
        tp: &TopicPartition,
        records: &[StoredRecord],
    ) -> Result<crate::sink::elastic::Indexed, SinkError> {
        es.index(tp, records, &CancellationToken::new(), |why| {
            tracing::warn!(partition = %tp, reason = why, "search store refused; retrying");
        })
        .await
    }
}

/// [`STORE_BOUND`]; a test build (feature `failpoints`) takes `LP_REINDEX_STORE_BOUND_SECS`
/// instead, so that a test sees the run stop without waiting two minutes.
fn store_bound() -> Duration {
    #[cfg(feature = "failpoints")]
    if let Some(secs) = std::env::var("LP_REINDEX_STORE_BOUND_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return Duration::from_secs(secs);
    }
    STORE_BOUND
}

/// `op`, given up after `bound` of refusals that are not a record's fault.
async fn bounded<T>(
    bound: Duration,
    op: impl std::future::Future<Output = Result<T, SinkError>>,
) -> Result<T, AdminError> {
    match tokio::time::timeout(bound, op).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(SinkError::Transient {
            store: "elasticsearch",
            message: format!(
                "not accepted within {} s; the batch was not committed, run again to resume",
                bound.as_secs()
            ),
        }
        .into()),
    }
}

fn one_line(s: &str) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match flat.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &flat[..i]),
        None => flat,
    }
}
