//! Where a re-index window began among records Kafka deleted, from what the daemon stored
//! (read only): each row and dead letter keeps its record's Kafka timestamp, and `source_gaps`
//! names the offsets that never held a record.

use chrono::{DateTime, Utc};

use super::refusal::classify;
use super::{PgSink, quoted};
use crate::model::TopicPartition;
use crate::sink::SinkError;

/// At most this many no-record gaps are stepped over in a row (each one query).
const GAPS_IN_A_ROW: usize = 64;

impl PgSink {
    /// The first offset of `tp` the daemon stored (a row or a dead letter) whose Kafka
    /// timestamp is at or after `since`, among offsets below `below`: where a window starts
    /// among records Kafka deleted since.
    pub async fn first_stored_since(
        &self,
        tables: &[String],
        tp: &TopicPartition,
        since: DateTime<Utc>,
        below: i64,
    ) -> Result<Option<i64>, SinkError> {
        let found = self.stored_offsets(tables, tp, "min", ">=", since, below);
        Ok(found.await?.into_iter().flatten().min())
    }

    /// The lowest offset below `below` the window can begin at, as far as the daemon's stores
    /// justify it: one past the last record stored (a row or a dead letter) with a Kafka
    /// timestamp before `since`, then past any no-record gaps that follow (offsets without a
    /// record cannot begin a window); 0 with no such record. Timestamps are taken to rise with
    /// offsets, as Kafka's own offsets-for-times does.
    pub async fn window_floor(
        &self,
        tables: &[String],
        tp: &TopicPartition,
        since: DateTime<Utc>,
        below: i64,
    ) -> Result<i64, SinkError> {
        let last = (self
            .stored_offsets(tables, tp, "max", "<", since, below)
            .await?)
            .into_iter()
            .max()
            .flatten();
        let mut floor = last.map_or(0, |l| l + 1);
        for _ in 0..GAPS_IN_A_ROW {
            let past: Option<i64> = sqlx::query_scalar(
                "SELECT max(to_offset) FROM source_gaps WHERE topic = $1 AND kafka_partition = $2 \
                 AND cause = 'no_record' AND from_offset <= $3 AND to_offset > $3",
            )
            .bind(&*tp.topic)
            .bind(tp.partition)
            .bind(floor)
            .fetch_one(&self.pool)
            .await
            .map_err(classify)?;
            match past {
                Some(to) => floor = to.min(below),
                None => break,
            }
            if floor >= below {
                break;
            }
        }
        Ok(floor.min(below))
    }

    /// `agg(kafka_offset)` (min or max) of the partition's records stored below `below` whose
    /// Kafka timestamp is `cmp` (`>=` or `<`) `since`, in each of `tables` and `dead_letters`.
    async fn stored_offsets(
        &self,
        tables: &[String],
        tp: &TopicPartition,
        agg: &'static str,
        cmp: &'static str,
        since: DateTime<Utc>,
        below: i64,
    ) -> Result<Vec<Option<i64>>, SinkError> {
        let mut out = Vec::new();
        for table in tables.iter().map(String::as_str).chain(["dead_letters"]) {
            let sql = format!(
                "SELECT {agg}(kafka_offset) FROM {} WHERE topic = $1 AND kafka_partition = $2 \
                 AND kafka_ts {cmp} $3 AND kafka_offset < $4",
                quoted(table)
            );
            let found: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .bind(&*tp.topic)
                .bind(tp.partition)
                .bind(since)
                .bind(below)
                .fetch_one(&self.pool)
                .await
                .map_err(classify)?;
            out.push(found);
        }
        Ok(out)
    }
}
