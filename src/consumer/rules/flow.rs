//! The flow of records through the core: read, cut into batches, queued, handed to workers,
//! and fetching paused while they cannot take more.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use crate::model::{RawRecord, TopicPartition};

use super::{Core, Lanes, LogStart, PauseChange};

impl Core {
    /// A record read from `tp`. Returns whether the loop's bookkeeping is due at once: a batch
    /// was cut, or the memory budget is used up.
    pub(in crate::consumer) fn record(
        &mut self,
        tp: &TopicPartition,
        record: RawRecord,
        now: Instant,
        log_start: LogStart<'_>,
    ) -> bool {
        if !self.owns(tp) || self.held.contains_key(tp) {
            return false;
        }
        if let Some(&next) = self.fetched.get(tp)
            && record.offset < next
        {
            // Not after the last record read (the same offset again, or one below it):
            // librdkafka reset a position that no longer exists to the earliest, the topic was
            // recreated. Caught here, before the record joins an open batch whose first offset
            // the watermark check in `enqueue` would let pass.
            self.went_back(tp.clone(), next, record.offset);
            return true;
        }
        self.fetched.insert(tp.clone(), record.offset + 1);
        self.budget.take(record.size());
        let mut due = false;
        for full in self.batcher.push(tp, record, now) {
            self.enqueue(tp.clone(), full, log_start);
            due = true;
        }
        due || self.budget.exhausted()
    }

    /// Cuts the batches whose linger expired.
    pub(in crate::consumer) fn expire(&mut self, now: Instant, log_start: LogStart<'_>) {
        for (tp, records) in self.batcher.expired(now) {
            self.enqueue(tp, records, log_start);
        }
    }

    /// Cuts a batch for a partition and queues it for its worker; the watermark registers it.
    fn enqueue(&mut self, tp: TopicPartition, records: Vec<RawRecord>, log_start: LogStart<'_>) {
        let bytes = records.iter().map(RawRecord::size).sum();
        if !self.owns(&tp) {
            self.budget.release(bytes);
            return;
        }
        let first = records[0].offset;
        let next_offset = records[records.len() - 1].offset + 1;
        let expected = self.watermarks.get_mut(&tp).next_expected();
        if let Some(start) = expected.filter(|&s| first < s) {
            // The partition starts below its watermark (librdkafka reset a position that no
            // longer exists to the earliest): the topic was recreated.
            self.budget.release(bytes);
            self.went_back(tp, start, first);
            return;
        }
        let gaps =
            crate::gaps::of_batch(expected, records.iter().map(|r| r.offset), log_start(&tp));
        self.queue_batch(tp, records, gaps, bytes, next_offset);
    }

    /// Holds a partition whose offsets went back from `from` to `to`.
    fn went_back(&mut self, tp: TopicPartition, from: i64, to: i64) {
        let reason = format!(
            "offsets went back from {from} to {to}: was the topic deleted and recreated? \
             Move away or delete this partition's rows in log_records, dead_letters and consumer_offsets (they hold the old topic's records under the same offsets), then restart"
        );
        tracing::error!(partition = %tp, "{reason}");
        self.hold(tp, reason);
    }

    /// Whether a partition has nothing read and unsent: its position may be checked for
    /// offsets passed without a record (`account_passed`).
    fn idle(&self, tp: &TopicPartition) -> bool {
        !self.held.contains_key(tp)
            && !self.batcher.holds(tp)
            && self.pending.get(tp).is_none_or(VecDeque::is_empty)
    }

    /// Whether `account_passed` has anything to judge: the driver then asks Kafka for the
    /// positions.
    pub(in crate::consumer) fn any_idle(&self) -> bool {
        self.assigned.keys().any(|tp| self.idle(tp))
    }

    /// Offsets an idle partition's reader passed without a record (a transaction's commit
    /// marker at the end of the log, records aborted or compacted away) are accounted for by a
    /// batch of gaps alone, so that the stored watermark, and Kafka's committed offset, reach
    /// the end. librdkafka moves a partition's position past control records as it serves
    /// them, in order with the records, so `[expected, position)` holds nothing left to read.
    pub(in crate::consumer) fn account_passed(
        &mut self,
        positions: &[(TopicPartition, i64)],
        log_start: LogStart<'_>,
    ) {
        for (tp, position) in positions {
            if !self.owns(tp) || !self.idle(tp) {
                continue;
            }
            let Some(expected) = self.watermarks.get_mut(tp).next_expected() else {
                continue;
            };
            if *position > expected {
                let gaps = crate::gaps::between(expected, *position, log_start(tp));
                self.queue_batch(tp.clone(), Vec::new(), gaps, 0, *position);
            }
        }
    }

    /// Moves queued batches into the workers' bounded queues while they have room.
    pub(in crate::consumer) fn dispatch(&mut self, lanes: &impl Lanes) {
        if lanes.count() == 0 {
            return;
        }
        // Partitions that share a worker take turns, one batch a turn, the one that sent least
        // recently first: otherwise the first in the map's order would take every slot its
        // worker frees, and a busy partition would starve the others of that worker.
        let mut order: Vec<TopicPartition> = self
            .pending
            .keys()
            .filter(|tp| self.owns(tp))
            .cloned()
            .collect();
        order.sort_by_key(|tp| self.assigned[tp].last_sent);
        let mut progressed = true;
        while progressed {
            progressed = false;
            for tp in &order {
                let (Some(owned), Some(queue)) =
                    (self.assigned.get_mut(tp), self.pending.get_mut(tp))
                else {
                    continue;
                };
                // At most a full queue and one being written per partition at its worker: a
                // held partition's batches wait here (within its read-ahead, then with fetching
                // paused) rather than in the worker's lane for it, so they never use up the
                // memory budget every partition shares.
                let at_worker = self
                    .watermarks
                    .get(tp)
                    .map_or(0, |p| p.in_flight().saturating_sub(queue.len()));
                if at_worker > lanes.capacity(owned.worker) {
                    continue;
                }
                let Some(batch) = queue.pop_front() else {
                    continue;
                };
                match lanes.try_send(owned.worker, batch) {
                    Ok(()) => {
                        self.sends += 1;
                        owned.last_sent = self.sends;
                        progressed = true;
                    }
                    // Closed: that worker died; the application exits on it (`app::run`).
                    Err(batch) => queue.push_front(batch),
                }
            }
        }
        self.pending.retain(|_, q| !q.is_empty());
    }

    /// Backpressure: a partition whose batches waiting for its worker hold its share of the
    /// read-ahead (`Budget::read_ahead`), or a held one, stops fetching; every partition stops
    /// while the memory budget is used up. The driver keeps polling, so the group never evicts
    /// the consumer.
    pub(in crate::consumer) fn pause_change(&mut self) -> PauseChange {
        self.metrics
            .batch_bytes
            .store(self.budget.used() as u64, Relaxed);
        self.metrics
            .batch_bytes_peak
            .store(self.budget.peak() as u64, Relaxed);
        let want: HashSet<TopicPartition> = if self.budget.exhausted() {
            self.assigned.keys().cloned().collect()
        } else {
            let share = self.budget.read_ahead(self.assigned.len());
            self.assigned
                .keys()
                .filter(|tp| self.held.contains_key(*tp) || self.read_far_ahead(tp, share))
                .cloned()
                .collect()
        };
        let change = PauseChange {
            pause: want.difference(&self.paused).cloned().collect(),
            resume: self.paused.difference(&want).cloned().collect(),
        };
        self.paused = want;
        change
    }

    /// Whether a partition must stop fetching for the batches it has waiting: from its share
    /// on, and once paused until they are down to half of it. A pause is dear, so it comes
    /// late and lasts: librdkafka drops what it prefetched for the partition, and fetches it
    /// again only at its broker thread's next turn, up to a second after the resume. Paused
    /// at every batch its worker could not take at once, one backlogged partition was read in
    /// bursts a second apart (a fifth of what it reached reading ahead).
    fn read_far_ahead(&self, tp: &TopicPartition, share: usize) -> bool {
        let waiting = self.waiting_bytes(tp);
        if self.paused.contains(tp) {
            waiting > share / 2
        } else {
            waiting > 0 && waiting >= share
        }
    }

    /// Bytes of records in a partition's batches cut and not yet taken by its worker.
    pub(super) fn waiting_bytes(&self, tp: &TopicPartition) -> usize {
        self.pending
            .get(tp)
            .map_or(0, |q| q.iter().map(|b| b.bytes).sum())
    }
}
