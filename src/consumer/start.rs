//! Where an assigned partition starts: PostgreSQL's watermark first, Kafka's committed offset
//! only when none is stored.

use std::time::Duration;

use rdkafka::consumer::Consumer;

use crate::model::TopicPartition;

use super::Kafka;

/// Where an assigned partition starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// PostgreSQL's watermark: written with the rows, so it is the truth. Kafka's committed
    /// offset only trails it; one ahead of it (PostgreSQL restored from a backup) would skip
    /// records PostgreSQL lacks.
    Stored(i64),
    /// No watermark stored (a new schema): Kafka's committed offset.
    Committed(i64),
    /// Nothing stored or committed: `auto.offset.reset` (earliest).
    Beginning,
    /// Nothing stored and Kafka's committed offsets unknown: librdkafka fetches them.
    AskKafka,
}

/// The start policy. `committed` is `None` when Kafka's committed offsets could not be read,
/// `Some(None)` when the group has none for the partition.
pub fn start_offset(stored: Option<i64>, committed: Option<Option<i64>>) -> Start {
    match (stored, committed) {
        (Some(pg), _) => Start::Stored(pg),
        (None, Some(Some(k))) => Start::Committed(k),
        (None, Some(None)) => Start::Beginning,
        (None, None) => Start::AskKafka,
    }
}

/// The partition's end offset (high watermark), if the broker answers within 5 s.
pub(super) fn end_offset(consumer: &Kafka, tp: &TopicPartition) -> Option<i64> {
    match consumer.fetch_watermarks(&tp.topic, tp.partition, Duration::from_secs(5)) {
        Ok((_, high)) => Some(high),
        Err(e) => {
            tracing::warn!(partition = %tp, error = %e, "could not read the end offset");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_watermark_wins_whenever_stored() {
        assert_eq!(start_offset(Some(10), Some(Some(5))), Start::Stored(10));
        // Kafka ahead of PostgreSQL (PostgreSQL restored): re-read from PostgreSQL's.
        assert_eq!(start_offset(Some(10), Some(Some(50))), Start::Stored(10));
        assert_eq!(start_offset(Some(10), None), Start::Stored(10));
        assert_eq!(start_offset(None, Some(Some(7))), Start::Committed(7));
        assert_eq!(start_offset(None, Some(None)), Start::Beginning);
        assert_eq!(start_offset(None, None), Start::AskKafka);
    }
}
