//! The rdkafka client: creating and subscribing a consumer, its context (log routing,
//! statistics; the rebalance callback is in `rebalance.rs`), and replacing a stuck one.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;

use crate::group_watch::GroupWatch;
use crate::metrics::Metrics;
use crate::model::TopicPartition;
use crate::shutdown::Shutdown;

use super::fetch_watch::{FetchWatch, STALL_AFTER, Sample};
use super::{ConsumerSettings, Kafka, OffsetStore, State};

/// The rdkafka context: rebalance callbacks and log routing.
pub(super) struct Bridge {
    /// Shared with the replacement when a stalled consumer is replaced (see `replace`).
    pub(super) state: Arc<Mutex<State>>,
    /// Set when this consumer was replaced: its callbacks then leave `state` alone and only
    /// let librdkafka finish closing it.
    pub(super) retired: AtomicBool,
    /// Group state from librdkafka's statistics; read by the poll loop.
    pub(super) watch: Mutex<GroupWatch>,
    /// Positions from librdkafka's statistics, for partitions Kafka hands nothing of.
    pub(super) fetch_watch: Mutex<FetchWatch>,
    /// librdkafka's last complaint about a fetch response's size (`receive.message.max.bytes`).
    pub(super) receive_error: Mutex<Option<String>>,
    pub(super) settings: ConsumerSettings,
    pub(super) offsets: Arc<dyn OffsetStore>,
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) shutdown: Shutdown,
    pub(super) metrics: Arc<Metrics>,
}

/// librdkafka's `fetch.min.bytes` and `fetch.wait.max.ms` (see `connect`).
const FETCH_MIN_BYTES: &str = "65536";
const FETCH_WAIT_MAX_MS: &str = "50";

/// Creates an rdkafka consumer around `bridge` and subscribes it.
pub(super) fn connect(bridge: Bridge) -> Result<Kafka, KafkaError> {
    let settings = bridge.settings.clone();
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.brokers)
        .set("group.id", &settings.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set(
            "session.timeout.ms",
            settings.session_timeout.as_millis().to_string(),
        )
        .set(
            "heartbeat.interval.ms",
            heartbeat_interval_ms(settings.session_timeout.as_millis() as u64).to_string(),
        )
        .set(
            "max.poll.interval.ms",
            settings.max_poll_interval.as_millis().to_string(),
        )
        .set(
            "queued.max.messages.kbytes",
            settings.queue_kbytes.to_string(),
        )
        .set("fetch.max.bytes", settings.fetch_max_bytes.to_string())
        // A broker answers a fetch once 64 KiB wait or after 50 ms, not with every few records:
        // fewer wake-ups of the consumer for small responses, and a record waits at most 50 ms
        // more (README, "Freshness"). LP_KAFKA_OPTION_FETCH_MIN_BYTES / _FETCH_WAIT_MAX_MS
        // override both.
        .set("fetch.min.bytes", FETCH_MIN_BYTES)
        .set("fetch.wait.max.ms", FETCH_WAIT_MAX_MS)
        .set(
            "receive.message.max.bytes",
            settings.receive_max_bytes.to_string(),
        )
        .set(
            "topic.metadata.refresh.interval.ms",
            settings.topic_refresh.as_millis().to_string(),
        )
        .set("statistics.interval.ms", "5000")
        .set("client.id", "log-processor")
        .set_log_level(RDKafkaLogLevel::Warning);
    if settings.topics.iter().any(|t| crate::topics::is_pattern(t)) {
        // librdkafka would otherwise match patterns against internal topics too (it has no
        // `exclude.internal.topics`): `^.*` would read `__consumer_offsets`.
        config.set("topic.blacklist", crate::topics::INTERNAL_BLACKLIST);
    }
    for (key, value) in &settings.client_properties.0 {
        config.set(key, value);
    }
    let consumer: Kafka = config.create_with_context(bridge)?;
    let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    Ok(consumer)
}

/// The longest interval between two heartbeats of a member.
///
/// Members of a classic group learn that a rebalance began only from a heartbeat's answer, and
/// the broker holds every member's JoinGroup until all have rejoined: a replica that starts (or
/// stops while joining) waits for the slowest member's next heartbeat. A third of a 30 s session
/// would make that up to 10 s; a heartbeat every 500 ms costs the broker two small requests a
/// second per member.
pub(super) const HEARTBEAT_INTERVAL_MAX: Duration = Duration::from_millis(500);

/// `heartbeat.interval.ms`: a third of the session timeout (librdkafka's advice), at most
/// `HEARTBEAT_INTERVAL_MAX`.
fn heartbeat_interval_ms(session_timeout_ms: u64) -> u64 {
    (session_timeout_ms / 3).clamp(100, HEARTBEAT_INTERVAL_MAX.as_millis() as u64)
}

/// Replaces a stuck consumer (group membership not steady, or no broker known; see
/// `group_watch`) by a new one that bootstraps and joins afresh.
/// Its partitions are handled as lost: batches in flight are given up, nothing more is
/// committed for them, and whoever gets them next starts from the durable watermark.
pub(super) fn replace(old: Kafka, why: &str, stalled_for: Duration) -> Kafka {
    let bridge = old.context();
    tracing::warn!(
        why,
        stalled_s = stalled_for.as_secs(),
        "the consumer is stuck; replacing the consumer"
    );
    if CLOSING.load(Relaxed) >= MAX_CLOSING {
        // Each stuck close holds a thread and a librdkafka handle; past a few, only a fresh
        // process helps.
        tracing::error!(
            closing = MAX_CLOSING,
            "replaced consumers are still stuck closing; exiting (code 1) so the daemon is restarted"
        );
        std::process::exit(1);
    }
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
        let owned = st.core.owned();
        st.core.forget(&owned);
    }
    bridge.metrics.consumer_replacements.fetch_add(1, Relaxed);
    // Closing waits for the group handler, which is what is stuck: close it on the side and
    // leave that thread behind if it never finishes.
    CLOSING.fetch_add(1, Relaxed);
    let closer = std::thread::Builder::new()
        .name("kafka-retired".into())
        .spawn(move || {
            drop(old);
            CLOSING.fetch_sub(1, Relaxed);
        });
    if let Err(e) = closer {
        tracing::error!(error = %e, "could not start a thread to close the replaced consumer");
    }
    new
}

/// Replaced consumers whose close has not returned yet, and how many may be.
static CLOSING: AtomicUsize = AtomicUsize::new(0);
const MAX_CLOSING: usize = 3;

impl Bridge {
    /// Runs a store call on the runtime from the consumer thread, bounded by `bound`.
    pub(super) fn within<T>(
        &self,
        bound: Duration,
        call: super::StoreFuture<'_, T>,
    ) -> Result<T, String> {
        // The timer must be created inside the runtime: this thread is not one of its workers.
        let bounded = async { tokio::time::timeout(bound, call).await };
        self.runtime
            .block_on(bounded)
            .map_err(|_| format!("timed out after {} s", bound.as_secs()))?
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn watch(&self) -> std::sync::MutexGuard<'_, GroupWatch> {
        self.watch.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A context for a replacement consumer: same state and collaborators, fresh watch.
    pub(super) fn successor(&self) -> Bridge {
        Bridge {
            state: Arc::clone(&self.state),
            retired: AtomicBool::new(false),
            watch: Mutex::new(GroupWatch::new(
                self.settings.group_stall_timeout,
                Instant::now(),
            )),
            fetch_watch: Mutex::new(FetchWatch::new(STALL_AFTER)),
            receive_error: Mutex::new(None),
            settings: self.settings.clone(),
            offsets: Arc::clone(&self.offsets),
            runtime: self.runtime.clone(),
            shutdown: self.shutdown.clone(),
            metrics: Arc::clone(&self.metrics),
        }
    }
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
        if reason.contains("receive.message.max.bytes") {
            *self.receive_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.into());
        }
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
            if let Some(group) = &statistics.cgrp
                && let Some(state) = watch.observe(&group.state, &group.join_state, now)
            {
                // Rare (joins, rebalances, outages) and the first thing to read when a
                // consumer stops receiving records.
                tracing::info!(group_state = state, "consumer group state changed");
            }
        }
        let mut samples = Vec::new();
        {
            let st = self.lock();
            let mut lag = self.metrics.lag.lock().unwrap_or_else(|p| p.into_inner());
            lag.clear();
            for (topic, t) in &statistics.topics {
                for (&partition, p) in &t.partitions {
                    if partition < 0 {
                        continue; // librdkafka's internal UA partition
                    }
                    let tp = TopicPartition::new(topic.as_str(), partition);
                    if p.consumer_lag >= 0 {
                        lag.insert(tp.clone(), p.consumer_lag);
                    }
                    let fetching = st.core.fetching(&tp);
                    samples.push(Sample {
                        tp,
                        position: p.next_offset,
                        end: p.ls_offset,
                        fetching,
                    });
                }
            }
        }
        let changes = (self.fetch_watch.lock().unwrap_or_else(|p| p.into_inner()))
            .observe(&samples, Instant::now());
        if !changes.is_empty() {
            let error = self.receive_error.lock().unwrap_or_else(|p| p.into_inner());
            super::fetch_watch::report(
                changes,
                &self.metrics,
                self.settings.receive_max_bytes,
                error.as_deref(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn heartbeat_is_a_third_of_the_session_capped_so_rebalances_are_noticed_quickly() {
        assert_eq!(super::heartbeat_interval_ms(30_000), 500);
        assert_eq!(super::heartbeat_interval_ms(900), 300);
        assert_eq!(super::heartbeat_interval_ms(150), 100);
    }
}
