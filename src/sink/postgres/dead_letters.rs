//! What the operator commands read and change in PostgreSQL: dead letters selected by a filter,
//! their counts, and the re-drive transaction that turns replayed dead letters into rows.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::PgSink;
use super::refusal::{Refusal, classify, within};
use super::rows::{Rows, insert_records};
use crate::model::{RejectStage, StoredRecord, TopicPartition};
use crate::sink::SinkError;

/// Which dead letters an operator command works on. `None` selects everything.
#[derive(Clone, Debug, Default)]
pub struct DeadLetterFilter {
    pub topics: Vec<String>,
    pub partition: Option<i32>,
    pub stage: Option<String>,
    /// Case-insensitive substring of the reason.
    pub reason: Option<String>,
    /// `failed_at` in `[since, until)`.
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// One dead letter as stored.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct StoredDeadLetter {
    pub topic: String,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
    pub kafka_key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub payload_encoding: String,
    /// The redaction it was written under (`Redactor::policy`).
    pub redaction: Option<String>,
    pub kafka_ts: Option<DateTime<Utc>>,
    pub stage: String,
    pub reason: String,
    pub failed_at: DateTime<Utc>,
}

impl StoredDeadLetter {
    pub fn tp(&self) -> TopicPartition {
        TopicPartition::new(self.topic.as_str(), self.kafka_partition)
    }
}

/// A dead letter that stays, with why it failed this time.
#[derive(Clone, Debug)]
pub struct StillFailing {
    pub offset: i64,
    pub stage: RejectStage,
    pub reason: String,
}

/// What the re-drive transaction of one partition did.
#[derive(Debug, Default)]
pub struct Redriven {
    /// Dead letters now stored as rows (and deleted from `dead_letters`).
    pub stored: Vec<i64>,
    /// Records whose own row PostgreSQL refused with a data exception: they stay as `store`
    /// dead letters with this reason, and their documents must go.
    pub refused: Vec<(i64, String)>,
}

const WHERE: &str = "topic = ANY($1::text[]) \
     AND ($2::int IS NULL OR kafka_partition = $2) \
     AND ($3::text IS NULL OR stage = $3) \
     AND ($4::text IS NULL OR strpos(lower(reason), lower($4)) > 0) \
     AND ($5::timestamptz IS NULL OR failed_at >= $5) \
     AND ($6::timestamptz IS NULL OR failed_at < $6)";

const COLUMNS: &str = "topic, kafka_partition, kafka_offset, kafka_key, payload, payload_encoding, \
     redaction, kafka_ts, stage, reason, failed_at";

fn bind_filter<'q, O>(
    q: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    f: &'q DeadLetterFilter,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    q.bind(&f.topics)
        .bind(f.partition)
        .bind(f.stage.as_deref())
        .bind(f.reason.as_deref())
        .bind(f.since)
        .bind(f.until)
}

impl PgSink {
    /// Dead letters per partition of these topics.
    pub async fn dead_letter_counts(
        &self,
        topics: &[String],
    ) -> Result<HashMap<TopicPartition, i64>, SinkError> {
        let rows: Vec<(String, i32, i64)> = sqlx::query_as(
            "SELECT topic, kafka_partition, count(*) FROM dead_letters \
             WHERE topic = ANY($1::text[]) GROUP BY 1, 2",
        )
        .bind(topics)
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        Ok(rows
            .into_iter()
            .map(|(t, p, n)| (TopicPartition::new(t, p), n))
            .collect())
    }

    /// The stored next offsets of every partition of these topics for a consumer group (of
    /// every topic when `topics` is empty: the sampled audit covers every stored name).
    pub async fn watermarks(
        &self,
        group_id: &str,
        topics: &[String],
    ) -> Result<HashMap<TopicPartition, i64>, SinkError> {
        let rows: Vec<(String, i32, i64)> = sqlx::query_as(
            "SELECT topic, kafka_partition, next_offset FROM consumer_offsets \
             WHERE group_id = $1 AND (cardinality($2::text[]) = 0 OR topic = ANY($2::text[]))",
        )
        .bind(group_id)
        .bind(topics)
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        Ok(rows
            .into_iter()
            .map(|(t, p, o)| (TopicPartition::new(t, p), o))
            .collect())
    }

    /// Counts of the selected dead letters by stage and reason, largest first.
    pub async fn dead_letter_summary(
        &self,
        filter: &DeadLetterFilter,
    ) -> Result<Vec<(String, String, i64)>, SinkError> {
        let sql = format!(
            "SELECT stage, reason, count(*) FROM dead_letters WHERE {WHERE} \
             GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2"
        );
        bind_filter(sqlx::query_as(sqlx::AssertSqlSafe(sql)), filter)
            .fetch_all(&self.pool)
            .await
            .map_err(classify)
    }

    /// The redactions (`dead_letters.redaction`) the selected sealed (`aes-256-gcm`) dead
    /// letters were written under, `None` for those written before it was recorded.
    pub async fn sealed_redactions(
        &self,
        filter: &DeadLetterFilter,
    ) -> Result<Vec<Option<String>>, SinkError> {
        let sql = format!(
            "SELECT DISTINCT redaction FROM dead_letters WHERE {WHERE} \
             AND payload_encoding = 'aes-256-gcm'"
        );
        let rows: Vec<(Option<String>,)> =
            bind_filter(sqlx::query_as(sqlx::AssertSqlSafe(sql)), filter)
                .fetch_all(&self.pool)
                .await
                .map_err(classify)?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Up to `limit` selected dead letters after `after` (topic, partition, offset), in that
    /// order: a page that moves on whatever the previous page did to its dead letters.
    pub async fn dead_letters_page(
        &self,
        filter: &DeadLetterFilter,
        after: Option<&(String, i32, i64)>,
        limit: i64,
    ) -> Result<Vec<StoredDeadLetter>, SinkError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM dead_letters WHERE {WHERE} \
             AND ($7::text IS NULL OR (topic, kafka_partition, kafka_offset) > ($7, $8, $9)) \
             ORDER BY topic, kafka_partition, kafka_offset LIMIT $10"
        );
        bind_filter(sqlx::query_as(sqlx::AssertSqlSafe(sql)), filter)
            .bind(after.map(|a| a.0.as_str()))
            .bind(after.map(|a| a.1))
            .bind(after.map(|a| a.2))
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(classify)
    }

    /// One transaction for the replayed dead letters of one partition: the rows of `records`
    /// are inserted and their dead letters deleted, the dead letters in `failing` get their new
    /// stage and reason. Dead letters another run removed meanwhile are left alone, so running
    /// twice stores each record once. A row PostgreSQL refuses with a data exception stays a
    /// `store` dead letter (returned in `refused`); any other refusal changes nothing.
    pub async fn redrive(
        &self,
        tp: &TopicPartition,
        records: &[StoredRecord],
        failing: &[StillFailing],
    ) -> Result<Redriven, SinkError> {
        self.with_connection(
            Some(self.attempt_timeout),
            async |conn: &mut PgConnection| {
                redrive_tx(conn, &self.mapping, tp, records, failing)
                    .await
                    .map_err(Refusal::into_sink_error)
            },
        )
        .await
    }
}

async fn redrive_tx(
    conn: &mut PgConnection,
    mapping: &crate::mapping::Mapping,
    tp: &TopicPartition,
    records: &[StoredRecord],
    failing: &[StillFailing],
) -> Result<Redriven, Refusal> {
    use sqlx::Connection;
    let limit = std::time::Duration::MAX;
    let mut tx = within(limit, conn.begin()).await?;
    let offsets: Vec<i64> = records
        .iter()
        .map(|r| r.offset)
        .chain(failing.iter().map(|f| f.offset))
        .collect();
    // Locked, so a concurrent replay of the same dead letters waits and then finds them gone.
    let present: Vec<i64> = within(
        limit,
        sqlx::query_scalar(
            "SELECT kafka_offset FROM dead_letters WHERE topic = $1 AND kafka_partition = $2 \
             AND kafka_offset = ANY($3::bigint[]) ORDER BY 1 FOR UPDATE",
        )
        .bind(&*tp.topic)
        .bind(tp.partition)
        .bind(&offsets)
        .fetch_all(&mut *tx),
    )
    .await?;
    let records: Vec<StoredRecord> = records
        .iter()
        .filter(|r| present.binary_search(&r.offset).is_ok())
        .cloned()
        .collect();
    let mut out = Redriven::default();
    // All rows at once; on a data exception, one by one under savepoints to find the refused.
    within(limit, sqlx::raw_sql("SAVEPOINT redrive").execute(&mut *tx)).await?;
    match insert_records(&mut tx, mapping, tp, &records, Rows::MayExist).await {
        Ok(()) => out.stored = records.iter().map(|r| r.offset).collect(),
        Err(Refusal::RecordData(_)) => {
            within(
                limit,
                sqlx::raw_sql("ROLLBACK TO SAVEPOINT redrive").execute(&mut *tx),
            )
            .await?;
            for r in &records {
                within(limit, sqlx::raw_sql("SAVEPOINT one").execute(&mut *tx)).await?;
                match insert_records(
                    &mut tx,
                    mapping,
                    tp,
                    std::slice::from_ref(r),
                    Rows::MayExist,
                )
                .await
                {
                    Ok(()) => out.stored.push(r.offset),
                    Err(Refusal::RecordData(why)) => {
                        within(
                            limit,
                            sqlx::raw_sql("ROLLBACK TO SAVEPOINT one").execute(&mut *tx),
                        )
                        .await?;
                        out.refused.push((r.offset, why));
                    }
                    Err(other) => return Err(other),
                }
            }
        }
        Err(other) => return Err(other),
    }
    within(
        limit,
        sqlx::query(
            "DELETE FROM dead_letters WHERE topic = $1 AND kafka_partition = $2 \
             AND kafka_offset = ANY($3::bigint[])",
        )
        .bind(&*tp.topic)
        .bind(tp.partition)
        .bind(&out.stored)
        .execute(&mut *tx),
    )
    .await?;
    let still = failing
        .iter()
        .filter(|f| present.binary_search(&f.offset).is_ok())
        .map(|f| (f.offset, f.stage.as_str(), f.reason.as_str()))
        .chain(
            out.refused
                .iter()
                .map(|(o, why)| (*o, RejectStage::Store.as_str(), why.as_str())),
        );
    let (o, s, r): (Vec<i64>, Vec<&str>, Vec<&str>) = still.fold(
        (Vec::new(), Vec::new(), Vec::new()),
        |(mut o, mut s, mut r), (a, b, c)| {
            o.push(a);
            s.push(b);
            r.push(c);
            (o, s, r)
        },
    );
    within(
        limit,
        sqlx::query(
            "UPDATE dead_letters d SET stage = u.s, reason = u.r, failed_at = now() \
             FROM UNNEST($3::bigint[], $4::text[], $5::text[]) AS u(o, s, r) \
             WHERE d.topic = $1 AND d.kafka_partition = $2 AND d.kafka_offset = u.o",
        )
        .bind(&*tp.topic)
        .bind(tp.partition)
        .bind(&o)
        .bind(&s)
        .bind(&r)
        .execute(&mut *tx),
    )
    .await?;
    within(limit, tx.commit()).await?;
    Ok(out)
}

/// Kafka's record time as the dead letter keeps it, back in milliseconds.
pub fn kafka_ms(ts: Option<DateTime<Utc>>) -> Option<i64> {
    ts.map(|t| t.timestamp_millis())
}
