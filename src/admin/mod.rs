//! Operator commands that work on the stores directly, with the daemon's configuration and
//! whether or not the daemon runs: `status` (where each partition stands), `audit` (every
//! offset compared across Kafka and both stores, `--repair` to mend), `dead-letters list`
//! and `dead-letters replay` (re-drive dead letters with today's settings), `topics list` and
//! `topics adopt` (which incarnation of a topic the stored names hold), `parked list`, `drop`
//! and `reroute` (records their destination index would not take).

pub mod audit;
pub mod dead_letters;
pub mod parked;
pub mod replay;
pub mod selection;
pub mod status;
pub mod topics;

use chrono::{DateTime, Utc};
use clap::Args;

use crate::config::{ConfigError, Settings};
use crate::sink::SinkError;
use crate::sink::elastic::ElasticSink;
use crate::sink::postgres::{DeadLetterFilter, PgSink};
use crate::stores;

/// The arguments of a `list` command (`topics list`, `parked list`).
#[derive(Args, Clone, Debug)]
pub struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] SinkError),
    #[error("kafka: {0}")]
    Kafka(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error("audit: {0}")]
    Audit(String),
}

/// A Kafka client for commands that read metadata or the group's committed offsets
/// (`stores::kafka_reader`).
pub fn kafka_client(
    s: &Settings,
    client_id: &str,
) -> Result<rdkafka::consumer::BaseConsumer, AdminError> {
    stores::kafka_reader(s, client_id)?
        .create()
        .map_err(|e| AdminError::Kafka(format!("creating a client: {e}")))
}

/// The PostgreSQL store as the daemon configures it, with one connection.
pub fn pg(s: &Settings) -> Result<PgSink, AdminError> {
    Ok(stores::postgres(s, 1)?)
}

/// The search store as the daemon configures it.
pub fn es(s: &Settings) -> Result<ElasticSink, AdminError> {
    Ok(stores::elasticsearch(s)?)
}

/// Which dead letters `list` and `replay` select.
#[derive(Args, Clone, Debug, Default)]
pub struct FilterArgs {
    /// Only this topic (default: every topic of LP_TOPICS; a pattern's, among the names
    /// PostgreSQL stores records under).
    #[arg(long)]
    pub topic: Option<String>,
    /// Only this partition.
    #[arg(long)]
    pub partition: Option<i32>,
    /// Only this stage.
    #[arg(long, value_parser = ["decode", "index", "store"])]
    pub stage: Option<String>,
    /// Only reasons containing this text (case-insensitive).
    #[arg(long)]
    pub reason: Option<String>,
    /// Only dead letters that failed at or after this time (RFC 3339, e.g. 2026-11-30T06:00:00Z).
    #[arg(long, value_parser = parse_time)]
    pub since: Option<DateTime<Utc>>,
    /// Only dead letters that failed before this time (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    pub until: Option<DateTime<Utc>>,
}

impl FilterArgs {
    pub async fn filter(
        &self,
        settings: &Settings,
        pg: &PgSink,
    ) -> Result<DeadLetterFilter, AdminError> {
        Ok(DeadLetterFilter {
            topics: match &self.topic {
                Some(t) => vec![t.clone()],
                None => selection::in_postgres(settings, pg).await?,
            },
            partition: self.partition,
            stage: self.stage.clone(),
            reason: self.reason.clone(),
            since: self.since,
            until: self.until,
        })
    }
}

pub(crate) fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("expected an RFC 3339 time such as 2026-11-30T06:00:00Z: {e}"))
}

/// `s` on one line, cut to `max` characters.
fn one_line(s: &str, max: usize) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match flat.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &flat[..i]),
        None => flat,
    }
}
