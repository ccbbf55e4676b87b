//! One batch of a re-index in PostgreSQL, in one transaction held open between two calls:
//! first its rows (`ON CONFLICT DO NOTHING`: rows an earlier run stored are skipped), rows
//! PostgreSQL refuses for their own content (a data exception, SQLSTATE class 22) found one by
//! one under savepoints and left out; then, once the caller has removed those records'
//! documents from the search store, the job's new position, and the commit. A refused row so
//! costs one record, not the batch (which every later run would meet again), and no document
//! outlives the commit without its row.

use sqlx::{Postgres, Transaction};

use super::PgSink;
use super::refusal::{Refusal, classify, permanent};
use super::rows::{Rows, insert_records};
use crate::model::{StoredRecord, TopicPartition};
use crate::sink::SinkError;

/// What one committed batch moves.
pub struct Step<'a> {
    pub job: &'a str,
    pub tp: &'a TopicPartition,
    /// Where the partition stood when the batch was read: the update is refused otherwise
    /// (two runs of one job at once).
    pub expected_next: i64,
    pub next: i64,
    pub written: i64,
    /// Records that did not decode, and records whose rows PostgreSQL refused.
    pub dead_letters: i64,
    /// Offsets of records the target index refused for their own content.
    pub refused: &'a [i64],
    /// Offsets of records whose rows PostgreSQL refused (among `dead_letters`).
    pub rows_refused: &'a [i64],
}

/// A batch's rows inserted, the transaction open: [`OpenStep::commit`] or drop (rollback).
pub struct OpenStep {
    tx: Transaction<'static, Postgres>,
    /// Rows PostgreSQL refused for their content, with why: not inserted.
    pub refused: Vec<(i64, String)>,
}

impl PgSink {
    /// Opens the batch's transaction and inserts `rows` (none: nothing to insert), leaving out
    /// the rows PostgreSQL refuses for their content.
    pub async fn reindex_rows(
        &self,
        tp: &TopicPartition,
        rows: Option<&[StoredRecord]>,
    ) -> Result<OpenStep, SinkError> {
        let mut tx = self.pool.begin().await.map_err(classify)?;
        let mut refused = Vec::new();
        let rows = rows.unwrap_or_default();
        if rows.is_empty() {
            return Ok(OpenStep { tx, refused });
        }
        // The whole batch first, as one statement without a savepoint (the common case costs
        // nothing more); refused, the transaction (which holds nothing else yet) starts again
        // and the batch is gone through one row at a time, each under a savepoint.
        match insert_records(&mut tx, &self.mapping, tp, rows, Rows::MayExist).await {
            Ok(()) => return Ok(OpenStep { tx, refused }),
            Err(Refusal::RecordData(_)) => {}
            Err(other) => return Err(other.into_sink_error()),
        }
        tx.rollback().await.map_err(classify)?;
        let mut tx = self.pool.begin().await.map_err(classify)?;
        for (i, row) in rows.iter().enumerate() {
            if let Some(why) = self
                .insert_under_savepoint(&mut tx, tp, &rows[i..=i])
                .await?
            {
                refused.push((row.offset, why));
            }
        }
        Ok(OpenStep { tx, refused })
    }

    /// `records` inserted under a savepoint: `Some(why)` when PostgreSQL refused them for
    /// their content (rolled back to the savepoint, the transaction usable still).
    async fn insert_under_savepoint(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        tp: &TopicPartition,
        records: &[StoredRecord],
    ) -> Result<Option<String>, SinkError> {
        let sql = |s: &'static str| sqlx::raw_sql(s);
        sql("SAVEPOINT rows")
            .execute(&mut **tx)
            .await
            .map_err(classify)?;
        match insert_records(tx, &self.mapping, tp, records, Rows::MayExist).await {
            Ok(()) => {
                sql("RELEASE SAVEPOINT rows")
                    .execute(&mut **tx)
                    .await
                    .map_err(classify)?;
                Ok(None)
            }
            Err(Refusal::RecordData(why)) => {
                sql("ROLLBACK TO SAVEPOINT rows; RELEASE SAVEPOINT rows")
                    .execute(&mut **tx)
                    .await
                    .map_err(classify)?;
                Ok(Some(why))
            }
            Err(other) => Err(other.into_sink_error()),
        }
    }
}

impl OpenStep {
    /// Moves the job's position with the batch's counts and commits rows and position at once.
    pub async fn commit(mut self, step: &Step<'_>) -> Result<(), SinkError> {
        let moved = sqlx::query(
            "UPDATE reindex_positions SET next_offset = $5, written = written + $6, \
               dead_letters = dead_letters + $7, refused = refused + cardinality($8::bigint[]), \
               refused_offsets = refused_offsets || $8::bigint[], \
               row_refused_offsets = row_refused_offsets || $9::bigint[], updated_at = now() \
             WHERE job = $1 AND topic = $2 AND kafka_partition = $3 AND next_offset = $4",
        )
        .bind(step.job)
        .bind(&*step.tp.topic)
        .bind(step.tp.partition)
        .bind(step.expected_next)
        .bind(step.next)
        .bind(step.written)
        .bind(step.dead_letters)
        .bind(step.refused)
        .bind(step.rows_refused)
        .execute(&mut *self.tx)
        .await
        .map_err(classify)?
        .rows_affected();
        if moved != 1 {
            return Err(permanent(format!(
                "job {}: {} is no longer at offset {} (another run of the same job?); nothing of \
                 this batch was committed",
                step.job, step.tp, step.expected_next
            )));
        }
        self.tx.commit().await.map_err(classify)
    }
}
