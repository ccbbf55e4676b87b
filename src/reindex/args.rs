//! The command line of `log-processor reindex` and the checks made before anything is read
//! or written: every refusal here names its argument (exit 2).

use chrono::{DateTime, Utc};
use clap::Args;

use crate::admin::{AdminError, parse_time};
use crate::config::{ConfigError, Settings};
use crate::mapping::{Mapping, template_prefix};

#[derive(Args, Clone, Debug)]
pub struct ReindexArgs {
    /// Start of the window (RFC 3339): each partition from its first record with a Kafka
    /// timestamp at or after it (Kafka's offsets-for-times).
    #[arg(long, value_parser = parse_time)]
    pub since: DateTime<Utc>,
    /// End of the window (RFC 3339, exclusive); default: each partition's end when the job is
    /// created.
    #[arg(long, value_parser = parse_time)]
    pub until: Option<DateTime<Utc>>,
    /// A topic to read (repeat for more); default: LP_TOPICS, which must then hold exact names.
    #[arg(long = "topic", value_name = "TOPIC")]
    pub topic: Vec<String>,
    /// The index (or strftime pattern, e.g. logs-v2-%Y.%m.%d) documents go to; its template is
    /// installed as the daemon installs its own.
    #[arg(long, value_name = "PATTERN_OR_NAME")]
    pub to_index: Option<String>,
    /// The table rows go to, created like the daemon's (LIKE ... INCLUDING ALL) if missing.
    #[arg(long, value_name = "TABLE")]
    pub to_table: Option<String>,
    /// The alias switched to the new index at the end (with --to-index); default: LP_ES_INDEX
    /// before its first date item, without a trailing `-`, `.` or `_` (`logs` for
    /// `logs-%Y.%m.%d`).
    #[arg(long, value_name = "NAME")]
    pub alias: Option<String>,
    /// At most this many records per second (a bucket holding one second's worth: a stall is
    /// not made up by a burst).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_rate: Option<u32>,
    /// Records per batch (one search-store request and one PostgreSQL transaction).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_records: u32,
    /// Where records are read: `kafka`, or `postgres` for records Kafka no longer holds (the
    /// daemon's rows with a Kafka timestamp in the window, into --to-index only, same ids).
    #[arg(long, value_enum, default_value_t = Origin::Kafka)]
    pub from: Origin,
    /// The job's name, which keys its position; default: derived from the arguments, so the
    /// same command line resumes the same job.
    #[arg(long, value_name = "NAME")]
    pub job: Option<String>,
    #[command(flatten)]
    pub settings: Settings,
}

/// Where a re-index reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Origin {
    Kafka,
    Postgres,
}

pub(super) fn invalid(field: &'static str, message: impl Into<String>) -> AdminError {
    ConfigError {
        field,
        message: message.into(),
    }
    .into()
}

/// The topics to read: `--topic`, else LP_TOPICS's exact names.
fn topics(args: &ReindexArgs) -> Result<Vec<String>, AdminError> {
    if !args.topic.is_empty() {
        return Ok(unique(&args.topic));
    }
    let selection = args.settings.topic_selection()?;
    match selection.has_patterns() {
        true => Err(invalid(
            "--topic",
            "LP_TOPICS holds a pattern: name the topics to re-index with --topic",
        )),
        false => Ok(selection.exact()),
    }
}

/// `--topic` repeated for one topic names it once: read twice, its records would be counted
/// twice and its range read by two jobs' worth of batches.
fn unique(topics: &[String]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    topics.iter().filter(|t| seen.insert(*t)).cloned().collect()
}

/// The alias of the cut-over.
fn alias(args: &ReindexArgs) -> Result<String, AdminError> {
    if let Some(a) = &args.alias {
        return match crate::mapping::valid_index_name(a) {
            true => Ok(a.clone()),
            false => Err(invalid(
                "--alias",
                format!("{a:?} is not a valid alias name"),
            )),
        };
    }
    let base = template_prefix(&args.settings.es_index).trim_end_matches(['-', '.', '_']);
    match base.is_empty() {
        true => Err(invalid(
            "--alias",
            "LP_ES_INDEX starts with a date item, so there is no base name: name the alias",
        )),
        false => Ok(base.to_string()),
    }
}

impl ReindexArgs {
    /// The arguments checked before anything is read or written: an error names the argument.
    pub fn validate(&self) -> Result<(), AdminError> {
        self.checked().map(|_| ())
    }

    /// The topics, the alias (with --to-index), the daemon's mapping and the target's.
    pub(super) fn checked(&self) -> Result<Checked, AdminError> {
        if self.to_index.is_none() && self.to_table.is_none() {
            return Err(invalid(
                "--to-index / --to-table",
                "name at least one target",
            ));
        }
        if self.until.is_some_and(|u| u <= self.since) {
            return Err(invalid("--until", "must be later than --since"));
        }
        if self.to_index.is_some() && self.settings.es_data_stream {
            return Err(invalid(
                "--to-index",
                "LP_ES_DATA_STREAM=true: re-indexing into data streams is not supported",
            ));
        }
        if self.from == Origin::Postgres && (self.to_table.is_some() || self.to_index.is_none()) {
            return Err(invalid(
                "--from",
                "postgres re-indexes the daemon's rows into the search store: give --to-index \
                 and no --to-table (the rows are in PostgreSQL already)",
            ));
        }
        let topics = topics(self)?;
        let alias = self.to_index.as_ref().map(|_| alias(self)).transpose()?;
        let daemon = self.settings.mapping()?;
        let target = daemon
            .retargeted(self.to_index.as_deref(), self.to_table.as_deref())
            .map_err(|(field, message)| invalid(field, message))?;
        Ok(Checked {
            topics,
            alias,
            daemon,
            target,
        })
    }
}

/// What [`ReindexArgs::checked`] found.
pub(super) struct Checked {
    pub topics: Vec<String>,
    pub alias: Option<String>,
    pub daemon: Mapping,
    pub target: Mapping,
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_repeated_topic_is_read_once_in_the_order_given() {
        let given: Vec<String> = ["b", "a", "b", "a", "c"].map(String::from).to_vec();
        assert_eq!(super::unique(&given), ["b", "a", "c"]);
    }
}
