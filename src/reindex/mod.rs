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
//! One concern a file: `args` (the command line and its checks), `identity` (which topic
//! incarnations may be read), `range` (which offsets a window covers, which are gone), `plan`
//! (each partition's range from Kafka and PostgreSQL), `position` (the job's identity), `kafka`
//! (reading), `progress` (pace and progress line), `copy` (the batches), `parked` (documents a
//! refusing index parked), `summary` (the closing report). Every refusal comes before the
//! first side effect (schema, table, template), so a refused run leaves nothing behind.

mod args;
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

pub use args::{Origin, ReindexArgs};
pub use summary::{Alias, Summary};

use std::sync::Arc;

use crate::admin::AdminError;
use crate::config::Settings;
use crate::mapping::Mapping;
use crate::sink::elastic::ElasticSink;
use crate::stores;
use args::{Checked, invalid};
use position::JobArgs;

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
    store.require_supported()?;
    Ok((es, store))
}
