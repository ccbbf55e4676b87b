//! `log-processor dead-letters replay`: each selected dead letter is decoded again with today's
//! settings. One that now passes is indexed (the same document, id `topic-partition-offset`,
//! the daemon would have made) and then stored as its row in one PostgreSQL transaction that
//! deletes its dead letter; one that still fails stays, with its new stage and reason.
//!
//! Idempotent: the documents come first and are overwritten identically, and a dead letter
//! disappears only in the transaction that stores its row, so a replay killed at any moment and
//! run again stores each record once. A killed run may leave documents of dead letters not yet
//! stored; the next run stores their rows (or, if they fail, their reason says so).
//!
//! What cannot be replayed, and stays untouched: `redacted-json` (the stored object is already
//! redacted, not the record's bytes: decoding it again would not give the same row),
//! `withheld` (nothing was kept), and `aes-256-gcm` without the key it was sealed with.

use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_util::sync::CancellationToken;

use super::{AdminError, FilterArgs, one_line};
use crate::config::{ConfigError, Settings};
use crate::dead_letter::decrypt;
use crate::model::{RawRecord, RejectStage, StoredRecord, TopicPartition};
use crate::pipeline;
use crate::redact::Redactor;
use crate::sink::SinkError;
use crate::sink::elastic::ElasticSink;
use crate::sink::postgres::{PgSink, StillFailing, StoredDeadLetter, kafka_ms};

#[derive(Args, Clone, Debug)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Decode only and say what would happen; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Dead letters read and written per round.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(i64).range(1..=10_000))]
    pub chunk_size: i64,
    #[command(flatten)]
    pub settings: Settings,
}

/// How long the search store may refuse a round (retried meanwhile) before replay gives up.
const STORE_BOUND: Duration = Duration::from_secs(120);
/// Dead letters named one by one in the output; the rest are only counted.
const NAMED: usize = 20;

/// What a replay did (or, dry, would do).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub selected: u64,
    pub replayed: u64,
    pub still_failing: u64,
    pub not_replayable: u64,
    pub dry_run: bool,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (label, verb) = if self.dry_run {
            (
                "replay (dry run, decoding only: the stores may still refuse some)",
                "would_replay",
            )
        } else {
            ("replay", "replayed")
        };
        write!(
            f,
            "{label}: selected={} {verb}={} still_failing={} not_replayable={}",
            self.selected, self.replayed, self.still_failing, self.not_replayable
        )
    }
}

/// The record's own bytes from a dead letter, or why they are not there.
pub fn recover(d: &StoredDeadLetter, key: Option<&[u8; 32]>) -> Result<Option<Vec<u8>>, String> {
    match d.payload_encoding.as_str() {
        "raw" => Ok(d.payload.clone()),
        "aes-256-gcm" => {
            let Some(key) = key else {
                return Err("encrypted (aes-256-gcm) and LP_DEAD_LETTER_KEY is not set".into());
            };
            decrypt(key, d.payload.as_deref().unwrap_or_default())
                .map(Some)
                .ok_or_else(|| {
                    "encrypted (aes-256-gcm) under another key than LP_DEAD_LETTER_KEY".into()
                })
        }
        "redacted-json" => Err(
            "kept redacted (redacted-json): the record's own bytes were not \
             kept, so its row cannot be rebuilt unchanged; set LP_DEAD_LETTER_KEY so future \
             dead letters keep them encrypted"
                .into(),
        ),
        "withheld" => Err(
            "withheld: nothing of the payload was kept (redaction on, no \
             LP_DEAD_LETTER_KEY, not a JSON object)"
                .into(),
        ),
        other => Err(format!("unknown payload encoding {other:?}")),
    }
}

/// What the current settings lack to redact a sealed dead letter as much as when it was
/// written (`recorded`, its `redaction` column): empty when they redact as much or more.
/// Decrypting gives the record's bytes before redaction, so replaying them with less would
/// store in clear what the daemon was told to keep out of both stores.
fn lacking(recorded: Option<&str>, redactor: &Redactor) -> Vec<String> {
    match recorded {
        Some(policy) => redactor.missing(policy).unwrap_or_else(|e| vec![e]),
        // Sealed before the policy was recorded: only that redaction was on is known.
        None if redactor.is_empty() => vec![
            "sealed before its redaction was recorded, and no redaction is set: set \
             LP_REDACT_DROP / LP_REDACT_HASH as they were when it was written"
                .into(),
        ],
        None => Vec::new(),
    }
}

pub async fn replay(args: &ReplayArgs) -> Result<Summary, AdminError> {
    let s = &args.settings;
    let key = s.dead_letter_key()?;
    let redactor = Redactor::new(
        s.redact_drop.clone(),
        s.redact_hash.clone(),
        s.redact_key.as_deref(),
    );
    let pg = super::pg(s)?;
    let filter = args.filter.filter(s, &pg).await?;
    // Refused up front, before anything is written, rather than dead letter by dead letter.
    let mut missing = std::collections::BTreeSet::new();
    for recorded in pg.sealed_redactions(&filter).await? {
        missing.extend(lacking(recorded.as_deref(), &redactor));
    }
    if !missing.is_empty() {
        return Err(ConfigError {
            field: "LP_REDACT_DROP / LP_REDACT_HASH / LP_REDACT_KEY",
            message: format!(
                "selected dead letters were sealed (aes-256-gcm) under more redaction than \
                 these settings apply, so their records would be stored unredacted: {}; \
                 nothing was replayed",
                missing.into_iter().collect::<Vec<_>>().join("; ")
            ),
        }
        .into());
    }
    let es = if args.dry_run {
        None
    } else {
        Some(super::es(s)?)
    };
    let total: i64 = pg
        .dead_letter_summary(&filter)
        .await?
        .iter()
        .map(|c| c.2)
        .sum();
    let bar = progress_bar(total as u64);
    let mut summary = Summary {
        dry_run: args.dry_run,
        ..Summary::default()
    };
    let mut named = 0;
    let mut note = |line: String| {
        if named < NAMED {
            bar.suspend(|| eprintln!("{line}"));
        }
        named += 1;
    };
    let mut after = None;
    let mut rounds = 0u64;
    loop {
        let page = pg
            .dead_letters_page(&filter, after.as_ref(), args.chunk_size)
            .await?;
        let Some(last) = page.last() else { break };
        after = Some((last.topic.clone(), last.kafka_partition, last.kafka_offset));
        for group in page.chunk_by(|a, b| a.tp() == b.tp()) {
            let tp = group[0].tp();
            let mut raws = Vec::new();
            for d in group {
                summary.selected += 1;
                // A dead letter sealed after the check above (the daemon runs meanwhile).
                let weaker = lacking(d.redaction.as_deref(), &redactor);
                let recovered = match d.payload_encoding.as_str() {
                    "aes-256-gcm" if !weaker.is_empty() => Err(format!(
                        "sealed under more redaction than these settings: {}",
                        weaker.join("; ")
                    )),
                    _ => recover(d, key.as_ref()),
                };
                let payload = match recovered {
                    Ok(p) => p,
                    Err(why) => {
                        summary.not_replayable += 1;
                        note(format!("not replayable: {tp}@{}: {why}", d.kafka_offset));
                        continue;
                    }
                };
                raws.push(RawRecord {
                    offset: d.kafka_offset,
                    key: d.kafka_key.clone(),
                    payload,
                    kafka_timestamp_ms: kafka_ms(d.kafka_ts),
                });
            }
            let (records, undecodable) = pipeline::decode_all(
                &raws,
                &tp.topic,
                pipeline::Decoding {
                    max_record_bytes: s.max_record_bytes,
                    redactor: &redactor,
                    mapping: &pg.mapping(),
                },
            );
            let failing = (undecodable.into_iter())
                .map(|(raw, reason)| StillFailing {
                    offset: raw.offset,
                    stage: RejectStage::Decode,
                    reason,
                })
                .collect();
            let (stored, failed) = match &es {
                None => (records.len(), failing),
                Some(es) => {
                    let failed = redrive(&pg, es, &tp, records, failing, rounds > 0).await?;
                    (failed.0, failed.1)
                }
            };
            summary.replayed += stored as u64;
            summary.still_failing += failed.len() as u64;
            for f in &failed {
                note(format!(
                    "still failing: {tp}@{}: {}: {}",
                    f.offset,
                    f.stage.as_str(),
                    one_line(&f.reason, 200)
                ));
            }
            bar.inc(group.len() as u64);
            rounds += 1;
        }
    }
    if named > NAMED {
        bar.suspend(|| eprintln!("… and {} more not replayed", named - NAMED));
    }
    bar.finish_and_clear();
    pg.close().await;
    Ok(summary)
}

/// Indexes and stores one partition's decoded records; returns how many are stored now and
/// the dead letters that stay, with their new reasons.
async fn redrive(
    pg: &PgSink,
    es: &ElasticSink,
    tp: &TopicPartition,
    mut records: Vec<StoredRecord>,
    mut failing: Vec<StillFailing>,
    not_first: bool,
) -> Result<(usize, Vec<StillFailing>), AdminError> {
    let indexed = bounded(es.index(tp, &records, &CancellationToken::new(), |why| {
        tracing::warn!(partition = %tp, reason = why, "search store refused; retrying");
    }))
    .await?;
    // A destination that will not take a document now: the dead letter stays, and says so.
    let refused = pipeline::take_refused(&mut records, indexed);
    let refused = refused.rejected.into_iter().chain(refused.parked);
    failing.extend(refused.map(|(record, reason)| StillFailing {
        offset: record.offset,
        stage: RejectStage::Index,
        reason,
    }));
    if not_first {
        // Documents indexed, their rows not stored: a kill here must cost nothing.
        crate::failpoint::hit("redrive_after_index").await;
    }
    let done = pg.redrive(tp, &records, &failing).await?;
    if !done.refused.is_empty() {
        // Their documents went in above; PostgreSQL refused the rows, so they must go.
        let offsets: Vec<i64> = done.refused.iter().map(|(o, _)| *o).collect();
        let gone = pipeline::documents_of(&records, &offsets);
        // Each retry is logged by the delete itself (`sink::retry::Attempts`).
        bounded(es.delete(tp, &gone, &CancellationToken::new(), |_| {})).await?;
        failing.extend(
            done.refused
                .into_iter()
                .map(|(offset, reason)| StillFailing {
                    offset,
                    stage: RejectStage::Store,
                    reason,
                }),
        );
    }
    Ok((done.stored.len(), failing))
}

/// `op`, given up after [`STORE_BOUND`] of refusals that are not a record's fault.
async fn bounded<T>(
    op: impl std::future::Future<Output = Result<T, SinkError>>,
) -> Result<T, AdminError> {
    match tokio::time::timeout(STORE_BOUND, op).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(SinkError::Transient {
            store: "elasticsearch",
            message: format!(
                "not accepted within {} s; nothing of this round was stored, run again",
                STORE_BOUND.as_secs()
            ),
        }
        .into()),
    }
}

/// A bar on stderr when it is a terminal; hidden otherwise.
fn progress_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} dead letters {eta}") {
        bar.set_style(style);
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dead_letter::DeadLetterPolicy;
    use crate::dead_letter::parse_key;
    use crate::model::PayloadEncoding;

    fn stored(payload: Option<Vec<u8>>, encoding: PayloadEncoding) -> StoredDeadLetter {
        StoredDeadLetter {
            topic: "t".into(),
            kafka_partition: 0,
            kafka_offset: 1,
            kafka_key: None,
            payload,
            payload_encoding: encoding.as_str().into(),
            redaction: None,
            kafka_ts: None,
            stage: "decode".into(),
            reason: "r".into(),
            failed_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn only_the_records_own_bytes_are_replayed() {
        let raw = RawRecord {
            offset: 1,
            key: None,
            payload: Some(br#"{"password":"p","x":1"#.to_vec()),
            kafka_timestamp_ms: None,
        };
        let redactor = Redactor::new(vec!["password".into()], vec![], None);
        let key = parse_key(&"ab".repeat(32)).unwrap();

        let plain = DeadLetterPolicy::default().make(&raw, RejectStage::Decode, "x");
        let d = stored(plain.payload, plain.encoding);
        assert_eq!(recover(&d, None).unwrap(), raw.payload);

        let sealed =
            DeadLetterPolicy::new(redactor.clone(), Some(key)).make(&raw, RejectStage::Decode, "x");
        let d = stored(sealed.payload, sealed.encoding);
        assert_eq!(recover(&d, Some(&key)).unwrap(), raw.payload);
        assert!(recover(&d, None).unwrap_err().contains("not set"));
        let other = parse_key(&"cd".repeat(32)).unwrap();
        assert!(
            recover(&d, Some(&other))
                .unwrap_err()
                .contains("another key")
        );

        let withheld =
            DeadLetterPolicy::new(redactor.clone(), None).make(&raw, RejectStage::Decode, "x");
        let d = stored(withheld.payload, withheld.encoding);
        assert!(recover(&d, Some(&key)).unwrap_err().starts_with("withheld"));

        let d = stored(Some(b"{}".to_vec()), PayloadEncoding::RedactedJson);
        assert!(recover(&d, Some(&key)).unwrap_err().contains("redacted"));
    }
}
