//! PostgreSQL: one transaction per batch holding its rows, its dead letters and the
//! partition's next offset. That transaction is the commit point of the whole batch.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Postgres, Transaction};

use super::SinkError;
use crate::config::mask_url;
use crate::model::{DeadLetter, RejectStage, StoredRecord, TopicPartition};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

const STORE: &str = "postgresql";

/// Connection settings for [`PgSink`].
#[derive(Clone, Debug)]
pub struct PgSettings {
    pub url: String,
    pub schema: String,
    pub pool_size: u32,
    pub connect_timeout: Duration,
    pub statement_timeout: Duration,
}

/// A batch as PostgreSQL stores it.
pub struct BatchWrite<'a> {
    pub group_id: &'a str,
    pub tp: &'a TopicPartition,
    pub records: &'a [StoredRecord],
    pub dead_letters: &'a [DeadLetter],
    pub next_offset: i64,
}

/// The PostgreSQL store. Cloning shares the pool.
#[derive(Clone)]
pub struct PgSink {
    pool: PgPool,
    schema: String,
    /// Bound on one use of a connection, client side (see [`PgSink::with_connection`]).
    attempt_timeout: Duration,
}

impl PgSink {
    /// Builds the pool without connecting: connections are made (with the connect timeout) when
    /// first needed, so an unreachable database shows up as a retryable error, not a hang.
    pub fn new(settings: &PgSettings) -> Result<Self, SinkError> {
        let options = PgConnectOptions::from_str(&settings.url)
            .map_err(|e| {
                permanent(format!(
                    "bad URL {}: {}",
                    mask_url(&settings.url),
                    scrub(&e.to_string(), &settings.url)
                ))
            })?
            .application_name("log-processor")
            .options([
                ("search_path", settings.schema.as_str()),
                (
                    "statement_timeout",
                    &settings.statement_timeout.as_millis().to_string(),
                ),
            ]);
        let pool = PgPoolOptions::new()
            .max_connections(settings.pool_size)
            .acquire_timeout(settings.connect_timeout)
            .connect_lazy_with(options);
        Ok(Self {
            pool,
            schema: settings.schema.clone(),
            // Each statement is bounded server side; a transaction that outlives one
            // statement's bound plus a connect is talking to a dead connection.
            attempt_timeout: settings.statement_timeout + settings.connect_timeout,
        })
    }

    /// Creates the schema if needed and applies the embedded migrations (sqlx serialises
    /// concurrent migrators with an advisory lock).
    pub async fn migrate(&self) -> Result<(), SinkError> {
        // The schema name is validated at start-up (letters, digits, underscores).
        let create = format!("CREATE SCHEMA IF NOT EXISTS \"{}\"", self.schema);
        if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(create.as_str()))
            .execute(&self.pool)
            .await
        {
            // Two replicas creating the same schema at once: one loses the race, which is fine.
            if !matches!(code(&e).as_deref(), Some("23505" | "42P06")) {
                return Err(classify(e));
            }
        }
        MIGRATOR.run(&self.pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(e) => classify(e),
            other => permanent(other.to_string()),
        })
    }

    /// The stored next offsets of these partitions for a consumer group.
    pub async fn load_offsets(
        &self,
        group_id: &str,
        tps: &[TopicPartition],
    ) -> Result<HashMap<TopicPartition, i64>, SinkError> {
        let topics: Vec<&str> = tps.iter().map(|tp| &*tp.topic).collect();
        let parts: Vec<i32> = tps.iter().map(|tp| tp.partition).collect();
        let rows: Vec<(String, i32, i64)> = self
            .with_connection(async |conn: &mut PgConnection| {
                sqlx::query_as(
                    "SELECT o.topic, o.kafka_partition, o.next_offset FROM consumer_offsets o \
                     JOIN UNNEST($2::text[], $3::int[]) AS w(topic, kafka_partition) USING (topic, kafka_partition) \
                     WHERE o.group_id = $1",
                )
                .bind(group_id)
                .bind(&topics)
                .bind(&parts)
                .fetch_all(conn)
                .await
                .map_err(classify)
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|(t, p, o)| (TopicPartition::new(t, p), o))
            .collect())
    }

    /// Writes a batch atomically. Replays are absorbed: rows and dead letters already present
    /// are left alone and the stored offset only moves forward.
    pub async fn write_batch(&self, batch: &BatchWrite<'_>) -> Result<(), SinkError> {
        self.with_connection(async |conn: &mut PgConnection| match write_set_based(conn, batch).await {
            Err(SinkError::Permanent { message, .. }) => {
                tracing::warn!(tp = %batch.tp, error = %message, "set-based insert rejected; writing the batch row by row to isolate the bad records");
                write_isolating(conn, batch).await
            }
            other => other,
        })
        .await
    }

    /// Runs `op` on a pooled connection, bounded client side as well: a connection whose peer
    /// vanished without a reset (a node lost, a NAT entry expired) would otherwise leave the
    /// caller waiting for an answer forever. On expiry the connection is detached and
    /// dropped, not handed back to the pool, whose return check would wait on the same dead
    /// socket.
    async fn with_connection<T>(
        &self,
        op: impl AsyncFnOnce(&mut PgConnection) -> Result<T, SinkError>,
    ) -> Result<T, SinkError> {
        let mut conn = self.pool.acquire().await.map_err(classify)?;
        match tokio::time::timeout(self.attempt_timeout, op(&mut conn)).await {
            Ok(result) => result,
            Err(_) => {
                drop(conn.detach());
                Err(SinkError::Transient {
                    store: STORE,
                    message: format!(
                        "no answer within {} ms; connection dropped",
                        self.attempt_timeout.as_millis()
                    ),
                })
            }
        }
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

async fn write_set_based(conn: &mut PgConnection, batch: &BatchWrite<'_>) -> Result<(), SinkError> {
    let mut tx = conn.begin().await.map_err(classify)?;
    insert_records(&mut tx, batch.tp, batch.records).await?;
    insert_dead_letters(&mut tx, batch.tp, batch.dead_letters).await?;
    store_offset(&mut tx, batch).await?;
    crate::failpoint::hit("in_pg_transaction").await;
    tx.commit().await.map_err(classify)
}

/// Fallback for a batch PostgreSQL refuses as a whole: each record in its own savepoint,
/// refused ones dead-lettered with PostgreSQL's reason, all in one transaction still.
async fn write_isolating(conn: &mut PgConnection, batch: &BatchWrite<'_>) -> Result<(), SinkError> {
    let mut tx = conn.begin().await.map_err(classify)?;
    let mut dead = batch.dead_letters.to_vec();
    for record in batch.records {
        sqlx::query("SAVEPOINT one_record")
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        match insert_records(&mut tx, batch.tp, std::slice::from_ref(record)).await {
            Ok(()) => {}
            Err(SinkError::Permanent { message, .. }) => {
                sqlx::query("ROLLBACK TO SAVEPOINT one_record")
                    .execute(&mut *tx)
                    .await
                    .map_err(classify)?;
                dead.push(DeadLetter {
                    offset: record.offset,
                    key: record.key.clone(),
                    payload: Some(serde_json::to_vec(&record.entry.fields).unwrap_or_default()),
                    kafka_timestamp_ms: record.kafka_timestamp_ms,
                    stage: RejectStage::Store,
                    reason: message,
                });
            }
            Err(other) => return Err(other),
        }
    }
    insert_dead_letters(&mut tx, batch.tp, &dead).await?;
    store_offset(&mut tx, batch).await?;
    tx.commit().await.map_err(classify)
}

async fn insert_records(
    tx: &mut Transaction<'_, Postgres>,
    tp: &TopicPartition,
    records: &[StoredRecord],
) -> Result<(), SinkError> {
    if records.is_empty() {
        return Ok(());
    }
    let offsets: Vec<i64> = records.iter().map(|r| r.offset).collect();
    let ts: Vec<DateTime<Utc>> = records.iter().map(|r| r.entry.timestamp).collect();
    let levels: Vec<Option<&str>> = records.iter().map(|r| r.entry.level.as_deref()).collect();
    let services: Vec<Option<&str>> = records.iter().map(|r| r.entry.service.as_deref()).collect();
    let messages: Vec<Option<&str>> = records.iter().map(|r| r.entry.message.as_deref()).collect();
    let fields: Vec<String> = records
        .iter()
        .map(|r| serde_json::to_string(&r.entry.fields).expect("a JSON map serialises"))
        .collect();
    let keys: Vec<Option<&[u8]>> = records.iter().map(|r| r.key.as_deref()).collect();
    let kafka_ts: Vec<Option<DateTime<Utc>>> = records
        .iter()
        .map(|r| kafka_time(r.kafka_timestamp_ms))
        .collect();
    sqlx::query(
        "INSERT INTO log_records (topic, kafka_partition, kafka_offset, ts, level, service, message, fields, kafka_key, kafka_ts) \
         SELECT $1, $2, o, t, l, s, m, f::jsonb, k, kt \
         FROM UNNEST($3::bigint[], $4::timestamptz[], $5::text[], $6::text[], $7::text[], $8::text[], $9::bytea[], $10::timestamptz[]) \
              AS u(o, t, l, s, m, f, k, kt) \
         ON CONFLICT DO NOTHING",
    )
    .bind(&*tp.topic)
    .bind(tp.partition)
    .bind(&offsets)
    .bind(&ts)
    .bind(&levels)
    .bind(&services)
    .bind(&messages)
    .bind(&fields)
    .bind(&keys)
    .bind(&kafka_ts)
    .execute(&mut **tx)
    .await
    .map_err(classify)?;
    Ok(())
}

async fn insert_dead_letters(
    tx: &mut Transaction<'_, Postgres>,
    tp: &TopicPartition,
    dead: &[DeadLetter],
) -> Result<(), SinkError> {
    if dead.is_empty() {
        return Ok(());
    }
    let offsets: Vec<i64> = dead.iter().map(|d| d.offset).collect();
    let keys: Vec<Option<&[u8]>> = dead.iter().map(|d| d.key.as_deref()).collect();
    let payloads: Vec<Option<&[u8]>> = dead.iter().map(|d| d.payload.as_deref()).collect();
    let kafka_ts: Vec<Option<DateTime<Utc>>> = dead
        .iter()
        .map(|d| kafka_time(d.kafka_timestamp_ms))
        .collect();
    let stages: Vec<&str> = dead.iter().map(|d| d.stage.as_str()).collect();
    let reasons: Vec<&str> = dead.iter().map(|d| d.reason.as_str()).collect();
    sqlx::query(
        "INSERT INTO dead_letters (topic, kafka_partition, kafka_offset, kafka_key, payload, kafka_ts, stage, reason) \
         SELECT $1, $2, o, k, p, kt, s, r \
         FROM UNNEST($3::bigint[], $4::bytea[], $5::bytea[], $6::timestamptz[], $7::text[], $8::text[]) AS u(o, k, p, kt, s, r) \
         ON CONFLICT DO NOTHING",
    )
    .bind(&*tp.topic)
    .bind(tp.partition)
    .bind(&offsets)
    .bind(&keys)
    .bind(&payloads)
    .bind(&kafka_ts)
    .bind(&stages)
    .bind(&reasons)
    .execute(&mut **tx)
    .await
    .map_err(classify)?;
    Ok(())
}

async fn store_offset(
    tx: &mut Transaction<'_, Postgres>,
    batch: &BatchWrite<'_>,
) -> Result<(), SinkError> {
    sqlx::query(
        "INSERT INTO consumer_offsets (group_id, topic, kafka_partition, next_offset) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (group_id, topic, kafka_partition) DO UPDATE \
         SET next_offset = GREATEST(consumer_offsets.next_offset, EXCLUDED.next_offset), updated_at = now()",
    )
    .bind(batch.group_id)
    .bind(&*batch.tp.topic)
    .bind(batch.tp.partition)
    .bind(batch.next_offset)
    .execute(&mut **tx)
    .await
    .map_err(classify)?;
    Ok(())
}

fn kafka_time(ms: Option<i64>) -> Option<DateTime<Utc>> {
    ms.and_then(|ms| Utc.timestamp_millis_opt(ms).single())
}

fn code(e: &sqlx::Error) -> Option<String> {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
}

fn permanent(message: String) -> SinkError {
    SinkError::Permanent {
        store: STORE,
        message,
    }
}

/// Data and schema errors (SQLSTATE classes 22, 23, 42, 54) cannot be cured by retrying;
/// everything else (connection loss, server restart, timeouts, lock and resource trouble) can.
fn classify(e: sqlx::Error) -> SinkError {
    let message = e.to_string();
    match code(&e) {
        Some(c)
            if ["22", "23", "42", "54"]
                .iter()
                .any(|class| c.starts_with(class)) =>
        {
            permanent(message)
        }
        _ => SinkError::Transient {
            store: STORE,
            message,
        },
    }
}

/// Removes a URL (and so its password) from an error text that might echo it.
fn scrub(text: &str, url: &str) -> String {
    if url.is_empty() {
        text.to_string()
    } else {
        text.replace(url, &mask_url(url))
    }
}
