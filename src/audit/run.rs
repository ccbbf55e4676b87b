//! An audit over ranges of partitions: each range streamed in chunks (Kafka read up to a byte
//! budget, then both stores), checked, read again a moment later to confirm what diverged,
//! and, with `--repair`, mended chunk by chunk.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;

use super::read::{self, KafkaRange};
use super::repair::{self, Mended};
use super::rules::{self, Finding};
use super::{Kind, PartitionReport};
use crate::model::{RawRecord, TopicPartition};
use crate::sink::SinkError;

/// How one partition is audited.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The topic in Kafka.
    pub kafka: TopicPartition,
    /// The name its records are stored under (an adopted incarnation's), as a partition.
    pub stored: TopicPartition,
    /// Windows `[from, to)` to check, in order, below the watermark.
    pub windows: Vec<(i64, i64)>,
    /// Whether Kafka's records are this incarnation's (not a recreated topic's).
    pub read_kafka: bool,
}

/// What every chunk needs.
pub struct Audit<'a> {
    pub ctx: read::Context<'a>,
    /// Offsets per chunk at most.
    pub chunk: i64,
    /// Kafka bytes per chunk at most.
    pub budget: usize,
    /// How long to wait before a range is read again to confirm a divergence.
    pub recheck: Duration,
    pub repair: Option<repair::Repair>,
    pub bar: ProgressBar,
}

impl Audit<'_> {
    /// Audits one partition's windows into `report`; returns what a repair did.
    pub async fn partition(
        &self,
        plan: &Plan,
        report: &mut PartitionReport,
    ) -> Result<Mended, String> {
        let mut mended = Mended::default();
        for &(from, to) in &plan.windows {
            let mut kafka = match plan.read_kafka {
                true => {
                    let (settings, tp) = (self.ctx.settings.clone(), plan.kafka.clone());
                    let (k, low) = blocking(move || KafkaRange::open(&settings, &tp, from)).await?;
                    report.log_start = low;
                    Some(k)
                }
                false => None,
            };
            let mut at = from;
            while at < to {
                let want = (at + self.chunk).min(to);
                let (raws, end, back) = match kafka.take() {
                    Some(mut k) => {
                        let budget = self.budget;
                        let (raws, end, k) = blocking(move || {
                            let (raws, end) = k.read(want, budget)?;
                            Ok((raws, end, k))
                        })
                        .await?;
                        (Some(raws), end.max(at + 1), Some(k))
                    }
                    None => (None, want, None),
                };
                kafka = back;
                let found = self
                    .chunk_of(plan, at, end, raws.as_deref(), report)
                    .await?;
                if let (Some(r), false) = (&self.repair, found.is_empty()) {
                    let raws = raws.as_deref().unwrap_or_default();
                    mended.add(r.mend(&self.ctx, &plan.stored, &found, raws).await?);
                }
                self.bar.inc((end - at) as u64);
                at = end;
            }
        }
        Ok(mended)
    }

    /// Checks `[from, to)`: the divergences seen twice, recorded in `report`.
    async fn chunk_of(
        &self,
        plan: &Plan,
        from: i64,
        to: i64,
        raws: Option<&[RawRecord]>,
        report: &mut PartitionReport,
    ) -> Result<Vec<Finding>, String> {
        let tp = &plan.stored;
        let kafka = raws.map(|raws| {
            read::sources(self.ctx.es, tp, raws, self.ctx.settings, &self.ctx.redactor)
        });
        let stored = read::stored(self.ctx.pg, self.ctx.es, tp, from, to)
            .await
            .map_err(show)?;
        report.offsets_checked += (to - from) as u64;
        report.records_read += raws.map_or(0, |r| r.len()) as u64;
        report.documents_read += stored.docs.len() as u64;
        let first = rules::check(&read::range(
            self.ctx.es,
            tp,
            from,
            to,
            kafka.clone(),
            &stored,
        ));
        if first.is_empty() {
            return Ok(first);
        }
        tokio::time::sleep(self.recheck).await;
        self.ctx.es.refresh().await.map_err(show)?;
        let stored = read::stored(self.ctx.pg, self.ctx.es, tp, from, to)
            .await
            .map_err(show)?;
        let again = rules::check(&read::range(self.ctx.es, tp, from, to, kafka, &stored));
        let found = rules::confirmed(&first, &again);
        for f in &found {
            report.record(f);
        }
        Ok(found)
    }
}

/// The committed offset past the watermark, as a finding of the partition.
pub fn committed_past(report: &mut PartitionReport) {
    if let (Some(c), Some(w)) = (report.committed, report.watermark)
        && c > w
    {
        report.record(&Finding {
            kind: Kind::CommittedPastWatermark,
            offset: w,
            index: None,
            id: None,
            repairable: false,
        });
    }
}

/// Evenly spread windows of `[from, to)` holding about `sample` offsets, or all of it.
pub fn windows(from: i64, to: i64, sample: Option<i64>) -> Vec<(i64, i64)> {
    const WINDOW: i64 = 100;
    let len = to - from;
    match sample {
        Some(n) if n < len => {
            let count = (n + WINDOW - 1) / WINDOW;
            let step = len / count;
            let size = ((n + count - 1) / count).min(step);
            (0..count)
                .map(|i| (from + i * step, from + i * step + size))
                .collect()
        }
        _ if len > 0 => vec![(from, to)],
        _ => Vec::new(),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("kafka reader: {e}"))?
}

fn show(e: SinkError) -> String {
    e.to_string()
}

/// Elapsed seconds, for the report.
pub fn seconds(since: Instant) -> f64 {
    since.elapsed().as_secs_f64()
}

/// Per-kind counts of findings (the repair's summary and the daemon's metric).
pub fn by_kind(found: &[Finding]) -> BTreeMap<Kind, u64> {
    let mut out = BTreeMap::new();
    for f in found {
        *out.entry(f.kind).or_default() += 1;
    }
    out
}
