//! Which offsets of a partition a time window covers, and which of them Kafka no longer holds.
//! Pure: the offsets come from Kafka (watermarks, offsets-for-times) and, for records deleted
//! since, from what the daemon stored in PostgreSQL.
//!
//! Kafka answers offsets-for-times with the first offset whose timestamp is at or after the
//! time, among the records it still holds: never below the log start. So a window that began
//! among records retention deleted maps to the log start, and only the daemon's stored rows
//! (which keep each record's Kafka timestamp) can say where it began, and only if they hold
//! the record just before it (older than `--since`): the daemon's rows may begin anywhere
//! (rows deleted, the daemon deployed later). Otherwise the start is reported as a bound,
//! from the last stored record older than `--since` (offset 0 without one), never dropped
//! silently.

/// What Kafka says about one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offsets {
    /// The log start (low watermark) and the end (high watermark).
    pub low: i64,
    pub high: i64,
    /// The first offset at or after `--since`; `None`: no record is that recent.
    pub since: Option<i64>,
    /// The first offset at or after `--until`; `None`: no record is that recent, or no
    /// `--until` (the window runs to the end).
    pub until: Option<i64>,
}

/// Where the window begins among offsets Kafka no longer holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stored {
    /// The first offset below the log start stored with a timestamp at or after `--since`.
    pub first_since: Option<i64>,
    /// The first offset below the log start stored with a timestamp at or after `--until`.
    pub first_until: Option<i64>,
    /// The lowest offset the window can begin at, from the stores: one past the last record
    /// stored before `first_since` (or the log start) with a timestamp before `--since`, past
    /// the no-record gaps that follow it; 0 when none is stored.
    pub floor: i64,
}

/// Offsets of the window Kafka no longer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Missing {
    /// Exactly `[from, to)`: the daemon's stored timestamps say where the window began.
    Known { from: i64, to: i64 },
    /// At most `[from, to)`: the window may begin anywhere among the deleted offsets.
    AtMost { from: i64, to: i64 },
}

impl Missing {
    pub fn range(self) -> (i64, i64) {
        match self {
            Missing::Known { from, to } | Missing::AtMost { from, to } => (from, to),
        }
    }
}

/// The offsets to read, `[from, to)`, and those of the window that are gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Planned {
    pub from: i64,
    pub to: i64,
    pub missing: Option<Missing>,
}

/// Whether the daemon's tables are worth asking (the window may begin below the log start).
pub fn may_begin_deleted(o: Offsets) -> bool {
    let from = o.since.unwrap_or(o.high);
    o.low > 0 && from <= o.low
}

pub fn plan(o: Offsets, stored: Stored) -> Planned {
    let to = o.until.unwrap_or(o.high).clamp(o.low, o.high.max(o.low));
    let mapped = o.since.unwrap_or(o.high);
    let from = mapped.clamp(o.low, to);
    let missing = if mapped < o.low {
        // Deleted between the lookup and now: Kafka itself named the window's start.
        Some(Missing::Known {
            from: mapped,
            to: o.low.min(o.until.unwrap_or(o.low)),
        })
    } else if may_begin_deleted(o) {
        let end = match (o.until, stored.first_until) {
            (Some(u), Some(s)) if u <= o.low => s.min(o.low),
            _ => o.low,
        };
        match stored.first_since.filter(|&s| s < o.low) {
            // The record before the first stored one is stored too, and older: exact.
            Some(start) if stored.floor >= start => Some(Missing::Known {
                from: start,
                to: end,
            }),
            // Unstored offsets lie between the last older record and the first newer one:
            // the window began somewhere among them.
            Some(_) => Some(Missing::AtMost {
                from: stored.floor,
                to: end,
            }),
            // Nothing stored at or after --since: only what is stored older bounds the start
            // (all of the deleted offsets stored older: nothing of the window is gone).
            None => Some(Missing::AtMost {
                from: stored.floor.min(end),
                to: end,
            }),
        }
    } else {
        None
    };
    let missing = missing.filter(|m| {
        let (f, t) = m.range();
        f < t
    });
    Planned { from, to, missing }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn offsets(low: i64, high: i64, since: Option<i64>, until: Option<i64>) -> Offsets {
        Offsets {
            low,
            high,
            since,
            until,
        }
    }

    #[test]
    fn a_window_inside_the_log_is_read_whole() {
        let p = plan(offsets(0, 300, Some(100), Some(200)), Stored::default());
        assert_eq!((p.from, p.to, p.missing), (100, 200, None));
        // No --until: to the end; no record that recent: nothing.
        let p = plan(offsets(0, 300, Some(100), None), Stored::default());
        assert_eq!((p.from, p.to), (100, 300));
        let p = plan(offsets(0, 300, None, None), Stored::default());
        assert_eq!((p.from, p.to), (300, 300));
    }

    #[test]
    fn a_window_beginning_among_deleted_records_reports_them() {
        let o = offsets(150, 300, Some(150), Some(200));
        // The daemon stored offset 99 (older than --since) and 100 (the first newer one).
        let stored = Stored {
            first_since: Some(100),
            first_until: None,
            floor: 100,
        };
        let p = plan(o, stored);
        assert_eq!((p.from, p.to), (150, 200));
        assert_eq!(p.missing, Some(Missing::Known { from: 100, to: 150 }));
        // Nothing stored: only a bound.
        let p = plan(o, Stored::default());
        assert_eq!(p.missing, Some(Missing::AtMost { from: 0, to: 150 }));
        // The log starts after the window: all of it is gone.
        let o = offsets(250, 300, Some(250), Some(250));
        let stored = Stored {
            first_since: Some(100),
            first_until: Some(200),
            floor: 100,
        };
        let p = plan(o, stored);
        assert_eq!((p.from, p.to), (250, 250));
        assert_eq!(p.missing, Some(Missing::Known { from: 100, to: 200 }));
        // Deleted between the lookup and the read.
        let p = plan(offsets(150, 300, Some(120), Some(200)), Stored::default());
        assert_eq!(p.missing, Some(Missing::Known { from: 120, to: 150 }));
        assert_eq!(p.from, 150);
    }

    #[test]
    fn the_start_is_exact_only_when_the_record_before_it_is_stored_older() {
        let o = offsets(150, 300, Some(150), Some(200));
        let at = |first_since, floor| {
            plan(
                o,
                Stored {
                    first_since,
                    first_until: None,
                    floor,
                },
            )
            .missing
        };
        // The daemon's rows begin at 120 (older ones deleted, or deployed later): the window
        // may begin anywhere from 0, not at 120.
        assert_eq!(at(Some(120), 0), Some(Missing::AtMost { from: 0, to: 150 }));
        // Rows up to 89 stored, older; 90..120 not stored: somewhere in [90, 150).
        assert_eq!(
            at(Some(120), 90),
            Some(Missing::AtMost { from: 90, to: 150 })
        );
        // 119 stored and older (or a no-record gap after an older record, or offset 0): exact.
        assert_eq!(
            at(Some(120), 120),
            Some(Missing::Known { from: 120, to: 150 })
        );
        assert_eq!(at(Some(0), 0), Some(Missing::Known { from: 0, to: 150 }));
        // Older rows only: the window begins after the last of them.
        assert_eq!(at(None, 130), Some(Missing::AtMost { from: 130, to: 150 }));
        // Every deleted offset stored and older: nothing of the window is gone.
        assert_eq!(at(None, 150), None);
        // Nothing stored at all: the whole deleted range is a bound.
        assert_eq!(at(None, 0), Some(Missing::AtMost { from: 0, to: 150 }));
    }

    #[test]
    fn a_log_that_lost_nothing_misses_nothing() {
        let p = plan(offsets(0, 300, Some(0), Some(10)), Stored::default());
        assert_eq!(p.missing, None);
        // The window starts after the log start: records before it are not the window's.
        let p = plan(offsets(50, 300, Some(60), Some(70)), Stored::default());
        assert_eq!(p.missing, None);
    }

    proptest! {
        #[test]
        fn the_plan_stays_inside_the_log_and_misses_only_deleted_offsets(
            low in 0i64..1000, len in 0i64..1000, s in proptest::option::of(0i64..2000),
            u in proptest::option::of(0i64..2000), fs in proptest::option::of(0i64..1000),
            fu in proptest::option::of(0i64..1000), floor in 0i64..1000,
        ) {
            let high = low + len;
            let (since, until) = (s.map(|x| x.min(high)), u.map(|x| x.min(high)));
            // The floor is below the first stored newer record and the log start.
            let floor = floor.min(fs.unwrap_or(low)).min(low);
            let stored = Stored { first_since: fs, first_until: fu, floor };
            let p = plan(offsets(low, high, since, until), stored);
            prop_assert!(low <= p.from && p.from <= p.to && p.to <= high);
            if let Some(m) = p.missing {
                let (f, t) = m.range();
                prop_assert!(0 <= f && f < t && t <= low);
                // Exact only from the first newer record, with nothing unknown before it.
                if let Missing::Known { from, .. } = m && since.unwrap_or(high) >= low {
                    prop_assert_eq!(Some(from), fs);
                    prop_assert!(floor >= from);
                }
            }
            if low == 0 {
                prop_assert_eq!(p.missing, None);
            }
        }
    }
}
