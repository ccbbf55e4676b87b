//! Notices a partition that Kafka holds records for but that hands none over.
//!
//! A record larger than `receive.message.max.bytes` is never delivered: the broker sends it
//! anyway (a fetch always returns the first record batch whole), librdkafka drops the
//! connection over the response's size, fetches again, and the application sees nothing but
//! a generic log line. The consumer thread feeds this watch librdkafka's per-partition
//! statistics (next offset to fetch, end of the readable log) every statistics interval; a
//! partition that could fetch (assigned, not paused) and whose position has not moved for
//! [`STALL_AFTER`] while records lie beyond it is reported once, and again when it moves.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::metrics::Metrics;
use crate::model::TopicPartition;

/// How long a partition may have records to read and read none before it is reported: six
/// statistics intervals, far beyond a fetch's round trip or a leader's election.
pub(super) const STALL_AFTER: Duration = Duration::from_secs(30);

/// One partition as the statistics show it.
#[derive(Clone, Debug)]
pub(super) struct Sample {
    pub tp: TopicPartition,
    /// librdkafka's next offset to fetch (`next_offset`), negative while unknown.
    pub position: i64,
    /// One past the last offset a read-committed consumer may read (`ls_offset`).
    pub end: i64,
    /// Whether the daemon lets it fetch: assigned and not paused (backpressure, budget, held).
    pub fetching: bool,
}

/// What changed since the last statistics.
#[derive(Debug, PartialEq)]
pub(super) enum Change {
    /// Nothing handed over at `at` for `stalled_for`, though the log holds offsets up to `end`.
    Stalled {
        tp: TopicPartition,
        at: i64,
        end: i64,
        stalled_for: Duration,
    },
    /// A partition reported stalled moves again, or is no longer ours to fetch.
    Moving { tp: TopicPartition },
}

#[derive(Debug)]
struct Seen {
    position: i64,
    since: Instant,
    reported: bool,
}

/// Positions last seen, per partition that could fetch. Owned by the consumer's context.
#[derive(Debug)]
pub(super) struct FetchWatch {
    after: Duration,
    seen: HashMap<TopicPartition, Seen>,
}

impl FetchWatch {
    pub(super) fn new(after: Duration) -> Self {
        FetchWatch {
            after,
            seen: HashMap::new(),
        }
    }

    /// Takes one statistics report: every partition librdkafka knows, once.
    pub(super) fn observe(&mut self, samples: &[Sample], now: Instant) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut kept = HashMap::with_capacity(samples.len());
        for s in samples {
            let previous = self.seen.remove(&s.tp);
            let was_reported = previous.as_ref().is_some_and(|p| p.reported);
            let waiting = s.fetching && s.position >= 0 && s.end > s.position;
            let mut seen = match previous {
                Some(p) if waiting && p.position == s.position => p,
                _ => {
                    if was_reported {
                        changes.push(Change::Moving { tp: s.tp.clone() });
                    }
                    if !waiting {
                        continue;
                    }
                    Seen {
                        position: s.position,
                        since: now,
                        reported: false,
                    }
                }
            };
            let stalled_for = now.saturating_duration_since(seen.since);
            if !seen.reported && stalled_for >= self.after {
                seen.reported = true;
                changes.push(Change::Stalled {
                    tp: s.tp.clone(),
                    at: s.position,
                    end: s.end,
                    stalled_for,
                });
            }
            kept.insert(s.tp.clone(), seen);
        }
        // Partitions the statistics no longer list (revoked) end their report too.
        changes.extend(
            (self.seen.drain())
                .filter(|(_, seen)| seen.reported)
                .map(|(tp, _)| Change::Moving { tp }),
        );
        self.seen = kept;
        changes
    }
}

/// Logs and shows each change: a WARN naming the partition, the offset and what to do, and
/// `log_processor_fetch_stalled_offset` while it lasts. `receive_error` is librdkafka's last
/// complaint about a response's size, if any, the likeliest cause.
pub(super) fn report(
    changes: Vec<Change>,
    metrics: &Metrics,
    receive_max: usize,
    receive_error: Option<&str>,
) {
    let mut shown = (metrics.fetch_stalled.lock()).unwrap_or_else(|p| p.into_inner());
    for change in changes {
        match change {
            Change::Stalled {
                tp,
                at,
                end,
                stalled_for,
            } => {
                tracing::warn!(
                    partition = %tp,
                    offset = at,
                    end,
                    stalled_s = stalled_for.as_secs(),
                    receive_message_max_bytes = receive_max,
                    last_receive_error = receive_error.unwrap_or("none"),
                    "Kafka hands over no record of this partition although it holds offsets up to \
                     the end: the record at this offset may be larger than a fetch may be \
                     (raise LP_KAFKA_FETCH_MAX_BYTES), or its leader is unreachable"
                );
                shown.insert(tp, at);
            }
            Change::Moving { tp } => {
                if shown.remove(&tp).is_some() {
                    tracing::info!(partition = %tp, "partition fetched again");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Over any sequence of statistics for a few partitions: a partition is reported
        /// stalled only after it could fetch, had records beyond its position and kept that
        /// position for the whole bound; once per stall; and every report is ended by a
        /// `Moving` before the next one.
        #[test]
        fn reports_only_real_stalls_once_each(
            steps in proptest::collection::vec(
                (0i32..3, 0i64..4, 0i64..3, any::<bool>(), 0u64..20),
                1..200,
            ),
        ) {
            let after = Duration::from_secs(30);
            let mut w = FetchWatch::new(after);
            let t0 = Instant::now();
            let mut now = t0;
            // Per partition: (position, since when it could fetch at it with records beyond).
            let mut waiting: HashMap<i32, (i64, Instant)> = HashMap::new();
            let mut reported: HashMap<i32, bool> = HashMap::new();
            // Every statistics report lists all three partitions; one changes per step.
            let mut current: Vec<Sample> = (0..3)
                .map(|p| Sample { tp: TopicPartition::new("t", p), position: -1, end: -1, fetching: false })
                .collect();
            for (p, position, ahead, fetching, secs) in steps {
                now += Duration::from_secs(secs);
                current[p as usize] = Sample {
                    tp: TopicPartition::new("t", p),
                    position,
                    end: position + ahead,
                    fetching,
                };
                for s in &current {
                    let q = s.tp.partition;
                    let stuck = s.fetching && s.position >= 0 && s.end > s.position;
                    let since = match waiting.get(&q) {
                        Some(&(pos, since)) if stuck && pos == s.position => since,
                        _ => now,
                    };
                    if stuck { waiting.insert(q, (s.position, since)); } else { waiting.remove(&q); }
                }
                for c in w.observe(&current, now) {
                    match c {
                        Change::Stalled { tp, at, stalled_for, .. } => {
                            let q = tp.partition;
                            let (pos, since) = waiting.get(&q).copied().expect("only a waiting partition stalls");
                            prop_assert_eq!(at, pos);
                            prop_assert!(now.duration_since(since) >= after);
                            prop_assert!(stalled_for >= after);
                            prop_assert!(!reported.get(&q).copied().unwrap_or(false), "once");
                            reported.insert(q, true);
                        }
                        Change::Moving { tp } => {
                            prop_assert!(reported.get(&tp.partition).copied().unwrap_or(false));
                            reported.insert(tp.partition, false);
                        }
                    }
                }
                // A partition waiting past the bound has been reported.
                for (q, &(_, since)) in &waiting {
                    if now.duration_since(since) >= after {
                        prop_assert!(reported.get(q).copied().unwrap_or(false), "stall of {} unreported", q);
                    }
                }
            }
        }
    }

    fn sample(position: i64, end: i64, fetching: bool) -> Sample {
        Sample {
            tp: TopicPartition::new("t", 0),
            position,
            end,
            fetching,
        }
    }

    fn stalled(c: &[Change]) -> Option<(i64, i64)> {
        c.iter().find_map(|c| match c {
            Change::Stalled { at, end, .. } => Some((*at, *end)),
            Change::Moving { .. } => None,
        })
    }

    #[test]
    fn a_position_that_does_not_move_below_the_end_is_reported_once_then_cleared() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut w = FetchWatch::new(s(30));
        assert!(w.observe(&[sample(100, 200, true)], t0).is_empty());
        assert!(w.observe(&[sample(100, 200, true)], t0 + s(29)).is_empty());
        let c = w.observe(&[sample(100, 201, true)], t0 + s(30));
        assert_eq!(stalled(&c), Some((100, 201)));
        assert!(
            w.observe(&[sample(100, 201, true)], t0 + s(60)).is_empty(),
            "once"
        );
        let c = w.observe(&[sample(101, 201, true)], t0 + s(65));
        assert_eq!(
            c,
            vec![Change::Moving {
                tp: TopicPartition::new("t", 0)
            }]
        );
        assert!(w.observe(&[sample(101, 201, true)], t0 + s(90)).is_empty());
        assert!(stalled(&w.observe(&[sample(101, 201, true)], t0 + s(95))).is_some());
    }

    #[test]
    fn a_partition_at_the_end_paused_or_not_yet_positioned_is_never_stalled() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut w = FetchWatch::new(s(30));
        for (position, end, fetching) in [(200, 200, true), (100, 200, false), (-1001, 200, true)] {
            assert!(w.observe(&[sample(position, end, fetching)], t0).is_empty());
            assert!(
                w.observe(&[sample(position, end, fetching)], t0 + s(100))
                    .is_empty(),
                "({position}, {end}, {fetching})"
            );
        }
        // Paused while reported: no longer a fetch stall (the daemon holds it, and says why).
        w.observe(&[sample(5, 9, true)], t0);
        assert!(stalled(&w.observe(&[sample(5, 9, true)], t0 + s(31))).is_some());
        let c = w.observe(&[sample(5, 9, false)], t0 + s(32));
        assert!(matches!(c[..], [Change::Moving { .. }]));
        // Revoked while reported.
        w.observe(&[sample(5, 9, true)], t0 + s(33));
        w.observe(&[sample(5, 9, true)], t0 + s(70));
        assert!(matches!(
            w.observe(&[], t0 + s(71))[..],
            [Change::Moving { .. }]
        ));
    }
}
