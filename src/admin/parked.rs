//! `log-processor parked list | drop | reroute`: the records their destination index would not
//! take (see `crate::parking`). The daemon releases them by itself once the index takes
//! them; these commands are for an index that never will (deleted on purpose, a name from a
//! far-future timestamp): drop its records into the dead letters, or send them elsewhere.

use std::fmt;

use clap::{Args, Subcommand};

use super::AdminError;
pub use super::ListArgs;
use crate::config::Settings;
use crate::model::RejectStage;
use crate::sink::postgres::ParkedSummary;

#[derive(Subcommand)]
pub enum ParkedCommand {
    /// Records parked per destination index: how many, since when, and why.
    List(ListArgs),
    /// Moves a destination's parked records into the dead letters (replayable from there).
    Drop(DestinationArgs),
    /// Sends a destination's parked records to another index instead.
    Reroute(RerouteArgs),
}

#[derive(Args, Clone, Debug)]
pub struct DestinationArgs {
    /// The destination index (as `parked list` shows it).
    #[arg(long)]
    pub destination: String,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Args, Clone, Debug)]
pub struct RerouteArgs {
    /// The destination index (as `parked list` shows it).
    #[arg(long)]
    pub destination: String,
    /// The index to send them to.
    #[arg(long)]
    pub to: String,
    #[command(flatten)]
    pub settings: Settings,
}

/// Records parked for one destination, as `parked list` and `status` show them.
#[derive(Debug, serde::Serialize)]
pub struct ParkedRow {
    pub destination: String,
    pub records: i64,
    /// When the oldest was parked (RFC 3339).
    pub since: String,
    pub reason: String,
}

impl From<ParkedSummary> for ParkedRow {
    fn from(p: ParkedSummary) -> Self {
        ParkedRow {
            destination: p.destination,
            records: p.records,
            since: p.since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            reason: p.reason,
        }
    }
}

/// `parked list`.
#[derive(Debug, serde::Serialize)]
#[serde(transparent)]
pub struct Listing(pub Vec<ParkedRow>);

impl fmt::Display for Listing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return write!(f, "no parked records");
        }
        writeln!(
            f,
            "{:<40} {:>9}  {:<25} reason",
            "destination", "records", "since"
        )?;
        for p in &self.0 {
            writeln!(
                f,
                "{:<40} {:>9}  {:<25} {}",
                p.destination,
                p.records,
                p.since,
                p.reason.chars().take(120).collect::<String>()
            )?;
        }
        Ok(())
    }
}

pub async fn list(args: &ListArgs) -> Result<Listing, AdminError> {
    let pg = super::pg(&args.settings)?;
    let summary = pg.parked_summary().await?;
    pg.close().await;
    Ok(Listing(summary.into_iter().map(ParkedRow::from).collect()))
}

/// Moves every record parked for the destination into `dead_letters` (stage `index`).
pub async fn drop(args: &DestinationArgs) -> Result<String, AdminError> {
    let pg = super::pg(&args.settings)?;
    let mut moved = 0;
    for (tp, offsets) in pg.parked_offsets(&args.destination).await? {
        let why = format!(
            "dropped by an operator while parked for {}: ",
            args.destination
        );
        moved += pg
            .parked_to_dead_letters(&tp, &offsets, RejectStage::Index, &why)
            .await?;
    }
    pg.close().await;
    Ok(format!(
        "{moved} parked records of {} moved into the dead letters",
        args.destination
    ))
}

pub async fn reroute(args: &RerouteArgs) -> Result<String, AdminError> {
    if !crate::mapping::valid_index_name(&args.to) {
        return Err(AdminError::Refused(format!(
            "--to {:?} is not a valid index name (lowercase, no spaces or \\/*?\"<>|,#:)",
            args.to
        )));
    }
    let pg = super::pg(&args.settings)?;
    let moved = pg.reroute_parked(&args.destination, &args.to).await?;
    pg.close().await;
    Ok(format!(
        "{moved} parked records of {} now go to {}; the daemon offers them there within LP_PARKED_RETRY_MS",
        args.destination, args.to
    ))
}
