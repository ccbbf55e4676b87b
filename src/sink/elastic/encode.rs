//! What a record looks like in the search store: its bulk lines and its document. PostgreSQL
//! holds the same fields.
//!
//! A batch is encoded once into one buffer; a retry or a split sends slices of it again.
//! `fields` is the text decode serialised once (`model::Fields`), copied in as it is.

use std::io::Write;
use std::ops::Range;

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::model::{StoredRecord, TopicPartition};

use super::ElasticSink;

/// The bulk lines (action and document) of a batch's records, back to back.
pub(super) struct Encoded {
    /// Shared, so a request of consecutive records is a slice of it, not a copy.
    buf: Bytes,
    /// Where record i's two lines end in `buf` (they start where record i-1's end).
    ends: Vec<usize>,
}

impl Encoded {
    pub(super) fn span(&self, i: usize) -> Range<usize> {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        start..self.ends[i]
    }

    pub(super) fn len_of(&self, i: usize) -> usize {
        self.span(i).len()
    }

    /// A `_bulk` body of the given records, in order.
    pub(super) fn body(&self, items: &[usize]) -> Bytes {
        let consecutive = items.windows(2).all(|w| w[1] == w[0] + 1);
        match (items.first(), items.last()) {
            (Some(&first), Some(&last)) if consecutive => {
                self.buf.slice(self.span(first).start..self.span(last).end)
            }
            _ => {
                let size = items.iter().map(|&i| self.len_of(i)).sum();
                let mut body = Vec::with_capacity(size);
                for &i in items {
                    body.extend_from_slice(&self.buf[self.span(i)]);
                }
                Bytes::from(body)
            }
        }
    }
}

impl ElasticSink {
    /// The bulk lines of every record, each to its own index (`index_name`) or to the given
    /// destinations (parked records, perhaps re-routed). Data streams take only `create`; a
    /// replayed record then answers 409, which counts as stored.
    pub(super) fn encode(
        &self,
        tp: &TopicPartition,
        records: &[StoredRecord],
        destinations: Option<&[String]>,
    ) -> Encoded {
        let mut buf = Vec::with_capacity(records.len() * 512);
        let mut ends = Vec::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            match destinations {
                Some(d) => self.bulk_lines(tp, r, &d[i], &mut buf),
                None => self.bulk_lines(tp, r, &self.index_name(r), &mut buf),
            }
            ends.push(buf.len());
        }
        Encoded {
            buf: Bytes::from(buf),
            ends,
        }
    }

    /// Appends one record's action line and document line to `out`.
    fn bulk_lines(&self, tp: &TopicPartition, r: &StoredRecord, index: &str, out: &mut Vec<u8>) {
        let op = if self.settings.data_stream {
            "create"
        } else {
            "index"
        };
        let action = Action {
            index,
            id: format_args!("{}-{}-{}", tp.topic, tp.partition, r.offset),
        };
        let json = "serialising JSON to memory cannot fail";
        write!(out, "{{\"{op}\":").expect(json);
        serde_json::to_writer(&mut *out, &action).expect(json);
        out.extend_from_slice(b"}\n");
        serde_json::to_writer(&mut *out, &document(tp, r)).expect(json);
        out.push(b'\n');
    }
}

/// About how many fields a record's document adds to an index mapping: the fixed ones, and in
/// `fields` one per key, two per string (text with a keyword sub-field, dynamic mapping's
/// default). Read only when a store names its field limit (see `bulk`).
pub(super) fn mapped_fields(r: &StoredRecord) -> usize {
    fn count(v: &serde_json::Value) -> usize {
        match v {
            serde_json::Value::Object(m) => m.values().map(|v| 1 + count(v)).sum(),
            serde_json::Value::String(_) => 1,
            _ => 0,
        }
    }
    const FIXED: usize = 10;
    let fields: serde_json::Value =
        serde_json::from_str(r.entry.fields.as_str()).unwrap_or_default();
    FIXED + count(&fields)
}

/// The target of one bulk action. `id` is `model::document_id`, written without a String.
#[derive(serde::Serialize)]
struct Action<'a, D: std::fmt::Display> {
    #[serde(rename = "_index")]
    index: &'a str,
    #[serde(rename = "_id", serialize_with = "display")]
    id: D,
}

fn display<D: std::fmt::Display, S: serde::Serializer>(d: &D, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(d)
}

/// The document for a record. PostgreSQL holds the same fields. Borrowed, so serialising a
/// batch copies no field maps.
#[derive(serde::Serialize)]
pub(super) struct Document<'a> {
    #[serde(rename = "@timestamp")]
    timestamp: String,
    level: &'a Option<String>,
    service: &'a Option<String>,
    message: &'a Option<String>,
    fields: &'a RawValue,
    kafka: KafkaMeta<'a>,
}

#[derive(serde::Serialize)]
pub(super) struct KafkaMeta<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
}

pub(super) fn document<'a>(tp: &'a TopicPartition, r: &'a StoredRecord) -> Document<'a> {
    Document {
        timestamp: r
            .entry
            .timestamp
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        level: &r.entry.level,
        service: &r.entry.service,
        message: &r.entry.message,
        fields: r.entry.fields.as_raw(),
        kafka: KafkaMeta {
            topic: &tp.topic,
            partition: tp.partition,
            offset: r.offset,
        },
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::model::{Fields, LogEntry, document_id};

    fn sink(data_stream: bool) -> ElasticSink {
        crate::sink::elastic::test_sink("http://127.0.0.1:9", data_stream)
    }

    fn record(offset: i64, fields: &str) -> StoredRecord {
        StoredRecord {
            offset,
            key: None,
            kafka_timestamp_ms: None,
            entry: LogEntry {
                timestamp: "2026-11-30T10:00:00.123456Z".parse().unwrap(),
                level: Some("warn".into()),
                service: None,
                message: Some("a \"quoted\" message".into()),
                fields: Fields::from_map(&serde_json::from_str(fields).unwrap()),
            },
            route: 0,
            typed: Vec::new(),
        }
    }

    #[test]
    fn bulk_lines_carry_the_deterministic_id_and_the_fields_text_unchanged() {
        let tp = TopicPartition::new("app-logs", 3);
        let fields = r#"{"n":123456789012345678901234567890,"user":{"id":"é"}}"#;
        let records = [record(41, fields), record(42, "{}")];
        for (data_stream, op) in [(false, "index"), (true, "create")] {
            let encoded = sink(data_stream).encode(&tp, &records, None);
            let body = String::from_utf8(encoded.body(&[0, 1]).to_vec()).unwrap();
            let lines: Vec<&str> = body.lines().collect();
            assert_eq!(lines.len(), 4);
            let action: Value = serde_json::from_str(lines[0]).unwrap();
            assert_eq!(
                action,
                json!({ op: { "_index": "logs-2026.11.30", "_id": document_id(&tp, 41) } })
            );
            assert!(
                lines[1].contains(&format!("\"fields\":{fields}")),
                "{}",
                lines[1]
            );
            let doc: Value = serde_json::from_str(lines[1]).unwrap();
            assert_eq!(doc["@timestamp"], "2026-11-30T10:00:00.123456Z");
            assert_eq!(doc["message"], "a \"quoted\" message");
            assert_eq!(
                doc["kafka"],
                json!({"topic": "app-logs", "partition": 3, "offset": 41})
            );
            let second: Value = serde_json::from_str(lines[2]).unwrap();
            assert_eq!(second[op]["_id"], document_id(&tp, 42));
            assert_eq!(encoded.body(&[1]).len(), encoded.len_of(1));
            assert_eq!(encoded.body(&[1]), body[encoded.span(1)].as_bytes());
            // Records not next to each other are copied into a body of their own.
            let three = [record(1, "{}"), record(2, "{}"), record(3, "{}")];
            let encoded = sink(data_stream).encode(&tp, &three, None);
            let (first, last) = (encoded.span(0), encoded.span(2));
            let mut apart = encoded.body(&[0, 1, 2])[first.clone()].to_vec();
            apart.extend_from_slice(&encoded.body(&[0, 1, 2])[last.clone()]);
            assert_eq!(encoded.body(&[0, 2]), apart);
            assert_eq!(
                encoded.body(&[1, 2]).len(),
                encoded.len_of(1) + encoded.len_of(2)
            );
            assert!(encoded.body(&[]).is_empty());
        }
    }
}
