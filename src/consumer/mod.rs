//! The Kafka side: one thread owns the rdkafka consumer, cuts records into per-partition
//! batches, hands them to workers through bounded channels, and commits watermarks.
//!
//! Everything that touches the consumer (polling, rebalance callbacks, pause/resume, commits)
//! runs on this one thread, so a commit can never race a revocation: offsets are only ever
//! committed for partitions this consumer owns at that moment. The thread never runs on the
//! async runtime, so its blocking calls cannot stall a worker.

mod budget;
mod client;
mod close;
mod commit;
mod fetch_watch;
mod identity;
mod rebalance;
pub mod retention;
mod rules;
mod start;
mod state;

pub use identity::identities;
pub use start::{NoWatermark, Start, start_offset};

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use tokio::sync::mpsc::Sender;

use crate::batcher::Limits;
use crate::group_watch::GroupWatch;
use crate::identity::Binding;
use crate::metrics::Metrics;
use crate::model::{Ack, Batch, RawRecord, TopicPartition};
use crate::shutdown::Shutdown;

/// A future of the consumer's stores.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, String>> + Send + 'a>>;

/// What the consumer reads from (and records in) PostgreSQL: where a partition should start
/// (the durable next offsets kept next to the data), and which incarnation of a topic the
/// stored names hold (`crate::identity`).
pub trait OffsetStore: Send + Sync + 'static {
    /// The stored next offsets of these partitions, as stored (`Batch::stored`).
    fn load<'a>(
        &'a self,
        tps: &'a [TopicPartition],
    ) -> StoreFuture<'a, HashMap<TopicPartition, i64>>;
    /// The topic identities bound to these names, as Kafka topics or stored names.
    fn bindings<'a>(&'a self, names: &'a [String]) -> StoreFuture<'a, Vec<Binding>>;
    /// Records a binding; returns the one stored for its identity (this one or an earlier).
    fn bind(&self, binding: Binding) -> StoreFuture<'_, Binding>;
}

/// Settings of the Kafka consumer.
#[derive(Clone, Debug)]
pub struct ConsumerSettings {
    pub brokers: String,
    pub group_id: String,
    /// `LP_TOPICS` as given: exact names and `^` patterns, which librdkafka matches.
    pub topics: Vec<String>,
    /// librdkafka's `topic.metadata.refresh.interval.ms`: how soon a new topic matching a
    /// pattern (or a new partition) is seen.
    pub topic_refresh: Duration,
    pub session_timeout: Duration,
    pub max_poll_interval: Duration,
    pub queue_kbytes: u64,
    /// librdkafka's `fetch.max.bytes` and `receive.message.max.bytes`.
    pub fetch_max_bytes: usize,
    pub receive_max_bytes: usize,
    pub limits: Limits,
    /// Bound on the bytes of records held in batches, all partitions together.
    pub memory_budget_bytes: usize,
    pub commit_interval: Duration,
    pub revoke_drain_timeout: Duration,
    /// How long the group may stay out of a steady state before the consumer is replaced.
    pub group_stall_timeout: Duration,
    /// Security and pass-through librdkafka properties, set after the daemon's own.
    pub client_properties: ClientProperties,
    /// Where a partition without a stored watermark starts.
    pub start_without_watermark: NoWatermark,
}

/// librdkafka properties from the configuration. They may hold credentials (`sasl.password`),
/// so `Debug` shows only their names.
#[derive(Clone, Default)]
pub struct ClientProperties(pub Vec<(String, String)>);

impl std::fmt::Debug for ClientProperties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(k, _)| k))
            .finish()
    }
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

use client::{Bridge, connect, replace};
use close::close;
use state::State;

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
    let core = rules::Core::new(
        settings.limits,
        workers.len(),
        settings.memory_budget_bytes,
        Arc::clone(&metrics),
    );
    let state = State::new(core, workers, acks, Instant::now() + IDENTITY_RECHECK);
    let bridge = Bridge {
        state: Arc::new(Mutex::new(state)),
        retired: AtomicBool::new(false),
        watch: Mutex::new(GroupWatch::new(
            settings.group_stall_timeout,
            Instant::now(),
        )),
        fetch_watch: Mutex::new(fetch_watch::FetchWatch::new(fetch_watch::STALL_AFTER)),
        receive_error: Mutex::new(None),
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

/// How often the periodic commit sends every durable watermark, not only those that moved
/// (see `State::commit`): the bound on how long a failed asynchronous commit stays unrepaired.
const FULL_COMMIT_INTERVAL: Duration = Duration::from_secs(10);

/// How often the identities of the assigned topics are checked again (see `crate::identity`):
/// the bound on how long a topic recreated under the running daemon is read under the old
/// incarnation's name, and on how long an adopted one waits to be read.
pub const IDENTITY_RECHECK: Duration = Duration::from_secs(10);

/// While records stream in, the loop's bookkeeping (acks, linger expiry, dispatch, pause and
/// resume, commits, the group watch) runs this often rather than once per record. A poll that
/// returns nothing, a record that completes a batch and a used-up memory budget bring it
/// forward, so batches are never held back and the budget is enforced at once.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(5);

fn run(mut consumer: Kafka) -> ConsumerReport {
    let commit_interval = consumer.context().settings.commit_interval;
    let mut next_commit = Instant::now() + commit_interval;
    let mut next_full_commit = Instant::now() + FULL_COMMIT_INTERVAL;
    let mut poll_errors = 0u64;
    let mut topics = TopicNames::default();
    let mut next_housekeeping = Instant::now();
    let mut due = true;
    while !consumer.context().shutdown.drain.is_cancelled() {
        let now = Instant::now();
        let wait = if due || now >= next_housekeeping {
            due = false;
            next_housekeeping = now + HOUSEKEEPING_INTERVAL;
            let replacement = housekeeping(
                &consumer,
                now,
                &mut next_commit,
                commit_interval,
                &mut next_full_commit,
            );
            if let Some((why, stalled_for)) = replacement {
                consumer = replace(consumer, &why, stalled_for);
                continue;
            }
            let st = consumer.context().lock();
            st.core
                .next_expiry()
                .map_or(Duration::from_millis(50), |t| {
                    t.saturating_duration_since(now)
                })
                .min(Duration::from_millis(50))
        } else {
            next_housekeeping - now
        };
        let bridge = consumer.context();
        crate::failpoint::hit_blocking("consumer_wedge");
        match consumer.poll(wait) {
            Some(Ok(m)) => {
                let tp = topics.partition(m.topic(), m.partition());
                let record = RawRecord {
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().map(<[u8]>::to_vec),
                    kafka_timestamp_ms: m.timestamp().to_millis(),
                };
                drop(m);
                bridge.metrics.consumed.fetch_add(1, Relaxed);
                let log_start = |tp: &TopicPartition| start::log_start(&consumer, tp);
                due |= (bridge.lock().core).record(&tp, record, Instant::now(), &log_start);
            }
            Some(Err(e)) => {
                poll_errors += 1;
                // Broker outages produce a stream of these; one line in a hundred is enough.
                if poll_errors % 100 == 1 {
                    tracing::warn!(error = %e, count = poll_errors, "kafka poll error");
                }
            }
            None => due = true,
        }
    }
    close(consumer)
}

/// The loop's bookkeeping (see `HOUSEKEEPING_INTERVAL`). Returns why and for how long the
/// consumer is stuck when the group watch or a failed start asks for a new one.
fn housekeeping(
    consumer: &Kafka,
    now: Instant,
    next_commit: &mut Instant,
    commit_interval: Duration,
    next_full_commit: &mut Instant,
) -> Option<(String, Duration)> {
    let bridge = consumer.context();
    bridge.metrics.consumer_beat();
    {
        let mut st = bridge.lock();
        st.drain_acks();
        let log_start = |tp: &TopicPartition| start::log_start(consumer, tp);
        st.core.expire(now, &log_start);
        st.dispatch();
        st.apply_pause(consumer);
        if now >= *next_commit {
            let all = now >= *next_full_commit;
            if all {
                *next_full_commit = now + FULL_COMMIT_INTERVAL;
            }
            st.account_passed_offsets(consumer);
            st.commit(consumer, all, &bridge.metrics);
            *next_commit = now + commit_interval;
        }
    }
    let recheck = {
        let mut st = bridge.lock();
        let due = now >= st.identity_check_at && st.core.phase() == rules::Phase::Running;
        if due {
            st.identity_check_at = now + IDENTITY_RECHECK;
        }
        due
    };
    if recheck {
        bridge.recheck_identities(consumer);
    }
    let stalled = bridge.watch().stalled(now).map(|(s, d)| (s.to_owned(), d));
    let rejoin = bridge.lock().core.take_rejoin(now);
    stalled.or_else(|| rejoin.map(|why| (why, Duration::ZERO)))
}

/// Topic names as shared strings, so a record's partition costs no allocation.
#[derive(Default)]
struct TopicNames(HashSet<Arc<str>>);

impl TopicNames {
    fn partition(&mut self, topic: &str, partition: i32) -> TopicPartition {
        let name = match self.0.get(topic) {
            Some(t) => Arc::clone(t),
            None => {
                let t: Arc<str> = topic.into();
                self.0.insert(Arc::clone(&t));
                t
            }
        };
        TopicPartition {
            topic: name,
            partition,
        }
    }
}
