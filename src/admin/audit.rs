//! `log-processor audit`: every offset of the selected partitions below their watermark
//! compared across Kafka, PostgreSQL and the search store (see `crate::audit`), reported by
//! kind and offset range; `--repair` mends what needs no guess.
//!
//! Exit codes: 0 clean (or, with `--repair`, all found was mended), 3 divergence left, 2 bad
//! settings, 1 any other error.

use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rdkafka::consumer::Consumer;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::AdminError;
use crate::audit::read::Context;
use crate::audit::repair::{Mended, Repair};
use crate::audit::run::{self, Audit, Plan};
use crate::audit::{PartitionReport, Report};
use crate::config::Settings;
use crate::dead_letter::DeadLetterPolicy;
use crate::model::TopicPartition;
use crate::redact::Redactor;

#[derive(Args, Clone, Debug)]
pub struct AuditArgs {
    /// Only this topic (default: every topic of LP_TOPICS).
    #[arg(long)]
    pub topic: Option<String>,
    /// Only this partition.
    #[arg(long)]
    pub partition: Option<i32>,
    /// From this offset (default: the first offset the stores account for).
    #[arg(long, conflicts_with = "since")]
    pub from: Option<i64>,
    /// From the first record at or after this time (RFC 3339), as Kafka's index finds it.
    #[arg(long, value_parser = super::parse_time)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Up to this offset, exclusive (default and at most: the partition's watermark).
    #[arg(long, conflicts_with = "until")]
    pub to: Option<i64>,
    /// Up to the first record at or after this time (RFC 3339).
    #[arg(long, value_parser = super::parse_time)]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// Check about this many offsets per partition, in windows spread over the range.
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
    pub sample: Option<i64>,
    /// Offsets read per chunk (memory holds one chunk).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(i64).range(1..=5000))]
    pub chunk_size: i64,
    /// Mend what can be mended without guessing (see README, Audit).
    #[arg(long)]
    pub repair: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub settings: Settings,
}

/// Kafka bytes read per chunk at most.
const CHUNK_BYTES: usize = 64 << 20;
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// An audit's report, and what its repair did.
#[derive(Debug, serde::Serialize)]
pub struct Outcome {
    #[serde(flatten)]
    pub report: Report,
    pub repair: Option<Mended>,
}

impl Outcome {
    /// The process's exit code: 0 when nothing is left to mend, 3 otherwise.
    pub fn exit_code(&self) -> u8 {
        let left = match &self.repair {
            Some(m) => m.unrepaired.values().sum::<u64>() > 0,
            None => !self.report.clean(),
        };
        if left { 3 } else { 0 }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.report)?;
        if let Some(m) = &self.repair {
            let list = |m: &std::collections::BTreeMap<crate::audit::Kind, u64>| {
                let parts: Vec<String> = m
                    .iter()
                    .map(|(k, n)| format!("{}={n}", k.as_str()))
                    .collect();
                if parts.is_empty() {
                    "none".into()
                } else {
                    parts.join(" ")
                }
            };
            write!(
                f,
                "\nrepaired: {}\nnot repaired: {}",
                list(&m.repaired),
                list(&m.unrepaired)
            )?;
            for note in m.notes.iter().take(20) {
                write!(f, "\n  {note}")?;
            }
            let more = (m.notes.len().saturating_sub(20)) as u64 + m.notes_left_out;
            if more > 0 {
                write!(f, "\n  … and {more} more")?;
            }
        }
        Ok(())
    }
}

pub async fn audit(args: &AuditArgs) -> Result<Outcome, AdminError> {
    let started = Instant::now();
    let s = &args.settings;
    let status = super::status::status(s).await?;
    let pg = super::pg(s)?;
    let es = super::es(s)?;
    es.refresh().await?;
    let redactor = Redactor::new(
        s.redact_drop.clone(),
        s.redact_hash.clone(),
        s.redact_key.as_deref(),
    );
    let mut plans = Vec::new();
    let mut reports = Vec::new();
    for p in &status.partitions {
        let selected = args.topic.as_ref().is_none_or(|t| *t == p.topic)
            && args.partition.is_none_or(|n| n == p.partition);
        let Some(watermark) = p.watermark.filter(|_| selected) else {
            continue;
        };
        let kafka = TopicPartition::new(p.topic.as_str(), p.partition);
        let stored = TopicPartition::new(p.stored_as.as_deref().unwrap_or(&p.topic), p.partition);
        // A topic that ends below the watermark is another incarnation: its records are not
        // the stored ones (`status` says so).
        let read_kafka = p.end_offset.is_some_and(|e| e >= watermark);
        let first = pg.first_accounted(&stored).await?.unwrap_or(watermark);
        let from = match (args.from, args.since) {
            (Some(o), _) => o,
            (None, Some(t)) => offset_at(s, &kafka, t).await?.unwrap_or(watermark),
            (None, None) => first,
        };
        let to = match (args.to, args.until) {
            (Some(o), _) => o,
            (None, Some(t)) => offset_at(s, &kafka, t).await?.unwrap_or(watermark),
            (None, None) => watermark,
        }
        .min(watermark);
        let mut report = PartitionReport::new(&kafka);
        (report.from, report.to) = (from, to.max(from));
        report.watermark = Some(watermark);
        report.committed = p.committed_offset;
        report.notes = p.warnings.clone();
        run::committed_past(&mut report);
        plans.push(Plan {
            kafka,
            stored,
            windows: run::windows(from, to, args.sample),
            read_kafka,
        });
        reports.push(report);
    }
    if plans.is_empty() && (args.topic.is_some() || args.partition.is_some()) {
        return Err(AdminError::Audit(
            "no selected partition has a watermark for this group (LP_GROUP_ID); check \
             --topic, --partition and `log-processor status`"
                .into(),
        ));
    }
    let total: i64 = plans
        .iter()
        .flat_map(|p| &p.windows)
        .map(|(a, b)| b - a)
        .sum();
    let repair = match args.repair {
        true => Some(Repair {
            policy: DeadLetterPolicy::new(redactor.clone(), s.dead_letter_key()?),
        }),
        false => None,
    };
    let audit = Audit {
        ctx: Context {
            settings: s,
            pg: &pg,
            es: &es,
            redactor,
        },
        chunk: args.chunk_size,
        budget: CHUNK_BYTES,
        recheck: Duration::from_secs(1),
        repair,
        bar: progress_bar(total.max(0) as u64),
    };
    let mut mended = Mended::default();
    for (plan, report) in plans.iter().zip(&mut reports) {
        let done = audit
            .partition(plan, report)
            .await
            .map_err(AdminError::Audit)?;
        mended.add(done);
    }
    audit.bar.finish_and_clear();
    pg.close().await;
    if args.repair {
        // What only an operator can settle is left as found.
        for r in &reports {
            for (kind, spans) in &r.found {
                if *kind == crate::audit::Kind::CommittedPastWatermark {
                    *mended.unrepaired.entry(*kind).or_default() += spans.count;
                }
            }
        }
    }
    Ok(Outcome {
        report: Report {
            partitions: reports,
            seconds: run::seconds(started),
        },
        repair: args.repair.then_some(mended),
    })
}

/// The first offset of `tp` at or after `t`, by Kafka's time index.
async fn offset_at(
    s: &Settings,
    tp: &TopicPartition,
    t: chrono::DateTime<chrono::Utc>,
) -> Result<Option<i64>, AdminError> {
    let client = super::kafka_client(s, "log-processor-audit")?;
    let tp = tp.clone();
    tokio::task::spawn_blocking(move || {
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(
            &tp.topic,
            tp.partition,
            Offset::Offset(t.timestamp_millis()),
        )
        .map_err(|e| AdminError::Kafka(e.to_string()))?;
        let found = client
            .offsets_for_times(list, KAFKA_TIMEOUT)
            .map_err(|e| AdminError::Kafka(format!("offsets for times: {e}")))?;
        Ok(found.elements().first().and_then(|e| match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        }))
    })
    .await
    .map_err(|e| AdminError::Kafka(e.to_string()))?
}

/// A bar on stderr; hidden when stderr is not a terminal.
fn progress_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} offsets {per_sec} {eta}")
    {
        bar.set_style(style);
    }
    bar
}
