//! What `audit` reads of one range of a partition's offsets, and the one write `audit
//! --repair` makes: records read again from Kafka stored under a watermark that already
//! passed them.

use chrono::{DateTime, Utc};
use sqlx::Connection;

use super::PgSink;
use super::batch::insert_dead_letters;
use super::refusal::{Refusal, classify};
use super::rows::{Rows, insert_records};
use crate::model::{DeadLetter, Fields, LogEntry, StoredRecord, TopicPartition};
use crate::sink::SinkError;

/// The offsets of a range that are not rows but are accounted for.
#[derive(Debug, Default)]
pub struct Accounted {
    pub dead: Vec<i64>,
    pub parked: Vec<i64>,
    /// Recorded gaps `[from, to)` that overlap the range.
    pub gaps: Vec<(i64, i64)>,
}

type RowColumns = (
    i64,
    DateTime<Utc>,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    Option<Vec<u8>>,
    Option<DateTime<Utc>>,
);

impl PgSink {
    /// The rows of `[from, to)`, as the records they were stored from.
    pub async fn rows_in(
        &self,
        tp: &TopicPartition,
        from: i64,
        to: i64,
    ) -> Result<Vec<StoredRecord>, SinkError> {
        // A partition's rows may lie in every table of the mapping.
        let of = |table: &str| {
            format!(
                "SELECT kafka_offset, ts, level, service, message, fields::text, kafka_key, \
                 kafka_ts FROM {table} WHERE topic = $1 AND kafka_partition = $2 \
                 AND kafka_offset >= $3 AND kafka_offset < $4"
            )
        };
        let tables: Vec<String> = self.mapping.table_names().map(of).collect();
        let q = format!("{} ORDER BY kafka_offset", tables.join(" UNION ALL "));
        let rows: Vec<RowColumns> = sqlx::query_as(sqlx::AssertSqlSafe(q))
            .bind(&*tp.topic)
            .bind(tp.partition)
            .bind(from)
            .bind(to)
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?;
        rows.into_iter()
            .map(
                |(offset, ts, level, service, message, fields, key, kafka_ts)| {
                    let fields = Fields::from_text(fields).map_err(|e| SinkError::Permanent {
                        store: super::STORE,
                        message: format!("row {tp}@{offset}: {e}"),
                    })?;
                    let entry = LogEntry {
                        timestamp: ts,
                        level,
                        service,
                        message,
                        fields,
                    };
                    let stored = (self.mapping.route_stored(&tp.topic, &entry)).map_err(|e| {
                        SinkError::Permanent {
                            store: super::STORE,
                            message: format!("row {tp}@{offset}: {e}"),
                        }
                    })?;
                    Ok(StoredRecord {
                        offset,
                        key,
                        kafka_timestamp_ms: kafka_ts.map(|t| t.timestamp_millis()),
                        entry,
                        route: stored.route,
                        typed: stored.typed,
                    })
                },
            )
            .collect()
    }

    /// The first offset of `tp` any table accounts for: where its audit starts by default.
    pub async fn first_accounted(&self, tp: &TopicPartition) -> Result<Option<i64>, SinkError> {
        let of = |table: &str, column: &str| {
            format!("(SELECT min({column}) FROM {table} WHERE topic = $1 AND kafka_partition = $2)")
        };
        let mut firsts: Vec<String> = (self.mapping.table_names())
            .map(|t| of(t, "kafka_offset"))
            .collect();
        firsts.push(of("dead_letters", "kafka_offset"));
        firsts.push(of("parked_records", "kafka_offset"));
        firsts.push(of("source_gaps", "from_offset"));
        let q = format!("SELECT least({})", firsts.join(", "));
        sqlx::query_scalar(sqlx::AssertSqlSafe(q))
            .bind(&*tp.topic)
            .bind(tp.partition)
            .fetch_one(&self.pool)
            .await
            .map_err(classify)
    }

    /// The dead letters, parked records and recorded gaps of `[from, to)`.
    pub async fn accounted_in(
        &self,
        tp: &TopicPartition,
        from: i64,
        to: i64,
    ) -> Result<Accounted, SinkError> {
        let offsets = |table: &str| {
            format!(
                "SELECT kafka_offset FROM {table} WHERE topic = $1 AND kafka_partition = $2 \
                 AND kafka_offset >= $3 AND kafka_offset < $4 ORDER BY 1"
            )
        };
        let mut out = Accounted::default();
        for (table, into) in [
            ("dead_letters", &mut out.dead),
            ("parked_records", &mut out.parked),
        ] {
            *into = sqlx::query_scalar(sqlx::AssertSqlSafe(offsets(table)))
                .bind(&*tp.topic)
                .bind(tp.partition)
                .bind(from)
                .bind(to)
                .fetch_all(&self.pool)
                .await
                .map_err(classify)?;
        }
        out.gaps = sqlx::query_as(
            "SELECT from_offset, to_offset FROM source_gaps WHERE topic = $1 \
             AND kafka_partition = $2 AND from_offset < $4 AND to_offset > $3 ORDER BY 1",
        )
        .bind(&*tp.topic)
        .bind(tp.partition)
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        Ok(out)
    }

    /// Stores rows and dead letters of records read again from Kafka, in one transaction,
    /// leaving the watermark where it is (it passed them already). Offsets accounted for
    /// meanwhile are left alone: a row conflicting on our key is kept if it holds what we
    /// would write (`Rows::MayExist`), a dead letter already there stays.
    pub async fn restore(
        &self,
        tp: &TopicPartition,
        records: &[StoredRecord],
        dead: &[DeadLetter],
    ) -> Result<(), SinkError> {
        let mut conn = self.pool.acquire().await.map_err(classify)?;
        let mut tx = conn.begin().await.map_err(classify)?;
        insert_records(&mut tx, &self.mapping, tp, records, Rows::MayExist)
            .await
            .map_err(Refusal::into_sink_error)?;
        insert_dead_letters(&mut tx, tp, dead)
            .await
            .map_err(classify)?;
        tx.commit().await.map_err(classify)
    }
}
