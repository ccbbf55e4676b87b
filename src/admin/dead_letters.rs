//! `log-processor dead-letters list`: the selected dead letters and their counts by stage and
//! reason. Payloads are never printed: they may hold what redaction would have removed.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, Subcommand};
use serde::Serialize;

use super::{AdminError, FilterArgs, one_line};
use crate::config::Settings;
use crate::sink::postgres::StoredDeadLetter;

#[derive(Subcommand, Clone, Debug)]
pub enum DeadLettersCommand {
    /// List dead letters with counts by stage and reason.
    List(ListArgs),
    /// Decode the selected dead letters again with today's settings; store and index those
    /// that now pass (deleting their dead letters), update the reason of those that still fail.
    Replay(super::replay::ReplayArgs),
}

#[derive(Args, Clone, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Dead letters shown (the counts cover every selected one).
    #[arg(long, default_value_t = 50)]
    pub limit: i64,
    /// Print JSON (one object) instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Serialize)]
pub struct Listing {
    pub total: i64,
    pub by_stage: BTreeMap<String, i64>,
    pub by_reason: Vec<ReasonCount>,
    pub dead_letters: Vec<Listed>,
}

#[derive(Debug, Serialize)]
pub struct ReasonCount {
    pub stage: String,
    pub reason: String,
    pub count: i64,
}

#[derive(Debug, Serialize)]
pub struct Listed {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub stage: String,
    pub reason: String,
    pub payload_encoding: String,
    pub payload_bytes: usize,
    /// RFC 3339.
    pub kafka_timestamp: Option<String>,
    /// RFC 3339.
    pub failed_at: String,
}

impl From<StoredDeadLetter> for Listed {
    fn from(d: StoredDeadLetter) -> Self {
        Listed {
            payload_bytes: d.payload.as_ref().map_or(0, Vec::len),
            topic: d.topic,
            partition: d.kafka_partition,
            offset: d.kafka_offset,
            stage: d.stage,
            reason: d.reason,
            payload_encoding: d.payload_encoding,
            kafka_timestamp: d.kafka_ts.map(rfc3339),
            failed_at: rfc3339(d.failed_at),
        }
    }
}

pub async fn list(args: &ListArgs) -> Result<Listing, AdminError> {
    let pg = super::pg(&args.settings)?;
    let filter = args.filter.filter(&args.settings, &pg).await?;
    let counts = pg.dead_letter_summary(&filter).await?;
    let page = pg
        .dead_letters_page(&filter, None, args.limit.max(0))
        .await?;
    pg.close().await;
    let mut by_stage = BTreeMap::new();
    for (stage, _, n) in &counts {
        *by_stage.entry(stage.clone()).or_insert(0) += n;
    }
    Ok(Listing {
        total: counts.iter().map(|c| c.2).sum(),
        by_stage,
        by_reason: counts
            .into_iter()
            .map(|(stage, reason, count)| ReasonCount {
                stage,
                reason,
                count,
            })
            .collect(),
        dead_letters: page.into_iter().map(Listed::from).collect(),
    })
}

impl fmt::Display for Listing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.dead_letters {
            writeln!(
                f,
                "{}/{}@{}  {}  {}  {} bytes ({})  {}",
                d.topic,
                d.partition,
                d.offset,
                d.failed_at,
                d.stage,
                d.payload_bytes,
                d.payload_encoding,
                one_line(&d.reason, 160)
            )?;
        }
        if self.total > self.dead_letters.len() as i64 {
            writeln!(
                f,
                "({} of {} shown; --limit to see more)",
                self.dead_letters.len(),
                self.total
            )?;
        }
        writeln!(f, "by stage and reason:")?;
        for r in self.by_reason.iter().take(20) {
            writeln!(
                f,
                "{:>8}  {:<6}  {}",
                r.count,
                r.stage,
                one_line(&r.reason, 140)
            )?;
        }
        if self.by_reason.len() > 20 {
            writeln!(f, "       … {} more reasons", self.by_reason.len() - 20)?;
        }
        let stages: Vec<String> = self
            .by_stage
            .iter()
            .map(|(s, n)| format!("{s}={n}"))
            .collect();
        write!(f, "dead letters: total={} {}", self.total, stages.join(" "))
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}
