//! Per-partition durable watermarks: the offset that may be committed to Kafka.
//!
//! Batches are registered when handed to a worker and marked done when both stores hold them.
//! The watermark only moves over a prefix of done batches, so it never passes an offset that
//! is not stored or dead-lettered, whatever order batches finish in.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::model::{Position, TopicPartition};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    first: i64,
    next: i64,
    state: RangeState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RangeState {
    /// With a worker (queued or being written).
    InFlight,
    /// Durable in both stores.
    Done,
    /// Given up by its worker: not durable, not in flight; holds the watermark for good.
    Abandoned,
}

/// Progress of one partition.
#[derive(Debug, Default)]
pub struct PartitionProgress {
    /// Everything below this offset is durable; `None` until the first batch is registered.
    durable: Option<i64>,
    /// Registered batches not yet folded into `durable`, in offset order.
    ranges: VecDeque<Range>,
    /// The last watermark committed to Kafka.
    committed: Option<i64>,
    /// Whether a batch was registered since the partition was assigned.
    any_dispatched: bool,
}

impl PartitionProgress {
    /// Registers a batch `[first, next)` handed to a worker. Batches of a partition are
    /// registered in offset order.
    pub fn dispatched(&mut self, first: i64, next: i64) {
        debug_assert!(first < next);
        // Offsets that go back never get here: the consumer holds the partition instead.
        debug_assert!(self.next_expected().is_none_or(|f| first >= f));
        if self.durable.is_none() {
            self.durable = Some(first);
        }
        self.ranges.push_back(Range {
            first,
            next,
            state: RangeState::InFlight,
        });
        self.any_dispatched = true;
    }

    /// Starts a newly assigned partition at `offset`, known durable (PostgreSQL's watermark),
    /// so that it is committed to Kafka even when no record follows.
    pub fn start_at(&mut self, offset: i64) {
        if self.durable.is_none() && self.ranges.is_empty() {
            self.durable = Some(offset);
        }
    }

    /// Where the next batch must start for the partition's offsets to stay contiguous: the end
    /// of the last registered batch, or the durable watermark; `None` before anything is known.
    pub fn next_expected(&self) -> Option<i64> {
        self.ranges.back().map(|r| r.next).or(self.durable)
    }

    /// Where the partition stands before the next batch (see `model::Position`).
    pub fn position(&self) -> Position {
        match self.next_expected() {
            Some(end) if self.any_dispatched => Position::After(end),
            start => Position::Assigned(start),
        }
    }

    /// Marks `[first, next)` durable and advances the watermark over the done prefix.
    pub fn completed(&mut self, first: i64, next: i64) {
        self.mark(first, next, RangeState::Done);
        while let Some(r) = self
            .ranges
            .front()
            .copied()
            .filter(|r| r.state == RangeState::Done)
        {
            self.durable = Some(r.next);
            self.ranges.pop_front();
        }
    }

    /// Marks `[first, next)` given up by its worker: it stays below the watermark's reach
    /// but no longer counts as in flight.
    pub fn abandoned(&mut self, first: i64, next: i64) {
        self.mark(first, next, RangeState::Abandoned);
    }

    /// Unregisters the batches from `first` on, which were discarded before reaching a worker.
    pub fn withdraw_from(&mut self, first: i64) {
        while self
            .ranges
            .back()
            .is_some_and(|r| r.first >= first && r.state == RangeState::InFlight)
        {
            self.ranges.pop_back();
        }
    }

    fn mark(&mut self, first: i64, next: i64, state: RangeState) {
        if let Some(r) = self
            .ranges
            .iter_mut()
            .find(|r| r.first == first && r.next == next)
        {
            r.state = state;
        }
    }

    /// The durable watermark (next offset to read), if any batch was registered.
    pub fn durable(&self) -> Option<i64> {
        self.durable
    }

    /// The watermark to commit, when it moved since the last commit.
    pub fn to_commit(&self) -> Option<i64> {
        self.durable.filter(|d| Some(*d) != self.committed)
    }

    pub fn mark_committed(&mut self, offset: i64) {
        self.committed = Some(offset);
    }

    /// Registered batches that a worker still has (queued or being written).
    pub fn in_flight(&self) -> usize {
        self.ranges
            .iter()
            .filter(|r| r.state == RangeState::InFlight)
            .count()
    }

    /// The offsets registered but not durable: `[durable, end of last registered batch)`.
    pub fn pending_range(&self) -> Option<(i64, i64)> {
        Some((self.durable?, self.ranges.back()?.next))
    }
}

/// Watermarks of every partition this consumer owns.
#[derive(Debug, Default)]
pub struct Watermarks {
    parts: HashMap<TopicPartition, PartitionProgress>,
}

impl Watermarks {
    pub fn get_mut(&mut self, tp: &TopicPartition) -> &mut PartitionProgress {
        self.parts.entry(tp.clone()).or_default()
    }
    pub fn get(&self, tp: &TopicPartition) -> Option<&PartitionProgress> {
        self.parts.get(tp)
    }
    pub fn remove(&mut self, tp: &TopicPartition) -> Option<PartitionProgress> {
        self.parts.remove(tp)
    }
    /// Watermarks that moved since their last commit, in a stable order.
    pub fn to_commit(&self) -> BTreeMap<TopicPartition, i64> {
        self.parts
            .iter()
            .filter_map(|(tp, p)| Some((tp.clone(), p.to_commit()?)))
            .collect()
    }
    /// Every known durable watermark.
    pub fn durable_all(&self) -> Vec<(TopicPartition, i64)> {
        self.parts
            .iter()
            .filter_map(|(tp, p)| Some((tp.clone(), p.durable()?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn out_of_order_completion_waits_for_the_gap() {
        let mut p = PartitionProgress::default();
        p.dispatched(10, 20);
        p.dispatched(25, 30); // gap 20..25: compacted or control records
        p.dispatched(30, 40);
        assert_eq!(p.durable(), Some(10));
        p.completed(30, 40);
        assert_eq!(p.durable(), Some(10));
        p.completed(10, 20);
        assert_eq!(p.durable(), Some(20));
        assert_eq!(p.to_commit(), Some(20));
        p.mark_committed(20);
        assert_eq!(p.to_commit(), None);
        p.completed(25, 30);
        assert_eq!(p.durable(), Some(40));
        assert_eq!(p.in_flight(), 0);
    }

    #[test]
    fn abandoned_batch_holds_the_watermark() {
        let mut p = PartitionProgress::default();
        p.dispatched(0, 5);
        p.dispatched(5, 9);
        p.completed(5, 9); // 0..5 was given up: never marked done
        assert_eq!(p.durable(), Some(0));
        assert_eq!(p.pending_range(), Some((0, 9)));
    }

    #[test]
    fn abandoned_and_withdrawn_batches_are_not_in_flight() {
        let mut p = PartitionProgress::default();
        p.dispatched(0, 10);
        p.dispatched(10, 20);
        p.dispatched(20, 30);
        p.dispatched(30, 40);
        p.withdraw_from(20); // [20, 40) discarded before reaching a worker
        assert_eq!(p.in_flight(), 2);
        p.abandoned(0, 10);
        assert_eq!(p.in_flight(), 1);
        p.completed(10, 20);
        assert_eq!(
            (p.in_flight(), p.durable()),
            (0, Some(0)),
            "the abandoned batch holds it"
        );
        assert_eq!(p.next_expected(), Some(20));
    }

    proptest! {
        /// Whatever the batch sizes and completion order, the watermark is exactly the end of the
        /// longest prefix of completed batches: it never passes an unfinished offset.
        #[test]
        fn never_passes_an_unfinished_offset(
            sizes in proptest::collection::vec((1i64..50, 0i64..3), 1..40),
            order in proptest::collection::vec(any::<prop::sample::Index>(), 0..60),
        ) {
            let mut p = PartitionProgress::default();
            let mut batches = Vec::new();
            let mut next = 100;
            for (len, gap) in sizes {
                let first = next + gap;
                next = first + len;
                p.dispatched(first, next);
                batches.push((first, next));
            }
            let mut done = vec![false; batches.len()];
            for idx in order {
                let i = idx.index(batches.len());
                p.completed(batches[i].0, batches[i].1);
                done[i] = true;
                let w = p.durable().unwrap();
                let expect = match done.iter().position(|d| !d) {
                    Some(0) => batches[0].0,
                    Some(k) => batches[k - 1].1,
                    None => batches.last().unwrap().1,
                };
                prop_assert_eq!(w, expect);
                for (j, (first, _)) in batches.iter().enumerate() {
                    if !done[j] { prop_assert!(w <= *first); }
                }
            }
        }
    }
}
