use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use tokio_util::sync::CancellationToken;

use super::*;
use crate::model::RawRecord;

/// A batch of offsets `[from, to)` of partition 0 in `assignment`.
fn batch(from: i64, to: i64, start: Position, assignment: u64) -> Batch {
    let records: Vec<RawRecord> = (from..to)
        .map(|offset| RawRecord {
            offset,
            key: None,
            payload: Some(b"{}".to_vec()),
            kafka_timestamp_ms: None,
        })
        .collect();
    let tp = TopicPartition::new("logs", 0);
    Batch {
        tp: tp.clone(),
        stored: tp,
        bytes: 0,
        records,
        next_offset: to,
        start,
        gaps: Vec::new(),
        revoked: CancellationToken::new(),
        drain: CancellationToken::new(),
        writing: Arc::new(AtomicUsize::new(0)),
        assignment,
    }
}

#[test]
fn the_first_batch_of_an_assignment_asks_and_later_batches_use_the_answer() {
    let replays = Replays::default();
    // An earlier owner indexed 100..250 in batches of its own size; this one cuts 100 each.
    let first = batch(100, 200, Position::Assigned(Some(100)), 7);
    assert_eq!(replays.lookup(&first), Lookup::Ask(100));
    let found: Vec<i64> = (100..250).collect();
    assert_eq!(
        replays.answered(&first, found),
        (100..200).collect::<Vec<_>>()
    );
    let second = batch(200, 300, Position::After(200), 7);
    assert_eq!(replays.lookup(&second), Lookup::Known((200..250).collect()));
    let third = batch(300, 400, Position::After(300), 7);
    assert_eq!(replays.lookup(&third), Lookup::Known(Vec::new()));
    // Forgotten once passed.
    assert!(replays.found.lock().unwrap().is_empty());
}

#[test]
fn a_new_assignment_asks_again_and_an_old_answer_is_never_used() {
    let replays = Replays::default();
    let first = batch(0, 10, Position::Assigned(Some(0)), 1);
    assert_eq!(replays.lookup(&first), Lookup::Ask(0));
    replays.answered(&first, (0..20).collect());
    // Revoked and assigned again: a batch of the old assignment finds nothing kept for it.
    let stale = batch(10, 20, Position::After(10), 2);
    assert_eq!(replays.lookup(&stale), Lookup::Known(Vec::new()));
    let again = batch(5, 15, Position::Assigned(Some(5)), 3);
    assert_eq!(replays.lookup(&again), Lookup::Ask(5));
}

#[test]
fn an_answer_within_the_first_batch_is_not_kept() {
    let replays = Replays::default();
    let first = batch(0, 10, Position::Assigned(Some(0)), 1);
    assert_eq!(replays.answered(&first, vec![3, 4]), vec![3, 4]);
    assert!(replays.found.lock().unwrap().is_empty());
}

#[test]
fn only_records_without_a_document_are_sent_and_refusals_keep_their_positions() {
    let records: Vec<StoredRecord> = (10..16)
        .map(|offset| StoredRecord {
            offset,
            key: None,
            kafka_timestamp_ms: None,
            entry: crate::model::LogEntry {
                timestamp: chrono::DateTime::UNIX_EPOCH,
                level: None,
                service: None,
                message: None,
                fields: crate::model::Fields::from_map(&Default::default()),
            },
            route: 0,
            typed: Vec::new(),
        })
        .collect();
    let (send, positions) = without_documents(&records, &[10, 12, 13]);
    let sent: Vec<i64> = send.iter().map(|r| r.offset).collect();
    assert_eq!(sent, [11, 14, 15]);
    assert_eq!(positions, [1, 4, 5]);
    let indexed = Indexed {
        rejected: vec![Rejection {
            index: 1,
            reason: "bad".into(),
        }],
        parked: vec![Rejection {
            index: 2,
            reason: "blocked".into(),
        }],
    };
    let whole = renumbered(indexed, &positions);
    assert_eq!(whole.rejected[0].index, 4);
    assert_eq!(whole.parked[0].index, 5);
    assert_eq!(records[whole.rejected[0].index].offset, 14);
}
