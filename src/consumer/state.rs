//! The consumer thread's state: batches waiting for their worker, pauses, held partitions,
//! acknowledgements and watermarks.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::mpsc::Sender;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;

use crate::batcher::Batcher;

use super::budget::Budget;
use crate::metrics::Metrics;
use crate::model::{Ack, Batch, RawRecord, TopicPartition};
use crate::watermark::Watermarks;

use super::{ConsumerReport, Kafka};

/// Mutable state shared by the poll loop and the rebalance callbacks (both on the consumer
/// thread; the mutex only satisfies rdkafka's `Sync` bound and is never contended).
pub(super) struct State {
    pub(super) batcher: Batcher,
    pub(super) watermarks: Watermarks,
    /// Senders to the workers' bounded queues. Cleared at shutdown: that closes the queues.
    pub(super) workers: Vec<Sender<Batch>>,
    /// Acks from workers. Disconnected once every worker has exited.
    pub(super) acks: Receiver<Ack>,
    /// Batches cut but not yet accepted by their worker's full queue, per partition.
    pub(super) pending: HashMap<TopicPartition, VecDeque<Batch>>,
    /// Owned partitions: their batches' tokens and their worker.
    pub(super) assigned: HashMap<TopicPartition, Ownership>,
    /// Number of workers, for choosing one at assignment.
    pub(super) n_workers: usize,
    /// The one memory bound of all batches; fetching stops when it is used up.
    pub(super) budget: Budget,
    pub(super) paused: HashSet<TopicPartition>,
    /// Owned partitions that must not be read, and why: their offsets went back below what
    /// PostgreSQL holds (a topic deleted and recreated under the same name). Reading them would
    /// have `ON CONFLICT DO NOTHING` swallow the new records, so they stay paused until an
    /// operator clears the stored watermark and the partition is assigned again.
    pub(super) held: HashMap<TopicPartition, String>,
    /// One past the last offset read, per partition.
    pub(super) fetched: HashMap<TopicPartition, i64>,
    /// Set when shutting down: rebalances then no longer wait for in-flight batches.
    pub(super) closing: bool,
    /// Where held partitions are reported.
    pub(super) metrics: Arc<Metrics>,
    /// When set, the loop replaces the consumer at that moment so it joins the group afresh and
    /// is assigned again: its partitions could not be started (why).
    pub(super) rejoin_at: Option<(std::time::Instant, String)>,
    pub(super) workers_gone: bool,
    /// Each assigned topic's stored name, `None` for a topic held because its identity is not
    /// the one stored under its name, or could not be told (see `crate::identity`).
    pub(super) identities: HashMap<String, Option<String>>,
    /// When the identities are checked again (`Bridge::recheck_identities`).
    pub(super) identity_check_at: std::time::Instant,
    /// Batches sent to workers so far: the clock of `Ownership::last_sent`.
    pub(super) sends: u64,
}

/// How long partitions that could not be started wait before the consumer rejoins the group.
const REJOIN_DELAY: Duration = Duration::from_secs(10);

/// A partition this consumer owns.
pub(super) struct Ownership {
    /// Cancelled when the partition is revoked or lost: running writes are dropped.
    pub(super) revoked: CancellationToken,
    /// Cancelled when a revocation begins: batches not yet started are given up at once, so
    /// the revocation waits only for writes already under way.
    pub(super) draining: CancellationToken,
    /// The worker that writes this partition's batches, in order, while it is owned.
    pub(super) worker: usize,
    /// Batches of this partition a worker is writing now (set by the worker): what a
    /// revocation waits for.
    pub(super) writing: Arc<AtomicUsize>,
    /// The partition under the name its records are stored as (see `Batch::stored`).
    pub(super) stored: TopicPartition,
    /// When it last sent a batch to its worker (`State::sends`): whose turn it is.
    pub(super) last_sent: u64,
}

impl State {
    /// Takes ownership of `tp`, giving it to the worker with the fewest partitions.
    /// `stored`: the partition as its records are stored (see `Batch::stored`).
    pub(super) fn own(&mut self, tp: TopicPartition, stored: TopicPartition) {
        let mut load = vec![0usize; self.n_workers.max(1)];
        for o in self.assigned.values() {
            load[o.worker] += 1;
        }
        let worker = (0..load.len()).min_by_key(|&w| load[w]).unwrap_or(0);
        self.assigned.insert(
            tp,
            Ownership {
                revoked: CancellationToken::new(),
                draining: CancellationToken::new(),
                worker,
                writing: Arc::new(AtomicUsize::new(0)),
                stored,
                last_sent: 0,
            },
        );
    }

    /// Drops records read but not yet handed to a worker, and their place in the watermark.
    pub(super) fn discard(&mut self, tps: &[TopicPartition]) {
        for tp in tps {
            let open = self.batcher.discard(tp);
            self.budget.release(open);
            if let Some(queue) = self.pending.remove(tp) {
                self.budget.release(queue.iter().map(|b| b.bytes).sum());
                if let Some(first) = queue.front().map(Batch::first_offset) {
                    self.watermarks.get_mut(tp).withdraw_from(first);
                }
            }
        }
    }

    /// Stops owning `tps`: queued and running batches are given up, progress is dropped.
    pub(super) fn forget(&mut self, tps: &[TopicPartition]) {
        self.discard(tps);
        for tp in tps {
            if let Some(owned) = self.assigned.remove(tp) {
                owned.revoked.cancel();
            }
            let unfinished = self.watermarks.remove(tp).and_then(|p| p.pending_range());
            if let (Some((from, to)), false) = (unfinished, self.closing) {
                tracing::info!(partition = %tp, from, to, "given up with batches unfinished; the next owner re-reads them");
            }
            self.paused.remove(tp);
            if self.held.remove(tp).is_some() {
                self.metrics.clear_stalled(tp);
            }
            self.fetched.remove(tp);
        }
    }

    /// Cuts a batch for a partition and queues it for its worker; the watermark registers it.
    pub(super) fn enqueue(
        &mut self,
        consumer: &Kafka,
        tp: TopicPartition,
        records: Vec<RawRecord>,
    ) {
        let bytes = records.iter().map(RawRecord::size).sum();
        if !self.assigned.contains_key(&tp) {
            self.budget.release(bytes);
            return;
        }
        let first = records[0].offset;
        let next_offset = records[records.len() - 1].offset + 1;
        let progress = self.watermarks.get_mut(&tp);
        if let Some(start) = progress.next_expected().filter(|&s| first < s) {
            // The partition's offsets went back (librdkafka reset a position that no longer
            // exists to the earliest): the topic was recreated.
            let reason = format!(
                "offsets went back from {start} to {first}: was the topic deleted and recreated? \
                 Move away or delete this partition's rows in log_records, dead_letters and consumer_offsets (they hold the old topic's records under the same offsets), then restart"
            );
            tracing::error!(partition = %tp, "{reason}");
            self.budget.release(bytes);
            self.hold(tp, reason);
            return;
        }
        let gaps = crate::gaps::of_batch(
            progress.next_expected(),
            records.iter().map(|r| r.offset),
            super::start::log_start(consumer, &tp),
        );
        self.queue(tp, records, gaps, bytes, next_offset);
    }

    /// Offsets an idle partition's reader passed without a record (a transaction's commit
    /// marker at the end of the log, records aborted or compacted away) are accounted for by a
    /// batch of gaps alone, so that the stored watermark, and Kafka's committed offset, reach
    /// the end. librdkafka moves a partition's position past control records as it serves
    /// them, in order with the records, so `[expected, position)` holds nothing left to read.
    pub(super) fn account_passed_offsets(&mut self, consumer: &Kafka) {
        let idle = |st: &State, tp: &TopicPartition| {
            !st.held.contains_key(tp)
                && !st.batcher.holds(tp)
                && st.pending.get(tp).is_none_or(VecDeque::is_empty)
        };
        if !self.assigned.keys().any(|tp| idle(self, tp)) {
            return;
        }
        let Ok(positions) = consumer.position() else {
            return;
        };
        for e in positions.elements() {
            let Offset::Offset(position) = e.offset() else {
                continue;
            };
            let tp = TopicPartition::new(e.topic(), e.partition());
            if !self.assigned.contains_key(&tp) || !idle(self, &tp) {
                continue;
            }
            let Some(expected) = self.watermarks.get_mut(&tp).next_expected() else {
                continue;
            };
            if position > expected {
                let gaps = crate::gaps::between(
                    expected,
                    position,
                    super::start::log_start(consumer, &tp),
                );
                self.queue(tp, Vec::new(), gaps, 0, position);
            }
        }
    }

    /// Registers a batch `[first, next_offset)` (its records and gaps) with the watermark and
    /// queues it for the partition's worker.
    fn queue(
        &mut self,
        tp: TopicPartition,
        records: Vec<RawRecord>,
        gaps: Vec<crate::gaps::Gap>,
        bytes: usize,
        next_offset: i64,
    ) {
        let Some(owned) = self.assigned.get(&tp) else {
            self.budget.release(bytes);
            return;
        };
        let (revoked, drain) = (owned.revoked.child_token(), owned.draining.child_token());
        let writing = Arc::clone(&owned.writing);
        let stored = owned.stored.clone();
        for gap in gaps.iter().filter(|g| g.cause.is_loss()) {
            tracing::warn!(partition = %tp, from = gap.from, to = gap.to, offsets = gap.offsets(), cause = %gap.cause, "offsets deleted from Kafka before they were read: recorded in source_gaps");
        }
        self.metrics.gaps_found(&gaps);
        let progress = self.watermarks.get_mut(&tp);
        let start = progress.position();
        let batch = Batch {
            tp: tp.clone(),
            stored,
            records,
            next_offset,
            start,
            gaps,
            bytes,
            revoked,
            drain,
            writing,
        };
        progress.dispatched(batch.first_offset(), next_offset);
        self.pending.entry(tp).or_default().push_back(batch);
    }

    /// Asks for a new consumer in a while (see `rejoin_at`), unless one is asked for already.
    pub(super) fn rejoin(&mut self, why: String) {
        if self.rejoin_at.is_none() {
            self.rejoin_at = Some((std::time::Instant::now() + REJOIN_DELAY, why));
        }
    }

    /// Asks for a new consumer at once (see `rejoin_at`).
    pub(super) fn rejoin_now(&mut self, why: String) {
        self.rejoin_at = Some((std::time::Instant::now(), why));
    }

    /// Stops reading `tp` for good (for this assignment): see `State::held`.
    pub(super) fn hold(&mut self, tp: TopicPartition, reason: String) {
        self.discard(std::slice::from_ref(&tp));
        self.metrics.set_stalled(&tp, &reason);
        self.held.insert(tp, reason);
    }

    /// Moves queued batches into the workers' bounded channels while they have room.
    pub(super) fn dispatch(&mut self) {
        if self.workers.is_empty() {
            return;
        }
        // Partitions that share a worker take turns, one batch a turn, the one that sent least
        // recently first: otherwise the first in the map's order would take every slot its
        // worker frees, and a busy partition would starve the others of that worker.
        let mut order: Vec<TopicPartition> = self
            .pending
            .keys()
            .filter(|tp| self.assigned.contains_key(*tp))
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
                let worker = &self.workers[owned.worker];
                // At most a full queue and one being written per partition at its worker: a
                // held partition's batches wait here (fetching it paused) rather than in the
                // worker's lane for it, so they never use up the memory budget every partition
                // shares.
                let at_worker = self
                    .watermarks
                    .get(tp)
                    .map_or(0, |p| p.in_flight().saturating_sub(queue.len()));
                if at_worker > worker.max_capacity() {
                    continue;
                }
                let Some(batch) = queue.pop_front() else {
                    continue;
                };
                match worker.try_send(batch) {
                    Ok(()) => {
                        self.sends += 1;
                        owned.last_sent = self.sends;
                        progressed = true;
                    }
                    // Closed: that worker died; the application exits on it (`app::run`).
                    Err(TrySendError::Full(batch)) | Err(TrySendError::Closed(batch)) => {
                        queue.push_front(batch);
                    }
                }
            }
        }
        self.pending.retain(|_, q| !q.is_empty());
    }

    /// Backpressure: a partition with a batch its worker cannot take yet stops fetching until
    /// the worker catches up. The loop keeps polling, so the group never evicts us.
    pub(super) fn apply_pause(&mut self, consumer: &Kafka) {
        self.metrics
            .batch_bytes
            .store(self.budget.used() as u64, Relaxed);
        self.metrics
            .batch_bytes_peak
            .store(self.budget.peak() as u64, Relaxed);
        let want: HashSet<TopicPartition> = if self.budget.exhausted() {
            self.assigned.keys().cloned().collect()
        } else {
            self.pending
                .keys()
                .chain(self.held.keys())
                .filter(|tp| self.assigned.contains_key(*tp))
                .cloned()
                .collect()
        };
        let to_pause: Vec<_> = want.difference(&self.paused).cloned().collect();
        let to_resume: Vec<_> = self.paused.difference(&want).cloned().collect();
        if !to_pause.is_empty() {
            pause(consumer, &to_pause);
        }
        if !to_resume.is_empty()
            && let Err(e) = consumer.resume(&tpl_of(&to_resume))
        {
            tracing::warn!(error = %e, "resume failed");
        }
        self.paused = want;
    }

    /// Applies every ack already received.
    pub(super) fn drain_acks(&mut self, metrics: &Metrics) {
        loop {
            match self.acks.try_recv() {
                Ok(ack) => self.apply(ack, metrics),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    self.workers_gone = true;
                    return;
                }
            }
        }
    }

    pub(super) fn wait_ack(&mut self, timeout: Duration, metrics: &Metrics) {
        match self.acks.recv_timeout(timeout) {
            Ok(ack) => self.apply(ack, metrics),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                self.workers_gone = true;
                std::thread::sleep(timeout);
            }
        }
    }

    pub(super) fn apply(&mut self, ack: Ack, metrics: &Metrics) {
        self.budget.release(ack.bytes);
        if let Some(why) = &ack.reread
            && self.assigned.contains_key(&ack.tp)
        {
            // Every owned partition starts again at its stored watermark with a new member:
            // the one behind from where the database now stands.
            metrics.rewinds.fetch_add(1, Relaxed);
            let why = format!(
                "PostgreSQL is behind this partition's batches ({why}): read again from its watermark shortly"
            );
            if !self.held.contains_key(&ack.tp) {
                tracing::warn!(partition = %ack.tp, "{why}");
                self.hold(ack.tp.clone(), why.clone());
            }
            self.rejoin(why);
        }
        if !ack.durable {
            metrics.batches_abandoned.fetch_add(1, Relaxed);
            if self.assigned.contains_key(&ack.tp) {
                self.watermarks
                    .get_mut(&ack.tp)
                    .abandoned(ack.first_offset, ack.next_offset);
            }
            return;
        }
        // An ack for a partition revoked meanwhile belongs to the old assignment: ignore it.
        if self.assigned.contains_key(&ack.tp) {
            self.watermarks
                .get_mut(&ack.tp)
                .completed(ack.first_offset, ack.next_offset);
        }
    }

    /// Offsets read but not durable, per owned partition.
    pub(super) fn abandoned(&self) -> ConsumerReport {
        let mut abandoned: Vec<_> = self
            .fetched
            .iter()
            .filter_map(|(tp, &fetched)| {
                let durable = self.watermarks.get(tp).and_then(|p| p.durable())?;
                (fetched > durable).then(|| (tp.clone(), durable, fetched))
            })
            .collect();
        abandoned.sort();
        ConsumerReport { abandoned }
    }
}

/// The partitions of an rdkafka list as plain values: nothing borrowed from librdkafka is kept.
pub(super) fn partitions_of(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| TopicPartition::new(e.topic(), e.partition()))
        .collect()
}

/// An rdkafka list of partitions with offsets: the one place such lists are built.
pub(super) fn tpl_at<'a>(
    parts: impl IntoIterator<Item = (&'a TopicPartition, Offset)>,
) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (tp, offset) in parts {
        // Only fails for an invalid partition number, which Kafka never hands out.
        let _ = tpl.add_partition_offset(&tp.topic, tp.partition, offset);
    }
    tpl
}

/// An rdkafka list of these partitions, without offsets.
pub(super) fn tpl_of(tps: &[TopicPartition]) -> TopicPartitionList {
    tpl_at(tps.iter().map(|tp| (tp, Offset::Invalid)))
}

pub(super) fn pause(consumer: &Kafka, tps: &[TopicPartition]) {
    if let Err(e) = consumer.pause(&tpl_of(tps)) {
        tracing::warn!(error = %e, "pause failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(workers: Vec<Sender<Batch>>, n_workers: usize, acks: Receiver<Ack>) -> State {
        State {
            batcher: Batcher::new(crate::batcher::Limits {
                max_records: 10,
                max_bytes: 1000,
                linger: Duration::from_millis(10),
            }),
            watermarks: Watermarks::default(),
            workers,
            acks,
            pending: HashMap::new(),
            assigned: HashMap::new(),
            n_workers,
            budget: Budget::new(1 << 20),
            paused: HashSet::new(),
            held: HashMap::new(),
            fetched: HashMap::new(),
            closing: false,
            metrics: Arc::new(Metrics::default()),
            rejoin_at: None,
            workers_gone: false,
            identities: HashMap::new(),
            identity_check_at: std::time::Instant::now(),
            sends: 0,
        }
    }

    #[test]
    fn partitions_sharing_a_worker_take_turns() {
        let (_ack_tx, acks) = std::sync::mpsc::channel();
        let (tx, mut rx) = tokio::sync::mpsc::channel(2);
        let mut st = state(vec![tx], 1, acks);
        let (a, b) = (
            TopicPartition::new("logs", 0),
            TopicPartition::new("logs", 1),
        );
        for tp in [&a, &b] {
            st.own(tp.clone(), tp.clone());
            for i in 0..4 {
                let record = RawRecord {
                    offset: i,
                    key: None,
                    payload: Some(b"{}".to_vec()),
                    kafka_timestamp_ms: None,
                };
                st.queue(tp.clone(), vec![record], Vec::new(), 50, i + 1);
            }
        }
        // Each time the worker takes one batch, the partition that waited longer sends next.
        let mut taken = Vec::new();
        for _ in 0..6 {
            st.dispatch();
            let batch = rx.try_recv().expect("a batch");
            taken.push(batch.tp.partition);
            st.watermarks
                .get_mut(&batch.tp)
                .completed(batch.first_offset(), batch.next_offset);
        }
        let (zeros, ones) = (
            taken.iter().filter(|&&p| p == 0).count(),
            taken.iter().filter(|&&p| p == 1).count(),
        );
        assert_eq!((zeros, ones), (3, 3), "taken in the order {taken:?}");
    }

    #[test]
    fn partitions_go_to_the_least_loaded_worker() {
        let (_tx, acks) = std::sync::mpsc::channel();
        let mut st = state(Vec::new(), 4, acks);
        // What a pod of R = 4 replicas gets with round-robin partitions: 0, 4, 8, ...
        for p in (0..48).step_by(4) {
            let tp = TopicPartition::new("logs", p);
            st.own(tp.clone(), tp);
        }
        let mut load = [0; 4];
        for o in st.assigned.values() {
            load[o.worker] += 1;
        }
        assert_eq!(load, [3, 3, 3, 3]);
        // A revoked partition frees its worker for the next one.
        let w = st.assigned[&TopicPartition::new("logs", 8)].worker;
        st.forget(&[TopicPartition::new("logs", 8)]);
        st.own(
            TopicPartition::new("other", 0),
            TopicPartition::new("other", 0),
        );
        assert_eq!(st.assigned[&TopicPartition::new("other", 0)].worker, w);
    }
}
