//! The consumer thread's state: batches waiting for their worker, pauses, held partitions,
//! acknowledgements and watermarks.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::mpsc::Sender;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;

use crate::batcher::Batcher;
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
    /// Owned partitions; cancelling a token tells workers to give up that partition's batches.
    pub(super) assigned: HashMap<TopicPartition, CancellationToken>,
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
    pub(super) workers_gone: bool,
}

impl State {
    /// Drops records read but not yet handed to a worker.
    pub(super) fn discard(&mut self, tps: &[TopicPartition]) {
        for tp in tps {
            self.batcher.discard(tp);
            self.pending.remove(tp);
        }
    }

    /// Stops owning `tps`: queued and running batches are given up, progress is dropped.
    pub(super) fn forget(&mut self, tps: &[TopicPartition]) {
        self.discard(tps);
        for tp in tps {
            if let Some(token) = self.assigned.remove(tp) {
                token.cancel();
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
    pub(super) fn enqueue(&mut self, tp: TopicPartition, records: Vec<RawRecord>) {
        let Some(token) = self.assigned.get(&tp) else {
            return;
        };
        let first = records[0].offset;
        let next_offset = records[records.len() - 1].offset + 1;
        let progress = self.watermarks.get_mut(&tp);
        let start = progress.position();
        if let Some(start) = progress.next_expected().filter(|&s| first < s) {
            // The partition's offsets went back (librdkafka reset a position that no longer
            // exists to the earliest): the topic was recreated.
            let reason = format!(
                "offsets went back from {start} to {first}: was the topic deleted and recreated? \
                 Delete this partition's row in consumer_offsets, then restart"
            );
            tracing::error!(partition = %tp, "{reason}");
            self.hold(tp, reason);
            return;
        }
        progress.dispatched(first, next_offset);
        let batch = Batch {
            tp: tp.clone(),
            records,
            next_offset,
            start,
            revoked: token.child_token(),
        };
        self.pending.entry(tp).or_default().push_back(batch);
    }

    /// Stops reading `tp` for good (for this assignment): see `State::held`.
    pub(super) fn hold(&mut self, tp: TopicPartition, reason: String) {
        self.batcher.discard(&tp);
        self.pending.remove(&tp);
        self.metrics.set_stalled(&tp, &reason);
        self.held.insert(tp, reason);
    }

    /// Moves queued batches into the workers' bounded channels while they have room.
    pub(super) fn dispatch(&mut self) {
        if self.workers.is_empty() {
            return;
        }
        let n = self.workers.len();
        for (tp, queue) in self.pending.iter_mut() {
            let worker = &self.workers[route(tp, n)];
            while let Some(batch) = queue.pop_front() {
                match worker.try_send(batch) {
                    Ok(()) => {}
                    Err(TrySendError::Full(batch)) | Err(TrySendError::Closed(batch)) => {
                        queue.push_front(batch);
                        break;
                    }
                }
            }
        }
        self.pending.retain(|_, q| !q.is_empty());
    }

    /// Backpressure: a partition with a batch its worker cannot take yet stops fetching until
    /// the worker catches up. The loop keeps polling, so the group never evicts us.
    pub(super) fn apply_pause(&mut self, consumer: &Kafka) {
        let want: HashSet<TopicPartition> = self
            .pending
            .keys()
            .chain(self.held.keys())
            .filter(|tp| self.assigned.contains_key(*tp))
            .cloned()
            .collect();
        let to_pause: Vec<_> = want.difference(&self.paused).cloned().collect();
        let to_resume: Vec<_> = self.paused.difference(&want).cloned().collect();
        if !to_pause.is_empty() {
            pause(consumer, &to_pause);
        }
        if !to_resume.is_empty() {
            if let Err(e) = consumer.resume(&tpl_of(&to_resume)) {
                tracing::warn!(error = %e, "resume failed");
            }
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
        if !ack.durable {
            metrics.batches_abandoned.fetch_add(1, Relaxed);
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

/// The worker that owns a partition: fixed, so a partition's batches are written in order.
pub fn route(tp: &TopicPartition, workers: usize) -> usize {
    let mut h = DefaultHasher::new();
    tp.topic.hash(&mut h);
    ((h.finish() as usize).wrapping_add(tp.partition as usize)) % workers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_is_stable_and_spreads_partitions() {
        let used: HashSet<usize> = (0..6)
            .map(|p| route(&TopicPartition::new("logs", p), 4))
            .collect();
        assert_eq!(
            used.len(),
            4,
            "6 consecutive partitions keep all 4 workers busy"
        );
        assert_eq!(
            route(&TopicPartition::new("logs", 3), 4),
            route(&TopicPartition::new("logs", 3), 4)
        );
    }
}
