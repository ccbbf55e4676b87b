//! Counters, histograms and health flags, exposed as Prometheus text by the HTTP endpoint
//! through `prometheus-client`. Plain atomics: the hot path pays one relaxed add per update;
//! a scrape takes a snapshot and lets the crate encode it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::model::{RejectStage, TopicPartition};
use crate::notify;

mod export;

const BUCKETS_MS: [f64; 12] = [
    1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];

const STAGES: [RejectStage; 3] = [RejectStage::Decode, RejectStage::Index, RejectStage::Store];

/// A latency histogram with fixed millisecond buckets.
#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; 13],
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let ms = d.as_secs_f64() * 1000.0;
        let i = BUCKETS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(BUCKETS_MS.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Relaxed);
    }
}

/// Everything the daemon reports. Shared by all tasks behind an `Arc`.
#[derive(Default)]
pub struct Metrics {
    pub consumed: AtomicU64,
    pub stored: AtomicU64,
    /// `stored` by the table of the mapping the rows went to: a label bounded by the mapping.
    stored_by_table: Mutex<BTreeMap<String, u64>>,
    pub dead_lettered: AtomicU64,
    /// Records parked by this daemon's batches, and parked records it released (`parking`).
    pub parked: AtomicU64,
    pub released: AtomicU64,
    /// The records parked now and the age of the oldest (s), as the release loop last read
    /// them from PostgreSQL. Not per destination: daily indices would make a label without
    /// bound; `status` and `parked list` name the destinations.
    parked_now: Mutex<(i64, f64)>,
    /// `dead_lettered` split by stage, in `STAGES` order.
    dead_letters_by_stage: [AtomicU64; 3],
    pub batches: AtomicU64,
    pub batches_abandoned: AtomicU64,
    pub retries_pg: AtomicU64,
    pub retries_es: AtomicU64,
    pub commits: AtomicU64,
    pub commit_errors: AtomicU64,
    pub rebalances: AtomicU64,
    /// Partitions started below where Kafka's committed offset says the group was: the
    /// database went back in time (or lost a partition's watermark), and they are read again.
    pub rewinds: AtomicU64,
    /// Offsets found without a record, by cause (`gaps::GapCause`: retention, no_record).
    gap_offsets: [AtomicU64; 2],
    pub consumer_replacements: AtomicU64,
    /// Divergences the sampled check (`audit::sample`) confirmed, by kind, and the offsets it
    /// checked.
    divergences: Mutex<BTreeMap<&'static str, u64>>,
    pub audited: AtomicU64,
    pub pg_latency: Histogram,
    pub es_latency: Histogram,
    pub batch_latency: Histogram,
    pub shutdown_ms: AtomicU64,
    /// Bytes of records held in batches now, and at most since start (`LP_MEMORY_BUDGET_MB`).
    pub batch_bytes: AtomicU64,
    pub batch_bytes_peak: AtomicU64,
    /// Consumer lag per partition, from librdkafka's statistics.
    pub lag: Mutex<BTreeMap<TopicPartition, i64>>,
    /// Partitions held where they are, with the reason: a store refusing work that is not any
    /// record's fault (set by workers), or a topic whose offsets went back (set by the
    /// consumer). Cleared when the partition moves again.
    stalled: Mutex<BTreeMap<TopicPartition, String>>,
    /// Partitions Kafka hands no record of although it holds some, at the offset they are
    /// stuck at (see `consumer::fetch_watch`).
    pub fetch_stalled: Mutex<BTreeMap<TopicPartition, i64>>,
    ready: AtomicBool,
    notified_ready: AtomicBool,
    /// When the consumer thread last went round its loop (ms since `born`); 0 before it started.
    consumer_beat_ms: AtomicU64,
    /// How long the consumer thread may go without a beat before liveness fails (ms; 0: never).
    liveness_bound_ms: AtomicU64,
    born: std::sync::OnceLock<std::time::Instant>,
}

impl Metrics {
    /// `n` rows stored in `table` (also counted in `stored` by the caller).
    pub fn stored_in(&self, table: &str, n: u64) {
        let mut by = self
            .stored_by_table
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match by.get_mut(table) {
            Some(c) => *c += n,
            None => {
                by.insert(table.to_string(), n);
            }
        }
    }

    /// `n` records dead-lettered at `stage` (also counted in `dead_lettered`).
    pub fn dead_lettered_at(&self, stage: RejectStage, n: u64) {
        self.dead_lettered.fetch_add(n, Relaxed);
        let i = match stage {
            RejectStage::Decode => 0,
            RejectStage::Index => 1,
            RejectStage::Store => 2,
        };
        debug_assert_eq!(STAGES[i], stage);
        self.dead_letters_by_stage[i].fetch_add(n, Relaxed);
    }

    /// `n` divergences of `kind` confirmed by the sampled check (0 makes the series exist).
    pub fn divergences_found(&self, kind: &'static str, n: u64) {
        let mut d = self.divergences.lock().unwrap_or_else(|p| p.into_inner());
        *d.entry(kind).or_default() += n;
    }

    /// Gaps found in a batch about to be written (see `gaps`).
    pub fn gaps_found(&self, gaps: &[crate::gaps::Gap]) {
        for gap in gaps {
            let i = usize::from(gap.cause == crate::gaps::GapCause::NoRecord);
            self.gap_offsets[i].fetch_add(gap.offsets() as u64, Relaxed);
        }
    }

    /// What `parked_records` holds now: records and the age of the oldest in seconds.
    pub fn set_parked(&self, records: i64, oldest_seconds: f64) {
        *self.parked_now.lock().unwrap_or_else(|p| p.into_inner()) = (records, oldest_seconds);
    }

    /// The consumer joined its group: ready for work (and tell systemd, once).
    pub fn set_joined(&self) {
        self.ready.store(true, Relaxed);
        if !self.notified_ready.swap(true, Relaxed) {
            notify::send("READY=1");
        }
    }

    /// Shutdown began: not ready any more.
    pub fn set_not_ready(&self) {
        self.ready.store(false, Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Relaxed)
    }

    fn now_ms(&self) -> u64 {
        self.born
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_millis() as u64
            + 1
    }

    /// The consumer thread is alive and polling.
    pub fn consumer_beat(&self) {
        self.consumer_beat_ms.store(self.now_ms(), Relaxed);
    }

    /// Liveness fails once the consumer thread has not beaten for `bound`.
    pub fn set_liveness_bound(&self, bound: Duration) {
        self.born.get_or_init(std::time::Instant::now);
        self.liveness_bound_ms
            .store(bound.as_millis() as u64, Relaxed);
    }

    /// `Err` with how long the consumer thread has been silent, when past the bound.
    pub fn liveness(&self) -> Result<(), Duration> {
        let (beat, bound) = (
            self.consumer_beat_ms.load(Relaxed),
            self.liveness_bound_ms.load(Relaxed),
        );
        let silent = self.now_ms().saturating_sub(beat);
        if beat == 0 || bound == 0 || silent <= bound {
            Ok(())
        } else {
            Err(Duration::from_millis(silent))
        }
    }

    /// Marks `tp` held for `reason`; logs the reason once per change.
    pub fn set_stalled(&self, tp: &TopicPartition, reason: &str) {
        let mut stalled = self.stalled.lock().unwrap_or_else(|p| p.into_inner());
        if stalled.get(tp).map(String::as_str) != Some(reason) {
            tracing::warn!(partition = %tp, reason, "partition held: nothing after this batch is stored until the store accepts it");
            stalled.insert(tp.clone(), reason.to_owned());
        }
    }

    /// `tp` moves again.
    pub fn clear_stalled(&self, tp: &TopicPartition) {
        let mut stalled = self.stalled.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(reason) = stalled.remove(tp) {
            tracing::info!(partition = %tp, was = %reason, "partition released");
        }
    }

    /// The held partitions and why.
    pub fn stalled(&self) -> BTreeMap<TopicPartition, String> {
        self.stalled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.stored.fetch_add(5, Relaxed);
        m.pg_latency.observe(Duration::from_millis(3));
        m.pg_latency.observe(Duration::from_secs(60));
        m.lag.lock().unwrap().insert(TopicPartition::new("t", 2), 9);
        m.dead_lettered_at(RejectStage::Index, 2);
        m.dead_lettered_at(RejectStage::Decode, 1);
        let text = m.render();
        assert!(text.contains("log_processor_records_stored_total 5\n"));
        assert!(text.contains("log_processor_records_dead_lettered_total 3\n"));
        assert!(text.contains("log_processor_dead_letters_total{stage=\"decode\"} 1\n"));
        assert!(text.contains("log_processor_dead_letters_total{stage=\"index\"} 2\n"));
        assert!(text.contains("log_processor_dead_letters_total{stage=\"store\"} 0\n"));
        assert!(text.contains(
            "log_processor_store_latency_seconds_bucket{store=\"postgresql\",le=\"0.005\"} 1\n"
        ));
        assert!(text.contains(
            "log_processor_store_latency_seconds_bucket{store=\"postgresql\",le=\"+Inf\"} 2\n"
        ));
        assert!(
            text.contains("log_processor_store_latency_seconds_count{store=\"postgresql\"} 2\n")
        );
        assert!(text.contains("log_processor_consumer_lag{topic=\"t\",partition=\"2\"} 9\n"));
        assert!(text.contains("log_processor_ready 0\n"));

        m.set_stalled(
            &TopicPartition::new("t", 1),
            "postgresql: permission \"denied\"\nx",
        );
        let text = m.render();
        assert!(text.contains(
            "log_processor_partition_stalled{topic=\"t\",partition=\"1\",reason=\"postgresql: permission \\\"denied\\\"\\nx\"} 1\n"
        ), "{text}");
        m.clear_stalled(&TopicPartition::new("t", 1));
        assert!(!m.render().contains("log_processor_partition_stalled{"));
    }
}
