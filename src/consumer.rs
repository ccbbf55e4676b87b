//! The Kafka side: one thread owns the rdkafka consumer, cuts records into per-partition
//! batches, hands them to workers through bounded channels, and commits watermarks.
//!
//! Everything that touches the consumer (polling, rebalance callbacks, pause/resume, commits)
//! runs on this one thread, so a commit can never race a revocation: offsets are only ever
//! committed for partitions this consumer owns at that moment. The thread never runs on the
//! async runtime, so its blocking calls cannot stall a worker.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use tokio::sync::mpsc::Sender;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;

use crate::batcher::{Batcher, Limits};
use crate::group_watch::GroupWatch;
use crate::metrics::Metrics;
use crate::model::{Ack, Batch, RawRecord, TopicPartition};
use crate::shutdown::Shutdown;
use crate::watermark::Watermarks;

/// Where a partition should start: the durable next offsets kept next to the data.
pub trait OffsetStore: Send + Sync + 'static {
    fn load<'a>(
        &'a self,
        tps: &'a [TopicPartition],
    ) -> Pin<Box<dyn Future<Output = Result<HashMap<TopicPartition, i64>, String>> + Send + 'a>>;
}

/// Settings of the Kafka consumer.
#[derive(Clone, Debug)]
pub struct ConsumerSettings {
    pub brokers: String,
    pub group_id: String,
    pub topics: Vec<String>,
    pub session_timeout_ms: u64,
    pub max_poll_interval_ms: u64,
    pub queue_kbytes: u64,
    pub limits: Limits,
    pub commit_interval: Duration,
    pub revoke_drain_timeout: Duration,
    /// How long the group may stay out of a steady state before the consumer is replaced.
    pub group_stall_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("kafka consumer: {0}")]
    Kafka(#[from] KafkaError),
    #[error("could not start the consumer thread: {0}")]
    Thread(std::io::Error),
}

/// What the consumer thread reports when it ends.
#[derive(Debug, Default)]
pub struct ConsumerReport {
    /// Partitions whose fetched records were not all made durable: `(partition, from, to)`,
    /// the offsets a restart will read again.
    pub abandoned: Vec<(TopicPartition, i64, i64)>,
}

/// Mutable state shared by the poll loop and the rebalance callbacks (both on the consumer
/// thread; the mutex only satisfies rdkafka's `Sync` bound and is never contended).
struct State {
    batcher: Batcher,
    watermarks: Watermarks,
    /// Senders to the workers' bounded queues. Cleared at shutdown: that closes the queues.
    workers: Vec<Sender<Batch>>,
    /// Acks from workers. Disconnected once every worker has exited.
    acks: Receiver<Ack>,
    /// Batches cut but not yet accepted by their worker's full queue, per partition.
    pending: HashMap<TopicPartition, VecDeque<Batch>>,
    /// Owned partitions; cancelling a token tells workers to give up that partition's batches.
    assigned: HashMap<TopicPartition, CancellationToken>,
    paused: HashSet<TopicPartition>,
    /// Owned partitions that must not be read, and why: their offsets went back below what
    /// PostgreSQL holds (a topic deleted and recreated under the same name). Reading them would
    /// have `ON CONFLICT DO NOTHING` swallow the new records, so they stay paused until an
    /// operator clears the stored watermark and the partition is assigned again.
    held: HashMap<TopicPartition, String>,
    /// One past the last offset read, per partition.
    fetched: HashMap<TopicPartition, i64>,
    /// Set when shutting down: rebalances then no longer wait for in-flight batches.
    closing: bool,
    /// Where held partitions are reported.
    metrics: Arc<Metrics>,
    workers_gone: bool,
}

/// The rdkafka context: rebalance callbacks and log routing.
struct Bridge {
    /// Shared with the replacement when a stalled consumer is replaced (see `replace`).
    state: Arc<Mutex<State>>,
    /// Set when this consumer was replaced: its callbacks then leave `state` alone and only
    /// let librdkafka finish closing it.
    retired: AtomicBool,
    /// Group state from librdkafka's statistics; read by the poll loop.
    watch: Mutex<GroupWatch>,
    settings: ConsumerSettings,
    offsets: Arc<dyn OffsetStore>,
    runtime: tokio::runtime::Handle,
    shutdown: Shutdown,
    metrics: Arc<Metrics>,
}

type Kafka = BaseConsumer<Bridge>;

/// Creates the consumer and starts its thread.
pub fn spawn(
    settings: ConsumerSettings,
    offsets: Arc<dyn OffsetStore>,
    workers: Vec<Sender<Batch>>,
    acks: Receiver<Ack>,
    shutdown: Shutdown,
    metrics: Arc<Metrics>,
) -> Result<std::thread::JoinHandle<ConsumerReport>, ConsumerError> {
    let state = State {
        batcher: Batcher::new(settings.limits),
        watermarks: Watermarks::default(),
        workers,
        acks,
        pending: HashMap::new(),
        assigned: HashMap::new(),
        paused: HashSet::new(),
        held: HashMap::new(),
        fetched: HashMap::new(),
        closing: false,
        metrics: Arc::clone(&metrics),
        workers_gone: false,
    };
    let bridge = Bridge {
        state: Arc::new(Mutex::new(state)),
        retired: AtomicBool::new(false),
        watch: Mutex::new(GroupWatch::new(
            settings.group_stall_timeout,
            Instant::now(),
        )),
        settings,
        offsets,
        runtime: tokio::runtime::Handle::current(),
        shutdown,
        metrics,
    };
    let consumer = connect(bridge)?;
    std::thread::Builder::new()
        .name("kafka-consumer".into())
        .spawn(move || run(consumer))
        .map_err(ConsumerError::Thread)
}

/// Creates an rdkafka consumer around `bridge` and subscribes it.
fn connect(bridge: Bridge) -> Result<Kafka, KafkaError> {
    let settings = bridge.settings.clone();
    let consumer: Kafka = ClientConfig::new()
        .set("bootstrap.servers", &settings.brokers)
        .set("group.id", &settings.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set(
            "session.timeout.ms",
            settings.session_timeout_ms.to_string(),
        )
        .set(
            "heartbeat.interval.ms",
            (settings.session_timeout_ms / 3).max(100).to_string(),
        )
        .set(
            "max.poll.interval.ms",
            settings.max_poll_interval_ms.to_string(),
        )
        .set(
            "queued.max.messages.kbytes",
            settings.queue_kbytes.to_string(),
        )
        .set("fetch.max.bytes", "52428800")
        .set("statistics.interval.ms", "5000")
        .set("client.id", "log-processor")
        .set_log_level(RDKafkaLogLevel::Warning)
        .create_with_context(bridge)?;
    let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    Ok(consumer)
}

/// How often the periodic commit sends every durable watermark, not only those that moved
/// (see `State::commit`): the bound on how long a failed asynchronous commit stays unrepaired.
const FULL_COMMIT_INTERVAL: Duration = Duration::from_secs(10);

fn run(mut consumer: Kafka) -> ConsumerReport {
    let commit_interval = consumer.context().settings.commit_interval;
    let mut next_commit = Instant::now() + commit_interval;
    let mut next_full_commit = Instant::now() + FULL_COMMIT_INTERVAL;
    let mut poll_errors = 0u64;
    while !consumer.context().shutdown.drain.is_cancelled() {
        let bridge = consumer.context();
        let now = Instant::now();
        let wait = {
            let mut st = bridge.lock();
            st.drain_acks(&bridge.metrics);
            for (tp, records) in st.batcher.expired(now) {
                st.enqueue(tp, records);
            }
            st.dispatch();
            st.apply_pause(&consumer);
            if now >= next_commit {
                let all = now >= next_full_commit;
                if all {
                    next_full_commit = now + FULL_COMMIT_INTERVAL;
                }
                st.commit(&consumer, CommitMode::Async, all, None, &bridge.metrics);
                next_commit = now + commit_interval;
            }
            st.batcher
                .next_expiry()
                .map_or(Duration::from_millis(50), |t| {
                    t.saturating_duration_since(now)
                })
                .min(Duration::from_millis(50))
        };
        match consumer.poll(wait) {
            Some(Ok(m)) => {
                let tp = TopicPartition::new(m.topic(), m.partition());
                let record = RawRecord {
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().map(<[u8]>::to_vec),
                    kafka_timestamp_ms: m.timestamp().to_millis(),
                };
                drop(m);
                bridge.metrics.consumed.fetch_add(1, Relaxed);
                let mut st = bridge.lock();
                if st.assigned.contains_key(&tp) && !st.held.contains_key(&tp) {
                    st.fetched.insert(tp.clone(), record.offset + 1);
                    for full in st.batcher.push(&tp, record, Instant::now()) {
                        st.enqueue(tp.clone(), full);
                    }
                }
            }
            Some(Err(e)) => {
                poll_errors += 1;
                // Broker outages produce a stream of these; one line in a hundred is enough.
                if poll_errors % 100 == 1 {
                    tracing::warn!(error = %e, count = poll_errors, "kafka poll error");
                }
            }
            None => {}
        }
        let stalled = bridge
            .watch()
            .stalled(Instant::now())
            .map(|(s, d)| (s.to_owned(), d));
        if let Some((why, stalled_for)) = stalled {
            consumer = replace(consumer, &why, stalled_for);
        }
    }
    close(consumer)
}

/// Replaces a stuck consumer (group membership not steady, or no broker known; see
/// `group_watch`) by a new one that bootstraps and joins afresh.
/// Its partitions are handled as lost: batches in flight are given up, nothing more is
/// committed for them, and whoever gets them next starts from the durable watermark.
fn replace(old: Kafka, why: &str, stalled_for: Duration) -> Kafka {
    let bridge = old.context();
    tracing::warn!(
        why,
        stalled_s = stalled_for.as_secs(),
        "the consumer is stuck; replacing the consumer"
    );
    let new = match connect(bridge.successor()) {
        Ok(new) => new,
        Err(e) => {
            tracing::error!(error = %e, "could not create a replacement consumer; keeping the old one");
            bridge.watch().progress(Instant::now()); // try again one stall timeout later
            return old;
        }
    };
    bridge.retired.store(true, Relaxed);
    {
        let mut st = bridge.lock();
        let owned: Vec<_> = st.assigned.keys().cloned().collect();
        st.forget(&owned);
    }
    bridge.metrics.consumer_replacements.fetch_add(1, Relaxed);
    // Closing waits for the group handler, which is what is stuck: close it on the side and
    // leave that thread behind if it never finishes.
    let closer = std::thread::Builder::new()
        .name("kafka-retired".into())
        .spawn(move || drop(old));
    if let Err(e) = closer {
        tracing::error!(error = %e, "could not start a thread to close the replaced consumer");
    }
    new
}

/// The consumer's part of the shutdown sequence; see docs/ARCHITECTURE.md.
fn close(consumer: Kafka) -> ConsumerReport {
    let bridge = consumer.context();
    let shutdown = bridge.shutdown.clone();
    {
        let mut st = bridge.lock();
        st.closing = true;
        let all: Vec<_> = st.assigned.keys().cloned().collect();
        pause(&consumer, &all);
        // What was read is handed out as final batches; workers decide, against the deadline,
        // whether each can still finish. Nothing new is fetched.
        for tp in st.batcher.partitions() {
            if let Some(records) = st.batcher.take(&tp) {
                st.enqueue(tp, records);
            }
        }
    }
    shutdown.phase("fetching stopped");

    // Feed the final batches, close the queues, and wait for the last worker to exit.
    let mut abort_seen: Option<Instant> = None;
    loop {
        {
            let mut st = bridge.lock();
            st.drain_acks(&bridge.metrics);
            if shutdown.abort.is_cancelled() {
                st.pending.clear();
            }
            st.dispatch();
            if st.pending.is_empty() {
                st.workers.clear(); // closes the queues: workers exit once they are empty
            }
            if st.workers_gone {
                break;
            }
        }
        if shutdown.abort.is_cancelled() {
            let seen = *abort_seen.get_or_insert_with(Instant::now);
            if seen.elapsed() > Duration::from_secs(1) {
                tracing::warn!(
                    "workers did not stop within 1 s of the abort; committing the durable watermark anyway"
                );
                break;
            }
        }
        // Keep serving the group (heartbeats, rebalances) while waiting; partitions are paused
        // and anything still prefetched is not consumed.
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(20)) {
            drop(m);
        }
    }

    let report = {
        let mut st = bridge.lock();
        let timeout = shutdown
            .hard_deadline()
            .map(|d| d.saturating_duration_since(Instant::now()));
        st.commit(&consumer, CommitMode::Sync, true, timeout, &bridge.metrics);
        st.abandoned()
    };
    shutdown.phase("offsets committed");
    for (tp, from, to) in &report.abandoned {
        tracing::warn!(partition = %tp, from, to, "abandoned offsets [from, to): not committed, a restart reads them again");
    }
    consumer.unsubscribe();
    drop(consumer); // closes the consumer: leaves the group so partitions move at once
    shutdown.phase("group left");
    report
}

impl Bridge {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn watch(&self) -> std::sync::MutexGuard<'_, GroupWatch> {
        self.watch.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A context for a replacement consumer: same state and collaborators, fresh watch.
    fn successor(&self) -> Bridge {
        Bridge {
            state: Arc::clone(&self.state),
            retired: AtomicBool::new(false),
            watch: Mutex::new(GroupWatch::new(
                self.settings.group_stall_timeout,
                Instant::now(),
            )),
            settings: self.settings.clone(),
            offsets: Arc::clone(&self.offsets),
            runtime: self.runtime.clone(),
            shutdown: self.shutdown.clone(),
            metrics: Arc::clone(&self.metrics),
        }
    }

    fn on_assign(&self, consumer: &Kafka, tpl: &TopicPartitionList) {
        self.metrics.rebalances.fetch_add(1, Relaxed);
        self.watch().progress(Instant::now());
        let tps = partitions_of(tpl);
        let mut start = TopicPartitionList::new();
        // Partitions started at a known offset (committed to Kafka even if nothing follows),
        // and partitions that must not be read.
        let mut started = Vec::new();
        let mut held = Vec::new();
        if !tps.is_empty() {
            let stored = self.stored_offsets(&tps);
            let committed = self.committed_offsets(consumer, &tps);
            for tp in &tps {
                let kafka = committed.as_ref().map(|c| c.get(tp).copied());
                let offset = match start_offset(stored.get(tp).copied(), kafka) {
                    Start::Stored(pg) => {
                        if let Some(end) = end_offset(consumer, tp).filter(|&end| end < pg) {
                            held.push((tp.clone(), format!(
                                "topic end offset {end} is below the stored watermark {pg}: was the topic \
                                 deleted and recreated? Delete this partition's row in consumer_offsets, then restart"
                            )));
                        } else {
                            started.push((tp.clone(), pg));
                        }
                        Offset::Offset(pg)
                    }
                    Start::Committed(k) => {
                        started.push((tp.clone(), k));
                        Offset::Offset(k)
                    }
                    Start::Beginning => Offset::Beginning,
                    Start::AskKafka => Offset::Invalid,
                };
                let _ = start.add_partition_offset(&tp.topic, tp.partition, offset);
            }
            tracing::info!(partitions = ?tps.iter().map(ToString::to_string).collect::<Vec<_>>(), postgres = ?stored.values().collect::<Vec<_>>(), "partitions assigned");
        }
        let result = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_assign(&start),
            _ => consumer.assign(&start),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "assign failed");
        }
        let mut st = self.lock();
        for tp in &tps {
            st.assigned.insert(tp.clone(), CancellationToken::new());
        }
        for (tp, offset) in started {
            st.watermarks.get_mut(&tp).start_at(offset);
        }
        for (tp, reason) in held {
            tracing::error!(partition = %tp, "{reason}");
            st.hold(tp, reason);
        }
        if st.closing {
            pause(consumer, &tps);
        } else {
            st.apply_pause(consumer);
        }
        drop(st);
        self.metrics.set_joined();
    }

    fn on_revoke(&self, consumer: &Kafka, tpl: &TopicPartitionList) {
        self.metrics.rebalances.fetch_add(1, Relaxed);
        self.watch().progress(Instant::now());
        let tps = partitions_of(tpl);
        let lost = consumer.assignment_lost();
        crate::failpoint::hit_blocking("in_revoke");
        let mut st = self.lock();
        st.discard(&tps);
        if !lost && !st.closing {
            // Let in-flight batches of these partitions finish, within a bound below the
            // session timeout (and before the shutdown abort, if one is coming).
            let mut until = Instant::now() + self.settings.revoke_drain_timeout;
            if let Some(at) = self.shutdown.abort_at() {
                until = until.min(at);
            }
            while tps
                .iter()
                .any(|tp| st.watermarks.get(tp).is_some_and(|p| p.in_flight() > 0))
                && Instant::now() < until
            {
                st.wait_ack(Duration::from_millis(20), &self.metrics);
            }
        }
        for tp in &tps {
            if let Some(token) = st.assigned.get(tp) {
                token.cancel(); // whatever is still queued or running for it is given up
            }
        }
        if !lost {
            // Still owned during the callback: the last moment these partitions may be committed.
            st.commit(
                consumer,
                CommitMode::Sync,
                true,
                Some(Duration::from_secs(5)),
                &self.metrics,
            );
        }
        st.forget(&tps);
        drop(st);
        if lost && crate::failpoint::skips("lost_unassign") {
            return;
        }
        let result = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_unassign(tpl),
            _ => consumer.unassign(),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "unassign failed");
        }
        tracing::info!(partitions = ?tps.iter().map(ToString::to_string).collect::<Vec<_>>(), lost, "partitions revoked");
    }

    /// PostgreSQL's stored next offsets; on failure the partitions start from Kafka's
    /// committed offsets, which is safe (replays are idempotent), only slower.
    fn stored_offsets(&self, tps: &[TopicPartition]) -> HashMap<TopicPartition, i64> {
        // The timer must be created inside the runtime: this thread is not one of its workers.
        let load =
            async { tokio::time::timeout(Duration::from_secs(5), self.offsets.load(tps)).await };
        match self.runtime.block_on(load) {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not read stored offsets; starting from Kafka's committed offsets");
                HashMap::new()
            }
            Err(_) => {
                tracing::warn!(
                    "reading stored offsets timed out; starting from Kafka's committed offsets"
                );
                HashMap::new()
            }
        }
    }

    /// Kafka's committed offsets; `None` when they could not be read.
    fn committed_offsets(
        &self,
        consumer: &Kafka,
        tps: &[TopicPartition],
    ) -> Option<HashMap<TopicPartition, i64>> {
        let mut tpl = TopicPartitionList::new();
        for tp in tps {
            tpl.add_partition(&tp.topic, tp.partition);
        }
        match consumer.committed_offsets(tpl, Duration::from_secs(5)) {
            Ok(list) => Some(
                list.elements()
                    .iter()
                    .filter_map(|e| match e.offset() {
                        Offset::Offset(o) => {
                            Some((TopicPartition::new(e.topic(), e.partition()), o))
                        }
                        _ => None,
                    })
                    .collect(),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "could not read committed offsets");
                None
            }
        }
    }
}

impl State {
    /// Drops records read but not yet handed to a worker.
    fn discard(&mut self, tps: &[TopicPartition]) {
        for tp in tps {
            self.batcher.discard(tp);
            self.pending.remove(tp);
        }
    }

    /// Stops owning `tps`: queued and running batches are given up, progress is dropped.
    fn forget(&mut self, tps: &[TopicPartition]) {
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
    fn enqueue(&mut self, tp: TopicPartition, records: Vec<RawRecord>) {
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
    fn hold(&mut self, tp: TopicPartition, reason: String) {
        self.batcher.discard(&tp);
        self.pending.remove(&tp);
        self.metrics.set_stalled(&tp, &reason);
        self.held.insert(tp, reason);
    }

    /// Moves queued batches into the workers' bounded channels while they have room.
    fn dispatch(&mut self) {
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
    fn apply_pause(&mut self, consumer: &Kafka) {
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
            let mut tpl = TopicPartitionList::new();
            for tp in &to_resume {
                tpl.add_partition(&tp.topic, tp.partition);
            }
            if let Err(e) = consumer.resume(&tpl) {
                tracing::warn!(error = %e, "resume failed");
            }
        }
        self.paused = want;
    }

    /// Applies every ack already received.
    fn drain_acks(&mut self, metrics: &Metrics) {
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

    fn wait_ack(&mut self, timeout: Duration, metrics: &Metrics) {
        match self.acks.recv_timeout(timeout) {
            Ok(ack) => self.apply(ack, metrics),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                self.workers_gone = true;
                std::thread::sleep(timeout);
            }
        }
    }

    fn apply(&mut self, ack: Ack, metrics: &Metrics) {
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

    /// Commits the watermarks of owned partitions: those that moved, or with `all` every
    /// durable one. `timeout` bounds a synchronous commit.
    ///
    /// `all` is how a failed asynchronous commit gets repaired: librdkafka reports the result
    /// of a manual asynchronous commit to nobody (it only logs it), so a watermark whose commit
    /// failed counts as committed until the next `all` commit sends it again.
    fn commit(
        &mut self,
        consumer: &Kafka,
        mode: CommitMode,
        all: bool,
        timeout: Option<Duration>,
        metrics: &Metrics,
    ) {
        let moved: Vec<_> = if all {
            self.watermarks.durable_all()
        } else {
            self.watermarks.to_commit().into_iter().collect()
        }
        .into_iter()
        .filter(|(tp, _)| self.assigned.contains_key(tp))
        .collect();
        if moved.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (tp, offset) in &moved {
            let _ = tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*offset));
        }
        if timeout.is_some_and(|t| t.is_zero()) {
            tracing::warn!(
                "no time left for the final offset commit; PostgreSQL's watermark stands in for it"
            );
            return;
        }
        crate::failpoint::hit_blocking("before_kafka_commit");
        if !all && crate::failpoint::skips("lost_async_commit") {
            // As if librdkafka had sent it and the broker refused it, unseen by us.
            for (tp, offset) in moved {
                self.watermarks.get_mut(&tp).mark_committed(offset);
            }
            return;
        }
        match consumer.commit(&tpl, mode) {
            Ok(()) => {
                metrics.commits.fetch_add(1, Relaxed);
                for (tp, offset) in moved {
                    self.watermarks.get_mut(&tp).mark_committed(offset);
                }
            }
            Err(e) => {
                metrics.commit_errors.fetch_add(1, Relaxed);
                tracing::warn!(error = %e, "offset commit failed; it is retried at the next interval");
            }
        }
    }

    /// Offsets read but not durable, per owned partition.
    fn abandoned(&self) -> ConsumerReport {
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

/// Where an assigned partition starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// PostgreSQL's watermark: written with the rows, so it is the truth. Kafka's committed
    /// offset only trails it; one ahead of it (PostgreSQL restored from a backup) would skip
    /// records PostgreSQL lacks.
    Stored(i64),
    /// No watermark stored (a new schema): Kafka's committed offset.
    Committed(i64),
    /// Nothing stored or committed: `auto.offset.reset` (earliest).
    Beginning,
    /// Nothing stored and Kafka's committed offsets unknown: librdkafka fetches them.
    AskKafka,
}

/// The start policy. `committed` is `None` when Kafka's committed offsets could not be read,
/// `Some(None)` when the group has none for the partition.
pub fn start_offset(stored: Option<i64>, committed: Option<Option<i64>>) -> Start {
    match (stored, committed) {
        (Some(pg), _) => Start::Stored(pg),
        (None, Some(Some(k))) => Start::Committed(k),
        (None, Some(None)) => Start::Beginning,
        (None, None) => Start::AskKafka,
    }
}

/// The partition's end offset (high watermark), if the broker answers within 5 s.
fn end_offset(consumer: &Kafka, tp: &TopicPartition) -> Option<i64> {
    match consumer.fetch_watermarks(&tp.topic, tp.partition, Duration::from_secs(5)) {
        Ok((_, high)) => Some(high),
        Err(e) => {
            tracing::warn!(partition = %tp, error = %e, "could not read the end offset");
            None
        }
    }
}

/// The partitions of an rdkafka list as plain values: nothing borrowed from librdkafka is kept.
fn partitions_of(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| TopicPartition::new(e.topic(), e.partition()))
        .collect()
}

fn pause(consumer: &Kafka, tps: &[TopicPartition]) {
    let mut tpl = TopicPartitionList::new();
    for tp in tps {
        tpl.add_partition(&tp.topic, tp.partition);
    }
    if let Err(e) = consumer.pause(&tpl) {
        tracing::warn!(error = %e, "pause failed");
    }
}

/// The worker that owns a partition: fixed, so a partition's batches are written in order.
pub fn route(tp: &TopicPartition, workers: usize) -> usize {
    let mut h = DefaultHasher::new();
    tp.topic.hash(&mut h);
    ((h.finish() as usize).wrapping_add(tp.partition as usize)) % workers
}

impl ClientContext for Bridge {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", fac, "{message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{message}"),
            _ => tracing::debug!(target: "librdkafka", fac, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", error = %error, "{reason}");
    }

    fn stats(&self, statistics: Statistics) {
        if self.retired.load(Relaxed) {
            return;
        }
        {
            let mut watch = self.watch();
            let now = Instant::now();
            watch.observe_brokers(crate::group_watch::known_brokers(&statistics), now);
            if let Some(group) = &statistics.cgrp {
                if let Some(state) = watch.observe(&group.state, &group.join_state, now) {
                    // Rare (joins, rebalances, outages) and the first thing to read when a
                    // consumer stops receiving records.
                    tracing::info!(group_state = state, "consumer group state changed");
                }
            }
        }
        let mut lag = self.metrics.lag.lock().unwrap_or_else(|p| p.into_inner());
        lag.clear();
        for (topic, t) in &statistics.topics {
            for (&partition, p) in &t.partitions {
                if partition >= 0 && p.consumer_lag >= 0 {
                    lag.insert(
                        TopicPartition::new(topic.as_str(), partition),
                        p.consumer_lag,
                    );
                }
            }
        }
    }
}

impl ConsumerContext for Bridge {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        if self.retired.load(Relaxed) {
            // Being closed after a replacement: the state belongs to the successor.
            if let Err(e) = consumer.unassign() {
                tracing::debug!(error = %e, "unassign of a replaced consumer failed");
            }
            return;
        }
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.on_assign(consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.on_revoke(consumer, tpl),
            other => {
                tracing::error!(error = ?other, "rebalance error; giving up the assignment");
                let all = consumer.assignment().map(|a| {
                    a.elements()
                        .iter()
                        .map(|e| (e.topic().to_string(), e.partition()))
                        .collect::<Vec<_>>()
                });
                let mut tpl = TopicPartitionList::new();
                for (t, p) in all.unwrap_or_default() {
                    tpl.add_partition(&t, p);
                }
                self.on_revoke(consumer, &tpl);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_watermark_wins_whenever_stored() {
        assert_eq!(start_offset(Some(10), Some(Some(5))), Start::Stored(10));
        // Kafka ahead of PostgreSQL (PostgreSQL restored): re-read from PostgreSQL's.
        assert_eq!(start_offset(Some(10), Some(Some(50))), Start::Stored(10));
        assert_eq!(start_offset(Some(10), None), Start::Stored(10));
        assert_eq!(start_offset(None, Some(Some(7))), Start::Committed(7));
        assert_eq!(start_offset(None, Some(None)), Start::Beginning);
        assert_eq!(start_offset(None, None), Start::AskKafka);
    }

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
