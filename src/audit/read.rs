//! Reading one range of a partition's offsets from Kafka, PostgreSQL and the search store into
//! the plain data `rules` checks. Kafka is read first, up to a byte budget, and the range ends
//! where the budget did: memory holds one range's records, whatever their size.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::rules::{Doc, Range, Shape, Source};
use crate::config::Settings;
use crate::model::{RawRecord, StoredRecord, TopicPartition};
use crate::pipeline;
use crate::redact::Redactor;
use crate::sink::SinkError;
use crate::sink::elastic::{ElasticSink, Found};
use crate::sink::postgres::PgSink;

/// The systems an audit reads and the settings it decodes records with.
pub struct Context<'a> {
    pub settings: &'a Settings,
    pub pg: &'a PgSink,
    pub es: &'a ElasticSink,
    pub redactor: Redactor,
}

impl Context<'_> {
    /// Decoding as the daemon does it, with these settings.
    pub fn decoding(&self) -> pipeline::Decoding<'_> {
        pipeline::Decoding {
            max_record_bytes: self.settings.max_record_bytes,
            redactor: &self.redactor,
            mapping: self.es.mapping(),
        }
    }
}

/// How long Kafka may stay silent while records are due.
const KAFKA_SILENCE: Duration = Duration::from_secs(30);

/// One partition read in order from a start offset, without a group (nothing is committed).
pub struct KafkaRange {
    consumer: BaseConsumer,
    /// The first record past the last range, read already.
    pending: Option<RawRecord>,
    /// Kafka has nothing more (its end, when the audit began, lies below the range).
    at_end: bool,
}

impl KafkaRange {
    /// Opens `tp` at `from`; with the first offset Kafka still holds.
    pub fn open(
        settings: &Settings,
        tp: &TopicPartition,
        from: i64,
    ) -> Result<(Self, i64), String> {
        let mut config = crate::stores::kafka_reader(settings, "log-processor-audit")
            .map_err(|e| e.to_string())?;
        config
            .set("enable.partition.eof", "true")
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            // What librdkafka prefetches is memory too: a chunk's budget, not its 64 MiB default.
            .set("queued.max.messages.kbytes", "16384");
        let consumer: BaseConsumer = config.create().map_err(|e| format!("kafka: {e}"))?;
        let (low, _high) = consumer
            .fetch_watermarks(&tp.topic, tp.partition, Duration::from_secs(10))
            .map_err(|e| format!("kafka: offsets of {tp}: {e}"))?;
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(from.max(low)))
            .map_err(|e| format!("kafka: {e}"))?;
        consumer.assign(&list).map_err(|e| format!("kafka: {e}"))?;
        let range = KafkaRange {
            consumer,
            pending: None,
            at_end: false,
        };
        Ok((range, low))
    }

    /// The records before `to`, from where the last call ended; stops early once `budget`
    /// bytes are read and returns where the records read are complete up to (exclusive).
    /// Blocking: run it off the async threads.
    pub fn read(&mut self, to: i64, budget: usize) -> Result<(Vec<RawRecord>, i64), String> {
        let mut out: Vec<RawRecord> = Vec::new();
        let mut bytes = 0;
        let mut quiet = Instant::now();
        loop {
            let record = match self.pending.take() {
                Some(r) => r,
                None if self.at_end => return Ok((out, to)),
                None if bytes >= budget => {
                    let end = out.last().map_or(to, |r| r.offset + 1);
                    return Ok((out, end));
                }
                None => match self.consumer.poll(Duration::from_millis(200)) {
                    Some(Ok(m)) => RawRecord {
                        offset: m.offset(),
                        key: m.key().map(<[u8]>::to_vec),
                        payload: m.payload().map(<[u8]>::to_vec),
                        kafka_timestamp_ms: m.timestamp().to_millis(),
                    },
                    Some(Err(KafkaError::PartitionEOF(_))) => {
                        self.at_end = true;
                        continue;
                    }
                    Some(Err(e)) => return Err(format!("kafka: {e}")),
                    None if quiet.elapsed() > KAFKA_SILENCE => {
                        return Err(format!(
                            "kafka: no record within {} s",
                            KAFKA_SILENCE.as_secs()
                        ));
                    }
                    None => continue,
                },
            };
            quiet = Instant::now();
            if record.offset >= to {
                self.pending = Some(record);
                return Ok((out, to));
            }
            bytes += record.size();
            out.push(record);
        }
    }
}

/// What a record should be in both stores, as this search store names its index.
pub fn shape(es: &ElasticSink, tp: &TopicPartition, r: &StoredRecord) -> Shape {
    Shape {
        document: ElasticSink::document_of(tp, r),
        index: (!es.data_stream()).then(|| es.index_name(r)),
        key: r.key.clone(),
        kafka_ms: r.kafka_timestamp_ms,
    }
}

/// Decodes what Kafka returned, as the daemon would.
pub fn sources(
    es: &ElasticSink,
    tp: &TopicPartition,
    raws: &[RawRecord],
    settings: &Settings,
    redactor: &Redactor,
) -> BTreeMap<i64, Source> {
    let how = pipeline::Decoding {
        max_record_bytes: settings.max_record_bytes,
        redactor,
        mapping: es.mapping(),
    };
    let (records, undecodable) = pipeline::decode_all(raws, &tp.topic, how);
    let decoded = records
        .iter()
        .map(|r| (r.offset, Source::Decoded(shape(es, tp, r))));
    let bad = undecodable
        .into_iter()
        .map(|(raw, _)| (raw.offset, Source::Undecodable));
    decoded.chain(bad).collect()
}

/// The stores' side of a range.
pub struct Stored {
    pub rows: Vec<StoredRecord>,
    pub docs: Vec<Found>,
    pub accounted: crate::sink::postgres::Accounted,
}

/// Reads `[from, to)` of `tp` (the name the records are stored under) from both stores: the
/// documents of the daemon's indices first, so a record stored meanwhile shows as a row without document (seen again,
/// or not, by the second read) rather than never.
pub async fn stored(
    pg: &PgSink,
    es: &ElasticSink,
    tp: &TopicPartition,
    from: i64,
    to: i64,
) -> Result<Stored, SinkError> {
    let mut docs = es.documents_in(tp, from, to).await?;
    let rows = pg.rows_in(tp, from, to).await?;
    let accounted = pg.accounted_in(tp, from, to).await?;
    // A row whose document is not among the daemon's indices may have it elsewhere (a parked
    // record rerouted to another index): looked for by id, only then.
    let have: std::collections::HashSet<i64> = docs.iter().map(|d| d.offset).collect();
    let ids: Vec<String> = (rows.iter())
        .filter(|r| !have.contains(&r.offset))
        .map(|r| crate::model::document_id(tp, r.offset))
        .collect();
    docs.extend(es.documents_anywhere(&ids).await?);
    docs.sort_by_key(|d| d.offset);
    Ok(Stored {
        rows,
        docs,
        accounted,
    })
}

/// The plain data `rules::check` reads.
pub fn range(
    es: &ElasticSink,
    tp: &TopicPartition,
    from: i64,
    to: i64,
    kafka: Option<BTreeMap<i64, Source>>,
    s: &Stored,
) -> Range {
    let mut docs: BTreeMap<i64, Vec<Doc>> = BTreeMap::new();
    for d in &s.docs {
        docs.entry(d.offset).or_default().push(Doc {
            index: d.index.clone(),
            id: d.id.clone(),
            source: d.source.clone(),
        });
    }
    Range {
        from,
        to,
        kafka,
        rows: s
            .rows
            .iter()
            .map(|r| (r.offset, shape(es, tp, r)))
            .collect(),
        dead: s.accounted.dead.iter().copied().collect(),
        parked: s.accounted.parked.iter().copied().collect(),
        gaps: s.accounted.gaps.clone(),
        docs,
    }
}
