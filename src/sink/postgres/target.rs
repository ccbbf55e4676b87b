//! What `log-processor reindex` keeps in PostgreSQL: its own tables (`reindex_jobs`, one row
//! per job and the arguments it was started with; `reindex_positions`, each partition's range,
//! where the job stands in it and what it counted), the target table made like the daemon's,
//! and one transaction per batch holding the batch's rows and the partition's new position.
//! The daemon's own bookkeeping (`consumer_offsets`, `dead_letters`, ...) is only ever read.

use chrono::{DateTime, Utc};
use sqlx::Connection;

use super::refusal::classify;
use super::{PgSink, quoted};
use crate::model::TopicPartition;
use crate::sink::SinkError;

/// One partition of a job: its fixed range and how far the job got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobPartition {
    pub tp: TopicPartition,
    /// The range to read, `[from, to)`, fixed when the job was created.
    pub from: i64,
    pub to: i64,
    /// The next offset to read: `from` until a batch commits.
    pub next: i64,
    /// Offsets of the window Kafka no longer holds, `[from, to)`, and whether that start is
    /// known (`true`) or only a bound (the timestamps of deleted records are unknown).
    pub missing: Option<(i64, i64, bool)>,
    pub written: i64,
    pub dead_letters: i64,
    pub refused: i64,
    /// The offsets of the `refused` records, ascending.
    pub refused_offsets: Vec<i64>,
    /// The offsets of records whose rows PostgreSQL refused (counted in `dead_letters`).
    pub row_refused_offsets: Vec<i64>,
}

impl JobPartition {
    /// A partition of a new job: nothing read or written yet.
    pub fn planned(
        tp: TopicPartition,
        from: i64,
        to: i64,
        missing: Option<(i64, i64, bool)>,
    ) -> Self {
        JobPartition {
            tp,
            from,
            to,
            next: from,
            missing,
            written: 0,
            dead_letters: 0,
            refused: 0,
            refused_offsets: Vec::new(),
            row_refused_offsets: Vec::new(),
        }
    }
}

type PositionRow = (
    String,
    i32,
    i64,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
    bool,
    i64,
    i64,
    i64,
    Vec<i64>,
    Vec<i64>,
);

impl PgSink {
    /// Creates the job tables, and `target` shaped like `source` (the daemon's table: the same
    /// columns, key, defaults and indices), unless they exist.
    pub async fn prepare_reindex(&self, target: Option<(&str, &str)>) -> Result<(), SinkError> {
        let mut ddl = String::from(
            "CREATE TABLE IF NOT EXISTS reindex_jobs (job text PRIMARY KEY, args text NOT NULL, \
               created_at timestamptz NOT NULL DEFAULT now(), finished_at timestamptz); \
             CREATE TABLE IF NOT EXISTS reindex_positions (job text NOT NULL REFERENCES reindex_jobs, \
               topic text NOT NULL, kafka_partition integer NOT NULL, from_offset bigint NOT NULL, \
               to_offset bigint NOT NULL, next_offset bigint NOT NULL, missing_from bigint, \
               missing_to bigint, missing_known boolean NOT NULL DEFAULT false, \
               written bigint NOT NULL DEFAULT 0, dead_letters bigint NOT NULL DEFAULT 0, \
               refused bigint NOT NULL DEFAULT 0, updated_at timestamptz NOT NULL DEFAULT now(), \
               PRIMARY KEY (job, topic, kafka_partition)); \
             ALTER TABLE reindex_positions ADD COLUMN IF NOT EXISTS refused_offsets bigint[] \
               NOT NULL DEFAULT '{}'; \
             ALTER TABLE reindex_positions ADD COLUMN IF NOT EXISTS row_refused_offsets \
               bigint[] NOT NULL DEFAULT '{}';",
        );
        if let Some((source, target)) = target {
            ddl.push_str(&format!(
                "CREATE TABLE IF NOT EXISTS {} (LIKE {} INCLUDING ALL);",
                quoted(target),
                quoted(source)
            ));
        }
        sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
            .execute(&self.pool)
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// The job's arguments and partitions, if it was created before.
    pub async fn reindex_job(
        &self,
        job: &str,
    ) -> Result<Option<(String, Vec<JobPartition>)>, SinkError> {
        // Read before anything is created (a refused run creates nothing): no table, no job.
        let exists: bool =
            sqlx::query_scalar("SELECT to_regclass('reindex_positions') IS NOT NULL")
                .fetch_one(&self.pool)
                .await
                .map_err(classify)?;
        if !exists {
            return Ok(None);
        }
        let args: Option<String> =
            sqlx::query_scalar("SELECT args FROM reindex_jobs WHERE job = $1")
                .bind(job)
                .fetch_optional(&self.pool)
                .await
                .map_err(classify)?;
        let Some(args) = args else { return Ok(None) };
        let rows: Vec<PositionRow> = sqlx::query_as(
            "SELECT topic, kafka_partition, from_offset, to_offset, next_offset, missing_from, \
               missing_to, missing_known, written, dead_letters, refused, refused_offsets, \
               row_refused_offsets \
             FROM reindex_positions WHERE job = $1 ORDER BY topic, kafka_partition",
        )
        .bind(job)
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        let parts = rows
            .into_iter()
            .map(|r| JobPartition {
                tp: TopicPartition::new(r.0, r.1),
                from: r.2,
                to: r.3,
                next: r.4,
                missing: r.5.zip(r.6).map(|(f, t)| (f, t, r.7)),
                written: r.8,
                dead_letters: r.9,
                refused: r.10,
                refused_offsets: r.11,
                row_refused_offsets: r.12,
            })
            .collect();
        Ok(Some((args, parts)))
    }

    /// Records a new job and its partitions in one transaction; a job of that name created
    /// meanwhile wins, and is returned by the next [`Self::reindex_job`].
    pub async fn create_reindex_job(
        &self,
        job: &str,
        args: &str,
        parts: &[JobPartition],
    ) -> Result<(), SinkError> {
        let mut conn = self.pool.acquire().await.map_err(classify)?;
        let mut tx = conn.begin().await.map_err(classify)?;
        let created = sqlx::query(
            "INSERT INTO reindex_jobs (job, args) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(job)
        .bind(args)
        .execute(&mut *tx)
        .await
        .map_err(classify)?
        .rows_affected();
        if created == 1 {
            for p in parts {
                sqlx::query(
                    "INSERT INTO reindex_positions (job, topic, kafka_partition, from_offset, \
                       to_offset, next_offset, missing_from, missing_to, missing_known) \
                     VALUES ($1, $2, $3, $4, $5, $4, $6, $7, $8)",
                )
                .bind(job)
                .bind(&*p.tp.topic)
                .bind(p.tp.partition)
                .bind(p.from)
                .bind(p.to)
                .bind(p.missing.map(|m| m.0))
                .bind(p.missing.map(|m| m.1))
                .bind(p.missing.is_some_and(|m| m.2))
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
            }
        }
        tx.commit().await.map_err(classify)
    }

    /// Per partition of `topic`, the offsets the daemon stored (rows of `tables` and dead
    /// letters) with a Kafka timestamp in `[since, until)`: `(partition, first, last + 1)`.
    pub async fn stored_window(
        &self,
        tables: &[String],
        topic: &str,
        since: DateTime<Utc>,
        until: Option<DateTime<Utc>>,
    ) -> Result<Vec<(i32, i64, i64)>, SinkError> {
        let of = |table: &str| {
            format!(
                "SELECT kafka_partition, kafka_offset FROM {} WHERE topic = $1 \
                 AND kafka_ts >= $2 AND ($3::timestamptz IS NULL OR kafka_ts < $3)",
                quoted(table)
            )
        };
        let parts: Vec<String> = (tables.iter().map(String::as_str))
            .chain(["dead_letters"])
            .map(of)
            .collect();
        let sql = format!(
            "SELECT kafka_partition, min(kafka_offset), max(kafka_offset) + 1 FROM ({}) s \
             GROUP BY 1 ORDER BY 1",
            parts.join(" UNION ALL ")
        );
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(topic)
            .bind(since)
            .bind(until)
            .fetch_all(&self.pool)
            .await
            .map_err(classify)
    }

    /// Marks the job done (every partition at its end).
    pub async fn finish_reindex_job(&self, job: &str) -> Result<(), SinkError> {
        sqlx::query(
            "UPDATE reindex_jobs SET finished_at = coalesce(finished_at, now()) WHERE job = $1",
        )
        .bind(job)
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        Ok(())
    }
}
