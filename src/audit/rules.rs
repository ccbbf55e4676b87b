//! The audit's rules, apart from any I/O so they can be tested on their own: what one range of
//! a partition's offsets holds in Kafka and in both stores, and every way those disagree.
//!
//! An offset below the watermark must be a row, a dead letter, a parked record or inside a
//! recorded gap; a row has exactly one document and it says what the row says; a document has
//! a row (or a parked record, whose document may already be in); and a row says what these
//! settings make of the Kafka record, when Kafka still holds it.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::Kind;

/// A document found in the search store at one offset.
#[derive(Clone, Debug, PartialEq)]
pub struct Doc {
    pub index: String,
    pub id: String,
    pub source: Value,
}

/// What a record should be in both stores: its document, its index (`None` when any index
/// will do: the backing indices of a data stream), and the row's columns the document does
/// not carry (the Kafka key and time).
#[derive(Clone, Debug, PartialEq)]
pub struct Shape {
    pub document: Value,
    pub index: Option<String>,
    pub key: Option<Vec<u8>>,
    pub kafka_ms: Option<i64>,
}

/// A record as Kafka holds it, as these settings decode it.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    Decoded(Shape),
    /// It does not decode: only a dead letter can account for it.
    Undecodable,
}

/// The offsets `[from, to)` of one partition as read from Kafka and both stores.
#[derive(Clone, Debug, Default)]
pub struct Range {
    pub from: i64,
    pub to: i64,
    /// The records Kafka returned in the range, or `None` when Kafka was not read (the
    /// daemon's sampled check). An offset missing here is one Kafka holds no record at (any
    /// more: retention and compaction remove records the stores keep).
    pub kafka: Option<BTreeMap<i64, Source>>,
    pub rows: BTreeMap<i64, Shape>,
    pub dead: BTreeSet<i64>,
    pub parked: BTreeSet<i64>,
    /// Recorded gaps `[from, to)`, in any order, perhaps reaching outside the range.
    pub gaps: Vec<(i64, i64)>,
    pub docs: BTreeMap<i64, Vec<Doc>>,
}

/// One divergence at one offset.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Finding {
    pub kind: Kind,
    pub offset: i64,
    /// The index and id of the document concerned (document kinds only).
    pub index: Option<String>,
    pub id: Option<String>,
    /// For an unaccounted offset: whether Kafka still holds its record (then it can be read
    /// again); otherwise whether what it names could be mended without guessing.
    pub repairable: bool,
}

impl Range {
    fn in_gap(&self, offset: i64) -> bool {
        self.gaps.iter().any(|&(a, b)| a <= offset && offset < b)
    }

    fn in_kafka(&self, offset: i64) -> Option<&Source> {
        self.kafka.as_ref().and_then(|k| k.get(&offset))
    }
}

/// Every divergence of the range, in offset order.
pub fn check(r: &Range) -> Vec<Finding> {
    let mut out = Vec::new();
    let find = |kind, offset, doc: Option<&Doc>, repairable| Finding {
        kind,
        offset,
        index: doc.map(|d| d.index.clone()),
        id: doc.map(|d| d.id.clone()),
        repairable,
    };
    let no_docs = Vec::new();
    for offset in r.from..r.to {
        let row = r.rows.get(&offset);
        let docs = r.docs.get(&offset).unwrap_or(&no_docs);
        let accounted = row.is_some()
            || r.dead.contains(&offset)
            || r.parked.contains(&offset)
            // A recorded gap where Kafka hands over a record is no reason: the record is there.
            || (r.in_gap(offset) && r.in_kafka(offset).is_none());
        if !accounted {
            let held = r.in_kafka(offset).is_some();
            out.push(find(Kind::Unaccounted, offset, None, held));
        }
        let Some(row) = row else {
            // A parked record's document goes in before its row moves over: either is fine.
            if !r.parked.contains(&offset) {
                for d in docs {
                    out.push(find(Kind::DocumentWithoutRow, offset, Some(d), true));
                }
            }
            continue;
        };
        // The document in the row's own index is the one that counts; any other is a copy.
        let primary = docs
            .iter()
            .position(|d| row.index.as_deref().is_none_or(|i| i == d.index))
            .or((!docs.is_empty()).then_some(0));
        match primary {
            None => out.push(find(Kind::RowWithoutDocument, offset, None, true)),
            Some(p) => {
                if !same(&docs[p].source, &row.document) {
                    out.push(find(Kind::DocumentMismatch, offset, Some(&docs[p]), true));
                }
                for (i, d) in docs.iter().enumerate() {
                    if i != p {
                        out.push(find(Kind::DuplicateDocument, offset, Some(d), true));
                    }
                }
            }
        }
        if let Some(kafka) = &r.kafka {
            let agrees = match kafka.get(&offset) {
                Some(Source::Decoded(k)) => {
                    same(&k.document, &row.document)
                        && k.key == row.key
                        && k.kafka_ms == row.kafka_ms
                }
                Some(Source::Undecodable) => false,
                // Compaction removes records the rows keep; nothing to compare with.
                None => true,
            };
            if !agrees {
                // The row is what a store holds; only an operator knows whether the record or
                // today's settings are what changed.
                out.push(find(Kind::SourceMismatch, offset, None, false));
            }
        }
    }
    out
}

/// JSON equality where a number equals another of the same value however it is written:
/// PostgreSQL's `jsonb` writes `1e2` as `100`, which is no change of value.
pub fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x == y || matches!((x.as_f64(), y.as_f64()), (Some(p), Some(q)) if p == q)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// The findings of both reads of a range: a divergence counts only when it is seen again a
/// moment later, so a record in flight (a document indexed just before its row, a dead letter
/// being replayed) is not reported.
pub fn confirmed(first: &[Finding], again: &[Finding]) -> Vec<Finding> {
    let again: BTreeSet<&Finding> = again.iter().collect();
    first
        .iter()
        .filter(|f| again.contains(f))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests;
