//! Proving the guarantee on a live system: every offset of a partition below its watermark
//! compared across Kafka, PostgreSQL and the search store (`log-processor audit`), mended
//! where that needs no guess (`--repair`), and sampled by the running daemon
//! (`log_processor_divergence_total`).
//!
//! `rules` says what a divergence is, on plain data; `read` fetches one range of offsets from
//! the three systems, streamed in bounded chunks; `repair` mends what it can; `sample` is the
//! daemon's cheap continuous check.

pub mod read;
pub mod repair;
pub mod rules;
pub mod run;
pub mod sample;

use std::collections::BTreeMap;

use crate::model::TopicPartition;
pub use rules::Finding;

/// The kinds of divergence, in the order a report lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Below the watermark, neither a row, a dead letter, a parked record nor a recorded gap.
    Unaccounted,
    /// A row whose document the search store does not hold.
    RowWithoutDocument,
    /// A document without a row (nor a parked record).
    DocumentWithoutRow,
    /// A second document of one record (another index).
    DuplicateDocument,
    /// A document that says something else than its row.
    DocumentMismatch,
    /// A row that says something else than these settings make of the Kafka record.
    SourceMismatch,
    /// Kafka's committed offset past the stored watermark: Kafka was told records are stored
    /// that the stores do not account for.
    CommittedPastWatermark,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Unaccounted,
        Kind::RowWithoutDocument,
        Kind::DocumentWithoutRow,
        Kind::DuplicateDocument,
        Kind::DocumentMismatch,
        Kind::SourceMismatch,
        Kind::CommittedPastWatermark,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Unaccounted => "unaccounted",
            Kind::RowWithoutDocument => "row_without_document",
            Kind::DocumentWithoutRow => "document_without_row",
            Kind::DuplicateDocument => "duplicate_document",
            Kind::DocumentMismatch => "document_mismatch",
            Kind::SourceMismatch => "source_mismatch",
            Kind::CommittedPastWatermark => "committed_past_watermark",
        }
    }
}

/// Consecutive offsets `[from, to)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Span {
    pub from: i64,
    pub to: i64,
}

/// The offsets of one kind in one partition, as spans.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Spans {
    pub count: u64,
    pub spans: Vec<Span>,
}

impl Spans {
    pub fn add(&mut self, offset: i64) {
        self.count += 1;
        match self.spans.last_mut() {
            Some(s) if s.to == offset => s.to += 1,
            Some(s) if s.to > offset => {} // the same offset again (two documents)
            _ => self.spans.push(Span {
                from: offset,
                to: offset + 1,
            }),
        }
    }

    pub fn offsets(&self) -> impl Iterator<Item = i64> + '_ {
        self.spans.iter().flat_map(|s| s.from..s.to)
    }
}

/// What an audit found in one partition.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PartitionReport {
    pub topic: String,
    pub partition: i32,
    /// The range audited.
    pub from: i64,
    pub to: i64,
    pub watermark: Option<i64>,
    pub committed: Option<i64>,
    /// The first offset Kafka still holds.
    pub log_start: i64,
    pub offsets_checked: u64,
    pub records_read: u64,
    pub documents_read: u64,
    /// Divergences by kind.
    pub found: BTreeMap<Kind, Spans>,
    /// Unaccounted offsets Kafka no longer holds: lost, unless an operator can bring them back.
    pub lost: Spans,
    /// What `status` warns about this partition.
    pub notes: Vec<String>,
}

impl PartitionReport {
    pub fn new(tp: &TopicPartition) -> Self {
        Self {
            topic: tp.topic.to_string(),
            partition: tp.partition,
            ..Self::default()
        }
    }

    pub fn record(&mut self, f: &Finding) {
        self.found.entry(f.kind).or_default().add(f.offset);
        if f.kind == Kind::Unaccounted && !f.repairable {
            self.lost.add(f.offset);
        }
    }

    pub fn clean(&self) -> bool {
        self.found.is_empty()
    }
}

/// A whole audit.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Report {
    pub partitions: Vec<PartitionReport>,
    pub seconds: f64,
}

impl Report {
    pub fn clean(&self) -> bool {
        self.partitions.iter().all(PartitionReport::clean)
    }

    pub fn divergences(&self) -> u64 {
        let spans = self.partitions.iter().flat_map(|p| p.found.values());
        spans.map(|s| s.count).sum()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for p in &self.partitions {
            write!(
                f,
                "{}[{}] offsets {}..{}: {} checked, {} records read from Kafka (log start {}), \
                 {} documents",
                p.topic,
                p.partition,
                p.from,
                p.to,
                p.offsets_checked,
                p.records_read,
                p.log_start,
                p.documents_read
            )?;
            if p.clean() {
                writeln!(f, ": clean")?;
                continue;
            }
            writeln!(f)?;
            for note in &p.notes {
                writeln!(f, "  note: {note}")?;
            }
            for (kind, spans) in &p.found {
                writeln!(
                    f,
                    "  {:<26} {:>8}  {}",
                    kind.as_str(),
                    spans.count,
                    show(spans)
                )?;
            }
            if p.lost.count > 0 {
                writeln!(
                    f,
                    "  {:<26} {:>8}  {}  (gone from Kafka and from both stores)",
                    "lost",
                    p.lost.count,
                    show(&p.lost)
                )?;
            }
        }
        write!(
            f,
            "audit: {} partitions, {} divergences, {:.1} s",
            self.partitions.len(),
            self.divergences(),
            self.seconds
        )
    }
}

/// Spans as `a..b, c, ...`, the first few only.
fn show(spans: &Spans) -> String {
    const SHOWN: usize = 8;
    let mut parts: Vec<String> = (spans.spans.iter().take(SHOWN))
        .map(|s| match s.to - s.from {
            1 => s.from.to_string(),
            _ => format!("{}..{}", s.from, s.to),
        })
        .collect();
    if spans.spans.len() > SHOWN {
        parts.push(format!("… {} more spans", spans.spans.len() - SHOWN));
    }
    parts.join(", ")
}
