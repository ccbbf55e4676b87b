//! Pace and progress: how long to wait so the run stays under `--max-rate`, and the progress
//! line on stderr (records, rate, ETA). Pure but for the clock the caller passes in.

use std::time::Duration;

/// How long to wait before going on, after `done` records in `elapsed`, so that the average
/// since the start stays at or under `max_rate` records per second. Averaging from the start
/// (not per batch) lets a slow batch be made up by the next ones, and bursts never exceed one
/// batch.
pub fn pause(max_rate: Option<u32>, done: u64, elapsed: Duration) -> Duration {
    match max_rate {
        Some(rate) if rate > 0 => {
            Duration::from_secs_f64(done as f64 / rate as f64).saturating_sub(elapsed)
        }
        _ => Duration::ZERO,
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

    #[test]
    fn the_pace_holds_the_average_at_the_rate() {
        let s = Duration::from_secs;
        assert_eq!(pause(Some(100), 100, s(0)), s(1));
        assert_eq!(pause(Some(100), 100, s(1)), s(0));
        assert_eq!(pause(Some(100), 100, s(3)), s(0));
        assert_eq!(pause(Some(100), 250, s(2)), Duration::from_millis(500));
        assert_eq!(pause(None, 1_000_000, s(0)), s(0));
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
        fn after_the_pause_the_rate_is_never_above_the_limit(
            rate in 1u32..100_000, done in 0u64..10_000_000, ms in 0u64..10_000_000,
        ) {
            let elapsed = Duration::from_millis(ms);
            let waited = elapsed + pause(Some(rate), done, elapsed);
            prop_assert!(done as f64 / waited.as_secs_f64().max(1e-9) <= rate as f64 * 1.000001 || done == 0);
        }
    }
}
