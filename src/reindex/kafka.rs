//! Kafka for a re-index: partitions, watermarks and offsets-for-times, and one partition's
//! range read by assignment. The consumer has a group of its own (`log-processor-reindex-JOB`)
//! only because librdkafka's assign() wants one: it never joins it, subscribes or commits, so
//! the daemon's group and its committed offsets are never touched.

use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::range::Offsets;
use crate::admin::AdminError;
use crate::config::Settings;
use crate::model::{RawRecord, TopicPartition};
use crate::stores;

const TIMEOUT: Duration = Duration::from_secs(15);
/// A partition that yields nothing while its reader is short of the range's end this long
/// stops the run (with its position durable), rather than waiting for ever.
const STALLED: Duration = Duration::from_secs(60);

pub struct Source {
    consumer: StreamConsumer,
}

/// One batch read: its records and the offset after it (`to` once the range is read).
pub struct Read {
    pub records: Vec<RawRecord>,
    pub next: i64,
}

fn kafka(what: String) -> impl FnOnce(rdkafka::error::KafkaError) -> AdminError {
    move |e| AdminError::Kafka(format!("{what}: {e}"))
}

impl Source {
    pub fn new(s: &Settings, job: &str) -> Result<Self, AdminError> {
        let mut config = stores::kafka_reader(s, "log-processor-reindex")?;
        config
            .set("group.id", format!("log-processor-reindex-{job}"))
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            // A range start deleted while it is read is an error, never a silent jump.
            .set("auto.offset.reset", "error");
        let consumer = config
            .create()
            .map_err(kafka("creating the reindex consumer".into()))?;
        Ok(Self { consumer })
    }

    /// The topic's partitions; a topic the cluster does not have is an error naming it.
    pub fn partitions(&self, topic: &str) -> Result<Vec<i32>, AdminError> {
        let metadata = (self.consumer)
            .fetch_metadata(Some(topic), TIMEOUT)
            .map_err(kafka(format!("metadata of {topic}")))?;
        let t = metadata.topics().first();
        match t.filter(|t| t.error().is_none() && !t.partitions().is_empty()) {
            Some(t) => Ok(t.partitions().iter().map(|p| p.id()).collect()),
            None => Err(AdminError::Kafka(format!(
                "--topic {topic}: no such topic in the cluster"
            ))),
        }
    }

    /// Watermarks and offsets-for-times of each partition of `topic`. The watermarks are read
    /// first and the lookups clamped to them: a record appended in between (the topic is live)
    /// would otherwise put a range's end past the end the job records.
    pub fn offsets(
        &self,
        topic: &str,
        partitions: &[i32],
        since_ms: i64,
        until_ms: Option<i64>,
    ) -> Result<Vec<(i32, Offsets)>, AdminError> {
        let mut marks = Vec::new();
        for &p in partitions {
            marks.push(
                (self.consumer)
                    .fetch_watermarks(topic, p, TIMEOUT)
                    .map_err(kafka(format!("watermarks of {topic}/{p}")))?,
            );
        }
        let since = self.for_time(topic, partitions, since_ms)?;
        let until = match until_ms {
            Some(ms) => self.for_time(topic, partitions, ms)?,
            None => partitions.iter().map(|_| None).collect(),
        };
        Ok(partitions
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                let (low, high) = marks[i];
                let clamp = |o: Option<i64>| o.map(|o| o.min(high));
                (
                    p,
                    Offsets {
                        low,
                        high,
                        since: clamp(since[i]),
                        until: clamp(until[i]),
                    },
                )
            })
            .collect())
    }

    /// The first offset at or after `ms` per partition; `None` where no record is that recent.
    fn for_time(
        &self,
        topic: &str,
        partitions: &[i32],
        ms: i64,
    ) -> Result<Vec<Option<i64>>, AdminError> {
        let mut tpl = TopicPartitionList::new();
        for &p in partitions {
            tpl.add_partition_offset(topic, p, Offset::Offset(ms))
                .map_err(kafka(format!("{topic}/{p}")))?;
        }
        let found = (self.consumer)
            .offsets_for_times(tpl, TIMEOUT)
            .map_err(kafka(format!("offsets for times of {topic}")))?;
        partitions
            .iter()
            .map(|&p| match found.find_partition(topic, p) {
                Some(e) if e.error().is_err() => Err(AdminError::Kafka(format!(
                    "offsets for times of {topic}/{p}: {:?}",
                    e.error()
                ))),
                Some(e) => Ok(match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                }),
                None => Ok(None),
            })
            .collect()
    }

    /// Starts reading `tp` at `from` (replacing any earlier assignment).
    pub fn assign(&self, tp: &TopicPartition, from: i64) -> Result<(), AdminError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(from))
            .map_err(kafka(format!("{tp}")))?;
        self.consumer
            .assign(&tpl)
            .map_err(kafka(format!("assigning {tp}")))
    }

    /// Up to `max` records of the assigned `tp` below `to`, from `next` on. Returns early with
    /// what it has when the partition pauses; `next` becomes `to` once the reader's position
    /// reaches it (offsets without a record, such as transaction markers, are passed too).
    pub async fn read(
        &self,
        tp: &TopicPartition,
        mut next: i64,
        to: i64,
        max: usize,
    ) -> Result<Read, AdminError> {
        let mut records = Vec::new();
        let mut idle_since = Instant::now();
        while next < to && records.len() < max {
            let polled =
                tokio::time::timeout(Duration::from_millis(500), self.consumer.recv()).await;
            match polled {
                Ok(Ok(m)) => {
                    if m.topic() != &*tp.topic || m.partition() != tp.partition || m.offset() < next
                    {
                        continue; // left over from an earlier assignment
                    }
                    if m.offset() >= to {
                        next = to;
                        break;
                    }
                    records.push(RawRecord {
                        offset: m.offset(),
                        key: m.key().map(<[u8]>::to_vec),
                        payload: m.payload().map(<[u8]>::to_vec),
                        kafka_timestamp_ms: m.timestamp().to_millis(),
                    });
                    next = m.offset() + 1;
                    idle_since = Instant::now();
                }
                Ok(Err(e)) => return Err(read_error(tp, next, e)),
                Err(_) if !records.is_empty() => break,
                Err(_) => {
                    if self.position(tp)?.is_some_and(|p| p >= to) {
                        next = to;
                    } else if idle_since.elapsed() > STALLED {
                        return Err(AdminError::Kafka(format!(
                            "{tp}: nothing read for {} s at offset {next}, below the range's \
                             end {to}; run again to resume",
                            STALLED.as_secs()
                        )));
                    }
                }
            }
        }
        Ok(Read { records, next })
    }

    fn position(&self, tp: &TopicPartition) -> Result<Option<i64>, AdminError> {
        let position = (self.consumer)
            .position()
            .map_err(kafka(format!("position of {tp}")))?;
        Ok(
            match position
                .find_partition(&tp.topic, tp.partition)
                .map(|e| e.offset())
            {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            },
        )
    }
}

/// A read error; an offset deleted since the job was created gets its own explanation, since a
/// run started again would meet it again.
fn read_error(tp: &TopicPartition, next: i64, e: rdkafka::error::KafkaError) -> AdminError {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    match e {
        KafkaError::MessageConsumption(
            RDKafkaErrorCode::OffsetOutOfRange | RDKafkaErrorCode::AutoOffsetReset,
        ) => AdminError::Kafka(format!(
            "{tp}: offset {next} is no longer in Kafka (deleted by retention after the job \
             was created), so the rest of this job's range cannot be read; start a new job \
             (another --since or --job), and for the search store re-index the deleted part \
             from the daemon's rows with --from postgres"
        )),
        e => AdminError::Kafka(format!("reading {tp} at {next}: {e}")),
    }
}
