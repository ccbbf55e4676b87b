//! PostgreSQL: one transaction per batch holding its rows, its dead letters and the
//! partition's next offset. That transaction is the commit point of the whole batch.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Postgres};

use super::SinkError;
use crate::config::{MigrateMode, mask_url, scrub_urls};
use crate::gaps::Gap;
use crate::model::{DeadLetter, Parked, Position, StoredRecord, TopicPartition};

mod advance;
mod audit;
mod batch;
mod copy_rows;
mod dead_letters;
mod gaps;
mod identity;
mod parked;
mod refusal;
mod rows;
mod tables;
mod target;
mod target_step;
mod window_start;

pub use audit::Accounted;
pub use gaps::GapCounts;
pub use parked::{ParkedSummary, Released};
pub use tables::Added;
pub use target::JobPartition;
pub use target_step::{OpenStep, Step};

use batch::write_tx;
use refusal::{Refusal, classify, code, permanent};
use rows::Rows;

pub use advance::{Advance, advance};

pub use dead_letters::{DeadLetterFilter, Redriven, StillFailing, StoredDeadLetter, kafka_ms};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

const STORE: &str = "postgresql";

/// Connection settings for [`PgSink`].
#[derive(Clone, Debug)]
pub struct PgSettings {
    /// The tables records go to, and their typed columns.
    pub mapping: std::sync::Arc<crate::mapping::Mapping>,
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
    /// Records their destination index would not take (see `parking`): `parked_records`.
    pub parked: &'a [Parked],
    /// Where the partition stands before this batch (`Batch::start`).
    pub start: Position,
    /// The first offset the batch accounts for: its first gap's or its first record's.
    pub first_offset: i64,
    pub next_offset: i64,
    /// Offsets of the batch without a record (see `gaps`), recorded in `source_gaps`.
    pub gaps: &'a [Gap],
    /// The dead letter of a record whose own row PostgreSQL refuses (offset, reason): built by
    /// the caller, which holds the raw bytes and the redaction policy.
    pub dead_letter: &'a (dyn Fn(i64, String) -> DeadLetter + Sync),
    /// Records whose documents the caller has removed from the search store already (sorted).
    /// The transaction commits only when every `store` dead letter of the batch is among them.
    pub documents_removed: &'a [i64],
}

/// What a committed batch transaction did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// Records PostgreSQL holds (or, uncommitted, would hold) as `store` dead letters: refused
    /// with a data exception, by this run or an earlier one.
    pub store_dead_letters: Vec<i64>,
    /// False when nothing was committed because documents of `store_dead_letters` that are not
    /// in `documents_removed` must be removed first; then the batch is written again.
    pub committed: bool,
    /// The stored watermark was already at or past this batch: a replay, nothing moved.
    pub already_durable: bool,
}

/// The PostgreSQL store. Cloning shares the pool.
#[derive(Clone)]
pub struct PgSink {
    pool: PgPool,
    schema: String,
    /// Bound on one use of a connection, client side (see [`PgSink::with_connection`]).
    attempt_timeout: Duration,
    /// Bound on handing a connection back to the pool (its liveness check).
    return_timeout: Duration,
    /// Partitions where rows of a batch existed already (another writer shares the table):
    /// their batches are written with `Rows::MayExist` from then on, not tried plain first.
    shared: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<TopicPartition>>>,
    mapping: std::sync::Arc<crate::mapping::Mapping>,
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
                    scrub_urls(&e.to_string())
                ))
            })?
            .application_name("log-processor")
            .options([
                ("search_path", quoted(&settings.schema).as_str()),
                (
                    "statement_timeout",
                    &settings.statement_timeout.as_millis().to_string(),
                ),
                // A connection dropped mid-transaction (a silent peer) must not leave the server
                // holding the batch's locks until TCP notices, hours later.
                (
                    "idle_in_transaction_session_timeout",
                    &(settings.statement_timeout + settings.connect_timeout)
                        .as_millis()
                        .to_string(),
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
            return_timeout: settings.connect_timeout,
            shared: Default::default(),
            mapping: settings.mapping.clone(),
        })
    }

    /// The mapping rows are stored by.
    pub fn mapping(&self) -> std::sync::Arc<crate::mapping::Mapping> {
        self.mapping.clone()
    }

    /// Start-up: leaves a schema that is already at this version alone; otherwise migrates
    /// (`Auto`) or refuses (`Off`).
    pub async fn prepare(&self, mode: MigrateMode) -> Result<(), SinkError> {
        if self.schema_ready().await? {
            return Ok(());
        }
        match mode {
            MigrateMode::Auto => self.migrate().await,
            MigrateMode::Off => Err(permanent(format!(
                "schema \"{}\" lacks tables or columns this version uses, and LP_MIGRATE=off: \
                 run `log-processor migrate` as the schema's owner first",
                self.schema
            ))),
        }
    }

    /// True when every table and column the daemon uses is there and readable. Needs only
    /// SELECT on the tables, not the migration history.
    async fn schema_ready(&self) -> Result<bool, SinkError> {
        const PROBES: [&str; 7] = [
            "SELECT topic, kafka_partition, kafka_offset, ts, level, service, message, fields, kafka_key, kafka_ts FROM log_records LIMIT 0",
            "SELECT topic, kafka_partition, kafka_offset, kafka_key, payload, payload_encoding, redaction, kafka_ts, stage, reason FROM dead_letters LIMIT 0",
            "SELECT group_id, topic, kafka_partition, next_offset FROM consumer_offsets LIMIT 0",
            "SELECT topic, kafka_partition, from_offset, to_offset, cause FROM source_gaps LIMIT 0",
            "SELECT cluster_id, topic_id, topic, stored_as FROM topic_identities LIMIT 0",
            "SELECT topic, kafka_partition, kafka_offset, destination, fields, payload_encoding FROM parked_records LIMIT 0",
            "SELECT table_name, column_name, column_type, path FROM mapped_columns LIMIT 0",
        ];
        // `mapped_columns` is read only with a mapping file (`tables`).
        let probes = match self.mapping.is_builtin() {
            true => &PROBES[..PROBES.len() - 1],
            false => &PROBES[..],
        };
        for probe in probes {
            if let Err(e) = sqlx::query(*probe).execute(&self.pool).await {
                // Undefined table, column or schema: not migrated (yet).
                return match code(&e).as_deref() {
                    Some("42P01" | "42703" | "3F000") => Ok(false),
                    _ => Err(classify(e)),
                };
            }
        }
        Ok(true)
    }

    /// Creates the schema if it is missing and applies the embedded migrations (sqlx
    /// serialises concurrent migrators with an advisory lock).
    pub async fn migrate(&self) -> Result<(), SinkError> {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                .bind(&self.schema)
                .fetch_one(&self.pool)
                .await
                .map_err(classify)?;
        // Only a missing schema needs CREATE on the database.
        let create = format!("CREATE SCHEMA IF NOT EXISTS {}", quoted(&self.schema));
        if !exists
            && let Err(e) = sqlx::query(sqlx::AssertSqlSafe(create.as_str()))
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
            .with_connection(Some(self.attempt_timeout), async |conn: &mut PgConnection| {
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

    /// Writes a batch atomically: rows, dead letters and the partition's next offset. Replays
    /// are absorbed: rows and dead letters already present are left alone. A record whose own
    /// row PostgreSQL refuses with a data exception is found by bisection and dead-lettered;
    /// any other refusal is returned, with nothing written.
    pub async fn write_batch(&self, batch: &BatchWrite<'_>) -> Result<Written, SinkError> {
        let attempt = async |rows: Rows| {
            self.with_connection(
                Some(self.attempt_timeout),
                async |conn: &mut PgConnection| {
                    Ok(write_tx(conn, &self.mapping, batch, None, rows).await)
                },
            )
            .await
        };
        let shared = || self.shared.lock().unwrap_or_else(|p| p.into_inner());
        let rows = match shared().contains(batch.tp) {
            true => Rows::MayExist,
            false => Rows::Fresh,
        };
        let mut first = attempt(rows).await?;
        if matches!(first, Err(Refusal::Conflict)) {
            tracing::warn!(tp = %batch.tp, "rows of this batch exist already (another writer shares the table?); writing it again skipping them, and so for this partition from now on");
            shared().insert(batch.tp.clone());
            first = attempt(Rows::MayExist).await?;
        }
        match first {
            Err(Refusal::RecordData(message)) => {
                tracing::warn!(tp = %batch.tp, error = %message, "a row was refused with a data exception; bisecting the batch to find it");
                // Bisection takes many statements: each is bounded, not the whole pass, so
                // however many rows are bad it cannot run into one overall bound for ever.
                let per_statement = Some(self.attempt_timeout);
                self.with_connection(None, async |conn: &mut PgConnection| {
                    write_tx(conn, &self.mapping, batch, per_statement, Rows::MayExist)
                        .await
                        .map_err(Refusal::into_sink_error)
                })
                .await
            }
            other => other.map_err(Refusal::into_sink_error),
        }
    }

    /// Runs `op` on a pooled connection, bounded client side as well: a connection whose peer
    /// vanished without a reset (a node lost, a NAT entry expired) would otherwise leave the
    /// caller waiting for an answer forever. Unless `op` finishes, by its own timeout or by the
    /// caller dropping this future (a revocation, an abort), the connection is detached and
    /// dropped, not handed back to the pool, whose return check (a rollback or ping, without a
    /// timeout) would hold the pool's slot on the same dead socket.
    async fn with_connection<T>(
        &self,
        bound: Option<Duration>,
        op: impl AsyncFnOnce(&mut PgConnection) -> Result<T, SinkError>,
    ) -> Result<T, SinkError> {
        let conn = self.pool.acquire().await.map_err(classify)?;
        let mut guard = DetachUnlessFinished(Some(conn));
        let conn = guard.0.as_mut().expect("set above");
        let bound = bound.unwrap_or(Duration::MAX);
        match tokio::time::timeout(bound, op(conn)).await {
            Ok(result) => {
                guard.finished(self.return_timeout);
                result
            }
            Err(_) => Err(SinkError::Transient {
                store: STORE,
                message: format!(
                    "no answer within {} ms; connection dropped",
                    bound.as_millis()
                ),
            }),
        }
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A pooled connection that goes back to the pool only through [`Self::finished`]; dropped any
/// other way it is detached and closed (see `PgSink::with_connection`).
struct DetachUnlessFinished(Option<PoolConnection<Postgres>>);

impl DetachUnlessFinished {
    /// Hands the connection back to the pool. sqlx checks it with a ping that has no timeout
    /// (a peer gone silent right after the batch would hold the pool's slot until TCP gives
    /// up), so the check runs here under `bound`; past it, the connection is dropped and its
    /// slot freed.
    ///
    /// The connection's buffers are shrunk first: sqlx keeps the capacity its largest message
    /// needed, so each pooled connection would otherwise hold a copy's worth of the largest
    /// batch it ever wrote, outside the memory budget (see `RawRecord::COPIES`).
    fn finished(mut self, bound: Duration) {
        if let Some(mut conn) = self.0.take() {
            conn.shrink_buffers();
            tokio::spawn(tokio::time::timeout(bound, conn.return_to_pool()));
        }
    }
}

impl Drop for DetachUnlessFinished {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            drop(conn.detach());
        }
    }
}

fn kafka_time(ms: Option<i64>) -> Option<DateTime<Utc>> {
    ms.and_then(|ms| Utc.timestamp_millis_opt(ms).single())
}

/// A schema name as an SQL identifier (validated at start-up: letters, digits, underscores),
/// quoted so that mixed case is kept.
fn quoted(schema: &str) -> String {
    format!("\"{schema}\"")
}
