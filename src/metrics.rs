//! Counters, histograms and health flags, exposed as Prometheus text by the HTTP endpoint
//! through `prometheus-client`. Plain atomics: the hot path pays one relaxed add per update;
//! a scrape takes a snapshot and lets the crate encode it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

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

    /// Sum, count and per-bucket counts, for the encoder.
    fn value(&self) -> Value {
        let counts: Vec<u64> = self.counts.iter().map(|c| c.load(Relaxed)).collect();
        let buckets = BUCKETS_MS
            .iter()
            .zip(&counts)
            .map(|(b, n)| (b / 1000.0, *n))
            .collect();
        Value::Histogram(
            self.sum_us.load(Relaxed) as f64 / 1e6,
            counts.iter().sum(),
            buckets,
        )
    }
}

/// Everything the daemon reports. Shared by all tasks behind an `Arc`.
#[derive(Default)]
pub struct Metrics {
    pub consumed: AtomicU64,
    pub stored: AtomicU64,
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

    /// The Prometheus text exposition (format 0.0.4), encoded by `prometheus-client` from a
    /// snapshot of the values taken now.
    pub fn render(&self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self.snapshot()));
        let mut out = String::with_capacity(4096);
        prometheus_text::encode(&mut out, &registry)
            .expect("encoding metrics into a String cannot fail");
        out
    }

    fn snapshot(&self) -> Snapshot {
        let counter = |name: &'static str, help: &'static str, c: &AtomicU64| Family {
            name,
            help,
            kind: Kind::Counter,
            samples: vec![(Vec::new(), Value::Int(c.load(Relaxed) as i64))],
        };
        let store = |v: &'static str| vec![("store", v.to_string())];
        let tp_labels = |tp: &TopicPartition| {
            vec![
                ("topic", tp.topic.to_string()),
                ("partition", tp.partition.to_string()),
            ]
        };
        let (parked_now, parked_oldest) =
            *self.parked_now.lock().unwrap_or_else(|p| p.into_inner());
        let families = vec![
            counter(
                "log_processor_records_consumed",
                "Records read from Kafka",
                &self.consumed,
            ),
            counter(
                "log_processor_records_stored",
                "Records stored in both PostgreSQL and Elasticsearch",
                &self.stored,
            ),
            counter(
                "log_processor_records_dead_lettered",
                "Records written to the dead-letter table",
                &self.dead_lettered,
            ),
            counter(
                "log_processor_records_parked",
                "Records parked because their destination index refused them while the store took others",
                &self.parked,
            ),
            counter(
                "log_processor_records_released",
                "Parked records written to both stores once their destination took them",
                &self.released,
            ),
            Family {
                name: "log_processor_parked_records",
                help: "Records parked in PostgreSQL now for destination indices that refused them",
                kind: Kind::Gauge,
                samples: vec![(Vec::new(), Value::Int(parked_now))],
            },
            Family {
                name: "log_processor_parked_oldest_seconds",
                help: "Age of the oldest parked record (0: none)",
                kind: Kind::Gauge,
                samples: vec![(Vec::new(), Value::Float(parked_oldest))],
            },
            counter(
                "log_processor_batches",
                "Batches made durable",
                &self.batches,
            ),
            counter(
                "log_processor_batches_abandoned",
                "Batches given up (revocation or shutdown) without committing",
                &self.batches_abandoned,
            ),
            counter(
                "log_processor_offset_commits",
                "Offset commits sent to Kafka",
                &self.commits,
            ),
            counter(
                "log_processor_offset_commit_errors",
                "Offset commits Kafka refused",
                &self.commit_errors,
            ),
            counter(
                "log_processor_rebalances",
                "Partition assignments and revocations",
                &self.rebalances,
            ),
            counter(
                "log_processor_partition_rewinds",
                "Partitions read again from below Kafka's committed offset because PostgreSQL's watermark is behind it or missing",
                &self.rewinds,
            ),
            counter(
                "log_processor_consumer_replacements",
                "Kafka consumers replaced because their group membership stalled",
                &self.consumer_replacements,
            ),
            Family {
                name: "log_processor_source_gap_offsets",
                help: "Offsets found holding no record, by cause: retention (deleted from Kafka before they were read: lost outside the daemon) or no_record (transaction markers, aborted or compacted records)",
                kind: Kind::Counter,
                samples: ["retention", "no_record"]
                    .iter()
                    .zip(&self.gap_offsets)
                    .map(|(cause, c)| {
                        (
                            vec![("cause", cause.to_string())],
                            Value::Int(c.load(Relaxed) as i64),
                        )
                    })
                    .collect(),
            },
            Family {
                name: "log_processor_dead_letters",
                help: "Records dead-lettered, by stage",
                kind: Kind::Counter,
                samples: STAGES
                    .iter()
                    .zip(&self.dead_letters_by_stage)
                    .map(|(stage, c)| {
                        (
                            vec![("stage", stage.as_str().to_string())],
                            Value::Int(c.load(Relaxed) as i64),
                        )
                    })
                    .collect(),
            },
            Family {
                name: "log_processor_retries",
                help: "Retried store operations",
                kind: Kind::Counter,
                samples: vec![
                    (
                        store("postgresql"),
                        Value::Int(self.retries_pg.load(Relaxed) as i64),
                    ),
                    (
                        store("elasticsearch"),
                        Value::Int(self.retries_es.load(Relaxed) as i64),
                    ),
                ],
            },
            Family {
                name: "log_processor_store_latency_seconds",
                help: "Batch write latency per store",
                kind: Kind::Histogram,
                samples: vec![
                    (store("postgresql"), self.pg_latency.value()),
                    (store("elasticsearch"), self.es_latency.value()),
                ],
            },
            Family {
                name: "log_processor_batch_latency_seconds",
                help: "Batch latency, decode to commit point",
                kind: Kind::Histogram,
                samples: vec![(Vec::new(), self.batch_latency.value())],
            },
            Family {
                name: "log_processor_consumer_lag",
                help: "Records behind the partition end",
                kind: Kind::Gauge,
                samples: self
                    .lag
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .map(|(tp, lag)| (tp_labels(tp), Value::Int(*lag)))
                    .collect(),
            },
            Family {
                name: "log_processor_batch_memory_bytes",
                help: "Bytes of records held in batches, each counted with its in-flight copies (bounded by LP_MEMORY_BUDGET_MB)",
                kind: Kind::Gauge,
                samples: vec![(
                    Vec::new(),
                    Value::Int(self.batch_bytes.load(Relaxed) as i64),
                )],
            },
            Family {
                name: "log_processor_batch_memory_peak_bytes",
                help: "Largest batch_memory_bytes since start",
                kind: Kind::Gauge,
                samples: vec![(
                    Vec::new(),
                    Value::Int(self.batch_bytes_peak.load(Relaxed) as i64),
                )],
            },
            Family {
                name: "log_processor_fetch_stalled_offset",
                help: "While Kafka holds records of a partition but hands none over (one larger than LP_KAFKA_FETCH_MAX_BYTES?): the offset it is stuck at",
                kind: Kind::Gauge,
                samples: (self.fetch_stalled.lock().unwrap_or_else(|p| p.into_inner()))
                    .iter()
                    .map(|(tp, &offset)| (tp_labels(tp), Value::Int(offset)))
                    .collect(),
            },
            Family {
                name: "log_processor_partition_stalled",
                help: "1 while a partition is held, with the reason",
                kind: Kind::Gauge,
                samples: self
                    .stalled()
                    .iter()
                    .map(|(tp, reason)| {
                        let mut labels = tp_labels(tp);
                        labels.push(("reason", label_value(reason)));
                        (labels, Value::Int(1))
                    })
                    .collect(),
            },
            Family {
                name: "log_processor_ready",
                help: "1 when joined and not shutting down",
                kind: Kind::Gauge,
                samples: vec![(Vec::new(), Value::Int(i64::from(self.is_ready())))],
            },
            Family {
                name: "log_processor_shutdown_duration_seconds",
                help: "Signal-to-exit time of the last shutdown",
                kind: Kind::Gauge,
                samples: vec![(
                    Vec::new(),
                    Value::Float(self.shutdown_ms.load(Relaxed) as f64 / 1000.0),
                )],
            },
        ];
        Snapshot(families)
    }
}

/// The values of every metric at one scrape, handed to `prometheus-client` to encode. Owned,
/// so the registry built per scrape borrows nothing from the live metrics.
#[derive(Debug)]
struct Snapshot(Vec<Family>);

#[derive(Debug)]
struct Family {
    /// The full name; counters get `_total` from the encoder.
    name: &'static str,
    help: &'static str,
    kind: Kind,
    samples: Vec<(Vec<(&'static str, String)>, Value)>,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

#[derive(Debug)]
enum Value {
    Int(i64),
    Float(f64),
    /// Sum, count and per-bucket (not cumulative) counts by upper bound.
    Histogram(f64, u64, Vec<(f64, u64)>),
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.0 {
            let kind = match f.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
                Kind::Histogram => MetricType::Histogram,
            };
            let mut family = encoder.encode_descriptor(f.name, f.help, None, kind)?;
            for (labels, value) in &f.samples {
                let mut m = family.encode_family(labels)?;
                match (f.kind, value) {
                    (Kind::Counter, Value::Int(v)) => {
                        m.encode_counter::<NoLabelSet, _, u64>(&(*v as u64), None)?
                    }
                    (_, Value::Int(v)) => m.encode_gauge(v)?,
                    (_, Value::Float(v)) => m.encode_gauge(v)?,
                    (_, Value::Histogram(sum, count, buckets)) => {
                        m.encode_histogram::<NoLabelSet>(*sum, *count, buckets, None)?
                    }
                }
            }
        }
        Ok(())
    }
}

/// A Prometheus label value on one line, at most 200 characters (the encoder escapes it).
fn label_value(s: &str) -> String {
    s.chars().take(200).collect()
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
