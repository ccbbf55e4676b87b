//! PostgreSQL: one transaction per batch holding its rows, its dead letters and the
//! partition's next offset. That transaction is the commit point of the whole batch.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Postgres, Transaction};

use super::SinkError;
use crate::config::{MigrateMode, mask_url, scrub_urls};
use crate::gaps::Gap;
use crate::model::{DeadLetter, Parked, Position, StoredRecord, TopicPartition};

mod dead_letters;
mod gaps;
mod identity;
mod parked;
mod rows;

pub use gaps::GapCounts;
pub use parked::{ParkedSummary, Released};

use rows::{Rows, insert_records};

pub use dead_letters::{DeadLetterFilter, Redriven, StillFailing, StoredDeadLetter, kafka_ms};

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
        })
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
        const PROBES: [&str; 6] = [
            "SELECT topic, kafka_partition, kafka_offset, ts, level, service, message, fields, kafka_key, kafka_ts FROM log_records LIMIT 0",
            "SELECT topic, kafka_partition, kafka_offset, kafka_key, payload, payload_encoding, redaction, kafka_ts, stage, reason FROM dead_letters LIMIT 0",
            "SELECT group_id, topic, kafka_partition, next_offset FROM consumer_offsets LIMIT 0",
            "SELECT topic, kafka_partition, from_offset, to_offset, cause FROM source_gaps LIMIT 0",
            "SELECT cluster_id, topic_id, topic, stored_as FROM topic_identities LIMIT 0",
            "SELECT topic, kafka_partition, kafka_offset, destination, fields, payload_encoding FROM parked_records LIMIT 0",
        ];
        for probe in PROBES {
            if let Err(e) = sqlx::query(probe).execute(&self.pool).await {
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
                async |conn: &mut PgConnection| Ok(write_tx(conn, batch, None, rows).await),
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
                    write_tx(conn, batch, per_statement, Rows::MayExist)
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

/// Why a batch transaction did not commit.
enum Refusal {
    /// A data exception (SQLSTATE class 22) from inserting rows: some record's own fault.
    RecordData(String),
    /// A row of a [`Rows::Fresh`] insert exists already at its coordinates (our primary key):
    /// write again with `Rows::MayExist`.
    Conflict,
    /// Anything else: the store's or the batch's fault, never a record's.
    Store(SinkError),
}

impl Refusal {
    fn into_sink_error(self) -> SinkError {
        match self {
            Refusal::RecordData(message) => permanent(message),
            Refusal::Conflict => SinkError::Transient {
                store: STORE,
                message: "a row of the batch exists already".into(),
            },
            Refusal::Store(e) => e,
        }
    }
}

impl From<sqlx::Error> for Refusal {
    fn from(e: sqlx::Error) -> Self {
        Refusal::Store(classify(e))
    }
}

/// One attempt at the batch's transaction. The stored watermark is locked first and decides
/// what is written (see [`advance`]): nothing for a replay, only the offsets from the stored
/// watermark on when part of the batch is durable already. With `per_statement`, rows are
/// inserted by bisection and every statement is bounded by it.
async fn write_tx(
    conn: &mut PgConnection,
    batch: &BatchWrite<'_>,
    per_statement: Option<Duration>,
    rows: Rows,
) -> Result<Written, Refusal> {
    let limit = per_statement.unwrap_or(Duration::MAX);
    let mut tx = within(limit, conn.begin()).await?;
    let stored: Option<i64> = within(
        limit,
        sqlx::query_scalar(
            "SELECT next_offset FROM consumer_offsets \
             WHERE group_id = $1 AND topic = $2 AND kafka_partition = $3 FOR UPDATE",
        )
        .bind(batch.group_id)
        .bind(&*batch.tp.topic)
        .bind(batch.tp.partition)
        .fetch_optional(&mut *tx),
    )
    .await?;
    let step = advance(stored, batch.start, batch.first_offset, batch.next_offset);
    let from = match &step {
        Advance::Hole(why) => {
            return Err(Refusal::Store(SinkError::Behind {
                store: STORE,
                message: format!("{}: {why}", batch.tp),
            }));
        }
        Advance::Replay => batch.next_offset,
        Advance::Update => stored.unwrap_or(batch.first_offset),
        Advance::Insert => batch.first_offset,
    };
    // Rows and dead letters below `from` are durable already, whatever this run made of them.
    let records = &batch.records[batch.records.partition_point(|r| r.offset < from)..];
    let dead: Vec<DeadLetter> = batch
        .dead_letters
        .iter()
        .filter(|d| d.offset >= from)
        .cloned()
        .collect();
    let mut refused = Vec::new();
    // Without a stored watermark nothing says which rows a batch may find (a new group on a
    // table another group fills, rows kept after the watermark was deleted).
    let rows = if matches!(step, Advance::Insert) {
        Rows::MayExist
    } else {
        rows
    };
    match per_statement {
        Some(limit) => {
            insert_bisecting(&mut tx, batch, records, limit, &mut refused).await?;
            if refused.is_empty() {
                // Row by row every one was taken: what refused them together was not a row.
                tracing::warn!(tp = %batch.tp, "the batch's rows were refused together but none alone");
            }
        }
        None => insert_records(&mut tx, batch.tp, records, rows).await?,
    }
    within(limit, insert_dead_letters(&mut tx, batch.tp, &dead)).await?;
    within(limit, insert_dead_letters(&mut tx, batch.tp, &refused)).await?;
    within(limit, insert_gaps(&mut tx, batch.tp, batch.gaps, from)).await?;
    within(
        limit,
        parked::insert_parked(&mut tx, batch.tp, batch.parked, from),
    )
    .await?;
    let sql = match step {
        Advance::Replay | Advance::Hole(_) => None,
        // A concurrent first insert makes this one fail with a unique violation: retried.
        Advance::Insert => Some(
            "INSERT INTO consumer_offsets (group_id, topic, kafka_partition, next_offset) VALUES ($1, $2, $3, $4)",
        ),
        Advance::Update => Some(
            "UPDATE consumer_offsets SET next_offset = $4, updated_at = now() \
             WHERE group_id = $1 AND topic = $2 AND kafka_partition = $3",
        ),
    };
    if let Some(sql) = sql {
        within(
            limit,
            sqlx::query(sql)
                .bind(batch.group_id)
                .bind(&*batch.tp.topic)
                .bind(batch.tp.partition)
                .bind(batch.next_offset)
                .execute(&mut *tx),
        )
        .await?;
    }
    // Every record of the batch PostgreSQL holds as a `store` dead letter: their documents,
    // indexed before, must go (see `worker`). Only a run that found none itself and wrote the
    // whole batch knows that no earlier run left one; the others read them back.
    let store_dead_letters: Vec<i64> = if refused.is_empty() && from == batch.first_offset {
        Vec::new()
    } else {
        within(
            limit,
            sqlx::query_scalar(
                "SELECT kafka_offset FROM dead_letters WHERE topic = $1 AND kafka_partition = $2 \
                 AND kafka_offset >= $3 AND kafka_offset < $4 AND stage = 'store' ORDER BY 1",
            )
            .bind(&*batch.tp.topic)
            .bind(batch.tp.partition)
            .bind(batch.first_offset)
            .bind(batch.next_offset)
            .fetch_all(&mut *tx),
        )
        .await?
    };
    // A `store` dead letter's document was indexed before PostgreSQL refused its row. It is
    // removed before the commit, not after: a kill after the commit would otherwise leave the
    // document without its row for good (the watermark has passed the batch), while a kill
    // before the commit only means the batch is read again from Kafka and the same happens.
    // The transaction is not held open across the search store (which may refuse for as long
    // as it likes): it is rolled back, and written again once the documents are gone.
    if store_dead_letters
        .iter()
        .any(|o| batch.documents_removed.binary_search(o).is_err())
    {
        within(limit, tx.rollback()).await?;
        return Ok(Written {
            store_dead_letters,
            committed: false,
            already_durable: false,
        });
    }
    crate::failpoint::hit("in_pg_transaction").await;
    within(limit, tx.commit()).await?;
    Ok(Written {
        store_dead_letters,
        committed: true,
        already_durable: matches!(step, Advance::Replay),
    })
}

/// `fut` within `limit`; no answer in time is the connection's fault.
async fn within<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, Refusal> {
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => result.map_err(Refusal::from),
        Err(_) => Err(Refusal::Store(SinkError::Transient {
            store: STORE,
            message: format!("no answer within {} ms", limit.as_millis()),
        })),
    }
}

/// Inserts the batch's rows, finding the ones PostgreSQL refuses with a data exception by
/// bisection under savepoints: about 2 log2(n) statements per refused row, instead of one per
/// row. Refused rows become dead letters in `refused`; any other refusal ends the attempt.
async fn insert_bisecting(
    tx: &mut Transaction<'_, Postgres>,
    batch: &BatchWrite<'_>,
    records: &[StoredRecord],
    limit: Duration,
    refused: &mut Vec<DeadLetter>,
) -> Result<(), Refusal> {
    let mut ranges = vec![(0, records.len())];
    while let Some((lo, hi)) = ranges.pop() {
        if lo == hi {
            continue;
        }
        within(limit, sqlx::raw_sql("SAVEPOINT bisect").execute(&mut **tx)).await?;
        let rows = insert_records(tx, batch.tp, &records[lo..hi], Rows::MayExist);
        let inserted = tokio::time::timeout(limit, rows).await.map_err(|_| {
            Refusal::Store(SinkError::Transient {
                store: STORE,
                message: format!("no answer within {} ms", limit.as_millis()),
            })
        })?;
        match inserted {
            Ok(()) => {
                within(
                    limit,
                    sqlx::raw_sql("RELEASE SAVEPOINT bisect").execute(&mut **tx),
                )
                .await?;
            }
            Err(Refusal::RecordData(message)) => {
                within(
                    limit,
                    sqlx::raw_sql("ROLLBACK TO SAVEPOINT bisect; RELEASE SAVEPOINT bisect")
                        .execute(&mut **tx),
                )
                .await?;
                if hi - lo == 1 {
                    refused.push((batch.dead_letter)(records[lo].offset, message));
                } else {
                    let mid = lo + (hi - lo) / 2;
                    ranges.push((mid, hi));
                    ranges.push((lo, mid));
                }
            }
            Err(store) => return Err(store),
        }
    }
    Ok(())
}

/// Records the gaps of a batch from `from` on (what lies below is accounted for already).
async fn insert_gaps(
    tx: &mut Transaction<'_, Postgres>,
    tp: &TopicPartition,
    gaps: &[Gap],
    from: i64,
) -> Result<(), sqlx::Error> {
    let gaps: Vec<Gap> = gaps
        .iter()
        .filter(|g| g.to > from)
        .map(|g| Gap {
            from: g.from.max(from),
            ..*g
        })
        .collect();
    if gaps.is_empty() {
        return Ok(());
    }
    let froms: Vec<i64> = gaps.iter().map(|g| g.from).collect();
    let tos: Vec<i64> = gaps.iter().map(|g| g.to).collect();
    let causes: Vec<&str> = gaps.iter().map(|g| g.cause.as_str()).collect();
    sqlx::query(
        "INSERT INTO source_gaps (topic, kafka_partition, from_offset, to_offset, cause) \
         SELECT $1, $2, f, t, c FROM UNNEST($3::bigint[], $4::bigint[], $5::text[]) AS g(f, t, c) \
         ON CONFLICT (topic, kafka_partition, from_offset) DO NOTHING",
    )
    .bind(&*tp.topic)
    .bind(tp.partition)
    .bind(&froms)
    .bind(&tos)
    .bind(&causes)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_dead_letters(
    tx: &mut Transaction<'_, Postgres>,
    tp: &TopicPartition,
    dead: &[DeadLetter],
) -> Result<(), sqlx::Error> {
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
    let encodings: Vec<&str> = dead.iter().map(|d| d.encoding.as_str()).collect();
    let redactions: Vec<Option<&str>> = dead.iter().map(|d| d.redaction.as_deref()).collect();
    sqlx::query(
        "INSERT INTO dead_letters (topic, kafka_partition, kafka_offset, kafka_key, payload, kafka_ts, stage, reason, payload_encoding, redaction) \
         SELECT $1, $2, o, k, p, kt, s, r, e, x \
         FROM UNNEST($3::bigint[], $4::bytea[], $5::bytea[], $6::timestamptz[], $7::text[], $8::text[], $9::text[], $10::text[]) AS u(o, k, p, kt, s, r, e, x) \
         ON CONFLICT (topic, kafka_partition, kafka_offset) DO NOTHING",
    )
    .bind(&*tp.topic)
    .bind(tp.partition)
    .bind(&offsets)
    .bind(&keys)
    .bind(&payloads)
    .bind(&kafka_ts)
    .bind(&stages)
    .bind(&reasons)
    .bind(&encodings)
    .bind(&redactions)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// What the batch's transaction does with the stored watermark.
#[derive(Debug, PartialEq, Eq)]
pub enum Advance {
    /// No watermark stored yet and the batch is the first of its assignment: store `next`.
    Insert,
    /// The stored watermark lies inside `[start, next)`: move it to `next`.
    Update,
    /// Already at or past `next`: a replay of durable records, nothing moves.
    Replay,
    /// Offsets below the batch's start are not durable: refuse (the batch is held).
    Hole(String),
}

/// The compare-and-set rule for the stored watermark. `stored` is the row's value (locked),
/// `first`/`next` the batch's offsets. The watermark only ever moves from where this batch
/// starts, so it can never jump over a batch that is not durable.
pub fn advance(stored: Option<i64>, start: Position, first: i64, next: i64) -> Advance {
    let from = match start {
        Position::Assigned(Some(s)) | Position::After(s) => s,
        Position::Assigned(None) => first,
    };
    match stored {
        Some(s) if s >= next => Advance::Replay,
        Some(s) if s >= from => Advance::Update,
        Some(s) => Advance::Hole(format!(
            "stored watermark {s} is below this batch's start {from}: offsets [{s}, {from}) are not durable"
        )),
        None => match start {
            Position::Assigned(_) => Advance::Insert,
            Position::After(s) => Advance::Hole(format!(
                "no stored watermark, but this batch follows one ending at {s} that is not durable"
            )),
        },
    }
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

/// Data, constraint, schema, privilege and authentication errors (SQLSTATE classes 22, 23, 28,
/// 3F, 42, 54) need an operator; everything else (connection loss, server restart, timeouts, lock and resource
/// trouble) may pass by itself. Which statement failed decides whether it was a record's fault
/// (`row_refusal`), not this.
fn classify(e: sqlx::Error) -> SinkError {
    let message = e.to_string();
    match code(&e) {
        Some(c)
            if ["22", "23", "28", "3F", "42", "54"]
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

#[cfg(test)]
mod tests {
    use super::*;
    use Position::*;

    #[test]
    fn the_watermark_moves_only_from_inside_the_batch() {
        assert_eq!(advance(None, Assigned(None), 0, 10), Advance::Insert);
        assert_eq!(advance(None, Assigned(Some(50)), 50, 60), Advance::Insert);
        assert!(matches!(advance(None, After(10), 10, 20), Advance::Hole(_)));
        assert_eq!(advance(Some(10), After(10), 10, 20), Advance::Update);
        assert_eq!(advance(Some(12), After(10), 12, 20), Advance::Update);
        assert_eq!(advance(Some(10), Assigned(None), 10, 20), Advance::Update);
        assert_eq!(advance(Some(20), After(10), 10, 20), Advance::Replay);
        assert_eq!(advance(Some(25), Assigned(Some(0)), 0, 20), Advance::Replay);
        assert!(matches!(
            advance(Some(10), After(20), 20, 30),
            Advance::Hole(_)
        ));
        assert!(matches!(
            advance(Some(10), Assigned(None), 20, 30),
            Advance::Hole(_)
        ));
    }
}

/// A schema name as an SQL identifier (validated at start-up: letters, digits, underscores),
/// quoted so that mixed case is kept.
fn quoted(schema: &str) -> String {
    format!("\"{schema}\"")
}
