//! What `status` shows of `source_gaps`: per partition, the offsets recorded without a record.

use std::collections::HashMap;

use super::PgSink;
use super::refusal::classify;
use crate::model::TopicPartition;
use crate::sink::SinkError;

/// Offsets of one partition recorded in `source_gaps`, by cause.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GapCounts {
    /// Deleted from Kafka before they were read (`retention`): lost outside the daemon.
    pub lost: i64,
    /// Transaction markers, aborted or compacted records (`no_record`): nothing lost.
    pub no_record: i64,
}

impl PgSink {
    /// The recorded gap offsets of every partition of these topics.
    pub async fn gap_counts(
        &self,
        topics: &[String],
    ) -> Result<HashMap<TopicPartition, GapCounts>, SinkError> {
        let rows: Vec<(String, i32, i64, i64)> = sqlx::query_as(
            "SELECT topic, kafka_partition, \
               coalesce(sum(to_offset - from_offset) FILTER (WHERE cause = 'retention'), 0)::bigint, \
               coalesce(sum(to_offset - from_offset) FILTER (WHERE cause <> 'retention'), 0)::bigint \
             FROM source_gaps WHERE topic = ANY($1::text[]) GROUP BY 1, 2",
        )
        .bind(topics)
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        Ok(rows
            .into_iter()
            .map(|(t, p, lost, no_record)| {
                (TopicPartition::new(t, p), GapCounts { lost, no_record })
            })
            .collect())
    }
}
