//! Where an assigned partition starts: PostgreSQL's watermark first, Kafka's committed offset
//! only when none is stored.

use std::time::Duration;

use rdkafka::consumer::Consumer;

use crate::model::TopicPartition;

use super::Kafka;

/// Where a partition with no stored watermark starts (`LP_START_WITHOUT_WATERMARK`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoWatermark {
    /// From the log's start: whatever Kafka still holds is read (again). The default: a
    /// missing watermark is also what a database restored from before the partition's first
    /// batch looks like, and Kafka's committed offset would then skip everything below it.
    Earliest,
    /// From Kafka's committed offset, when the group has one (records below it that the
    /// database lacks are not read again).
    Committed,
}

/// Where an assigned partition starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// PostgreSQL's watermark: written with the rows, so it is the truth.
    Stored(i64),
    /// PostgreSQL's watermark, behind Kafka's committed offset: the database went back in time
    /// (restored from a backup, failed over to a lagging replica). Reading from Kafka's offset
    /// would skip `[stored, committed)`, which PostgreSQL lacks; it is read again.
    Rewound { stored: i64, committed: i64 },
    /// No watermark stored, `NoWatermark::Committed`: Kafka's committed offset.
    Committed(i64),
    /// From the log's start: no watermark stored and (`NoWatermark::Earliest`) whatever Kafka
    /// has committed, shown in `ignored`, or nothing committed at all.
    Beginning { ignored: Option<i64> },
    /// No watermark, `NoWatermark::Committed`, and Kafka's committed offsets unknown:
    /// librdkafka fetches them.
    AskKafka,
}

/// The start rule. `committed` is `None` when Kafka's committed offsets could not be read,
/// `Some(None)` when the group has none for the partition.
pub fn start_offset(
    stored: Option<i64>,
    committed: Option<Option<i64>>,
    policy: NoWatermark,
) -> Start {
    match (stored, committed.flatten(), policy) {
        (Some(stored), Some(committed), _) if committed > stored => {
            Start::Rewound { stored, committed }
        }
        (Some(pg), _, _) => Start::Stored(pg),
        (None, ignored, NoWatermark::Earliest) => Start::Beginning { ignored },
        (None, Some(k), NoWatermark::Committed) => Start::Committed(k),
        (None, None, NoWatermark::Committed) if committed.is_some() => {
            Start::Beginning { ignored: None }
        }
        (None, None, NoWatermark::Committed) => Start::AskKafka,
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

/// The partition's first offset as the broker last reported it: librdkafka keeps the log start
/// offset of each fetch response, so this costs no request. `None` before any was reported.
pub(super) fn log_start(consumer: &Kafka, tp: &TopicPartition) -> Option<i64> {
    let topic = std::ffi::CString::new(&*tp.topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the handle is the live consumer's, the topic a NUL-terminated string that outlives
    // the call, and both out-pointers point at local integers.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            tp.partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && low >= 0)
        .then_some(low)
}

#[cfg(test)]
mod tests {
    use super::*;
    use NoWatermark::*;

    #[test]
    fn postgres_watermark_wins_whenever_stored() {
        for policy in [Earliest, Committed] {
            assert_eq!(
                start_offset(Some(10), Some(Some(5)), policy),
                Start::Stored(10)
            );
            assert_eq!(
                start_offset(Some(10), Some(Some(10)), policy),
                Start::Stored(10)
            );
            assert_eq!(start_offset(Some(10), None, policy), Start::Stored(10));
            assert_eq!(
                start_offset(Some(10), Some(None), policy),
                Start::Stored(10)
            );
        }
    }

    #[test]
    fn kafka_ahead_of_postgres_is_a_database_that_went_back_and_is_read_again() {
        for policy in [Earliest, Committed] {
            assert_eq!(
                start_offset(Some(10), Some(Some(50)), policy),
                Start::Rewound {
                    stored: 10,
                    committed: 50
                }
            );
        }
    }

    #[test]
    fn without_a_watermark_the_default_reads_from_the_start_whatever_kafka_committed() {
        assert_eq!(
            start_offset(None, Some(Some(7)), Earliest),
            Start::Beginning { ignored: Some(7) }
        );
        assert_eq!(
            start_offset(None, Some(None), Earliest),
            Start::Beginning { ignored: None }
        );
        assert_eq!(
            start_offset(None, None, Earliest),
            Start::Beginning { ignored: None }
        );
    }

    #[test]
    fn trusting_kafka_without_a_watermark_is_an_explicit_choice() {
        assert_eq!(
            start_offset(None, Some(Some(7)), Committed),
            Start::Committed(7)
        );
        assert_eq!(
            start_offset(None, Some(None), Committed),
            Start::Beginning { ignored: None }
        );
        assert_eq!(start_offset(None, None, Committed), Start::AskKafka);
    }

    /// Whatever the inputs, the start is never past PostgreSQL's watermark: a position the
    /// database cannot back is never trusted.
    #[test]
    fn never_starts_past_a_stored_watermark() {
        for stored in [None, Some(0), Some(5), Some(100)] {
            for committed in [
                None,
                Some(None),
                Some(Some(0)),
                Some(Some(5)),
                Some(Some(500)),
            ] {
                for policy in [Earliest, Committed] {
                    let at = match start_offset(stored, committed, policy) {
                        Start::Stored(o) => Some(o),
                        Start::Rewound { stored, .. } => Some(stored),
                        Start::Committed(k) => Some(k),
                        Start::Beginning { .. } => Some(0),
                        Start::AskKafka => None,
                    };
                    if let (Some(pg), Some(at)) = (stored, at) {
                        assert!(at <= pg, "{stored:?} {committed:?} {policy:?}");
                    }
                    if stored.is_none() && policy == Earliest {
                        assert_eq!(at, Some(0));
                    }
                }
            }
        }
    }
}
