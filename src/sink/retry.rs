//! When to retry, and how long to wait: capped exponential backoff with jitter. What a
//! search store's answer means is `sink::elastic::classify`'s.

use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::SinkError;

/// Capped exponential backoff.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// Delay before retry number `attempt` (1-based): `initial * 2^(attempt-1)`, capped, then
    /// "equal jitter" (between half and all of it) so retrying workers do not move in lockstep.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let capped = exp.min(self.max);
        let half = capped / 2;
        let jitter = RandomState::new().hash_one(attempt) % (half.as_millis() as u64 + 1);
        half + Duration::from_millis(jitter)
    }
}

/// Runs `op` until it succeeds, fails permanently, or `cancel` fires. Transient errors are
/// retried with backoff and logged with the attempt number (at most one line per delay).
pub async fn retry<T, F, Fut>(
    what: &str,
    backoff: Backoff,
    cancel: &CancellationToken,
    mut on_retry: impl FnMut(),
    mut op: F,
) -> Result<T, SinkError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SinkError>>,
{
    let mut attempt = 0;
    loop {
        let result = tokio::select! {
            r = op() => r,
            _ = cancel.cancelled() => return Err(SinkError::Cancelled),
        };
        match result {
            Err(e) if e.is_transient() => {
                attempt += 1;
                on_retry();
                let delay = backoff.delay(attempt);
                tracing::warn!(attempt, delay_ms = delay.as_millis() as u64, error = %e, "{what} failed, retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = cancel.cancelled() => return Err(SinkError::Cancelled),
                }
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(1000),
        };
        for attempt in 1..40 {
            let d = b.delay(attempt);
            let full = (100u64 << (attempt - 1).min(20)).min(1000);
            assert!(
                d >= Duration::from_millis(full / 2) && d <= Duration::from_millis(full),
                "{attempt}: {d:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_until_success_and_stops_on_cancel() {
        let cancel = CancellationToken::new();
        let b = Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(50),
        };
        let mut calls = 0;
        let mut retries = 0;
        let r: Result<u32, _> = retry(
            "op",
            b,
            &cancel,
            || retries += 1,
            || {
                calls += 1;
                let n = calls;
                async move {
                    if n < 4 {
                        Err(SinkError::Transient {
                            store: "x",
                            message: "down".into(),
                        })
                    } else {
                        Ok(n)
                    }
                }
            },
        )
        .await;
        assert_eq!(r.unwrap(), 4);
        assert_eq!(retries, 3);

        let r: Result<(), _> = retry(
            "op",
            b,
            &cancel,
            || {},
            || async {
                Err(SinkError::Permanent {
                    store: "x",
                    message: "bad".into(),
                })
            },
        )
        .await;
        assert!(
            matches!(r, Err(SinkError::Permanent { .. })),
            "permanent errors are not retried"
        );

        cancel.cancel();
        let r: Result<(), _> = retry("op", b, &cancel, || {}, std::future::pending).await;
        assert!(matches!(r, Err(SinkError::Cancelled)));
    }
}
