//! Several batches of one partition at a worker at once (`LP_WORKER_IN_FLIGHT`), against
//! stores in memory (`stubs`): the next batch is indexed while the one before it commits, and
//! PostgreSQL commits stay in offset order, a batch after one that cannot commit given up.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::Worker;
use super::stubs::{Documents, Rows, batch_of, context};
use crate::model::{Ack, Position};

/// Runs a worker writing two at once over batches [0, 6) and [6, 12) of one partition;
/// returns its acks' receiver once both are queued.
fn start(documents: &Arc<Documents>, rows: &Arc<Rows>) -> std::sync::mpsc::Receiver<Ack> {
    let (tx, queue) = tokio::sync::mpsc::channel(4);
    let (acks, received) = std::sync::mpsc::channel();
    tx.try_send(batch_of(0..6, Position::Assigned(Some(0))))
        .unwrap();
    tx.try_send(batch_of(6..12, Position::After(6))).unwrap();
    drop(tx); // the worker ends once both are done
    tokio::spawn(
        Worker {
            id: 0,
            queue,
            acks,
            ctx: Arc::new(context(documents, rows)),
            in_flight: 2,
        }
        .run(),
    );
    received
}

/// The acks, once the worker is done.
async fn acks(received: std::sync::mpsc::Receiver<Ack>) -> Vec<(i64, bool)> {
    let all = move || -> Vec<(i64, bool)> {
        received
            .iter()
            .map(|a| (a.first_offset, a.durable))
            .collect()
    };
    tokio::task::spawn_blocking(all).await.unwrap()
}

/// Waits (bounded) until `ready` holds.
async fn until(ready: impl Fn() -> bool) {
    for _ in 0..500 {
        if ready() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("not reached in 1 s");
}

#[tokio::test]
async fn the_next_batch_is_indexed_while_the_one_before_commits_and_commits_after_it() {
    let documents = Arc::new(Documents::default());
    let rows = Arc::new(Rows {
        release: Some(Notify::new()),
        ..Rows::default()
    });
    let received = start(&documents, &rows);

    // The first batch's transaction waits; the second batch's documents arrive meanwhile.
    until(|| documents.held.lock().unwrap().contains_key(&11)).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        rows.commits.lock().unwrap().is_empty(),
        "the second batch did not commit before the first"
    );
    rows.release.as_ref().unwrap().notify_one();

    let mut acks = acks(received).await;
    acks.sort();
    assert_eq!(acks, [(0, true), (6, true)]);
    assert_eq!(*rows.commits.lock().unwrap(), [0, 6], "in offset order");
    let stored: Vec<i64> = rows.rows.lock().unwrap().keys().copied().collect();
    assert_eq!(stored, [0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
}

#[tokio::test]
async fn a_batch_after_one_that_cannot_commit_is_given_up_not_committed() {
    let documents = Arc::new(Documents::default());
    let rows = Arc::new(Rows {
        behind_first: true,
        ..Rows::default()
    });
    let mut acks = acks(start(&documents, &rows)).await;
    acks.sort();
    assert_eq!(acks, [(0, false), (6, false)]);
    assert!(rows.commits.lock().unwrap().is_empty());
    assert!(
        rows.rows.lock().unwrap().is_empty(),
        "nothing after the hole"
    );
}
