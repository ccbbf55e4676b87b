//! The end-state check of a scenario. Every record is read back from the Kafka topic itself and
//! an expectation is worked out from its raw bytes, independently of the daemon's code: either
//! the log entry both stores must hold (the JSON object; string `level`/`service`/`message`
//! become columns, `timestamp`/`@timestamp` the time, the rest `fields`) or a dead letter
//! holding exactly those bytes. PostgreSQL's rows, dead letters and watermarks and
//! OpenSearch's documents are then compared with it record by record, offsets as sets.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, TimeZone, Utc};
use log_processor::loadgen;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::{Map, Value, json};

use super::{Scenario, elasticsearch_url, http, kafka_brokers};

/// Documented decoding rules (src/decode/mod.rs header, README).
const MIN_YEAR: i32 = 1900;
const MAX_YEAR: i32 = 2199;
const DEFAULT_MAX_RECORD_BYTES: usize = 8 * 1024 * 1024;
/// Problems of each kind quoted in a verdict.
const EXAMPLES: usize = 5;

/// What a test knows about its daemon's settings and its input beyond the documented rules.
#[derive(Clone, Debug)]
pub struct Expectation {
    /// `LP_MAX_RECORD_BYTES` of the daemon.
    pub max_record_bytes: usize,
    /// `LP_REDACT_DROP` / `LP_REDACT_HASH` / `LP_REDACT_KEY` of the daemon.
    pub redact_drop: Vec<String>,
    pub redact_hash: Vec<String>,
    pub redact_key: String,
    /// Payloads that decode but that the search store refuses for their own content (mapping
    /// conflicts, too many fields): dead letters too.
    pub refused_by_index: Vec<Vec<u8>>,
    /// Payloads that decode and index but whose row PostgreSQL refuses for its own content (a
    /// number jsonb cannot hold): dead letters too, and no document may stay.
    pub refused_by_store: Vec<Vec<u8>>,
    /// The search store the daemon wrote to, when not the suite's (`ELASTICSEARCH_URL`).
    pub search_url: Option<String>,
}

impl Default for Expectation {
    fn default() -> Self {
        Expectation {
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            redact_drop: Vec::new(),
            redact_hash: Vec::new(),
            redact_key: String::new(),
            refused_by_index: Vec::new(),
            refused_by_store: Vec::new(),
            search_url: None,
        }
    }
}

/// One record as Kafka holds it.
#[derive(Clone, Debug)]
pub struct KafkaRecord {
    pub key: Option<Vec<u8>>,
    /// A null payload and an empty one are the same here (both are dead letters).
    pub payload: Vec<u8>,
    pub timestamp_ms: Option<i64>,
}

/// The log entry a good record must become in both stores.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// `None` only when neither the record nor Kafka carries a time (then any time will do).
    pub ts: Option<DateTime<Utc>>,
    pub level: Option<String>,
    pub service: Option<String>,
    pub message: Option<String>,
    pub fields: Value,
}

/// What must become of one record.
#[derive(Clone, Debug)]
pub enum Fate {
    Stored(Entry),
    /// A dead letter, for this reason (the test's own words).
    Dead(String),
}

/// Generated record `seq` from its key `k{seq}`.
pub fn generated_seq(key: Option<&[u8]>) -> Option<u64> {
    std::str::from_utf8(key?)
        .ok()?
        .strip_prefix('k')?
        .parse()
        .ok()
}

/// What must become of `r`. A generated record (key `k{seq}`, payload as loadgen makes it for
/// `seq`) is malformed exactly when loadgen made it malformed, and the documented rules must
/// agree; any other record is judged by the documented rules alone.
pub fn fate(r: &KafkaRecord, expect: &Expectation) -> Fate {
    let decoded = expected_entry(r, expect);
    if let Some(seq) = generated_seq(r.key.as_deref()) {
        let malformed = r.payload == loadgen::malformed(seq);
        if malformed || r.payload == loadgen::record(seq) {
            assert_eq!(
                decoded.is_err(),
                malformed,
                "the test's decoding rules disagree with loadgen on record {seq}: {decoded:?}"
            );
        }
    }
    match decoded {
        Err(why) => Fate::Dead(why),
        Ok(_) if expect.refused_by_index.contains(&r.payload) => {
            Fate::Dead("refused by the index for its content".into())
        }
        Ok(_) if expect.refused_by_store.contains(&r.payload) => {
            Fate::Dead("its row refused by PostgreSQL for its content".into())
        }
        Ok(entry) => Fate::Stored(entry),
    }
}

/// The documented decoding rules, written out independently of src/decode/.
pub fn expected_entry(r: &KafkaRecord, expect: &Expectation) -> Result<Entry, String> {
    let bytes = &r.payload;
    if bytes.is_empty() {
        return Err("empty payload".into());
    }
    if bytes.len() > expect.max_record_bytes {
        return Err("too large".into());
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "invalid UTF-8".to_string())?;
    if text.contains('\0') {
        return Err("NUL byte".into());
    }
    // serde_json refuses nesting deeper than 128 levels, as documented.
    let value: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(mut object) = value else {
        return Err("not an object".into());
    };
    if has_nul(&Value::Object(object.clone())) {
        return Err("NUL character".into());
    }
    for name in &expect.redact_drop {
        object.remove(name);
    }
    for name in &expect.redact_hash {
        if let Some(v) = object.get_mut(name) {
            *v = Value::String(hmac_hex(&expect.redact_key, &v.to_string()));
        }
    }
    let ts = match ["timestamp", "@timestamp"]
        .into_iter()
        .find(|n| object.contains_key(*n))
    {
        Some(name) => {
            let t = match object.remove(name).unwrap() {
                Value::String(s) => DateTime::parse_from_rfc3339(&s)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| format!("unparseable {name}"))?,
                Value::Number(n) => n
                    .as_i64()
                    .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
                    .ok_or_else(|| format!("unparseable {name}"))?,
                _ => return Err(format!("unparseable {name}")),
            };
            if !(MIN_YEAR..=MAX_YEAR).contains(&t.year()) {
                return Err(format!("{name} outside the years"));
            }
            Some(t)
        }
        None => r
            .timestamp_ms
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single()),
    };
    let mut column = |name: &str| match object.get(name) {
        Some(Value::String(s)) => {
            let s = s.clone();
            object.remove(name);
            Some(s)
        }
        _ => None,
    };
    Ok(Entry {
        ts,
        level: column("level"),
        service: column("service"),
        message: column("message"),
        fields: Value::Object(object),
    })
}

fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

fn hmac_hex(key: &str, text: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(text.as_bytes());
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("hmac:{hex}")
}

/// Reads every record below `ends` back from the topic: assign() from the log's start (offsets
/// that retention deleted are no records any more), no group membership (librdkafka's assign()
/// wants a group id; this one never joins, reads or commits offsets). Done when the reader's
/// position reaches `ends`: it moves past transaction markers and aborted records too, which
/// are never handed over (the reader is `read_committed`, librdkafka's default).
pub fn read_topic(topic: &str, ends: &BTreeMap<i32, i64>) -> HashMap<(i32, i64), KafkaRecord> {
    read_topic_from(&kafka_brokers(), topic, ends)
}

/// [`read_topic`] from another cluster's brokers.
pub fn read_topic_from(
    brokers: &str,
    topic: &str,
    ends: &BTreeMap<i32, i64>,
) -> HashMap<(i32, i64), KafkaRecord> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-readback"))
        .set("enable.partition.eof", "false")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create()
        .expect("readback consumer");
    let mut tpl = TopicPartitionList::new();
    for &p in ends.keys() {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).expect("assign");
    let mut next: BTreeMap<i32, i64> = ends.keys().map(|&p| (p, 0)).collect();
    let mut out = HashMap::new();
    let started = Instant::now();
    let behind = |next: &BTreeMap<i32, i64>| {
        if next.iter().all(|(p, n)| n >= &ends[p]) {
            return false;
        }
        let position = c.position().expect("position");
        ends.iter().any(|(&p, &end)| {
            next[&p] < end
                && !matches!(position.find_partition(topic, p).map(|e| e.offset()), Some(Offset::Offset(o)) if o >= end)
        })
    };
    while behind(&next) {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "reading {topic} back: at {next:?} of {ends:?}"
        );
        let Some(m) = c.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.expect("read the topic back");
        let (p, o) = (m.partition(), m.offset());
        if o >= ends[&p] {
            continue;
        }
        next.insert(p, o + 1);
        out.insert(
            (p, o),
            KafkaRecord {
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().unwrap_or_default().to_vec(),
                timestamp_ms: m.timestamp().to_millis(),
            },
        );
    }
    out
}

/// What a run left behind, counted from the stores against Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Records in Kafka (below the end offsets).
    pub records: u64,
    /// Offsets that are neither a row nor a dead letter.
    pub lost: u64,
    /// Offsets that are both a row and a dead letter, and generated records stored twice.
    pub pg_duplicates: u64,
    /// Documents beyond one per record.
    pub es_duplicates: u64,
    /// Rows, documents or dead letters that differ from the record they came from (or come
    /// from no record), and malformed records stored as rows.
    pub mismatched: u64,
    pub dead_lettered: u64,
    /// Good records (that must be stored) found in dead_letters.
    pub good_dead_lettered: u64,
    /// Offsets of a partition stored below its PostgreSQL watermark but missing, or stored at
    /// or beyond it: the watermark row does not cover exactly the stored offsets.
    pub watermark_gaps: u64,
    pub stored: u64,
    pub indexed: u64,
    /// A few examples of each problem, for the failure message.
    pub problems: Vec<String>,
}

impl Verdict {
    /// Prints the summary line, then fails unless every record is exactly where it belongs.
    pub fn assert_exact(&self, what: &str) {
        println!(
            "{what}: records={} stored={} indexed={} dead_lettered={} lost={} pg_duplicates={} es_duplicates={} mismatched={} good_dead_lettered={}",
            self.records,
            self.stored,
            self.indexed,
            self.dead_lettered,
            self.lost,
            self.pg_duplicates,
            self.es_duplicates,
            self.mismatched,
            self.good_dead_lettered
        );
        self.assert_exact_unprinted(what);
    }

    /// [`Verdict::assert_exact`] without the summary line (for callers printing their own).
    pub fn assert_exact_unprinted(&self, what: &str) {
        self.assert_sound(what);
        assert_eq!(
            self.good_dead_lettered,
            0,
            "{what}: good records dead-lettered:\n{}",
            self.problems.join("\n")
        );
    }

    /// Nothing lost, duplicated or different from Kafka; every record accounted for once.
    pub fn assert_sound(&self, what: &str) {
        assert_eq!(
            (
                self.lost,
                self.pg_duplicates,
                self.es_duplicates,
                self.mismatched,
                self.watermark_gaps
            ),
            (0, 0, 0, 0, 0),
            "{what}: (lost, pg_duplicates, es_duplicates, mismatched, watermark_gaps); {} records, {} stored, {} indexed, {} dead-lettered; examples:\n{}",
            self.records,
            self.stored,
            self.indexed,
            self.dead_lettered,
            self.problems.join("\n")
        );
        assert_eq!(
            self.stored + self.dead_lettered,
            self.records,
            "{what}: every record stored or dead-lettered once"
        );
        assert_eq!(
            self.indexed, self.stored,
            "{what}: both stores hold the same records"
        );
    }
}

/// Collects a few examples per kind of problem.
#[derive(Default)]
struct Problems {
    seen: BTreeMap<&'static str, (u64, Vec<String>)>,
}

impl Problems {
    fn add(&mut self, kind: &'static str, detail: impl FnOnce() -> String) {
        let e = self.seen.entry(kind).or_default();
        e.0 += 1;
        if e.1.len() < EXAMPLES {
            e.1.push(detail());
        }
    }
    fn lines(&self) -> Vec<String> {
        self.seen
            .iter()
            .flat_map(|(kind, (n, ex))| {
                std::iter::once(format!("{kind}: {n}")).chain(ex.iter().map(|e| format!("  {e}")))
            })
            .collect()
    }
}

/// Offsets `v` (sorted) as ranges: `0..3, 7, 9..12`.
pub fn ranges(v: &[i64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            v[i].to_string()
        } else {
            format!("{}..{}", v[i], v[j] + 1)
        });
        i = j + 1;
    }
    if out.len() > 8 {
        let n = out.len();
        out.truncate(8);
        out.push(format!("... ({n} ranges)"));
    }
    out.join(", ")
}

/// Compares, per partition, the set of stored offsets (rows and dead letters) with the
/// watermark's `0..next_offset`. Returns one line per partition that differs, and how many
/// offsets differ in all.
pub fn against_watermark(
    watermarks: &BTreeMap<i32, i64>,
    stored: &BTreeMap<i32, BTreeSet<i64>>,
) -> (u64, Vec<String>) {
    let partitions: BTreeSet<i32> = watermarks.keys().chain(stored.keys()).copied().collect();
    let (mut n, mut lines) = (0, Vec::new());
    for p in partitions {
        let w = watermarks.get(&p).copied().unwrap_or(0);
        let have = stored.get(&p).cloned().unwrap_or_default();
        let missing: Vec<i64> = (0..w).filter(|o| !have.contains(o)).collect();
        let beyond: Vec<i64> = have.iter().copied().filter(|&o| o < 0 || o >= w).collect();
        if !missing.is_empty() || !beyond.is_empty() {
            n += (missing.len() + beyond.len()) as u64;
            lines.push(format!(
                "partition {p}: watermark {w}; below it neither stored nor dead-lettered: [{}]; stored at or beyond it: [{}]",
                ranges(&missing),
                ranges(&beyond)
            ));
        }
    }
    (n, lines)
}

pub type Row = (
    String,
    i32,
    i64,
    DateTime<Utc>,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    Option<Vec<u8>>,
    Option<DateTime<Utc>>,
);

impl Scenario {
    /// The recorded gaps (offsets without a record) of this scenario's topic.
    pub async fn source_gaps(&self) -> Vec<(i32, i64, i64)> {
        let pool = self.pg().await;
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT kafka_partition, from_offset, to_offset FROM {}.source_gaps WHERE topic = $1",
            self.schema
        )))
        .bind(self.stored_name())
        .fetch_all(&pool)
        .await
        .unwrap_or_default()
    }

    /// Every record of the topic below the end offsets.
    pub fn read_back(&self, ends: &BTreeMap<i32, i64>) -> HashMap<(i32, i64), KafkaRecord> {
        read_topic(&self.topic, ends)
    }

    /// Reads everything back from Kafka and both stores and counts what went wrong, under the
    /// documented rules and the daemon's default settings.
    pub async fn verify(&self) -> Verdict {
        self.verify_with(&Expectation::default()).await
    }

    /// [`Scenario::verify`] for a daemon with other settings or input with other fates.
    pub async fn verify_with(&self, expect: &Expectation) -> Verdict {
        let ends = self.end_offsets();
        let kafka = self.read_back(&ends);
        self.verify_against(kafka, expect).await
    }

    /// [`Scenario::verify_with`] against records read from Kafka earlier (`kafka`): for a
    /// topic that lost records since, by retention, after some were stored.
    pub async fn verify_against(
        &self,
        kafka: HashMap<(i32, i64), KafkaRecord>,
        expect: &Expectation,
    ) -> Verdict {
        let fates: HashMap<(i32, i64), Fate> =
            kafka.iter().map(|(k, r)| (*k, fate(r, expect))).collect();
        let pool = self.pg().await;
        let mut problems = Problems::default();
        let at = |p: i32, o: i64| format!("{}/{p}@{o}", self.stored_name());
        // With an adopted incarnation, what is stored under the topic's own name is another
        // incarnation's: not this verification's business.
        // Nor are the neighbours' records.
        let other_incarnation = |t: &str| {
            (self.stored_as.is_some() && t == self.topic) || self.neighbours.iter().any(|n| n == t)
        };

        // PostgreSQL rows against the records' expected entries.
        let q = format!(
            "SELECT topic, kafka_partition, kafka_offset, ts, level, service, message, fields::text, kafka_key, kafka_ts FROM {}.log_records",
            self.schema
        );
        let mut rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(q))
            .fetch_all(&pool)
            .await
            .expect("read log_records");
        rows.retain(|r| !other_incarnation(&r.0));
        let mut mismatched = 0u64;
        for r in &rows {
            let (p, o) = (r.1, r.2);
            let why = match (fates.get(&(p, o)), kafka.get(&(p, o))) {
                (Some(Fate::Stored(e)), Some(k)) if r.0 == self.stored_name() => {
                    row_differs(r, e, k)
                }
                (Some(Fate::Dead(why)), _) => {
                    Some(format!("stored, but must be a dead letter: {why}"))
                }
                _ => Some(format!("row of topic {} matches no record in Kafka", r.0)),
            };
            if let Some(why) = why {
                mismatched += 1;
                problems.add("row differs from its record", || {
                    format!("{}: {why}", at(p, o))
                });
            }
        }
        let q = format!(
            "SELECT count(*) - count(DISTINCT fields->>'seq') FROM {}.log_records WHERE fields ? 'seq'",
            self.schema
        );
        let (pg_seq_dups,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(q))
            .fetch_one(&pool)
            .await
            .expect("seq duplicates");

        // Dead letters: exactly the records that must be, holding their raw bytes.
        let q = format!(
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = '{}' AND table_name = 'dead_letters' AND column_name = 'payload_encoding'",
            self.schema
        );
        let (has_encoding,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(q))
            .fetch_one(&pool)
            .await
            .expect("dead_letters columns");
        let q = format!(
            "SELECT topic, kafka_partition, kafka_offset, kafka_key, payload, stage, reason, {} FROM {}.dead_letters",
            if has_encoding > 0 {
                "payload_encoding"
            } else {
                "NULL::text"
            },
            self.schema
        );
        type Dead = (
            String,
            i32,
            i64,
            Option<Vec<u8>>,
            Option<Vec<u8>>,
            String,
            String,
            Option<String>,
        );
        let mut dead: Vec<Dead> = sqlx::query_as(sqlx::AssertSqlSafe(q))
            .fetch_all(&pool)
            .await
            .expect("read dead_letters");
        dead.retain(|d| !other_incarnation(&d.0));
        let mut good_dead_lettered = 0u64;
        for (topic, p, o, key, payload, stage, reason, encoding) in &dead {
            let (p, o) = (*p, *o);
            let (Some(f), Some(k), true) = (
                fates.get(&(p, o)),
                kafka.get(&(p, o)),
                *topic == self.stored_name(),
            ) else {
                mismatched += 1;
                problems.add("dead letter of no record", || {
                    format!("{topic}/{p}@{o}: {stage}: {reason}")
                });
                continue;
            };
            if let Fate::Stored(_) = f {
                good_dead_lettered += 1;
                problems.add("good record dead-lettered", || {
                    format!("{}: stage {stage}: {}", at(p, o), clip(reason, 300))
                });
            }
            let mut why = Vec::new();
            if payload.as_deref().unwrap_or_default() != k.payload.as_slice() {
                why.push("payload is not the record's raw bytes".to_string());
            }
            if key != &k.key {
                why.push("key differs".to_string());
            }
            if has_encoding > 0 && encoding.as_deref() != Some("raw") {
                why.push(format!("payload_encoding {encoding:?}, not \"raw\""));
            }
            if !why.is_empty() {
                mismatched += 1;
                problems.add("dead letter differs from its record", || {
                    format!(
                        "{}: {} (stage {stage}: {})",
                        at(p, o),
                        why.join(", "),
                        clip(reason, 200)
                    )
                });
            }
        }

        // Every offset exactly once; the watermark covering exactly what is stored.
        let mut stored: BTreeMap<i32, BTreeSet<i64>> = BTreeMap::new();
        let mut both = 0u64;
        for (p, o) in rows
            .iter()
            .map(|r| (r.1, r.2))
            .chain(dead.iter().map(|d| (d.1, d.2)))
        {
            if !stored.entry(p).or_default().insert(o) {
                both += 1;
                problems.add("offset both a row and a dead letter", || at(p, o));
            }
        }
        // Every record Kafka handed over is stored (offsets without a record, such as
        // transaction markers, are not records to lose; `source_gaps` must account for them).
        let mut lost = 0u64;
        let mut by_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
        for &(p, o) in kafka.keys() {
            if !stored.get(&p).is_some_and(|h| h.contains(&o)) {
                by_partition.entry(p).or_default().push(o);
            }
        }
        for (p, mut missing) in by_partition {
            missing.sort_unstable();
            lost += missing.len() as u64;
            problems.add("lost", || format!("partition {p}: [{}]", ranges(&missing)));
        }
        let mut accounted = stored.clone();
        for (p, from, to) in self.source_gaps().await {
            accounted.entry(p).or_default().extend(from..to);
        }
        let (watermark_gaps, lines) = against_watermark(&self.pg_watermarks().await, &accounted);
        for l in lines {
            problems.add("watermark does not cover exactly the stored offsets", || l);
        }

        // OpenSearch: one document per stored record, equal to the record's expected entry.
        let mut docs_per_key: HashMap<(i32, i64), u32> = HashMap::new();
        let mut doc_seqs: HashMap<u64, u32> = HashMap::new();
        let mut indexed = 0u64;
        let search = (expect.search_url.clone()).unwrap_or_else(elasticsearch_url);
        es_hits_at(&search, &format!("{}-*", self.index), |hit| {
            let src = &hit["_source"];
            if src["kafka"]["topic"]
                .as_str()
                .is_some_and(&other_incarnation)
            {
                return;
            }
            indexed += 1;
            let (Some(p), Some(o)) = (
                src["kafka"]["partition"].as_i64(),
                src["kafka"]["offset"].as_i64(),
            ) else {
                mismatched += 1;
                problems.add("document without kafka coordinates", || {
                    clip(&src.to_string(), 200)
                });
                return;
            };
            let (p, o) = (p as i32, o);
            *docs_per_key.entry((p, o)).or_default() += 1;
            if let Some(seq) = src["fields"]["seq"].as_u64() {
                *doc_seqs.entry(seq).or_default() += 1;
            }
            let why = match (fates.get(&(p, o)), kafka.get(&(p, o))) {
                (Some(Fate::Stored(e)), Some(_)) => {
                    doc_differs(hit, e, self.stored_name(), &self.index)
                }
                (Some(Fate::Dead(why)), _) => {
                    Some(format!("indexed, but must be a dead letter: {why}"))
                }
                _ => Some("matches no record in Kafka".into()),
            };
            if let Some(why) = why {
                mismatched += 1;
                problems.add("document differs from its record", || {
                    format!("{}: {why}", at(p, o))
                });
            }
        })
        .await;
        let es_duplicates = docs_per_key
            .values()
            .map(|&n| u64::from(n - 1))
            .sum::<u64>()
            + doc_seqs.values().map(|&n| u64::from(n - 1)).sum::<u64>();
        // Stored records without their document, documents without their row.
        let row_keys: BTreeSet<(i32, i64)> = rows.iter().map(|r| (r.1, r.2)).collect();
        for &(p, o) in row_keys.iter().filter(|k| !docs_per_key.contains_key(k)) {
            mismatched += 1;
            problems.add("row without its document", || at(p, o));
        }
        for &(p, o) in docs_per_key.keys().filter(|k| !row_keys.contains(k)) {
            mismatched += 1;
            problems.add("document without its row", || at(p, o));
        }

        Verdict {
            records: kafka.len() as u64,
            lost,
            pg_duplicates: both + pg_seq_dups as u64,
            es_duplicates,
            mismatched,
            dead_lettered: dead.len() as u64,
            good_dead_lettered,
            watermark_gaps,
            stored: rows.len() as u64,
            indexed,
            problems: problems.lines(),
        }
    }
}

fn clip(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// Where `got` differs from `want`: the paths (objects followed) with both values.
fn differences(path: &str, got: &Value, want: &Value) -> String {
    fn walk(path: String, got: &Value, want: &Value, out: &mut Vec<String>) {
        match (got, want) {
            _ if got == want => {}
            (Value::Object(g), Value::Object(w)) => {
                let keys: BTreeSet<&String> = g.keys().chain(w.keys()).collect();
                for k in keys {
                    match (g.get(k), w.get(k)) {
                        (Some(a), Some(b)) => walk(format!("{path}.{k}"), a, b, out),
                        (Some(a), None) => out.push(format!(
                            "{path}.{k} unexpected: {}",
                            clip(&a.to_string(), 80)
                        )),
                        (None, b) => out.push(format!(
                            "{path}.{k} missing: {}",
                            clip(&b.unwrap_or(&Value::Null).to_string(), 80)
                        )),
                    }
                }
            }
            _ => out.push(format!(
                "{path}: {} != {}",
                clip(&got.to_string(), 80),
                clip(&want.to_string(), 80)
            )),
        }
    }
    let mut out = Vec::new();
    walk(path.to_string(), got, want, &mut out);
    out.truncate(5);
    out.join(", ")
}

fn same_time(a: DateTime<Utc>, b: DateTime<Utc>) -> bool {
    // PostgreSQL keeps microseconds.
    (a - b).num_nanoseconds().is_some_and(|d| d.abs() < 1000)
}

pub fn row_differs(r: &Row, e: &Entry, k: &KafkaRecord) -> Option<String> {
    let fields: Value = serde_json::from_str(&r.7).unwrap_or(Value::Null);
    let mut why = Vec::new();
    if e.ts.is_some_and(|t| !same_time(t, r.3)) {
        why.push(format!("ts {} != {}", r.3, e.ts.unwrap()));
    }
    if (&r.4, &r.5, &r.6) != (&e.level, &e.service, &e.message) {
        why.push(format!(
            "level/service/message {:?} != {:?}",
            (&r.4, &r.5, &r.6),
            (&e.level, &e.service, &e.message)
        ));
    }
    if fields != e.fields {
        why.push(differences("fields", &fields, &e.fields));
    }
    if r.8 != k.key {
        why.push("kafka_key differs".into());
    }
    let kafka_ts = k
        .timestamp_ms
        .and_then(|ms| Utc.timestamp_millis_opt(ms).single());
    if r.9.map(|t| t.timestamp_millis()) != kafka_ts.map(|t| t.timestamp_millis()) {
        why.push(format!("kafka_ts {:?} != {kafka_ts:?}", r.9));
    }
    (!why.is_empty()).then(|| why.join("; "))
}

pub fn doc_differs(hit: &Value, e: &Entry, topic: &str, index: &str) -> Option<String> {
    let mut src = hit["_source"].clone();
    let kafka = src.as_object_mut()?.remove("kafka").unwrap_or(Value::Null);
    let mut why = Vec::new();
    if kafka["topic"] != topic {
        why.push(format!("kafka.topic {}", kafka["topic"]));
    }
    let mut want: Map<String, Value> = Map::new();
    match e.ts {
        Some(t) => {
            want.insert(
                "@timestamp".into(),
                t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                    .into(),
            );
            let want_index = format!("{index}-{}", t.format("%Y.%m.%d"));
            // In data-stream mode the hit names the stream's backing index.
            let backing = format!(".ds-{want_index}-");
            let got = hit["_index"].as_str().unwrap_or_default();
            if got != want_index && !got.starts_with(&backing) {
                why.push(format!("in index {}, not {want_index}", hit["_index"]));
            }
        }
        None => {
            want.insert("@timestamp".into(), src["@timestamp"].clone());
        }
    }
    want.insert("level".into(), json!(e.level));
    want.insert("service".into(), json!(e.service));
    want.insert("message".into(), json!(e.message));
    want.insert("fields".into(), e.fields.clone());
    let want = Value::Object(want);
    if src != want {
        why.push(differences("document", &src, &want));
    }
    (!why.is_empty()).then(|| why.join("; "))
}

/// Every hit (`_index`, `_id`, `_source`) of an index pattern, refreshed first, via a scroll
/// (no sort, so no page boundary can hide a duplicate).
pub async fn es_hits(pattern: &str, f: impl FnMut(&Value)) {
    es_hits_at(&elasticsearch_url(), pattern, f).await
}

/// [`es_hits`] on the search store at `base`.
pub async fn es_hits_at(base: &str, pattern: &str, mut f: impl FnMut(&Value)) {
    http("POST", &format!("{base}/{pattern}/_refresh"), None).await;
    let (status, mut text) = http(
        "POST",
        &format!(
            "{base}/{pattern}/_search?scroll=2m&ignore_unavailable=true&allow_no_indices=true"
        ),
        Some(json!({"size": 2000, "sort": ["_doc"], "query": {"match_all": {}}}).to_string()),
    )
    .await;
    assert_eq!(status, 200, "search {pattern}: {text}");
    loop {
        let v: Value = serde_json::from_str(&text).expect("search response");
        let hits = v["hits"]["hits"].as_array().cloned().unwrap_or_default();
        let scroll_id = v["_scroll_id"].as_str().map(str::to_string);
        if hits.is_empty() {
            if let Some(id) = scroll_id {
                http(
                    "DELETE",
                    &format!("{base}/_search/scroll"),
                    Some(json!({"scroll_id": [id]}).to_string()),
                )
                .await;
            }
            return;
        }
        hits.iter().for_each(&mut f);
        let id = scroll_id.expect("scroll id");
        let (status, next) = http(
            "POST",
            &format!("{base}/_search/scroll"),
            Some(json!({"scroll": "2m", "scroll_id": id}).to_string()),
        )
        .await;
        assert_eq!(status, 200, "scroll {pattern}: {next}");
        text = next;
    }
}
