//! `log-processor reindex`: the records of a time window read again from Kafka and written,
//! with the daemon's decoding, redaction, mapping and document ids (`topic-partition-offset`),
//! into a new index and/or a new table, then an alias switched to the new index.
//!
//! Each partition's range comes from Kafka's offsets-for-times and is fixed when the job is
//! created. Every batch is written to the search store first and then, in one PostgreSQL
//! transaction, as rows (`ON CONFLICT DO NOTHING` on the record's coordinates) together with
//! the job's new position (`reindex_positions`): a run killed at any point and started again
//! with the same arguments resumes from that position, overwrites documents with identical
//! ones and skips rows it stored already, so the target ends with each record once. Nothing of
//! the daemon is written: not its group (the reader only assigns), not its tables.
//!
//! One concern a file: `range` (which offsets a window covers, which are gone), `plan` (each
//! partition's range from Kafka and PostgreSQL), `position` (the job's identity), `kafka`
//! (reading), `progress` (pace and progress line), `copy` (the batches), `summary` (the
//! closing report).

mod copy;
mod identity;
mod input;
mod kafka;
mod parked;
mod plan;
mod position;
mod progress;
pub mod range;
mod summary;

pub use summary::{Alias, Summary};

use std::sync::Arc;

use chrono::{DateTime, Utc};
use clap::Args;

use crate::admin::{AdminError, parse_time};
use crate::config::{ConfigError, Settings};
use crate::mapping::{Mapping, template_prefix};
use crate::sink::SinkError;
use crate::sink::elastic::ElasticSink;
use crate::stores;
use position::JobArgs;

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

fn invalid(field: &'static str, message: impl Into<String>) -> AdminError {
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
    fn checked(&self) -> Result<Checked, AdminError> {
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
struct Checked {
    topics: Vec<String>,
    alias: Option<String>,
    daemon: Mapping,
    target: Mapping,
}

pub async fn reindex(args: &ReindexArgs) -> Result<Summary, AdminError> {
    let s = &args.settings;
    let Checked {
        topics,
        alias,
        daemon,
        target,
    } = args.checked()?;
    let target = Arc::new(target);
    let pg = stores::postgres_with(s, 2, target.clone())?;
    let job_args = JobArgs {
        topics: &topics,
        since: args.since,
        until: args.until,
        to_index: args.to_index.as_deref(),
        to_table: args.to_table.as_deref(),
        from: args.from,
    };
    let job = args.job.clone().unwrap_or_else(|| job_args.job_name());
    // A topic adopted under another name, or recreated, is refused (read only, no binding).
    let current = crate::admin::topics::current_identities(s, &topics).await?;
    let bindings = pg.recorded_bindings(&topics).await?;
    for topic in &topics {
        let now = current.iter().find(|(t, _)| t == topic).map(|(_, id)| id);
        if let Some(why) = identity::refusal(topic, now, &bindings) {
            return Err(invalid("--topic", why));
        }
    }
    // Every refusal comes before the first side effect (schema, table, template), so that a
    // refused run leaves nothing behind.
    let known = pg.reindex_job(&job).await?;
    if let Some((stored, _)) = &known
        && *stored != job_args.canonical()
    {
        return Err(invalid(
            "--job",
            format!("job {job} was started with other arguments ({stored}); name another job"),
        ));
    }
    let es = match &args.to_index {
        Some(_) => Some(search_store(s, target.clone()).await?),
        None => None,
    };
    if let (Some((es, _)), Some(alias)) = (&es, &alias)
        && es.is_index(alias).await?
    {
        return Err(invalid(
            "--alias",
            format!("{alias} is an existing index, so it cannot be made an alias: name another"),
        ));
    }
    pg.prepare(s.migrate).await?;
    let like = args
        .to_table
        .as_deref()
        .map(|t| (daemon.tables()[0].name.as_str(), t));
    pg.prepare_reindex(like).await?;
    let es = match es {
        Some((es, store)) => {
            es.ensure_template(&store).await?;
            Some(es)
        }
        None => None,
    };
    // The daemon's tables, read only: by `--from postgres`, and for where a window began
    // among records Kafka deleted.
    let stored = stores::postgres_with(s, 2, Arc::new(daemon.clone()))?;
    let source = match args.from {
        Origin::Kafka => Some(kafka::Source::new(s, &job)?),
        Origin::Postgres => None,
    };
    let parts = match known {
        Some((_, parts)) => parts,
        None => {
            let parts = match &source {
                Some(source) => plan::from_kafka(source, &pg, &daemon, &job_args).await?,
                None => plan::from_postgres(&stored, &daemon, &job_args).await?,
            };
            pg.create_reindex_job(&job, &job_args.canonical(), &parts)
                .await?;
            match pg.reindex_job(&job).await? {
                // A run of the same job name with other arguments created it meanwhile.
                Some((stored, _)) if stored != job_args.canonical() => {
                    return Err(invalid(
                        "--job",
                        format!(
                            "job {job} was just started with other arguments ({stored}); name \
                             another job"
                        ),
                    ));
                }
                found => found.map(|j| j.1).unwrap_or_default(),
            }
        }
    };
    eprintln!("reindex: job {job}: {}", job_args.canonical());
    let copy = copy::Copy {
        job: &job,
        settings: s,
        redactor: crate::redact::Redactor::new(
            s.redact_drop.clone(),
            s.redact_hash.clone(),
            s.redact_key.as_deref(),
        ),
        mapping: &target,
        pg: &pg,
        es: es.as_ref(),
        to_table: args.to_table.is_some(),
        max_rate: args.max_rate,
        batch: progress::batch_size(args.batch_records as usize, args.max_rate),
    };
    let input = match &source {
        Some(source) => input::Input::Kafka(source),
        None => input::Input::Postgres(&stored),
    };
    copy.run(&input, &parts).await?;
    let parts = pg.reindex_job(&job).await?.map(|j| j.1).unwrap_or_default();
    // Every partition is at its range's end here (`copy` returns only then).
    pg.finish_reindex_job(&job).await?;
    let alias = match (es, alias) {
        (Some(es), Some(alias)) => {
            let outcome = es.switch_alias(&alias).await?;
            Alias::Done { alias, outcome }
        }
        _ => Alias::NotAsked,
    };
    pg.close().await;
    stored.close().await;
    Ok(Summary { job, parts, alias })
}

/// The search store for the target, detected and checked; its template (installed once the
/// run's checks pass) goes one priority above the daemon's, so that a target pattern inside the
/// daemon's (`logs-v2-*` in `logs-*`) wins where both match.
async fn search_store(
    s: &Settings,
    target: Arc<Mapping>,
) -> Result<(ElasticSink, crate::sink::elastic::StoreInfo), AdminError> {
    let mut s = s.clone();
    s.es_template_priority += 1;
    let es = stores::elasticsearch_with(&s, target)?;
    let store = es.detect().await?;
    store
        .check_supported()
        .map_err(|message| SinkError::Permanent {
            store: "elasticsearch",
            message,
        })?;
    Ok((es, store))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_repeated_topic_is_read_once_in_the_order_given() {
        let given: Vec<String> = ["b", "a", "b", "a", "c"].map(String::from).to_vec();
        assert_eq!(super::unique(&given), ["b", "a", "c"]);
    }
}
