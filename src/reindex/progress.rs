//! Pace and progress: how long to wait so the run stays under `--max-rate` (a token bucket),
//! and the progress line on stderr (records, rate, ETA). Pure but for the clock the caller
//! passes in.

use std::time::Duration;

/// The pace under `--max-rate`: a token bucket earning `rate` records a second, holding at most
/// one second's worth. Unlike an average from the start, a stall (a slow store, a paused
/// process) earns no more than that second, so the run does not burst at full speed afterwards
/// to catch up. Records are counted, not offsets (offsets without a record cost nothing).
#[derive(Debug, Clone)]
pub struct Pace {
    rate: f64,
    tokens: f64,
    /// The clock's reading at the last batch (the caller's clock: a test passes its own).
    at: Duration,
}

impl Pace {
    /// A bucket that starts empty at `now`: the first second is paced like any other.
    pub fn new(rate: u32, now: Duration) -> Pace {
        Pace {
            rate: rate.max(1) as f64,
            tokens: 0.0,
            at: now,
        }
    }

    /// Takes `records` just sent at `now`; returns how long to wait before the next batch.
    pub fn take(&mut self, records: u64, now: Duration) -> Duration {
        let earned = now.saturating_sub(self.at).as_secs_f64() * self.rate;
        // The cap (one second's worth) bounds the burst after a stall.
        self.tokens = (self.tokens + earned).min(self.rate) - records as f64;
        self.at = now;
        match self.tokens < 0.0 {
            true => Duration::from_secs_f64(-self.tokens / self.rate),
            false => Duration::ZERO,
        }
    }
}

/// Records per batch: at most `max`, and with a rate, about a quarter second's worth, so the
/// pace is smooth and a kill loses little work.
pub fn batch_size(max: usize, max_rate: Option<u32>) -> usize {
    match max_rate {
        Some(rate) => max.min((rate as usize / 4).max(1)),
        None => max,
    }
}

/// The time left at the rate so far; `None` before there is a rate.
pub fn eta(remaining: u64, done: u64, elapsed: Duration) -> Option<Duration> {
    let rate = rate(done, elapsed)?;
    Some(Duration::from_secs_f64(remaining as f64 / rate))
}

/// Records per second so far.
pub fn rate(done: u64, elapsed: Duration) -> Option<f64> {
    let secs = elapsed.as_secs_f64();
    (done > 0 && secs > 0.0).then(|| done as f64 / secs)
}

/// `reindex: 1200/3000 offsets (40.0%), 480 records/s, ETA 4s`. `done` and `total` count
/// offsets of this run's ranges (records and offsets without one alike).
pub fn line(done: u64, total: u64, elapsed: Duration) -> String {
    let percent = match total {
        0 => 100.0,
        t => done as f64 * 100.0 / t as f64,
    };
    let rate = rate(done, elapsed).map_or("-".into(), |r| format!("{r:.0}"));
    let eta = eta(total.saturating_sub(done), done, elapsed)
        .map_or("-".into(), |d| format!("{}s", d.as_secs()));
    format!("reindex: {done}/{total} offsets ({percent:.1}%), {rate} records/s, ETA {eta}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Sends `batches` of `batch` records at `rate`, a stall of `stall` after `stall_at`
    /// batches; the fake clock's reading when each batch was sent.
    fn drive(
        rate: u32,
        batch: u64,
        batches: usize,
        stall_at: usize,
        stall: Duration,
    ) -> Vec<Duration> {
        let mut now = Duration::ZERO;
        let mut pace = Pace::new(rate, now);
        let mut sent = Vec::new();
        for i in 0..batches {
            if i == stall_at {
                now += stall;
            }
            sent.push(now);
            now += pace.take(batch, now);
        }
        sent
    }

    #[test]
    fn the_pace_holds_the_rate_and_a_stall_earns_at_most_a_second() {
        let s = Duration::from_secs;
        let mut pace = Pace::new(100, s(0));
        assert_eq!(pace.take(25, s(0)), Duration::from_millis(250));
        assert_eq!(
            pace.take(25, Duration::from_millis(250)),
            Duration::from_millis(250)
        );
        // A minute's stall: one second's worth is free, then the rate again.
        let mut after = Duration::from_millis(60_500);
        let mut free = 0;
        while pace.take(25, after).is_zero() {
            free += 25;
            after += Duration::from_millis(1);
        }
        assert_eq!(free, 100, "one second's worth, then the fifth batch waits");
        // Over the ten seconds after a stall, at most the rate's ten seconds and one more.
        let sent = drive(100, 25, 400, 40, s(60));
        let stalled_until = sent[40];
        let in_ten = sent
            .iter()
            .filter(|t| **t >= stalled_until && **t < stalled_until + s(10))
            .count() as u64
            * 25;
        assert!(
            in_ten <= 100 * 10 + 100 + 25,
            "{in_ten} records in 10 s after the stall"
        );
        // Steady: 400 batches of 25 at 100/s take about 100 s (the stall aside).
        let total = *sent.last().unwrap() - s(60);
        assert!(total >= s(98) && total <= s(100), "{total:?}");
        assert_eq!(batch_size(1000, Some(40)), 10);
        assert_eq!(batch_size(1000, Some(2)), 1);
        assert_eq!(batch_size(1000, None), 1000);
    }

    #[test]
    fn the_line_says_records_rate_and_eta() {
        assert_eq!(
            line(1200, 3000, Duration::from_secs(4)),
            "reindex: 1200/3000 offsets (40.0%), 300 records/s, ETA 6s"
        );
        assert_eq!(
            line(0, 10, Duration::ZERO),
            "reindex: 0/10 offsets (0.0%), - records/s, ETA -"
        );
    }

    proptest! {
        #[test]
        fn no_window_sends_more_than_its_rate_and_one_second(
            rate in 1u32..10_000, batch in 1u64..2_000, stall_at in 0usize..50,
            stall_ms in 0u64..100_000, window_ms in 1u64..20_000,
        ) {
            let sent = drive(rate, batch, 60, stall_at, Duration::from_millis(stall_ms));
            let window = Duration::from_millis(window_ms);
            for start in &sent {
                let n = sent.iter().filter(|t| **t >= *start && **t < *start + window).count() as u64;
                // The batches sent in the window, less the last one (it is paid for after it).
                let bound = rate as f64 * (window.as_secs_f64() + 1.0) + batch as f64;
                prop_assert!(((n - 1) * batch) as f64 <= bound * 1.000001, "{} in {:?}", n * batch, window);
            }
        }
    }
}
