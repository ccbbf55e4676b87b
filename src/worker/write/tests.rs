//! A worker's steps against stores in memory: which records become rows, documents and dead
//! letters, and that a refusing PostgreSQL holds the batch until it takes it. The real stores'
//! side of the same rules is tested against PostgreSQL and OpenSearch in `tests/`.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::super::stores::{OnRetry, RowStore, SearchStore, StoreFuture};
use super::super::{Outcome, WorkerContext};
use super::process;
use crate::dead_letter::DeadLetterPolicy;
use crate::metrics::Metrics;
use crate::model::TopicPartition;
use crate::model::{Batch, DeadLetter, Position, RawRecord, RejectStage, StoredRecord};
use crate::redact::Redactor;
use crate::shutdown::Shutdown;
use crate::sink::SinkError;
use crate::sink::elastic::{Indexed, Rejection};
use crate::sink::postgres::{BatchWrite, Written};
use crate::sink::retry::Backoff;

/// Documents by offset; refuses the documents of `reject` for their content.
#[derive(Default)]
struct Documents {
    held: Mutex<BTreeMap<i64, StoredRecord>>,
    reject: Vec<i64>,
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
#[derive(Default)]
struct Rows {
    rows: Mutex<BTreeMap<i64, StoredRecord>>,
    dead: Mutex<BTreeMap<i64, DeadLetter>>,
    refuse: Vec<i64>,
    down: AtomicUsize,
}

impl RowStore for Arc<Rows> {
    fn write_batch<'a>(&'a self, batch: &'a BatchWrite<'a>) -> StoreFuture<'a, Written> {
        let result = (|| {
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
            Ok(written)
        })();
        Box::pin(async move { result })
    }
}

fn context(documents: &Arc<Documents>, rows: &Arc<Rows>) -> WorkerContext {
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
fn batch() -> Batch {
    let records = (0..6)
        .map(|offset| RawRecord {
            offset,
            key: Some(format!("k{offset}").into_bytes()),
            payload: Some(match offset {
                1 => b"not json".to_vec(),
                _ => format!(
                    r#"{{"message":"m{offset}","timestamp":"2026-01-01T00:00:0{offset}Z"}}"#
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
        next_offset: 6,
        start: Position::Assigned(Some(0)),
        gaps: Vec::new(),
        revoked: CancellationToken::new(),
        drain: CancellationToken::new(),
        writing: Arc::new(AtomicUsize::new(0)),
        assignment: 1,
    }
}

#[tokio::test]
async fn a_document_exists_only_with_its_row_and_dead_letters_are_exactly_the_faulty_records() {
    let documents = Arc::new(Documents {
        reject: vec![2],
        ..Documents::default()
    });
    let rows = Arc::new(Rows {
        refuse: vec![3],
        ..Rows::default()
    });
    let ctx = context(&documents, &rows);
    let batch = batch();
    let outcome = process(&ctx, &batch, &Notify::new()).await;
    assert!(matches!(outcome, Outcome::Durable));

    let row_offsets: Vec<i64> = rows.rows.lock().unwrap().keys().copied().collect();
    let doc_offsets: Vec<i64> = documents.held.lock().unwrap().keys().copied().collect();
    assert_eq!(row_offsets, [0, 4, 5]);
    assert_eq!(doc_offsets, row_offsets, "a document exactly for each row");
    let dead = rows.dead.lock().unwrap();
    let stages: Vec<(i64, RejectStage)> = dead.values().map(|d| (d.offset, d.stage)).collect();
    use RejectStage::*;
    assert_eq!(stages, [(1, Decode), (2, Index), (3, Store)]);
    for d in dead.values() {
        let raw = &batch.records[d.offset as usize];
        assert_eq!(d.payload, raw.payload, "the raw bytes of {}", d.offset);
        assert_eq!(d.key, raw.key);
    }
    let stored = rows.rows.lock().unwrap();
    let docs = documents.held.lock().unwrap();
    for (offset, row) in stored.iter() {
        assert_eq!(row.entry.message, docs[offset].entry.message);
        assert_eq!(row.entry.message.as_deref(), Some(&*format!("m{offset}")));
    }
}

#[tokio::test]
async fn a_refusing_postgresql_holds_the_batch_until_it_takes_it() {
    let documents = Arc::new(Documents::default());
    let rows = Arc::new(Rows {
        down: AtomicUsize::new(3),
        ..Rows::default()
    });
    let ctx = context(&documents, &rows);
    let tp = TopicPartition::new("logs", 0);
    let held = Notify::new();
    let outcome = process(&ctx, &batch(), &held).await;
    assert!(matches!(outcome, Outcome::Durable));
    let told = tokio::time::timeout(Duration::ZERO, held.notified()).await;
    assert!(told.is_ok(), "the worker was told the partition is held");
    let m = &ctx.metrics;
    assert_eq!(m.retries_pg.load(std::sync::atomic::Ordering::Relaxed), 3);
    assert_eq!(
        rows.rows.lock().unwrap().len(),
        5,
        "every record but the one not JSON"
    );
    assert!(
        !m.stalled().contains_key(&tp),
        "no longer held once it was taken"
    );
}
