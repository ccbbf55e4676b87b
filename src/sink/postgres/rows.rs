//! Inserting rows into `log_records`, and what a refusal of that insert means.
//!
//! Only the record's coordinates are our key: a conflict on them is a row already stored (a
//! replay, another writer) and is skipped, but only once its content is the same as ours. A
//! conflict on any other unique index an operator added, or a stored row with other content at
//! our coordinates (two clusters or two incarnations of a topic writing into one schema), is a
//! refusal that holds the partition: skipping it would drop the record without a row, a dead
//! letter or a trace, while the watermark passes it.

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};

use super::refusal::{Refusal, classify, code};
use super::{STORE, kafka_time};
use crate::model::{StoredRecord, TopicPartition};
use crate::sink::SinkError;

/// The primary key of `log_records` (migrations/0001_init.sql): the record's coordinates.
const OWN_KEY: &str = "log_records_pkey";

/// Stored rows named one by one when their content differs.
const NAMED: i64 = 5;

/// Whether rows of a batch may exist already.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rows {
    /// Rows are written in the transaction that moves the watermark, and the batch starts at
    /// the stored watermark (`Advance::Update`, see `advance`): none of its rows can exist,
    /// unless another writer shares the table. A plain `INSERT`, without the per-row conflict
    /// check of `ON CONFLICT` (a quarter of PostgreSQL's CPU per row here); a conflict on our
    /// key fails it (`Refusal::Conflict`).
    Fresh,
    /// `INSERT ... ON CONFLICT (coordinates) DO NOTHING`: rows already present are left alone
    /// if they hold what we would write (a retry after a conflict, the bisection, a redrive).
    MayExist,
}

/// Inserting rows: a data exception is a record's fault; a unique violation of our own key is
/// rows that exist already; anything else (another unique index included) is the store's.
pub(crate) fn row_refusal(e: sqlx::Error) -> Refusal {
    let own_key = e.as_database_error().and_then(|d| d.constraint()) == Some(OWN_KEY);
    match code(&e) {
        Some(c) if c.starts_with("22") => Refusal::RecordData(e.to_string()),
        Some(c) if c == "23505" && own_key => Refusal::Conflict,
        _ => Refusal::Store(classify(e)),
    }
}

pub(crate) async fn insert_records(
    tx: &mut Transaction<'_, Postgres>,
    tp: &TopicPartition,
    records: &[StoredRecord],
    rows: Rows,
) -> Result<(), Refusal> {
    if records.is_empty() {
        return Ok(());
    }
    let offsets: Vec<i64> = records.iter().map(|r| r.offset).collect();
    let ts: Vec<DateTime<Utc>> = records.iter().map(|r| r.entry.timestamp).collect();
    let levels: Vec<Option<&str>> = records.iter().map(|r| r.entry.level.as_deref()).collect();
    let services: Vec<Option<&str>> = records.iter().map(|r| r.entry.service.as_deref()).collect();
    let messages: Vec<Option<&str>> = records.iter().map(|r| r.entry.message.as_deref()).collect();
    let fields: Vec<&str> = records.iter().map(|r| r.entry.fields.as_str()).collect();
    let keys: Vec<Option<&[u8]>> = records.iter().map(|r| r.key.as_deref()).collect();
    let kafka_ts: Vec<Option<DateTime<Utc>>> = records
        .iter()
        .map(|r| kafka_time(r.kafka_timestamp_ms))
        .collect();
    const UNNEST: &str = "UNNEST($3::bigint[], $4::timestamptz[], $5::text[], $6::text[], $7::text[], $8::text[], $9::bytea[], $10::timestamptz[]) \
         AS u(o, t, l, s, m, f, k, kt)";
    let insert = format!(
        "INSERT INTO log_records (topic, kafka_partition, kafka_offset, ts, level, service, message, fields, kafka_key, kafka_ts) \
         SELECT $1, $2, o, t, l, s, m, f::jsonb, k, kt FROM {UNNEST}{}",
        match rows {
            Rows::Fresh => "",
            Rows::MayExist => " ON CONFLICT (topic, kafka_partition, kafka_offset) DO NOTHING",
        }
    );
    // The rows that differ from ours among those stored at our coordinates. Rows this statement
    // inserted are ours by construction, so only skipped ones can show up.
    let differing = format!(
        "SELECT r.kafka_offset FROM {UNNEST} \
         JOIN log_records r ON r.topic = $1 AND r.kafka_partition = $2 AND r.kafka_offset = u.o \
         WHERE (r.ts, r.level, r.service, r.message, r.fields, r.kafka_key, r.kafka_ts) \
               IS DISTINCT FROM (u.t, u.l, u.s, u.m, u.f::jsonb, u.k, u.kt) \
         ORDER BY 1 LIMIT {NAMED}"
    );
    macro_rules! bound {
        ($q:expr) => {
            $q.bind(&*tp.topic)
                .bind(tp.partition)
                .bind(&offsets)
                .bind(&ts)
                .bind(&levels)
                .bind(&services)
                .bind(&messages)
                .bind(&fields)
                .bind(&keys)
                .bind(&kafka_ts)
        };
    }
    let inserted = bound!(sqlx::query(sqlx::AssertSqlSafe(insert)))
        .execute(&mut **tx)
        .await
        .map_err(row_refusal)?
        .rows_affected();
    if inserted == records.len() as u64 {
        return Ok(());
    }
    // Some rows were skipped: the comparison runs only on this path, never on the fast one.
    let differ: Vec<i64> = bound!(sqlx::query_scalar(sqlx::AssertSqlSafe(differing)))
        .fetch_all(&mut **tx)
        .await
        .map_err(Refusal::from)?;
    if differ.is_empty() {
        return Ok(());
    }
    let at: Vec<String> = differ.iter().map(|o| format!("{tp}@{o}")).collect();
    Err(Refusal::Store(SinkError::Permanent {
        store: STORE,
        message: format!(
            "log_records holds other content at the coordinates of {} (a row written from \
             another Kafka cluster or an earlier incarnation of the topic?); move those rows \
             away to go on",
            at.join(", ")
        ),
    }))
}
