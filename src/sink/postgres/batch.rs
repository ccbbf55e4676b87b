//! One attempt at a batch's transaction: the stored watermark locked and advanced, rows (by
//! bisection when some are refused), dead letters, parked records and gaps, under a bound per
//! statement. What made an attempt fail is a [`Refusal`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Postgres, Transaction};

use super::refusal::{Refusal, within};
use super::rows::{Rows, insert_records};
use super::{Advance, BatchWrite, STORE, Written, advance, kafka_time};
use crate::gaps::Gap;
use crate::mapping::Mapping;
use crate::model::{DeadLetter, StoredRecord, TopicPartition};
use crate::sink::SinkError;

/// One attempt at the batch's transaction. The stored watermark is locked first and decides
/// what is written (see [`advance`]): nothing for a replay, only the offsets from the stored
/// watermark on when part of the batch is durable already. With `per_statement`, rows are
/// inserted by bisection and every statement is bounded by it.
pub(super) async fn write_tx(
    conn: &mut PgConnection,
    mapping: &Mapping,
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
            insert_bisecting(&mut tx, mapping, batch, records, limit, &mut refused).await?;
            if refused.is_empty() {
                // Row by row every one was taken: what refused them together was not a row.
                tracing::warn!(tp = %batch.tp, "the batch's rows were refused together but none alone");
            }
        }
        None => insert_records(&mut tx, mapping, batch.tp, records, rows).await?,
    }
    within(limit, insert_dead_letters(&mut tx, batch.tp, &dead)).await?;
    within(limit, insert_dead_letters(&mut tx, batch.tp, &refused)).await?;
    within(limit, insert_gaps(&mut tx, batch.tp, batch.gaps, from)).await?;
    within(
        limit,
        super::parked::insert_parked(&mut tx, batch.tp, batch.parked, from),
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

/// Inserts the batch's rows, finding the ones PostgreSQL refuses with a data exception by
/// bisection under savepoints: about 2 log2(n) statements per refused row, instead of one per
/// row. Refused rows become dead letters in `refused`; any other refusal ends the attempt.
async fn insert_bisecting(
    tx: &mut Transaction<'_, Postgres>,
    mapping: &Mapping,
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
        let rows = insert_records(tx, mapping, batch.tp, &records[lo..hi], Rows::MayExist);
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

pub(super) async fn insert_dead_letters(
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
