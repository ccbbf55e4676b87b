//! One bound on the memory that batches hold, across every partition: records in open
//! batches, batches waiting for their worker, queued, and being written. When it is reached,
//! fetching stops for every partition until the workers have released a tenth of it.
//!
//! A record is counted with every copy it has while its batch is written
//! ([`RawRecord::COPIES`]), from the moment it enters a batch, so the bound holds for a batch
//! of one giant record as for many small ones. The check comes after a record is taken: a record larger than what is
//! left, or than the whole budget, is processed rather than waited for, and nothing more is
//! fetched until it is released. `Settings::worst_case_memory_mib` adds that one overshoot.

use crate::model::RawRecord;

const COPIES: usize = RawRecord::COPIES;

/// Bytes of records held in batches (`RawRecord::size` times its copies), against the limit.
#[derive(Debug)]
pub(super) struct Budget {
    limit: usize,
    used: usize,
    peak: usize,
    exhausted: bool,
}

impl Budget {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            limit,
            used: 0,
            peak: 0,
            exhausted: false,
        }
    }

    /// A record entered a batch.
    pub(super) fn take(&mut self, bytes: usize) {
        self.used += bytes * COPIES;
        self.peak = self.peak.max(self.used);
    }

    /// Records left memory: their batch was acknowledged, discarded or dropped.
    pub(super) fn release(&mut self, bytes: usize) {
        self.used = self.used.saturating_sub(bytes * COPIES);
    }

    /// Whether fetching must stop: from the limit on, until usage is back below 90% of it
    /// (so fetching does not flap around the limit), or at zero (a limit under ten bytes has
    /// no 90% in whole bytes; the property test found it stuck there).
    pub(super) fn exhausted(&mut self) -> bool {
        if self.used >= self.limit {
            self.exhausted = true;
        } else if self.used == 0 || self.used < self.limit / 10 * 9 {
            self.exhausted = false;
        }
        self.exhausted
    }

    pub(super) fn used(&self) -> usize {
        self.used
    }

    pub(super) fn peak(&self) -> usize {
        self.peak
    }

    /// Bytes of records (`RawRecord::size`, copies not counted: they are made only while a
    /// batch is written) that one of `partitions` may hold in batches cut and waiting for its
    /// worker before it stops fetching: a quarter of the budget, shared evenly. The rest is for
    /// open batches and those at the workers, and librdkafka's prefetch of partitions that are
    /// not paused sits beside it. An even share keeps one slow partition from using up what
    /// every partition shares. A quarter still lets one backlogged partition read 8 MiB of
    /// records ahead at the default budget, more than a second of its worker's work; half
    /// only raised peak RSS.
    pub(super) fn read_ahead(&self, partitions: usize) -> usize {
        self.limit / COPIES / 4 / partitions.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever records enter and in whatever order their batches are released: usage is
        /// the sum of what is held, with its copies; fetching stops whenever the limit is
        /// reached; and once everything is released the budget is back at zero and fetching
        /// goes on.
        #[test]
        fn usage_is_what_is_held_and_returns_to_zero(
            limit in 1usize..10_000,
            records in proptest::collection::vec(1usize..3_000, 0..60),
            order in proptest::collection::vec(any::<prop::sample::Index>(), 0..60),
        ) {
            let mut b = Budget::new(limit);
            let mut held: Vec<usize> = Vec::new();
            let mut order = order.into_iter();
            for r in records {
                b.take(r);
                held.push(r);
                prop_assert_eq!(b.used(), held.iter().sum::<usize>() * COPIES);
                if b.used() >= limit {
                    prop_assert!(b.exhausted(), "at the limit fetching stops");
                }
                // Release some batch now and then, not necessarily the oldest.
                if let Some(i) = order.next().filter(|_| !held.is_empty()) {
                    let r = held.swap_remove(i.index(held.len()));
                    b.release(r);
                    prop_assert_eq!(b.used(), held.iter().sum::<usize>() * COPIES);
                }
                prop_assert!(b.peak() >= b.used());
            }
            for r in held.drain(..) {
                b.release(r);
            }
            prop_assert_eq!(b.used(), 0);
            prop_assert!(!b.exhausted(), "nothing held: fetching goes on");
        }
    }

    #[test]
    fn stops_at_the_limit_and_resumes_below_ninety_percent() {
        let mut b = Budget::new(1000 * COPIES);
        b.take(999);
        assert!(!b.exhausted());
        b.take(1);
        assert!(b.exhausted());
        b.release(50);
        assert!(b.exhausted(), "950 is not below 900");
        b.release(60);
        assert!(!b.exhausted());
        assert_eq!((b.used(), b.peak()), (890 * COPIES, 1000 * COPIES));
        b.release(5000);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn a_record_larger_than_the_whole_budget_is_taken_and_stops_fetching_until_released() {
        let mut b = Budget::new(1000);
        b.take(10);
        b.take(5000);
        assert!(b.exhausted(), "nothing more is fetched while it is held");
        b.release(10);
        assert!(b.exhausted());
        b.release(5000);
        assert!(!b.exhausted());
        assert_eq!(b.peak(), 5010 * COPIES);
    }
}
