//! The consumer thread's state: the rules' core and the channels it drives, with the few steps
//! that turn the core's answers into calls on the rdkafka consumer.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::mpsc::Sender;
use tokio::sync::mpsc::error::TrySendError;

use crate::model::{Ack, Batch, TopicPartition};

use super::Kafka;
use super::rules::{Core, Lanes};

/// Mutable state shared by the poll loop and the rebalance callbacks (both on the consumer
/// thread; the mutex only satisfies rdkafka's `Sync` bound and is never contended).
pub(super) struct State {
    /// The rules: ownership, batches, budget, holds, watermarks (`consumer::rules`).
    pub(super) core: Core,
    /// Senders to the workers' bounded queues. Cleared at shutdown: that closes the queues.
    workers: Vec<Sender<Batch>>,
    /// Acks from workers. Disconnected once every worker has exited.
    acks: Receiver<Ack>,
    /// Set once `acks` is disconnected: every worker has exited.
    workers_gone: bool,
    /// Each assigned topic's stored name, `None` for a topic held because its identity is not
    /// the one stored under its name, or could not be told (see `crate::identity`).
    pub(super) identities: HashMap<String, Option<String>>,
    /// When the identities are checked again (`Bridge::recheck_identities`).
    pub(super) identity_check_at: Instant,
}

/// The workers' queues as the core sees them.
struct Queues<'a>(&'a [Sender<Batch>]);

impl Lanes for Queues<'_> {
    fn count(&self) -> usize {
        self.0.len()
    }

    fn capacity(&self, w: usize) -> usize {
        self.0[w].max_capacity()
    }

    fn try_send(&self, w: usize, batch: Batch) -> Result<(), Batch> {
        self.0[w].try_send(batch).map_err(|e| match e {
            TrySendError::Full(b) | TrySendError::Closed(b) => b,
        })
    }
}

impl State {
    pub(super) fn new(
        core: Core,
        workers: Vec<Sender<Batch>>,
        acks: Receiver<Ack>,
        identity_check_at: Instant,
    ) -> Self {
        State {
            core,
            workers,
            acks,
            workers_gone: false,
            identities: HashMap::new(),
            identity_check_at,
        }
    }

    /// Hands queued batches to the workers while their queues have room.
    pub(super) fn dispatch(&mut self) {
        self.core.dispatch(&Queues(&self.workers));
    }

    /// Closes the workers' queues: they exit once they are empty.
    pub(super) fn close_queues(&mut self) {
        self.workers.clear();
    }

    pub(super) fn workers_gone(&self) -> bool {
        self.workers_gone
    }

    /// Pauses and resumes fetching as the core wants it (see `Core::pause_change`).
    pub(super) fn apply_pause(&mut self, consumer: &Kafka) {
        let change = self.core.pause_change();
        if !change.pause.is_empty() {
            pause(consumer, &change.pause);
        }
        if !change.resume.is_empty()
            && let Err(e) = consumer.resume(&tpl_of(&change.resume))
        {
            tracing::warn!(error = %e, "resume failed");
        }
    }

    /// Applies every ack already received.
    pub(super) fn drain_acks(&mut self) {
        loop {
            match self.acks.try_recv() {
                Ok(ack) => self.core.ack(ack, Instant::now()),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    self.workers_gone = true;
                    return;
                }
            }
        }
    }

    /// Applies the next ack, waiting for it at most `timeout`.
    pub(super) fn wait_ack(&mut self, timeout: Duration) {
        match self.acks.recv_timeout(timeout) {
            Ok(ack) => self.core.ack(ack, Instant::now()),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                self.workers_gone = true;
                std::thread::sleep(timeout);
            }
        }
    }

    /// Offsets idle partitions passed without a record are accounted for (see
    /// `Core::account_passed`), from the consumer's positions.
    pub(super) fn account_passed_offsets(&mut self, consumer: &Kafka) {
        if !self.core.any_idle() {
            return;
        }
        let Ok(positions) = consumer.position() else {
            return;
        };
        let positions: Vec<(TopicPartition, i64)> = positions
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((TopicPartition::new(e.topic(), e.partition()), o)),
                _ => None,
            })
            .collect();
        let log_start = |tp: &TopicPartition| super::start::log_start(consumer, tp);
        self.core.account_passed(&positions, &log_start);
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
