//! The data that flows between the consumer, the workers and the sinks.
//! Everything here is plain data: no I/O, no Kafka or store types.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

mod fields;
pub use fields::Fields;

/// A topic and partition: the unit of ordering and of offset commits.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: Arc<str>,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<Arc<str>>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// One Kafka record exactly as it was read: the bytes are never altered.
#[derive(Clone, Debug)]
pub struct RawRecord {
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// Kafka's record timestamp in milliseconds since the epoch, when the producer set one.
    pub kafka_timestamp_ms: Option<i64>,
}

impl RawRecord {
    /// The copies of a record's bytes alive at once while its batch is written: the raw bytes
    /// from Kafka, the decoded record, and either the search store's bulk lines (a request's
    /// body is a slice of them, sent without a further copy) or PostgreSQL's rows as sent (the
    /// `COPY` text or bound arrays, and the connection's write buffer they are copied into),
    /// whose peaks do not overlap. A dead letter's or a parked
    /// record's copy of the bytes takes the place of the decoded record, which leaves the
    /// batch. The memory budget counts record bytes times this.
    pub const COPIES: usize = 4;

    /// Bytes this record occupies in memory, for batch and memory bounds.
    pub fn size(&self) -> usize {
        self.payload.as_ref().map_or(0, Vec::len) + self.key.as_ref().map_or(0, Vec::len) + 48
    }
}

/// Consecutive records of one partition, handed from the consumer to one worker.
///
/// Offsets may have gaps (compaction, transaction markers); `next_offset` is the offset the
/// partition's watermark moves to once the whole batch is durable.
#[derive(Debug)]
pub struct Batch {
    /// The Kafka partition it was read from: what offsets are committed to.
    pub tp: TopicPartition,
    /// Where it is stored: the partition under the name its topic's incarnation is stored as
    /// (`crate::identity`), the topic's own name unless an operator adopted a new incarnation.
    /// Rows, dead letters, gaps, the watermark and document ids all use this name.
    pub stored: TopicPartition,
    pub records: Vec<RawRecord>,
    /// One past the last record's offset.
    pub next_offset: i64,
    /// Where the partition stands before this batch. PostgreSQL moves its stored watermark to
    /// `next_offset` only from there (see `sink::postgres::advance`).
    pub start: Position,
    /// Offsets from where the partition stood (`start`) to `next_offset` that hold no record,
    /// and why (`gaps`): written with the batch, so every offset below the stored watermark is
    /// a row, a dead letter or a recorded gap.
    pub gaps: Vec<crate::gaps::Gap>,
    /// Memory its records hold (`RawRecord::size` summed), released when it is acknowledged.
    pub bytes: usize,
    /// Cancelled when this consumer loses the partition: the worker must give the batch up
    /// (without committing anything) instead of writing it, even mid-write.
    pub revoked: CancellationToken,
    /// Cancelled when a revocation of the partition begins: a worker that has not started the
    /// batch gives it up at once; one already writing it finishes.
    pub drain: CancellationToken,
    /// Batches of the partition being written: the worker counts this one in while it writes
    /// it (until its ack is sent), so a revocation knows what it waits for.
    pub writing: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Which assignment of the partition it belongs to (a number the consumer counts up): its
    /// ack counts only while that assignment lasts.
    pub assignment: u64,
}

/// Where a partition stands before a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    /// The first batch since the partition was assigned, started at this offset (PostgreSQL's
    /// watermark or Kafka's committed offset; `None`: by `auto.offset.reset`).
    Assigned(Option<i64>),
    /// Right after the previous batch of the same assignment, which ended here.
    After(i64),
}

impl Batch {
    /// The first record's offset; for a batch of gaps only (offsets the reader passed without
    /// a record), where its first gap begins.
    pub fn first_offset(&self) -> i64 {
        self.records.first().map_or_else(
            || self.gaps.first().map_or(self.next_offset, |g| g.from),
            |r| r.offset,
        )
    }

    /// The first offset the batch accounts for: its first gap's, or else its first record's.
    pub fn covered_from(&self) -> i64 {
        self.gaps
            .first()
            .map_or(self.first_offset(), |g| g.from.min(self.first_offset()))
    }
}

/// A record decoded into the fields both stores keep.
#[derive(Clone, Debug, PartialEq)]
pub struct LogEntry {
    pub timestamp: DateTime<Utc>,
    pub level: Option<String>,
    pub service: Option<String>,
    pub message: Option<String>,
    /// Every other field of the JSON object, unchanged (except for configured redaction).
    pub fields: Fields,
}

/// A decoded record with its Kafka provenance, ready for both stores.
#[derive(Clone, Debug)]
pub struct StoredRecord {
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub kafka_timestamp_ms: Option<i64>,
    pub entry: LogEntry,
    /// Which route of the mapping takes it (`mapping::Mapping::route_of`): its table and index.
    pub route: usize,
    /// Its table's typed columns, as the text PostgreSQL casts (`Mapping::typed_values`).
    pub typed: Vec<Option<String>>,
}

/// A record its destination index would not take while the store took others (see
/// `parking`): kept in PostgreSQL until that index accepts it. Both forms are kept: the record
/// as both stores will hold it, and its bytes as a dead letter would keep them, for an
/// operator who drops it into the dead letters instead.
#[derive(Clone, Debug)]
pub struct Parked {
    pub record: StoredRecord,
    /// The bytes, redacted or sealed as the dead-letter policy keeps them; its `reason` is why
    /// the destination refused.
    pub letter: DeadLetter,
    /// The index (or data stream) the document goes to.
    pub destination: String,
}

/// Where in the pipeline a record was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectStage {
    /// The bytes are not a log record we can store (see `decode`).
    Decode,
    /// Elasticsearch refused the document itself (a mapping or parse error for it).
    Index,
    /// PostgreSQL refused the record's own row with a data exception (SQLSTATE class 22).
    Store,
}

impl RejectStage {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectStage::Decode => "decode",
            RejectStage::Index => "index",
            RejectStage::Store => "store",
        }
    }
}

/// How a dead letter's `payload` holds the record's bytes (see `dead_letter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadEncoding {
    /// The raw Kafka bytes.
    Raw,
    /// The JSON object after redaction (redaction configured, no dead-letter key).
    RedactedJson,
    /// AES-256-GCM of the raw bytes under `LP_DEAD_LETTER_KEY`.
    Aes256Gcm,
    /// Not stored: redaction is configured, the payload is not a JSON object and no key is set.
    Withheld,
}

impl PayloadEncoding {
    pub fn as_str(self) -> &'static str {
        match self {
            PayloadEncoding::Raw => "raw",
            PayloadEncoding::RedactedJson => "redacted-json",
            PayloadEncoding::Aes256Gcm => "aes-256-gcm",
            PayloadEncoding::Withheld => "withheld",
        }
    }
}

/// A record that cannot be stored as a log entry, kept with its bytes (built by
/// `dead_letter::DeadLetterPolicy`, which decides how the bytes are kept).
#[derive(Clone, Debug)]
pub struct DeadLetter {
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub encoding: PayloadEncoding,
    /// The redaction it was written under (`Redactor::policy`), `None` without redaction.
    pub redaction: Option<String>,
    pub kafka_timestamp_ms: Option<i64>,
    pub stage: RejectStage,
    pub reason: String,
}

/// What a worker tells the consumer about a batch it took.
#[derive(Debug)]
pub struct Ack {
    pub tp: TopicPartition,
    pub first_offset: i64,
    pub next_offset: i64,
    /// True when both stores hold the batch (or its dead letters); false when it was given up.
    pub durable: bool,
    /// The batch's `bytes`: memory released now that the worker dropped it.
    pub bytes: usize,
    /// Set when the batch was given up because PostgreSQL holds less of the partition than the
    /// batch follows (`SinkError::Behind`): the consumer must read it again from the stored
    /// watermark. Why, for the log.
    pub reread: Option<String>,
    /// The batch's `assignment`.
    pub assignment: u64,
}

/// The deterministic document id: a replay of the same record overwrites the same document.
pub fn document_id(tp: &TopicPartition, offset: i64) -> String {
    format!("{}-{}-{}", tp.topic, tp.partition, offset)
}
