//! Offsets of a partition that hold no record the daemon could read, and why.
//!
//! Below a partition's stored watermark every offset is a row, a dead letter, or one of these
//! gaps, written in the same transaction as the batch that moves the watermark over it. Kafka
//! itself leaves offsets without a readable record (a transaction's commit or abort marker, an
//! aborted record under `read_committed`, a record removed by compaction): those are not losses.
//! Retention (or `kafka-delete-records`) moving the log's start past offsets not yet read is.
//! Pure rules only: the consumer supplies the offsets and the log's start.

use std::fmt;

/// Why a range of offsets holds no record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GapCause {
    /// Deleted from Kafka (retention, delete-records) before the daemon read it: a loss that
    /// happened outside the daemon.
    Retention,
    /// Inside the log but without a record to read: transaction markers, aborted records,
    /// compacted records. Not a loss.
    NoRecord,
}

impl GapCause {
    /// The name stored in `source_gaps.cause` and shown by `status` and the metric.
    pub fn as_str(self) -> &'static str {
        match self {
            GapCause::Retention => "retention",
            GapCause::NoRecord => "no_record",
        }
    }

    /// Whether records were lost to it (counted, logged at WARN).
    pub fn is_loss(self) -> bool {
        !matches!(self, GapCause::NoRecord)
    }
}

impl fmt::Display for GapCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The offsets `[from, to)` of one partition, and why they hold no record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gap {
    pub from: i64,
    pub to: i64,
    pub cause: GapCause,
}

impl Gap {
    /// How many offsets it spans.
    pub fn offsets(&self) -> i64 {
        self.to - self.from
    }
}

/// The gaps between `expected` (where the partition's accounted offsets end) and `next` (the
/// offset of a record read). `log_start` is the partition's first offset as the broker last
/// reported it (librdkafka caches it from each fetch response), `None` when unknown.
///
/// Offsets below the log's start were deleted; offsets from it on that Kafka did not hand over
/// hold no record. Without a known log start a jump is taken as deleted: a loss is never hidden.
/// The log's start is read after the records were, so offsets deleted since they were read
/// count as deleted too: an error, if any, on the side of reporting a loss.
pub fn between(expected: i64, next: i64, log_start: Option<i64>) -> Vec<Gap> {
    if next <= expected {
        return Vec::new();
    }
    let deleted_to = match log_start {
        Some(start) => start.clamp(expected, next),
        None => next,
    };
    let mut gaps = Vec::with_capacity(2);
    if deleted_to > expected {
        gaps.push(Gap {
            from: expected,
            to: deleted_to,
            cause: GapCause::Retention,
        });
    }
    if next > deleted_to {
        gaps.push(Gap {
            from: deleted_to,
            to: next,
            cause: GapCause::NoRecord,
        });
    }
    gaps
}

/// The gaps of a batch whose records have `offsets` (ascending): before its first record, from
/// `expected` (where the partition's previous batch ended, or where it was started; `None`
/// when it was started at the log's start with nothing stored, so accounted from offset 0),
/// and between its records.
pub fn of_batch(
    expected: Option<i64>,
    offsets: impl IntoIterator<Item = i64>,
    log_start: Option<i64>,
) -> Vec<Gap> {
    let mut at = expected.unwrap_or(0);
    let mut gaps = Vec::new();
    for offset in offsets {
        gaps.extend(between(at, offset, log_start));
        at = at.max(offset + 1);
    }
    gaps
}

#[cfg(test)]
mod tests {
    use super::*;
    use GapCause::*;

    fn g(from: i64, to: i64, cause: GapCause) -> Gap {
        Gap { from, to, cause }
    }

    #[test]
    fn contiguous_offsets_have_no_gap() {
        assert!(between(10, 10, Some(0)).is_empty());
        assert!(between(10, 5, Some(0)).is_empty());
        assert!(of_batch(Some(3), [3, 4, 5], Some(0)).is_empty());
    }

    #[test]
    fn a_marker_inside_the_log_is_no_record_not_a_loss() {
        assert_eq!(between(10, 11, Some(0)), vec![g(10, 11, NoRecord)]);
        // A transaction's commit marker between two records of one batch.
        assert_eq!(
            of_batch(Some(0), [0, 1, 3, 4], Some(0)),
            vec![g(2, 3, NoRecord)]
        );
        assert!(!NoRecord.is_loss());
    }

    #[test]
    fn retention_past_the_expected_offset_is_a_loss_up_to_the_log_start() {
        assert_eq!(between(100, 500, Some(500)), vec![g(100, 500, Retention)]);
        // The first record after the new log start lies behind a marker.
        assert_eq!(
            between(100, 502, Some(500)),
            vec![g(100, 500, Retention), g(500, 502, NoRecord)]
        );
        assert!(Retention.is_loss());
    }

    #[test]
    fn an_unknown_log_start_never_hides_a_loss() {
        assert_eq!(between(7, 9, None), vec![g(7, 9, Retention)]);
    }

    #[test]
    fn a_partition_read_from_a_trimmed_start_accounts_from_offset_zero() {
        assert_eq!(
            of_batch(None, [1200, 1201], Some(1200)),
            vec![g(0, 1200, Retention)]
        );
    }

    /// The gaps tile `[expected, next)` exactly: every offset in between has one reason.
    #[test]
    fn gaps_cover_every_offset_between_once() {
        for expected in [0, 3, 10] {
            for next in [0, 4, 10, 11, 30] {
                for start in [None, Some(0), Some(3), Some(10), Some(20), Some(40)] {
                    let gaps = between(expected, next, start);
                    let mut at = expected;
                    for gap in &gaps {
                        assert_eq!(gap.from, at);
                        assert!(gap.offsets() > 0);
                        at = gap.to;
                    }
                    assert_eq!(at, next.max(expected));
                }
            }
        }
    }

    /// Records and gaps of a batch tile the offsets from `expected` to its end, whatever the
    /// offsets (a small xorshift walk over many random batches).
    #[test]
    fn a_batch_and_its_gaps_account_for_every_offset_once() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..2_000 {
            let expected = (next() % 50) as i64;
            let mut offsets = Vec::new();
            let mut at = expected + (next() % 5) as i64;
            for _ in 0..(1 + next() % 20) {
                offsets.push(at);
                at += 1 + (next() % 3) as i64;
            }
            let start = Some((next() % 80) as i64);
            let gaps = of_batch(Some(expected), offsets.iter().copied(), start);
            let mut covered: Vec<i64> = offsets.clone();
            for gap in &gaps {
                assert!(gap.offsets() > 0);
                covered.extend(gap.from..gap.to);
            }
            covered.sort_unstable();
            let end = offsets.last().unwrap() + 1;
            assert_eq!(covered, (expected..end).collect::<Vec<_>>());
        }
    }
}
