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

use super::copy_rows::{copy_statement, copy_text};
use super::refusal::{Refusal, classify, code};
use super::{STORE, kafka_time};
use crate::mapping::{Mapping, Table};
use crate::model::{StoredRecord, TopicPartition};
use crate::sink::SinkError;

/// Stored rows named one by one when their content differs.
const NAMED: i64 = 5;

/// Whether rows of a batch may exist already.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rows {
    /// Rows are written in the transaction that moves the watermark, and the batch starts at
    /// the stored watermark (`Advance::Update`, see `advance`): none of its rows can exist,
    /// unless another writer shares the table. A `COPY` (`copy_rows`), without the per-row
    /// conflict check of `ON CONFLICT` (a quarter of PostgreSQL's CPU per row here); a
    /// conflict on our key fails it (`Refusal::Conflict`).
    Fresh,
    /// `INSERT ... ON CONFLICT (coordinates) DO NOTHING`: rows already present are left alone
    /// if they hold what we would write (a retry after a conflict, the bisection, a redrive).
    MayExist,
}

/// Inserting rows into `table`: a data exception is a record's fault; a unique violation of our
/// own key (`<table>_pkey`, the record's coordinates: migrations/0001_init.sql and
/// `mapping::ddl`) is rows that exist already; anything else (another unique index included)
/// is the store's.
pub(crate) fn row_refusal(table: &str, e: sqlx::Error) -> Refusal {
    let constraint = e.as_database_error().and_then(|d| d.constraint());
    let own_key = constraint.is_some_and(|c| c.strip_suffix("_pkey") == Some(table));
    match code(&e) {
        Some(c) if c.starts_with("22") => Refusal::RecordData(e.to_string()),
        Some(c) if c == "23505" && own_key => Refusal::Conflict,
        _ => Refusal::Store(classify(e)),
    }
}

/// Inserts the records' rows, each into its route's table (`mapping`) with its typed columns.
pub(crate) async fn insert_records(
    tx: &mut Transaction<'_, Postgres>,
    mapping: &Mapping,
    tp: &TopicPartition,
    records: &[StoredRecord],
    rows: Rows,
) -> Result<(), Refusal> {
    if let [table] = mapping.tables() {
        return insert_into(tx, table, tp, records.iter(), rows).await;
    }
    for (t, table) in mapping.tables().iter().enumerate() {
        let of_table = records
            .iter()
            .filter(|r| mapping.routes()[r.route].table == t);
        if of_table.clone().next().is_some() {
            insert_into(tx, table, tp, of_table, rows).await?;
        }
    }
    Ok(())
}

async fn insert_into<'r>(
    tx: &mut Transaction<'_, Postgres>,
    table: &Table,
    tp: &TopicPartition,
    records: impl Iterator<Item = &'r StoredRecord> + Clone,
    rows: Rows,
) -> Result<(), Refusal> {
    let records: Vec<&StoredRecord> = records.collect();
    if records.is_empty() {
        return Ok(());
    }
    if rows == Rows::Fresh
        && let Some(data) = copy_text(tp, &records)
    {
        return copy_into(tx, table, data).await;
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
    // Typed columns travel as text and are cast by PostgreSQL (`mapping` checked each value
    // fits before either store saw it; a cast that still fails is a data exception).
    let typed: Vec<Vec<Option<&str>>> = (0..table.columns.len())
        .map(|c| records.iter().map(|r| r.typed[c].as_deref()).collect())
        .collect();
    let name = &table.name;
    let params = (0..typed.len()).map(|c| format!(", ${}::text[]", 11 + c));
    let aliases = (0..typed.len()).map(|c| format!(", c{c}"));
    let unnest = format!(
        "UNNEST($3::bigint[], $4::timestamptz[], $5::text[], $6::text[], $7::text[], $8::text[], \
         $9::bytea[], $10::timestamptz[]{}) AS u(o, t, l, s, m, f, k, kt{})",
        params.collect::<String>(),
        aliases.collect::<String>()
    );
    let casts: Vec<String> = (table.columns.iter().enumerate())
        .map(|(c, col)| format!("u.c{c}::{}", col.kind.name()))
        .collect();
    let columns: String = table
        .columns
        .iter()
        .map(|c| format!(", {}", c.name))
        .collect();
    let values: String = casts.iter().map(|c| format!(", {c}")).collect();
    let insert = format!(
        "INSERT INTO {name} (topic, kafka_partition, kafka_offset, ts, level, service, message, fields, kafka_key, kafka_ts{columns}) \
         SELECT $1, $2, u.o, u.t, u.l, u.s, u.m, u.f::jsonb, u.k, u.kt{values} FROM {unnest}{}",
        match rows {
            Rows::Fresh => "",
            Rows::MayExist => " ON CONFLICT (topic, kafka_partition, kafka_offset) DO NOTHING",
        }
    );
    // The rows that differ from ours among those stored at our coordinates. Rows this statement
    // inserted are ours by construction, so only skipped ones can show up.
    let stored: String = table
        .columns
        .iter()
        .map(|c| format!(", r.{}", c.name))
        .collect();
    let differing = format!(
        "SELECT r.kafka_offset FROM {unnest} \
         JOIN {name} r ON r.topic = $1 AND r.kafka_partition = $2 AND r.kafka_offset = u.o \
         WHERE (r.ts, r.level, r.service, r.message, r.fields, r.kafka_key, r.kafka_ts{stored}) \
               IS DISTINCT FROM (u.t, u.l, u.s, u.m, u.f::jsonb, u.k, u.kt{values}) \
         ORDER BY 1 LIMIT {NAMED}"
    );
    macro_rules! bound {
        ($q:expr) => {{
            let mut q = $q
                .bind(&*tp.topic)
                .bind(tp.partition)
                .bind(&offsets)
                .bind(&ts)
                .bind(&levels)
                .bind(&services)
                .bind(&messages)
                .bind(&fields)
                .bind(&keys)
                .bind(&kafka_ts);
            for column in &typed {
                q = q.bind(column);
            }
            q
        }};
    }
    let inserted = bound!(sqlx::query(sqlx::AssertSqlSafe(insert)))
        .execute(&mut **tx)
        .await
        .map_err(|e| row_refusal(name, e))?
        .rows_affected();
    if inserted == offsets.len() as u64 {
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
    let name = &table.name;
    Err(Refusal::Store(SinkError::Permanent {
        store: STORE,
        message: format!(
            "{name} holds other content at the coordinates of {} (a row written from \
             another Kafka cluster or an earlier incarnation of the topic?); move those rows \
             away to go on",
            at.join(", ")
        ),
    }))
}

/// `COPY`s rows none of which can exist (`Rows::Fresh`): all are written or none, refused the
/// way an `INSERT` of them is (`row_refusal`).
async fn copy_into(
    tx: &mut Transaction<'_, Postgres>,
    table: &Table,
    data: Vec<u8>,
) -> Result<(), Refusal> {
    let refusal = |e| row_refusal(&table.name, e);
    let mut copy = tx
        .copy_in_raw(&copy_statement(table))
        .await
        .map_err(refusal)?;
    if let Err(e) = copy.send(data).await {
        // Ended here, not dropped: sqlx's drop of an unfinished copy sends `CopyFail` without
        // waiting for the answer it brings, which the connection's next statement would read
        // as its own. (A write cancelled mid-copy closes its connection: `with_connection`.)
        let _ = copy.abort("log-processor: sending the rows failed").await;
        return Err(refusal(e));
    }
    copy.finish().await.map_err(refusal)?;
    Ok(())
}
