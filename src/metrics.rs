//! Counters, histograms and health flags, rendered as Prometheus text by the HTTP endpoint.
//! Plain atomics: the hot path pays one relaxed add per update.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::model::{RejectStage, TopicPartition};
use crate::notify;

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

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, b) in BUCKETS_MS.iter().enumerate() {
            cumulative += self.counts[i].load(Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}le=\"{}\"}} {cumulative}",
                b / 1000.0
            );
        }
        cumulative += self.counts[BUCKETS_MS.len()].load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(
            out,
            "{name}_sum{{{}}} {}",
            labels.trim_end_matches(','),
            self.sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "{name}_count{{{}}} {cumulative}",
            labels.trim_end_matches(',')
        );
    }
}

/// Everything the daemon reports. Shared by all tasks behind an `Arc`.
#[derive(Default)]
pub struct Metrics {
    pub consumed: AtomicU64,
    pub stored: AtomicU64,
    pub dead_lettered: AtomicU64,
    /// `dead_lettered` split by stage, in `STAGES` order.
    dead_letters_by_stage: [AtomicU64; 3],
    pub batches: AtomicU64,
    pub batches_abandoned: AtomicU64,
    pub retries_pg: AtomicU64,
    pub retries_es: AtomicU64,
    pub commits: AtomicU64,
    pub commit_errors: AtomicU64,
    pub rebalances: AtomicU64,
    pub consumer_replacements: AtomicU64,
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
    ready: AtomicBool,
    notified_ready: AtomicBool,
    /// When the consumer thread last went round its loop (ms since `born`); 0 before it started.
    consumer_beat_ms: AtomicU64,
    /// How long the consumer thread may go without a beat before liveness fails (ms; 0: never).
    liveness_bound_ms: AtomicU64,
    born: std::sync::OnceLock<std::time::Instant>,
}

impl Metrics {
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

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let counters = [
            (
                "records_consumed",
                "Records read from Kafka",
                &self.consumed,
            ),
            (
                "records_stored",
                "Records stored in both PostgreSQL and Elasticsearch",
                &self.stored,
            ),
            (
                "records_dead_lettered",
                "Records written to the dead-letter table",
                &self.dead_lettered,
            ),
            ("batches", "Batches made durable", &self.batches),
            (
                "batches_abandoned",
                "Batches given up (revocation or shutdown) without committing",
                &self.batches_abandoned,
            ),
            (
                "offset_commits",
                "Offset commits sent to Kafka",
                &self.commits,
            ),
            (
                "offset_commit_errors",
                "Offset commits Kafka refused",
                &self.commit_errors,
            ),
            (
                "rebalances",
                "Partition assignments and revocations",
                &self.rebalances,
            ),
            (
                "consumer_replacements",
                "Kafka consumers replaced because their group membership stalled",
                &self.consumer_replacements,
            ),
        ];
        for (name, help, c) in counters {
            let _ = writeln!(
                out,
                "# HELP log_processor_{name}_total {help}\n# TYPE log_processor_{name}_total counter"
            );
            let _ = writeln!(out, "log_processor_{name}_total {}", c.load(Relaxed));
        }
        let _ = writeln!(
            out,
            "# HELP log_processor_dead_letters_total Records dead-lettered, by stage\n# TYPE log_processor_dead_letters_total counter"
        );
        for (stage, c) in STAGES.iter().zip(&self.dead_letters_by_stage) {
            let _ = writeln!(
                out,
                "log_processor_dead_letters_total{{stage=\"{}\"}} {}",
                stage.as_str(),
                c.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP log_processor_retries_total Retried store operations\n# TYPE log_processor_retries_total counter"
        );
        let _ = writeln!(
            out,
            "log_processor_retries_total{{store=\"postgresql\"}} {}",
            self.retries_pg.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "log_processor_retries_total{{store=\"elasticsearch\"}} {}",
            self.retries_es.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP log_processor_store_latency_seconds Batch write latency per store\n# TYPE log_processor_store_latency_seconds histogram"
        );
        self.pg_latency.render(
            &mut out,
            "log_processor_store_latency_seconds",
            "store=\"postgresql\",",
        );
        self.es_latency.render(
            &mut out,
            "log_processor_store_latency_seconds",
            "store=\"elasticsearch\",",
        );
        let _ = writeln!(
            out,
            "# HELP log_processor_batch_latency_seconds Batch latency, decode to commit point\n# TYPE log_processor_batch_latency_seconds histogram"
        );
        self.batch_latency
            .render(&mut out, "log_processor_batch_latency_seconds", "");
        let _ = writeln!(
            out,
            "# HELP log_processor_consumer_lag Records behind the partition end\n# TYPE log_processor_consumer_lag gauge"
        );
        for (tp, lag) in self.lag.lock().unwrap().iter() {
            let _ = writeln!(
                out,
                "log_processor_consumer_lag{{topic=\"{}\",partition=\"{}\"}} {lag}",
                tp.topic, tp.partition
            );
        }
        let gauges = [
            (
                "batch_memory_bytes",
                "Bytes of records held in batches (bounded by LP_MEMORY_BUDGET_MB)",
                &self.batch_bytes,
            ),
            (
                "batch_memory_peak_bytes",
                "Largest batch_memory_bytes since start",
                &self.batch_bytes_peak,
            ),
        ];
        for (name, help, g) in gauges {
            let _ = writeln!(
                out,
                "# HELP log_processor_{name} {help}\n# TYPE log_processor_{name} gauge\nlog_processor_{name} {}",
                g.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP log_processor_partition_stalled 1 while a partition is held, with the reason\n# TYPE log_processor_partition_stalled gauge"
        );
        for (tp, reason) in self.stalled() {
            let _ = writeln!(
                out,
                "log_processor_partition_stalled{{topic=\"{}\",partition=\"{}\",reason=\"{}\"}} 1",
                tp.topic,
                tp.partition,
                label_value(&reason)
            );
        }
        let _ = writeln!(
            out,
            "# HELP log_processor_ready 1 when joined and not shutting down\n# TYPE log_processor_ready gauge"
        );
        let _ = writeln!(out, "log_processor_ready {}", u8::from(self.is_ready()));
        let _ = writeln!(
            out,
            "# HELP log_processor_shutdown_duration_seconds Signal-to-exit time of the last shutdown\n# TYPE log_processor_shutdown_duration_seconds gauge"
        );
        let _ = writeln!(
            out,
            "log_processor_shutdown_duration_seconds {}",
            self.shutdown_ms.load(Relaxed) as f64 / 1000.0
        );
        out
    }
}

/// A Prometheus label value: escaped, on one line, at most 200 characters.
fn label_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(220));
    for c in s.chars().take(200) {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
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
