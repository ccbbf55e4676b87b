//! `log-processor status`: per partition of the group's topics, Kafka's end offset, the
//! group's committed offset, PostgreSQL's watermark, the lag and the dead letters, read from
//! Kafka and PostgreSQL directly, with a warning where they disagree in a way that needs an
//! operator.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use clap::Args;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::Serialize;

use super::AdminError;
use crate::config::Settings;
use crate::consumer::IDENTITY_RECHECK;
use crate::identity::stored_names;
use crate::model::TopicPartition;
use crate::sink::postgres::GapCounts;

#[derive(Args, Clone, Debug)]
pub struct StatusArgs {
    /// Print JSON (one object) instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub settings: Settings,
}

/// Bound on each Kafka request.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Serialize)]
pub struct Status {
    pub group: String,
    pub partitions: Vec<PartitionStatus>,
    /// Records parked per destination index (`parked list`): stored nowhere yet, neither lost
    /// nor dead letters.
    pub parked: Vec<super::parked::ParkedRow>,
    /// With a mapping file: where each topic's records go (`Mapping::routes_of`).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub routes: std::collections::BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct PartitionStatus {
    pub topic: String,
    pub partition: i32,
    /// The name its records are stored under, when not the topic's own (an adopted
    /// incarnation: `topics adopt`).
    pub stored_as: Option<String>,
    /// Kafka's end (high watermark) offset; `None`: Kafka does not know the partition.
    pub end_offset: Option<i64>,
    /// The group's committed offset in Kafka.
    pub committed_offset: Option<i64>,
    /// PostgreSQL's next offset for the group (`consumer_offsets`): everything below is durable.
    pub watermark: Option<i64>,
    /// Records not yet durable: the end minus the watermark (or, with none stored, the
    /// committed offset, or the log's start).
    pub lag: Option<i64>,
    pub dead_letters: i64,
    /// Offsets deleted from Kafka before the daemon read them (`source_gaps`, `retention`).
    pub lost_offsets: i64,
    /// Offsets without a record to read: transaction markers, aborted or compacted records.
    pub no_record_offsets: i64,
    pub warnings: Vec<String>,
}

/// What Kafka says about one partition.
#[derive(Clone, Copy, Debug, Default)]
pub struct KafkaPartition {
    pub start: i64,
    pub end: i64,
    pub committed: Option<i64>,
}

/// Reads Kafka and PostgreSQL and puts them side by side.
pub async fn status(settings: &Settings) -> Result<Status, AdminError> {
    // The daemon's own TLS/SASL properties, so `status` reaches a secured cluster too. One
    // client reads the topics LP_TOPICS selects now, their offsets and what each topic is.
    let client = super::kafka_client(settings, "log-processor-status")?;
    let s = settings.clone();
    let (topics, kafka, current) = tokio::task::spawn_blocking(move || {
        let topics = super::selection::in_kafka(&client, &s)?;
        let offsets = kafka_offsets(&client, &topics)?;
        let current = crate::consumer::identities(client.client(), &topics, KAFKA_TIMEOUT)
            .map_err(AdminError::Kafka)?;
        Ok::<_, AdminError>((topics, offsets, current))
    })
    .await
    .map_err(|e| AdminError::Kafka(e.to_string()))??;
    let pg = super::pg(settings)?;
    // Each topic's records are stored under the name its current incarnation is bound to.
    let bindings = pg.bindings(&topics).await?;
    let (names, conflicts) = stored_names(&topics, &current, &bindings, IDENTITY_RECHECK);
    let stored: Vec<String> = names.keys().cloned().collect();
    // Keyed back by the Kafka topic each stored name reads.
    fn by_topic<V>(
        m: HashMap<TopicPartition, V>,
        names: &HashMap<String, String>,
    ) -> HashMap<TopicPartition, V> {
        m.into_iter()
            .filter_map(|(tp, v)| {
                names
                    .get(&*tp.topic)
                    .map(|t| (TopicPartition::new(t.as_str(), tp.partition), v))
            })
            .collect()
    }
    let watermarks = by_topic(pg.watermarks(&settings.group_id, &stored).await?, &names);
    let dead = by_topic(pg.dead_letter_counts(&stored).await?, &names);
    let gaps = by_topic(pg.gap_counts(&stored).await?, &names);
    let parked = pg
        .parked_summary()
        .await?
        .into_iter()
        .map(Into::into)
        .collect();
    pg.close().await;
    let mut partitions = assemble(&kafka, &watermarks, &dead, &gaps);
    for p in &mut partitions {
        if let Some((name, _)) = names.iter().find(|(n, t)| **t == p.topic && **n != p.topic) {
            p.stored_as = Some(name.clone());
        }
        if let Some(why) = conflicts.get(&p.topic) {
            p.warnings.insert(0, why.clone());
        }
    }
    let routes = match settings.mapping_file {
        None => Default::default(),
        Some(_) => {
            let mapping = settings.mapping()?;
            (names.keys())
                .map(|stored| (stored.clone(), mapping.routes_of(stored)))
                .collect()
        }
    };
    Ok(Status {
        group: settings.group_id.clone(),
        partitions,
        parked,
        routes,
    })
}

/// One row per partition Kafka or PostgreSQL knows, with the warnings.
pub fn assemble(
    kafka: &BTreeMap<TopicPartition, KafkaPartition>,
    watermarks: &HashMap<TopicPartition, i64>,
    dead: &HashMap<TopicPartition, i64>,
    gaps: &HashMap<TopicPartition, GapCounts>,
) -> Vec<PartitionStatus> {
    let mut tps: Vec<&TopicPartition> = kafka.keys().chain(watermarks.keys()).collect();
    tps.sort();
    tps.dedup();
    tps.into_iter()
        .map(|tp| {
            let k = kafka.get(tp);
            let end = k.map(|k| k.end);
            let committed = k.and_then(|k| k.committed);
            let watermark = watermarks.get(tp).copied();
            let mut warnings = Vec::new();
            if let (Some(c), Some(w)) = (committed, watermark)
                && c > w
            {
                warnings.push(format!(
                    "Kafka's committed offset {c} is ahead of PostgreSQL's watermark {w}: \
                     offsets {w}..{c} are committed but not durable in PostgreSQL (a restored \
                     database?); the daemon restarts this partition from the watermark"
                ));
            }
            match (end, watermark) {
                (Some(e), Some(w)) if e < w => warnings.push(format!(
                    "the topic ends at {e}, below PostgreSQL's watermark {w}: the topic was \
                     deleted and recreated? The daemon holds this partition until the old \
                     topic's rows are moved away (README, Guarantees)"
                )),
                (None, Some(_)) => warnings.push(
                    "PostgreSQL holds a watermark for a partition Kafka does not have".into(),
                ),
                _ => {}
            }
            let g = gaps.get(tp).copied().unwrap_or_default();
            if g.lost > 0 {
                warnings.push(format!(
                    "{} offsets were deleted from Kafka (retention, delete-records) before the \
                     daemon read them: lost outside the daemon, ranges in source_gaps",
                    g.lost
                ));
            }
            let from = watermark.or(committed).or(k.map(|k| k.start));
            PartitionStatus {
                topic: tp.topic.to_string(),
                partition: tp.partition,
                stored_as: None,
                end_offset: end,
                committed_offset: committed,
                watermark,
                lag: end.zip(from).map(|(e, f)| (e - f).max(0)),
                dead_letters: dead.get(tp).copied().unwrap_or(0),
                lost_offsets: g.lost,
                no_record_offsets: g.no_record,
                warnings,
            }
        })
        .collect()
}

/// Start, end and the group's committed offset of every partition of `topics`.
fn kafka_offsets(
    consumer: &BaseConsumer,
    topics: &[String],
) -> Result<BTreeMap<TopicPartition, KafkaPartition>, AdminError> {
    let err = |what: &str, e: rdkafka::error::KafkaError| AdminError::Kafka(format!("{what}: {e}"));
    let mut out = BTreeMap::new();
    let mut list = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), KAFKA_TIMEOUT)
            .map_err(|e| err(&format!("metadata of {topic}"), e))?;
        for t in metadata.topics() {
            if let Some(e) = t.error() {
                return Err(AdminError::Kafka(format!("topic {topic}: {e:?}")));
            }
            for p in t.partitions() {
                let (start, end) = consumer
                    .fetch_watermarks(topic, p.id(), KAFKA_TIMEOUT)
                    .map_err(|e| err(&format!("offsets of {topic}/{}", p.id()), e))?;
                out.insert(
                    TopicPartition::new(topic.as_str(), p.id()),
                    KafkaPartition {
                        start,
                        end,
                        committed: None,
                    },
                );
                list.add_partition(topic, p.id());
            }
        }
    }
    let committed = consumer
        .committed_offsets(list, KAFKA_TIMEOUT)
        .map_err(|e| err("committed offsets", e))?;
    for e in committed.elements() {
        if let (Offset::Offset(o), Some(k)) = (
            e.offset(),
            out.get_mut(&TopicPartition::new(e.topic(), e.partition())),
        ) {
            k.committed = Some(o);
        }
    }
    Ok(out)
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let opt = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
        let header = [
            "TOPIC",
            "PARTITION",
            "END",
            "COMMITTED",
            "WATERMARK",
            "LAG",
            "DEAD_LETTERS",
            "LOST",
        ];
        let rows: Vec<[String; 8]> = self
            .partitions
            .iter()
            .map(|p| {
                [
                    match &p.stored_as {
                        Some(name) => format!("{} (stored as {name})", p.topic),
                        None => p.topic.clone(),
                    },
                    p.partition.to_string(),
                    opt(p.end_offset),
                    opt(p.committed_offset),
                    opt(p.watermark),
                    opt(p.lag),
                    p.dead_letters.to_string(),
                    p.lost_offsets.to_string(),
                ]
            })
            .collect();
        let mut widths = header.map(str::len);
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.len());
            }
        }
        writeln!(f, "group {}", self.group)?;
        let line = |cells: Vec<&str>| {
            cells
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        };
        writeln!(f, "{}", line(header.to_vec()))?;
        for r in &rows {
            writeln!(f, "{}", line(r.iter().map(String::as_str).collect()))?;
        }
        for p in &self.partitions {
            for w in &p.warnings {
                writeln!(f, "warning: {}/{}: {w}", p.topic, p.partition)?;
            }
        }
        let (lag, dead, lost) = self.partitions.iter().fold((0, 0, 0), |(l, d, x), p| {
            (
                l + p.lag.unwrap_or(0),
                d + p.dead_letters,
                x + p.lost_offsets,
            )
        });
        for p in &self.parked {
            writeln!(
                f,
                "parked: {} records={} since={} reason: {}",
                p.destination,
                p.records,
                p.since,
                p.reason.chars().take(160).collect::<String>()
            )?;
        }
        for (topic, places) in &self.routes {
            writeln!(f, "route: {topic} -> {}", places.join("; else "))?;
        }
        let warnings: usize = self.partitions.iter().map(|p| p.warnings.len()).sum();
        let parked: i64 = self.parked.iter().map(|p| p.records).sum();
        write!(
            f,
            "total: partitions={} lag={lag} dead_letters={dead} parked={parked} lost={lost} warnings={warnings}",
            self.partitions.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_where_kafka_and_postgresql_disagree() {
        let tp = |p| TopicPartition::new("t", p);
        let kafka = BTreeMap::from([
            (
                tp(0),
                KafkaPartition {
                    start: 0,
                    end: 10,
                    committed: Some(10),
                },
            ),
            (
                tp(1),
                KafkaPartition {
                    start: 0,
                    end: 10,
                    committed: Some(8),
                },
            ),
            (
                tp(2),
                KafkaPartition {
                    start: 0,
                    end: 3,
                    committed: Some(3),
                },
            ),
            (
                tp(3),
                KafkaPartition {
                    start: 2,
                    end: 7,
                    committed: None,
                },
            ),
        ]);
        let wm = HashMap::from([(tp(0), 6), (tp(1), 8), (tp(2), 5)]);
        let dead = HashMap::from([(tp(1), 2)]);
        let gaps = HashMap::from([(
            tp(3),
            GapCounts {
                lost: 2,
                no_record: 1,
            },
        )]);
        let rows = assemble(&kafka, &wm, &dead, &gaps);
        assert!(rows[0].warnings[0].contains("committed offset 10 is ahead"));
        assert_eq!(rows[0].lag, Some(4));
        assert!(rows[1].warnings.is_empty());
        assert_eq!((rows[1].lag, rows[1].dead_letters), (Some(2), 2));
        assert!(rows[2].warnings[0].contains("ends at 3, below"));
        assert_eq!(rows[2].lag, Some(0));
        assert_eq!((rows[3].watermark, rows[3].lag), (None, Some(5)));
        assert_eq!((rows[3].lost_offsets, rows[3].no_record_offsets), (2, 1));
        assert!(rows[3].warnings[0].contains("2 offsets were deleted from Kafka"));
    }
}
