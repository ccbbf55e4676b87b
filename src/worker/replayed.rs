//! Which records of a batch have a document already, from an earlier owner of the partition
//! that indexed them and was stopped before its PostgreSQL commit. Pure bookkeeping: the
//! search itself is the store's (`SearchStore::indexed_from`).
//!
//! Only the first batch of an assignment asks the store: a partition starts at its stored
//! watermark, and everything an earlier owner can have indexed without committing lies at or
//! above it. What it finds is kept for the batches that follow in the same assignment, until
//! one starts past the last offset found. Later batches of the assignment were indexed by
//! this owner alone, in order, each committed before the next is written.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::model::{Batch, Position, StoredRecord, TopicPartition};
use crate::sink::elastic::{Indexed, Rejection};

/// What a batch must do before its bulk write.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The first batch of an assignment: ask the store from this offset on.
    Ask(i64),
    /// Offsets of this batch with a document already (empty: none).
    Known(Vec<i64>),
}

/// Offsets found with a document, per partition, for the assignment they were found in.
#[derive(Debug, Default)]
pub struct Replays {
    found: Mutex<HashMap<TopicPartition, (u64, Vec<i64>)>>,
}

impl Replays {
    pub fn lookup(&self, batch: &Batch) -> Lookup {
        let mut found = self.found.lock().expect("replays lock");
        if let Position::Assigned(_) = batch.start {
            found.remove(&batch.tp);
            return Lookup::Ask(batch.covered_from());
        }
        let from = batch.covered_from();
        let Some((assignment, offsets)) = found.get(&batch.tp) else {
            return Lookup::Known(Vec::new());
        };
        if *assignment != batch.assignment || offsets.last().is_none_or(|last| *last < from) {
            // Another assignment's, or all behind us: never needed again.
            found.remove(&batch.tp);
            return Lookup::Known(Vec::new());
        }
        Lookup::Known(within(offsets, from, batch.next_offset))
    }

    /// Keeps what the store answered to [`Lookup::Ask`]; returns the offsets within `batch`.
    pub fn answered(&self, batch: &Batch, offsets: Vec<i64>) -> Vec<i64> {
        let mine = within(&offsets, batch.covered_from(), batch.next_offset);
        if offsets
            .last()
            .is_some_and(|last| *last >= batch.next_offset)
        {
            let mut found = self.found.lock().expect("replays lock");
            found.insert(batch.tp.clone(), (batch.assignment, offsets));
        }
        mine
    }
}

/// The sorted `offsets` in `[from, to)`.
fn within(offsets: &[i64], from: i64, to: i64) -> Vec<i64> {
    let lo = offsets.partition_point(|o| *o < from);
    let hi = offsets.partition_point(|o| *o < to);
    offsets[lo..hi].to_vec()
}

/// The records to send (those without a document), and each one's position in `records`.
pub fn without_documents(
    records: &[StoredRecord],
    indexed: &[i64],
) -> (Vec<StoredRecord>, Vec<usize>) {
    let keep = |r: &&StoredRecord| indexed.binary_search(&r.offset).is_err();
    let positions = (records.iter().enumerate())
        .filter(|(_, r)| keep(r))
        .map(|(i, _)| i)
        .collect();
    (records.iter().filter(keep).cloned().collect(), positions)
}

/// Refusals of the records sent, renumbered to their positions in the whole batch.
pub fn renumbered(indexed: Indexed, positions: &[usize]) -> Indexed {
    let at = |r: Rejection| Rejection {
        index: positions[r.index],
        reason: r.reason,
    };
    Indexed {
        rejected: indexed.rejected.into_iter().map(at).collect(),
        parked: indexed.parked.into_iter().map(at).collect(),
    }
}

#[cfg(test)]
mod tests;
