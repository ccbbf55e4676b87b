//! Each partition's range when a job is created: Kafka's watermarks and offsets-for-times,
//! and, for a window that may begin among records retention deleted, the daemon's stored rows
//! (read only) for where it began.

use super::kafka::Source;
use super::position::JobArgs;
use super::range::{self, Stored, may_begin_deleted, plan};
use crate::admin::AdminError;
use crate::mapping::Mapping;
use crate::model::TopicPartition;
use crate::sink::postgres::{JobPartition, PgSink};

/// Each partition's range, from Kafka and, for a window that begins among deleted records,
/// from the daemon's stored rows.
pub async fn from_kafka(
    source: &Source,
    pg: &PgSink,
    daemon: &Mapping,
    args: &JobArgs<'_>,
) -> Result<Vec<JobPartition>, AdminError> {
    let tables: Vec<String> = daemon.table_names().map(str::to_owned).collect();
    let mut parts = Vec::new();
    for topic in args.topics {
        let partitions = source.partitions(topic)?;
        let offsets = source.offsets(
            topic,
            &partitions,
            args.since.timestamp_millis(),
            args.until.map(|u| u.timestamp_millis()),
        )?;
        for (p, o) in offsets {
            let tp = TopicPartition::new(topic.as_str(), p);
            let mut stored = Stored::default();
            if may_begin_deleted(o) {
                stored.first_since = pg
                    .first_stored_since(&tables, &tp, args.since, o.low)
                    .await?;
                let below = stored.first_since.unwrap_or(o.low).min(o.low);
                stored.floor = pg.window_floor(&tables, &tp, args.since, below).await?;
                if let Some(until) = args.until {
                    stored.first_until = pg.first_stored_since(&tables, &tp, until, o.low).await?;
                }
            }
            let planned = plan(o, stored);
            let missing = planned.missing.map(|m| {
                let (from, to) = m.range();
                (from, to, matches!(m, range::Missing::Known { .. }))
            });
            parts.push(JobPartition::planned(tp, planned.from, planned.to, missing));
        }
    }
    Ok(parts)
}

/// Each partition's range from the daemon's stored rows and dead letters whose Kafka
/// timestamp is in the window (`--from postgres`): nothing is missing by definition, and
/// offsets without a row (dead letters, gaps) are counted as holding no record.
pub async fn from_postgres(
    stored: &PgSink,
    daemon: &Mapping,
    args: &JobArgs<'_>,
) -> Result<Vec<JobPartition>, AdminError> {
    let tables: Vec<String> = daemon.table_names().map(str::to_owned).collect();
    let mut parts = Vec::new();
    for topic in args.topics {
        let window = stored
            .stored_window(&tables, topic, args.since, args.until)
            .await?;
        for (p, from, to) in window {
            let tp = TopicPartition::new(topic.as_str(), p);
            parts.push(JobPartition::planned(tp, from, to, None));
        }
    }
    Ok(parts)
}
