//! Stores in memory for the worker's unit tests: what the worker does with what they answer.
//! The real stores' side of the same rules is tested against PostgreSQL and OpenSearch in
//! `tests/`.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::WorkerContext;
use super::stores::{OnRetry, RowStore, SearchStore, StoreFuture};
use crate::dead_letter::DeadLetterPolicy;
use crate::metrics::Metrics;
use crate::model::TopicPartition;
use crate::model::{Batch, DeadLetter, Position, RawRecord, StoredRecord};
use crate::redact::Redactor;
use crate::shutdown::Shutdown;
use crate::sink::SinkError;
use crate::sink::elastic::{Indexed, Rejection};
use crate::sink::postgres::{BatchWrite, Written};
use crate::sink::retry::Backoff;

/// Documents by offset; refuses the documents of `reject` for their content.
#[derive(Default)]
pub struct Documents {
    pub held: Mutex<BTreeMap<i64, StoredRecord>>,
    pub reject: Vec<i64>,
}

impl SearchStore for Arc<Documents> {
    fn index<'a>(
        &'a self,
        _: &'a TopicPartition,
        records: &'a [StoredRecord],
        _: &'a CancellationToken,
        _: OnRetry<'a>,
    ) -> StoreFuture<'a, Indexed> {
        let mut out = Indexed::default();
        let mut held = self.held.lock().unwrap();
        for (index, r) in records.iter().enumerate() {
            if self.reject.contains(&r.offset) {
                let reason = "mapper_parsing_exception: failed to parse".into();
                out.rejected.push(Rejection { index, reason });
            } else {
                held.insert(r.offset, r.clone());
            }
        }
        Box::pin(async move { Ok(out) })
    }

    fn indexed_from<'a>(
        &'a self,
        _: &'a TopicPartition,
        from: i64,
        _: &'a CancellationToken,
        _: OnRetry<'a>,
    ) -> StoreFuture<'a, Vec<i64>> {
        let held = self.held.lock().unwrap();
        let offsets = held.keys().copied().filter(|o| *o >= from).collect();
        Box::pin(async move { Ok(offsets) })
    }

    fn delete<'a>(
        &'a self,
        _: &'a TopicPartition,
        records: &'a [&'a StoredRecord],
        _: &'a CancellationToken,
        _: OnRetry<'a>,
    ) -> StoreFuture<'a, ()> {
        let mut held = self.held.lock().unwrap();
        for r in records {
            held.remove(&r.offset);
        }
        Box::pin(async { Ok(()) })
    }

    fn index_name(&self, _: &StoredRecord) -> String {
        "logs".into()
    }
}

/// Rows and dead letters by offset, as `PgSink::write_batch` keeps them: the rows of `refuse`
/// are refused for their content (dead letters of the `store` stage, committed only once
/// their documents are gone); the first `down` calls fail as an unreachable server's would.
/// The transaction of the batch starting at offset 0 waits for `release` when one is given,
/// and is refused as behind the stored watermark when `behind_first` is set.
#[derive(Default)]
pub struct Rows {
    pub rows: Mutex<BTreeMap<i64, StoredRecord>>,
    pub dead: Mutex<BTreeMap<i64, DeadLetter>>,
    pub refuse: Vec<i64>,
    pub down: AtomicUsize,
    pub release: Option<Notify>,
    pub behind_first: bool,
    /// The first offset of each committed batch, in commit order.
    pub commits: Mutex<Vec<i64>>,
}

impl RowStore for Arc<Rows> {
    fn write_batch<'a>(&'a self, batch: &'a BatchWrite<'a>) -> StoreFuture<'a, Written> {
        Box::pin(async move {
            if batch.first_offset == 0 {
                if let Some(release) = &self.release {
                    release.notified().await;
                }
                if self.behind_first {
                    return Err(SinkError::Behind {
                        store: "postgresql",
                        message: "stored watermark 0 is below this batch's start".into(),
                    });
                }
            }
            self.commit(batch)
        })
    }
}

impl Rows {
    fn commit(&self, batch: &BatchWrite<'_>) -> Result<Written, SinkError> {
        {
            let down = self.down.load(std::sync::atomic::Ordering::Relaxed);
            if down > 0 {
                self.down
                    .store(down - 1, std::sync::atomic::Ordering::Relaxed);
                return Err(SinkError::Transient {
                    store: "postgresql",
                    message: "connection refused".into(),
                });
            }
            let refused: Vec<i64> = (batch.records.iter())
                .map(|r| r.offset)
                .filter(|o| self.refuse.contains(o))
                .collect();
            let mut written = Written {
                store_dead_letters: refused.clone(),
                ..Written::default()
            };
            if refused.iter().any(|o| !batch.documents_removed.contains(o)) {
                return Ok(written); // rolled back: their documents must go first
            }
            let mut rows = self.rows.lock().unwrap();
            for r in batch
                .records
                .iter()
                .filter(|r| !refused.contains(&r.offset))
            {
                rows.insert(r.offset, r.clone());
            }
            let mut dead = self.dead.lock().unwrap();
            for d in batch.dead_letters {
                dead.insert(d.offset, d.clone());
            }
            for &o in &refused {
                dead.insert(
                    o,
                    (batch.dead_letter)(o, "22P02: invalid input syntax".into()),
                );
            }
            written.committed = true;
            self.commits.lock().unwrap().push(batch.first_offset);
            Ok(written)
        }
    }
}

pub fn context(documents: &Arc<Documents>, rows: &Arc<Rows>) -> WorkerContext {
    WorkerContext {
        group_id: "g".into(),
        pg: Box::new(Arc::clone(rows)),
        es: Box::new(Arc::clone(documents)),
        redactor: Redactor::default(),
        dead_letters: DeadLetterPolicy::default(),
        max_record_bytes: 1 << 20,
        backoff: Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(4),
        },
        metrics: Arc::new(Metrics::default()),
        shutdown: Shutdown::new(Duration::from_secs(25)),
        mapping: Arc::new(crate::mapping::Mapping::builtin("logs-%Y")),
        replays: Default::default(),
    }
}

/// Offsets 0..6; offset 1 is not JSON.
pub fn batch() -> Batch {
    batch_of(0..6, Position::Assigned(Some(0)))
}

/// Offsets `range` of partition logs-0, starting from `start`; offset 1 is not JSON.
pub fn batch_of(range: std::ops::Range<i64>, start: Position) -> Batch {
    let next_offset = range.end;
    let records = range
        .map(|offset| RawRecord {
            offset,
            key: Some(format!("k{offset}").into_bytes()),
            payload: Some(match offset {
                1 => b"not json".to_vec(),
                _ => format!(
                    r#"{{"message":"m{offset}","timestamp":"2026-01-01T00:00:{:02}Z"}}"#,
                    offset % 60
                )
                .into_bytes(),
            }),
            kafka_timestamp_ms: None,
        })
        .collect::<Vec<_>>();
    let tp = TopicPartition::new("logs", 0);
    Batch {
        tp: tp.clone(),
        stored: tp,
        bytes: records.iter().map(RawRecord::size).sum(),
        records,
        next_offset,
        start,
        gaps: Vec::new(),
        revoked: CancellationToken::new(),
        drain: CancellationToken::new(),
        writing: Arc::new(AtomicUsize::new(0)),
        assignment: 1,
    }
}
