//! Notices a consumer that has dropped out of its group and is not finding its way back.
//!
//! librdkafka rejoins on its own after most failures, but not after all: after a broker
//! restart that outlived the session timeout, a consumer was seen to stay in join state
//! `wait-incr-unassign-to-complete` with no partitions, for good, and nothing in the client
//! API reports that. The consumer thread feeds this watch the group state from librdkafka's
//! statistics and replaces the consumer when the group has not been `up`/`steady` for
//! `stall_after` (see `LP_GROUP_STALL_TIMEOUT_MS`).
//!
//! A second trap, sooner: librdkafka 2.10 and later forget every broker when a restarting
//! broker answers a metadata request with none listed, and never look for one again (its
//! issue 5301). A client that has known no broker for [`FORGOTTEN_BROKERS_GRACE`] is
//! replaced without waiting for the group bound.

use std::time::{Duration, Instant};

use rdkafka::Statistics;

/// How long a consumer may know no broker at all before it is replaced: three statistics
/// intervals, since a client re-bootstrapping knows its bootstrap brokers again at once.
pub const FORGOTTEN_BROKERS_GRACE: Duration = Duration::from_secs(15);

/// The brokers a client knows (bootstrap or learned), from its statistics.
pub fn known_brokers(stats: &Statistics) -> usize {
    stats
        .brokers
        .values()
        .filter(|b| b.source == "learned" || b.source == "configured")
        .count()
}

/// How long the group has not been in a steady state. Owned by the consumer thread.
#[derive(Debug)]
pub struct GroupWatch {
    stall_after: Duration,
    /// When the group was last seen leaving `up`/`steady`; `None` while it is steady.
    unsteady_since: Option<Instant>,
    /// The last state seen, as `state/join_state`, for the log line.
    last: String,
    /// When the client was first seen knowing no broker; `None` while it knows one.
    no_broker_since: Option<Instant>,
}

impl GroupWatch {
    pub fn new(stall_after: Duration, now: Instant) -> Self {
        // A fresh consumer is not steady yet: joining counts against the same bound.
        GroupWatch {
            stall_after,
            unsteady_since: Some(now),
            last: "init/init".into(),
            no_broker_since: None,
        }
    }

    /// Records how many brokers the client knows ([`known_brokers`]).
    pub fn observe_brokers(&mut self, known: usize, now: Instant) {
        if known > 0 {
            self.no_broker_since = None;
        } else {
            self.no_broker_since.get_or_insert(now);
        }
    }

    /// Records the group handler's state from a statistics report; returns the new state,
    /// as `state/join_state`, when it differs from the last one seen.
    pub fn observe(&mut self, state: &str, join_state: &str, now: Instant) -> Option<&str> {
        if state == "up" && join_state == "steady" {
            self.unsteady_since = None;
        } else if self.unsteady_since.is_none() {
            self.unsteady_since = Some(now);
        }
        let current = format!("{state}/{join_state}");
        if current == self.last {
            return None;
        }
        self.last = current;
        Some(&self.last)
    }

    /// A rebalance callback ran: the group is moving, so the clock restarts (statistics
    /// arrive only every few seconds and may still show the state before it).
    pub fn progress(&mut self, now: Instant) {
        if self.unsteady_since.is_some() {
            self.unsteady_since = Some(now);
        }
    }

    /// Why the consumer counts as stuck (the last group state, or that it knows no broker)
    /// and for how long, once that exceeds its bound.
    pub fn stalled(&self, now: Instant) -> Option<(&str, Duration)> {
        if let Some(since) = self.no_broker_since {
            let for_ = now.saturating_duration_since(since);
            if for_ >= FORGOTTEN_BROKERS_GRACE.min(self.stall_after) {
                return Some(("no broker known", for_));
            }
        }
        let for_ = now.saturating_duration_since(self.unsteady_since?);
        (for_ >= self.stall_after).then_some((self.last.as_str(), for_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: Duration = Duration::from_secs(60);

    #[test]
    fn a_steady_group_never_stalls() {
        let t0 = Instant::now();
        let mut w = GroupWatch::new(BOUND, t0);
        w.observe("up", "steady", t0 + Duration::from_secs(5));
        assert_eq!(w.stalled(t0 + Duration::from_secs(3600)), None);
    }

    #[test]
    fn a_group_stuck_outside_steady_stalls_after_the_bound() {
        let t0 = Instant::now();
        let mut w = GroupWatch::new(BOUND, t0);
        w.observe("up", "steady", t0);
        let left = t0 + Duration::from_secs(10);
        w.observe("up", "wait-incr-unassign-to-complete", left);
        w.observe("up", "wait-incr-unassign-to-complete", left + BOUND / 2);
        assert_eq!(w.stalled(left + BOUND / 2), None);
        let (state, for_) = w.stalled(left + BOUND).expect("stalled");
        assert_eq!(state, "up/wait-incr-unassign-to-complete");
        assert_eq!(for_, BOUND);
    }

    #[test]
    fn the_clock_restarts_when_the_group_settles() {
        let t0 = Instant::now();
        let mut w = GroupWatch::new(BOUND, t0);
        w.observe("wait-coord", "init", t0 + BOUND / 2);
        w.observe("up", "steady", t0 + BOUND - Duration::from_secs(1));
        w.observe("query-coord", "init", t0 + BOUND);
        assert_eq!(w.stalled(t0 + BOUND + BOUND / 2), None);
        assert!(w.stalled(t0 + 2 * BOUND).is_some());
    }

    #[test]
    fn a_rebalance_restarts_the_clock() {
        let t0 = Instant::now();
        let mut w = GroupWatch::new(BOUND, t0);
        w.observe("up", "wait-join", t0 + BOUND / 2);
        w.progress(t0 + BOUND - Duration::from_secs(1));
        assert_eq!(w.stalled(t0 + BOUND + BOUND / 2), None);
        assert!(
            w.stalled(t0 + 2 * BOUND).is_some(),
            "still not steady a bound later"
        );
    }

    #[test]
    fn a_consumer_that_never_joins_stalls() {
        let t0 = Instant::now();
        let w = GroupWatch::new(BOUND, t0);
        assert_eq!(w.stalled(t0 + BOUND / 2), None);
        assert_eq!(w.stalled(t0 + BOUND).map(|(s, _)| s), Some("init/init"));
    }

    #[test]
    fn only_changes_of_state_are_reported() {
        let t0 = Instant::now();
        let mut w = GroupWatch::new(BOUND, t0);
        assert_eq!(w.observe("up", "steady", t0), Some("up/steady"));
        assert_eq!(w.observe("up", "steady", t0), None);
        assert_eq!(
            w.observe("query-coord", "init", t0),
            Some("query-coord/init")
        );
    }

    #[test]
    fn a_client_that_knows_no_broker_stalls_after_the_grace() {
        let t0 = Instant::now();
        let mut w = GroupWatch::new(BOUND, t0);
        w.observe("up", "steady", t0);
        w.observe_brokers(1, t0);
        w.observe_brokers(0, t0 + Duration::from_secs(1));
        w.observe_brokers(0, t0 + Duration::from_secs(6));
        assert_eq!(w.stalled(t0 + FORGOTTEN_BROKERS_GRACE), None);
        assert_eq!(
            w.stalled(t0 + Duration::from_secs(1) + FORGOTTEN_BROKERS_GRACE)
                .map(|(why, _)| why),
            Some("no broker known"),
            "well before the group bound"
        );
        w.observe_brokers(1, t0 + Duration::from_secs(10));
        assert_eq!(w.stalled(t0 + BOUND / 2), None, "a broker known again");
    }
}
