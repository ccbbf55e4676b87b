//! The consumer's rules, apart from Kafka: which partitions it owns, how records become
//! batches, the memory budget, held partitions, acknowledgements, and what may be committed.
//!
//! `Core` does no I/O. The driver (`consumer::state` and the rdkafka callbacks) hands it plain
//! values (a partition assigned or revoked, a record, an ack, the time) and applies what it
//! answers: which partitions to pause and resume, which offsets to commit, whether to rejoin
//! the group. Batches leave through `Lanes`, the workers' bounded queues, so the rules run in a
//! unit test with queues in memory (see `tests/`: property tests over random event orders, and
//! named cases).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::batcher::{Batcher, Limits};
use crate::gaps::Gap;
use crate::metrics::Metrics;
use crate::model::{Ack, Batch, RawRecord, TopicPartition};
use crate::watermark::Watermarks;

use super::budget::Budget;

mod flow;
#[cfg(test)]
mod tests;

/// Where the core is in the consumer's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Reading, batching, committing.
    Running,
    /// Shutting down: nothing more is read, rebalances no longer wait for running writes, and a
    /// partition given up with batches unfinished is not worth a log line.
    Closing,
}

/// The workers' bounded queues, one per worker.
pub(super) trait Lanes {
    /// How many workers there are (zero once the queues are closed).
    fn count(&self) -> usize;
    /// How many batches worker `w`'s queue holds at most.
    fn capacity(&self, w: usize) -> usize;
    /// Hands `batch` to worker `w`, or gives it back when its queue is full or closed (as
    /// tokio's `try_send` does: a full queue costs no allocation).
    #[allow(clippy::result_large_err)]
    fn try_send(&self, w: usize, batch: Batch) -> Result<(), Batch>;
}

/// What the log's start offset of a partition is, as far as Kafka has said (for naming the
/// offsets retention deleted before they were read; see `crate::gaps`).
pub(super) type LogStart<'a> = &'a dyn Fn(&TopicPartition) -> Option<i64>;

/// Partitions whose fetching must stop or may go on, for the driver to apply.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct PauseChange {
    pub(super) pause: Vec<TopicPartition>,
    pub(super) resume: Vec<TopicPartition>,
}

/// How long partitions that could not be started wait before the consumer rejoins the group.
const REJOIN_DELAY: Duration = Duration::from_secs(10);

/// A partition this consumer owns.
pub(super) struct Ownership {
    /// Cancelled when the partition is revoked or lost: running writes are dropped.
    revoked: CancellationToken,
    /// Cancelled when a revocation begins: batches not yet started are given up at once, so
    /// the revocation waits only for writes already under way.
    draining: CancellationToken,
    /// The worker that writes this partition's batches, in order, while it is owned.
    worker: usize,
    /// Batches of this partition a worker is writing now (set by the worker): what a
    /// revocation waits for.
    writing: Arc<AtomicUsize>,
    /// The partition under the name its records are stored as (see `Batch::stored`).
    stored: TopicPartition,
    /// When it last sent a batch to its worker (`Core::sends`): whose turn it is.
    last_sent: u64,
    /// Which assignment this is (`Core::assignments`): acks of batches of an earlier one are
    /// not this one's.
    assignment: u64,
}

/// The consumer's rules and their state; see the module's documentation.
pub(super) struct Core {
    phase: Phase,
    batcher: Batcher,
    watermarks: Watermarks,
    /// Batches cut but not yet accepted by their worker's full queue, per partition.
    pending: HashMap<TopicPartition, VecDeque<Batch>>,
    /// Owned partitions.
    assigned: HashMap<TopicPartition, Ownership>,
    /// Number of workers, for choosing one at assignment.
    n_workers: usize,
    /// The one memory bound of all batches; fetching stops when it is used up.
    budget: Budget,
    paused: HashSet<TopicPartition>,
    /// Owned partitions that must not be read, and why (a topic recreated under its name, a
    /// database behind its batches, a start that failed). They stay paused until assigned again.
    held: HashMap<TopicPartition, String>,
    /// One past the last offset read, per partition.
    fetched: HashMap<TopicPartition, i64>,
    /// When set, the driver replaces the consumer at that moment so it joins the group afresh
    /// and is assigned again (why).
    rejoin_at: Option<(Instant, String)>,
    /// Batches sent to workers so far: the clock of `Ownership::last_sent`.
    sends: u64,
    /// Partitions taken into ownership so far: the number of `Ownership::assignment`.
    assignments: u64,
    metrics: Arc<Metrics>,
}

impl Core {
    pub(super) fn new(
        limits: Limits,
        n_workers: usize,
        budget_bytes: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Core {
            phase: Phase::Running,
            batcher: Batcher::new(limits),
            watermarks: Watermarks::default(),
            pending: HashMap::new(),
            assigned: HashMap::new(),
            n_workers,
            budget: Budget::new(budget_bytes),
            paused: HashSet::new(),
            held: HashMap::new(),
            fetched: HashMap::new(),
            rejoin_at: None,
            sends: 0,
            assignments: 0,
            metrics,
        }
    }

    pub(super) fn phase(&self) -> Phase {
        self.phase
    }

    pub(super) fn owns(&self, tp: &TopicPartition) -> bool {
        self.assigned.contains_key(tp)
    }

    /// Whether `ack` is of a batch of the partition's current assignment. A batch of an
    /// earlier one (acknowledged after its partition was revoked, and maybe assigned again)
    /// covers offsets the new assignment registers anew: its outcome is not theirs.
    fn current(&self, ack: &Ack) -> bool {
        self.assigned
            .get(&ack.tp)
            .is_some_and(|o| o.assignment == ack.assignment)
    }

    /// Owned and fetching (not paused): what the fetch watch judges.
    pub(super) fn fetching(&self, tp: &TopicPartition) -> bool {
        self.owns(tp) && !self.paused.contains(tp)
    }

    pub(super) fn owned(&self) -> Vec<TopicPartition> {
        self.assigned.keys().cloned().collect()
    }

    /// When the oldest open batch must be cut.
    pub(super) fn next_expiry(&self) -> Option<Instant> {
        self.batcher.next_expiry()
    }

    /// Takes ownership of `tp`, giving it to the worker with the fewest partitions.
    /// `stored`: the partition as its records are stored (see `Batch::stored`). A partition
    /// assigned again while owned starts afresh, as after a lost one: what was in flight for it
    /// is given up (its acks belong to the earlier assignment) and it restarts where it is told.
    pub(super) fn own(&mut self, tp: TopicPartition, stored: TopicPartition) {
        if self.owns(&tp) {
            self.forget(std::slice::from_ref(&tp));
        }
        let mut load = vec![0usize; self.n_workers.max(1)];
        for o in self.assigned.values() {
            load[o.worker] += 1;
        }
        let worker = (0..load.len()).min_by_key(|&w| load[w]).unwrap_or(0);
        self.assignments += 1;
        let owned = Ownership {
            revoked: CancellationToken::new(),
            draining: CancellationToken::new(),
            worker,
            writing: Arc::new(AtomicUsize::new(0)),
            stored,
            last_sent: 0,
            assignment: self.assignments,
        };
        self.assigned.insert(tp, owned);
    }

    /// A newly owned partition starts at `offset`, known durable (PostgreSQL's watermark).
    pub(super) fn start_at(&mut self, tp: &TopicPartition, offset: i64) {
        self.watermarks.get_mut(tp).start_at(offset);
    }

    /// Stops reading `tp` for good (for this assignment): see `Core::held`.
    pub(super) fn hold(&mut self, tp: TopicPartition, reason: String) {
        self.discard(std::slice::from_ref(&tp));
        self.metrics.set_stalled(&tp, &reason);
        self.held.insert(tp, reason);
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

    /// A revocation begins: what is not being written yet is given up at once.
    pub(super) fn begin_revoke(&mut self, tps: &[TopicPartition]) {
        self.discard(tps);
        for owned in tps.iter().filter_map(|tp| self.assigned.get(tp)) {
            owned.draining.cancel();
        }
    }

    /// Whether a worker is writing a batch of one of `tps` now.
    pub(super) fn writing(&self, tps: &[TopicPartition]) -> bool {
        tps.iter()
            .filter_map(|tp| self.assigned.get(tp))
            .any(|o| o.writing.load(Relaxed) > 0)
    }

    /// Whatever still runs for `tps` is given up (their writes are dropped).
    pub(super) fn cancel_writes(&self, tps: &[TopicPartition]) {
        for owned in tps.iter().filter_map(|tp| self.assigned.get(tp)) {
            owned.revoked.cancel();
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
            if let (Some((from, to)), Phase::Running) = (unfinished, self.phase) {
                tracing::info!(partition = %tp, from, to, "given up with batches unfinished; the next owner re-reads them");
            }
            self.paused.remove(tp);
            if self.held.remove(tp).is_some() {
                self.metrics.clear_stalled(tp);
            }
            self.fetched.remove(tp);
        }
    }

    /// Shutting down: every owned partition stops; only writes under way are finished. What
    /// was read but is not being written yet is given up, uncommitted: the partition's next
    /// owner reads it again. Returns the partitions to pause.
    pub(super) fn begin_close(&mut self) -> Vec<TopicPartition> {
        self.phase = Phase::Closing;
        let all = self.owned();
        self.begin_revoke(&all);
        all
    }

    /// The shutdown was aborted: batches still waiting for a worker are not handed over.
    pub(super) fn drop_pending(&mut self) {
        self.pending.clear();
    }

    pub(super) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Asks for a new consumer in a while (see `rejoin_at`), unless one is asked for already.
    pub(super) fn rejoin(&mut self, why: String, now: Instant) {
        if self.rejoin_at.is_none() {
            self.rejoin_at = Some((now + REJOIN_DELAY, why));
        }
    }

    /// Asks for a new consumer at once.
    pub(super) fn rejoin_now(&mut self, why: String, now: Instant) {
        self.rejoin_at = Some((now, why));
    }

    /// Why the consumer must be replaced now, if it must.
    pub(super) fn take_rejoin(&mut self, now: Instant) -> Option<String> {
        match &self.rejoin_at {
            Some((at, _)) if *at <= now => self.rejoin_at.take().map(|(_, why)| why),
            _ => None,
        }
    }

    /// Offsets read but not durable, per owned partition: `(partition, durable, fetched)`.
    pub(super) fn abandoned(&self) -> Vec<(TopicPartition, i64, i64)> {
        let mut abandoned: Vec<_> = self
            .fetched
            .iter()
            .filter_map(|(tp, &fetched)| {
                let durable = self.watermarks.get(tp).and_then(|p| p.durable())?;
                (fetched > durable).then(|| (tp.clone(), durable, fetched))
            })
            .collect();
        abandoned.sort();
        abandoned
    }

    /// The watermarks to commit, of owned partitions only: those that moved, or with `all`
    /// every durable one.
    pub(super) fn to_commit(&self, all: bool) -> Vec<(TopicPartition, i64)> {
        let candidates: Vec<_> = if all {
            self.watermarks.durable_all()
        } else {
            self.watermarks.to_commit().into_iter().collect()
        };
        candidates
            .into_iter()
            .filter(|(tp, _)| self.owns(tp))
            .collect()
    }

    /// Kafka accepted these offsets (as far as an asynchronous commit tells).
    pub(super) fn committed(&mut self, offsets: Vec<(TopicPartition, i64)>) {
        for (tp, offset) in offsets {
            self.watermarks.get_mut(&tp).mark_committed(offset);
        }
    }

    /// A worker's acknowledgement.
    pub(super) fn ack(&mut self, ack: Ack, now: Instant) {
        self.budget.release(ack.bytes);
        if let Some(why) = &ack.reread
            && self.current(&ack)
        {
            // Every owned partition starts again at its stored watermark with a new member:
            // the one behind from where the database now stands.
            self.metrics.rewinds.fetch_add(1, Relaxed);
            let why = format!(
                "PostgreSQL is behind this partition's batches ({why}): read again from its watermark shortly"
            );
            if !self.held.contains_key(&ack.tp) {
                tracing::warn!(partition = %ack.tp, "{why}");
                self.hold(ack.tp.clone(), why.clone());
            }
            self.rejoin(why, now);
        }
        if !ack.durable {
            self.metrics.batches_abandoned.fetch_add(1, Relaxed);
        }
        if !self.current(&ack) {
            return;
        }
        let progress = self.watermarks.get_mut(&ack.tp);
        if ack.durable {
            progress.completed(ack.first_offset, ack.next_offset);
        } else {
            progress.abandoned(ack.first_offset, ack.next_offset);
        }
    }

    fn queue_batch(
        &mut self,
        tp: TopicPartition,
        records: Vec<RawRecord>,
        gaps: Vec<Gap>,
        bytes: usize,
        next_offset: i64,
    ) {
        let Some(owned) = self.assigned.get(&tp) else {
            self.budget.release(bytes);
            return;
        };
        let batch = Batch {
            tp: tp.clone(),
            stored: owned.stored.clone(),
            records,
            next_offset,
            start: self.watermarks.get_mut(&tp).position(),
            gaps,
            bytes,
            revoked: owned.revoked.child_token(),
            drain: owned.draining.child_token(),
            writing: Arc::clone(&owned.writing),
            assignment: owned.assignment,
        };
        for gap in batch.gaps.iter().filter(|g| g.cause.is_loss()) {
            tracing::warn!(partition = %tp, from = gap.from, to = gap.to, offsets = gap.offsets(), cause = %gap.cause, "offsets deleted from Kafka before they were read: recorded in source_gaps");
        }
        self.metrics.gaps_found(&batch.gaps);
        let progress = self.watermarks.get_mut(&tp);
        progress.dispatched(batch.first_offset(), next_offset);
        self.pending.entry(tp).or_default().push_back(batch);
    }
}
