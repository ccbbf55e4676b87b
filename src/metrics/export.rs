//! The metrics as Prometheus text: a snapshot of every value, encoded by `prometheus-client`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::{BUCKETS_MS, Histogram, Metrics, STAGES};
use crate::model::TopicPartition;

impl Histogram {
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

impl Metrics {
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
                name: "log_processor_divergence",
                help: "Divergences between the stores the sampled check confirmed, by kind (see `log-processor audit`)",
                kind: Kind::Counter,
                samples: (self
                    .divergences
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter())
                .map(|(kind, n)| (vec![("kind", kind.to_string())], Value::Int(*n as i64)))
                .collect(),
            },
            counter(
                "log_processor_audited_offsets",
                "Offsets the sampled check compared across both stores",
                &self.audited,
            ),
            Family {
                name: "log_processor_rows_stored",
                help: "Rows stored, by the table the mapping routed them to",
                kind: Kind::Counter,
                samples: (self.stored_by_table.lock())
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .map(|(t, n)| (vec![("table", t.clone())], Value::Int(*n as i64)))
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
