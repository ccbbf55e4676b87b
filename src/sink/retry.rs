//! How the daemon retries: capped exponential backoff with jitter, every wait logged and cut
//! short by a cancellation token (`Attempts`), and the loop that retries an operation until it
//! succeeds or fails for good (`retry`). Every retry loop waits through `Attempts`; what is
//! worth retrying is the caller's (`SinkError::is_transient`, and for a search store's items
//! `sink::elastic::classify`).

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

/// The failed attempts of one operation: each is logged with its number and why, then waited
/// out (`Backoff`), unless `cancel` fires first.
pub struct Attempts<'a> {
    what: &'a str,
    backoff: Backoff,
    cancel: &'a CancellationToken,
    failed: u32,
}

impl<'a> Attempts<'a> {
    /// `what`: the operation as the log names it ("postgresql batch").
    pub fn new(what: &'a str, backoff: Backoff, cancel: &'a CancellationToken) -> Self {
        Attempts {
            what,
            backoff,
            cancel,
            failed: 0,
        }
    }

    /// Runs one attempt, or answers `Cancelled` when `cancel` fires first.
    pub async fn run<T>(&self, attempt: impl Future<Output = T>) -> Result<T, SinkError> {
        tokio::select! {
            r = attempt => Ok(r),
            _ = self.cancel.cancelled() => Err(SinkError::Cancelled),
        }
    }

    /// An attempt failed (`why`): logged, then the backoff waited out. `Cancelled` when
    /// `cancel` fires meanwhile.
    pub async fn failed(&mut self, why: &(dyn std::fmt::Display + Sync)) -> Result<(), SinkError> {
        self.failed += 1;
        let delay = self.backoff.delay(self.failed);
        tracing::warn!(attempt = self.failed, delay_ms = delay.as_millis() as u64, error = %why, "{} failed, retrying", self.what);
        self.run(tokio::time::sleep(delay)).await
    }
}

impl Attempts<'_> {
    /// Runs `attempt` until it answers `Ok(None)` (done). Its `Ok(Some(why))`, and any error,
    /// is a failed attempt: told to `on_retry`, logged and waited out.
    pub async fn until_done<Fut>(
        &mut self,
        mut on_retry: impl FnMut(&str),
        mut attempt: impl FnMut() -> Fut,
    ) -> Result<(), SinkError>
    where
        Fut: Future<Output = Result<Option<String>, SinkError>>,
    {
        loop {
            let why = match self.run(attempt()).await? {
                Ok(None) => return Ok(()),
                Ok(Some(why)) => why,
                Err(e) => e.to_string(),
            };
            on_retry(&why);
            self.failed(&why).await?;
        }
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
    let mut attempts = Attempts::new(what, backoff, cancel);
    loop {
        match attempts.run(op()).await? {
            Err(e) if e.is_transient() => {
                on_retry();
                attempts.failed(&e).await?;
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
