//! A worker's steps against stores in memory (`stubs`): which records become rows, documents
//! and dead letters, and that a refusing PostgreSQL holds the batch until it takes it.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use tokio::sync::Notify;

use super::super::Outcome;
use super::super::order::{Chains, Link};
use super::super::stubs::{Documents, Rows, batch, context};
use super::process;
use crate::model::{Batch, RejectStage, TopicPartition};

/// A batch's place in a partition where it is the only one.
fn link(batch: &Batch) -> Link {
    Chains::default().link(batch)
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
    let outcome = process(&ctx, &batch, &Notify::new(), link(&batch)).await;
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
    let batch = batch();
    let outcome = process(&ctx, &batch, &held, link(&batch)).await;
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
