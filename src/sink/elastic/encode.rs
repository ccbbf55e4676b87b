//! What a record looks like in the search store: its bulk lines and its document. PostgreSQL
//! holds the same fields.

use serde_json::{Value, json};

use crate::model::{StoredRecord, TopicPartition, document_id};

use super::ElasticSink;

impl ElasticSink {
    /// The action line and document line of one record. Data streams take only `create`; a
    /// replayed record then answers 409, which counts as stored.
    pub(super) fn bulk_lines(&self, tp: &TopicPartition, r: &StoredRecord) -> Vec<u8> {
        let op = if self.settings.data_stream {
            "create"
        } else {
            "index"
        };
        let target = json!({ "_index": self.index_name(r), "_id": document_id(tp, r.offset) });
        let action = Value::Object([(op.to_string(), target)].into_iter().collect());
        let mut out = action.to_string().into_bytes();
        out.push(b'\n');
        serde_json::to_writer(&mut out, &document(tp, r))
            .expect("serialising JSON to memory cannot fail");
        out.push(b'\n');
        out
    }
}

/// The document for a record. PostgreSQL holds the same fields. Borrowed, so serialising a
/// batch copies no field maps.
#[derive(serde::Serialize)]
struct Document<'a> {
    #[serde(rename = "@timestamp")]
    timestamp: String,
    level: &'a Option<String>,
    service: &'a Option<String>,
    message: &'a Option<String>,
    fields: &'a serde_json::Map<String, Value>,
    kafka: KafkaMeta<'a>,
}

#[derive(serde::Serialize)]
struct KafkaMeta<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
}

fn document<'a>(tp: &'a TopicPartition, r: &'a StoredRecord) -> Document<'a> {
    Document {
        timestamp: r
            .entry
            .timestamp
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        level: &r.entry.level,
        service: &r.entry.service,
        message: &r.entry.message,
        fields: &r.entry.fields,
        kafka: KafkaMeta {
            topic: &tp.topic,
            partition: tp.partition,
            offset: r.offset,
        },
    }
}
