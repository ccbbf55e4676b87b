//! `parked_records`: records one destination index would not take, kept until it does (see
//! `parking`). Written in the batch's transaction; moved into `log_records` (released) or into
//! `dead_letters` (dropped, or refused for their own content at release) in one transaction
//! each, which also deletes them here.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Postgres, Transaction};

use super::refusal::{Refusal, classify};
use super::rows::{Rows, insert_records};
use super::{PgSink, kafka_time};
use crate::mapping::Mapping;
use crate::model::{
    DeadLetter, LogEntry, Parked, PayloadEncoding, RejectStage, StoredRecord, TopicPartition,
};
use crate::sink::SinkError;

/// Records parked for one destination.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct ParkedSummary {
    pub destination: String,
    pub records: i64,
    pub since: DateTime<Utc>,
    /// The latest reason the destination gave.
    pub reason: String,
}

/// What releasing records into `log_records` did.
#[derive(Debug, PartialEq)]
pub enum Released {
    Done,
    /// PostgreSQL refused a row for its content (a data exception): nothing was written.
    RowRefused(String),
}

/// Inserts the batch's parked records from `from` on (below it the batch is durable already).
pub(super) async fn insert_parked(
    tx: &mut Transaction<'_, Postgres>,
    tp: &TopicPartition,
    parked: &[Parked],
    from: i64,
) -> Result<(), sqlx::Error> {
    let parked: Vec<&Parked> = parked.iter().filter(|p| p.record.offset >= from).collect();
    if parked.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&Parked) -> Option<&str>| parked.iter().map(|p| f(p)).collect::<Vec<_>>();
    let offsets: Vec<i64> = parked.iter().map(|p| p.record.offset).collect();
    let ts: Vec<DateTime<Utc>> = parked.iter().map(|p| p.record.entry.timestamp).collect();
    let kafka_ts: Vec<Option<DateTime<Utc>>> = parked
        .iter()
        .map(|p| kafka_time(p.record.kafka_timestamp_ms))
        .collect();
    let keys: Vec<Option<&[u8]>> = parked.iter().map(|p| p.record.key.as_deref()).collect();
    let payloads: Vec<Option<&[u8]>> = parked.iter().map(|p| p.letter.payload.as_deref()).collect();
    sqlx::query(
        "INSERT INTO parked_records (topic, kafka_partition, kafka_offset, destination, reason, ts, level, service, message, fields, kafka_key, kafka_ts, payload, payload_encoding, redaction) \
         SELECT $1, $2, o, d, r, t, l, s, m, f, k, kt, p, e, x FROM UNNEST($3::bigint[], $4::text[], $5::text[], $6::timestamptz[], $7::text[], $8::text[], $9::text[], $10::text[], $11::bytea[], $12::timestamptz[], $13::bytea[], $14::text[], $15::text[]) \
         AS u(o, d, r, t, l, s, m, f, k, kt, p, e, x) \
         ON CONFLICT (topic, kafka_partition, kafka_offset) DO NOTHING",
    )
    .bind(&*tp.topic)
    .bind(tp.partition)
    .bind(&offsets)
    .bind(col(|p| Some(p.destination.as_str())))
    .bind(col(|p| Some(p.letter.reason.as_str())))
    .bind(&ts)
    .bind(col(|p| p.record.entry.level.as_deref()))
    .bind(col(|p| p.record.entry.service.as_deref()))
    .bind(col(|p| p.record.entry.message.as_deref()))
    .bind(col(|p| Some(p.record.entry.fields.as_str())))
    .bind(&keys)
    .bind(&kafka_ts)
    .bind(&payloads)
    .bind(col(|p| Some(p.letter.encoding.as_str())))
    .bind(col(|p| p.letter.redaction.as_deref()))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct Row {
    topic: String,
    kafka_partition: i32,
    kafka_offset: i64,
    destination: String,
    reason: String,
    ts: DateTime<Utc>,
    level: Option<String>,
    service: Option<String>,
    message: Option<String>,
    fields: String,
    kafka_key: Option<Vec<u8>>,
    kafka_ts: Option<DateTime<Utc>>,
    payload: Option<Vec<u8>>,
    payload_encoding: String,
    redaction: Option<String>,
}

impl Row {
    /// The parked record, or why its row cannot be read back (fields' text no decoded record
    /// has: written by hand).
    fn into_parked(self, mapping: &Mapping) -> Result<(TopicPartition, Parked), String> {
        let tp = TopicPartition::new(self.topic, self.kafka_partition);
        let fields = crate::model::Fields::from_text(self.fields)?;
        let kafka_timestamp_ms = self.kafka_ts.map(|t| t.timestamp_millis());
        let encoding = match self.payload_encoding.as_str() {
            "redacted-json" => PayloadEncoding::RedactedJson,
            "aes-256-gcm" => PayloadEncoding::Aes256Gcm,
            "withheld" => PayloadEncoding::Withheld,
            _ => PayloadEncoding::Raw,
        };
        let entry = LogEntry {
            timestamp: self.ts,
            level: self.level,
            service: self.service,
            message: self.message,
            fields,
        };
        // Parked under the mapping of its day: it goes where today's sends it.
        let stored = mapping.route_stored(&tp.topic, &entry)?;
        for why in stored.misfits {
            tracing::warn!(record = %format!("{tp}@{}", self.kafka_offset), "parked before its column was mapped, stored NULL there: {why}");
        }
        let parked = Parked {
            record: StoredRecord {
                offset: self.kafka_offset,
                key: self.kafka_key.clone(),
                kafka_timestamp_ms,
                entry,
                route: stored.route,
                typed: stored.typed,
            },
            letter: DeadLetter {
                offset: self.kafka_offset,
                key: self.kafka_key,
                payload: self.payload,
                encoding,
                redaction: self.redaction,
                kafka_timestamp_ms,
                stage: RejectStage::Index,
                reason: self.reason,
            },
            destination: self.destination,
        };
        Ok((tp, parked))
    }
}

impl PgSink {
    /// Up to `limit` parked records, those tried least recently first. A row that cannot be
    /// read back stays parked, counted as tried with why (and logged), so it goes behind the
    /// others.
    pub async fn parked_due(&self, limit: i64) -> Result<Vec<(TopicPartition, Parked)>, SinkError> {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT topic, kafka_partition, kafka_offset, destination, reason, ts, level, service, message, fields, kafka_key, kafka_ts, payload, payload_encoding, redaction \
             FROM parked_records ORDER BY tried_at NULLS FIRST, parked_at, topic, kafka_partition, kafka_offset LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        let mut due = Vec::with_capacity(rows.len());
        let mut unreadable: BTreeMap<TopicPartition, Vec<(i64, String)>> = BTreeMap::new();
        for row in rows {
            let tp = TopicPartition::new(row.topic.as_str(), row.kafka_partition);
            let offset = row.kafka_offset;
            match row.into_parked(&self.mapping) {
                Ok(parked) => due.push(parked),
                Err(why) => {
                    tracing::warn!(record = %format!("{tp}@{offset}"), "parked record left parked, its row cannot be read back: {why}");
                    let reason = format!("row cannot be read back: {why}");
                    unreadable.entry(tp).or_default().push((offset, reason));
                }
            }
        }
        // Counted as tried, so it goes behind the others: one such row does not hold up the
        // rest, and `parked list` shows why it stays.
        for (tp, tried) in unreadable {
            self.parked_tried(&tp, &tried).await?;
        }
        Ok(due)
    }

    /// Moves records whose documents the destination took into `log_records`, deleting them
    /// from `parked_records`, in one transaction.
    pub async fn release(
        &self,
        tp: &TopicPartition,
        records: &[StoredRecord],
    ) -> Result<Released, SinkError> {
        let offsets: Vec<i64> = records.iter().map(|r| r.offset).collect();
        self.with_connection(
            Some(self.attempt_timeout),
            async |conn: &mut PgConnection| {
                let mut tx = sqlx::Connection::begin(conn).await.map_err(classify)?;
                match insert_records(&mut tx, &self.mapping, tp, records, Rows::MayExist).await {
                    Ok(()) => {}
                    Err(Refusal::RecordData(message)) => return Ok(Released::RowRefused(message)),
                    Err(other) => return Err(other.into_sink_error()),
                }
                delete(&mut tx, tp, &offsets).await?;
                crate::failpoint::hit("in_release_transaction").await;
                tx.commit().await.map_err(classify)?;
                Ok(Released::Done)
            },
        )
        .await
    }

    /// Moves parked records into `dead_letters` at `stage`, their reason prefixed by `why`.
    pub async fn parked_to_dead_letters(
        &self,
        tp: &TopicPartition,
        offsets: &[i64],
        stage: RejectStage,
        why: &str,
    ) -> Result<u64, SinkError> {
        self.with_connection(Some(self.attempt_timeout), async |conn: &mut PgConnection| {
            let mut tx = sqlx::Connection::begin(conn).await.map_err(classify)?;
            let moved = sqlx::query(
                "INSERT INTO dead_letters (topic, kafka_partition, kafka_offset, kafka_key, payload, kafka_ts, stage, reason, payload_encoding, redaction) \
                 SELECT topic, kafka_partition, kafka_offset, kafka_key, payload, kafka_ts, $4, $5 || reason, payload_encoding, redaction \
                 FROM parked_records WHERE topic = $1 AND kafka_partition = $2 AND kafka_offset = ANY($3) \
                 ON CONFLICT (topic, kafka_partition, kafka_offset) DO NOTHING",
            )
            .bind(&*tp.topic)
            .bind(tp.partition)
            .bind(offsets)
            .bind(stage.as_str())
            .bind(why)
            .execute(&mut *tx)
            .await
            .map_err(classify)?
            .rows_affected();
            delete(&mut tx, tp, offsets).await?;
            tx.commit().await.map_err(classify)?;
            Ok(moved)
        })
        .await
    }

    /// Notes another refusal of parked records (the latest reason, one more attempt).
    pub async fn parked_tried(
        &self,
        tp: &TopicPartition,
        tried: &[(i64, String)],
    ) -> Result<(), SinkError> {
        let offsets: Vec<i64> = tried.iter().map(|t| t.0).collect();
        let reasons: Vec<&str> = tried.iter().map(|t| t.1.as_str()).collect();
        sqlx::query(
            "UPDATE parked_records p SET attempts = attempts + 1, tried_at = now(), reason = u.r \
             FROM UNNEST($3::bigint[], $4::text[]) AS u(o, r) \
             WHERE p.topic = $1 AND p.kafka_partition = $2 AND p.kafka_offset = u.o",
        )
        .bind(&*tp.topic)
        .bind(tp.partition)
        .bind(&offsets)
        .bind(&reasons)
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        Ok(())
    }

    /// Parked records per destination, oldest first.
    pub async fn parked_summary(&self) -> Result<Vec<ParkedSummary>, SinkError> {
        sqlx::query_as(
            "SELECT destination, count(*) AS records, min(parked_at) AS since, \
             (array_agg(reason ORDER BY tried_at DESC NULLS LAST))[1] AS reason \
             FROM parked_records GROUP BY destination ORDER BY since",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(classify)
    }

    /// Sends the records parked for `destination` to the index `to` instead.
    pub async fn reroute_parked(&self, destination: &str, to: &str) -> Result<u64, SinkError> {
        let moved = sqlx::query(
            "UPDATE parked_records SET destination = $2, tried_at = NULL WHERE destination = $1",
        )
        .bind(destination)
        .bind(to)
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        Ok(moved.rows_affected())
    }

    /// The offsets parked for `destination`, by partition.
    pub async fn parked_offsets(
        &self,
        destination: &str,
    ) -> Result<Vec<(TopicPartition, Vec<i64>)>, SinkError> {
        let rows: Vec<(String, i32, Vec<i64>)> = sqlx::query_as(
            "SELECT topic, kafka_partition, array_agg(kafka_offset ORDER BY kafka_offset) \
             FROM parked_records WHERE destination = $1 GROUP BY 1, 2 ORDER BY 1, 2",
        )
        .bind(destination)
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        Ok(rows
            .into_iter()
            .map(|(t, p, o)| (TopicPartition::new(t, p), o))
            .collect())
    }
}

async fn delete(
    tx: &mut Transaction<'_, Postgres>,
    tp: &TopicPartition,
    offsets: &[i64],
) -> Result<(), SinkError> {
    sqlx::query(
        "DELETE FROM parked_records WHERE topic = $1 AND kafka_partition = $2 AND kafka_offset = ANY($3)",
    )
    .bind(&*tp.topic)
    .bind(tp.partition)
    .bind(offsets)
    .execute(&mut **tx)
    .await
    .map_err(classify)?;
    Ok(())
}
