//! Shutdown state shared by every task: two tokens and a deadline.
//!
//! The first signal cancels `drain`: the consumer stops fetching and workers finish what they
//! hold. When the deadline (minus the time reserved for the final commit and group leave) passes,
//! or a second signal arrives, `abort` is cancelled: in-flight writes are dropped (their
//! transactions roll back) and only the durable watermark is committed.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// Why in-flight work was given up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortReason {
    None = 0,
    Deadline = 1,
    SecondSignal = 2,
}

struct Inner {
    deadline: Duration,
    /// Set once, by the first signal.
    started: OnceLock<Instant>,
    abort_reason: AtomicU8,
}

/// Cloned into every task; all clones share one state.
#[derive(Clone)]
pub struct Shutdown {
    /// Cancelled by the first signal: stop fetching, drain, commit, leave.
    pub drain: CancellationToken,
    /// Cancelled at the deadline or by a second signal: give up in-flight work at once.
    pub abort: CancellationToken,
    inner: Arc<Inner>,
}

/// The part of a shutdown deadline kept back for the final commit and the group leave: a fifth,
/// at most 2 s. A free function so `check-config` shows the split the daemon will use.
pub fn close_reserve(deadline: Duration) -> Duration {
    (deadline / 5).min(Duration::from_secs(2))
}

impl Shutdown {
    pub fn new(deadline: Duration) -> Self {
        Self {
            drain: CancellationToken::new(),
            abort: CancellationToken::new(),
            inner: Arc::new(Inner {
                deadline,
                started: OnceLock::new(),
                abort_reason: AtomicU8::new(0),
            }),
        }
    }

    /// Starts a graceful shutdown (idempotent). Returns false when one had already begun.
    pub fn begin(&self) -> bool {
        let first = self.inner.started.set(Instant::now()).is_ok();
        self.drain.cancel();
        first
    }

    /// Gives up in-flight work now.
    pub fn abort(&self, reason: AbortReason) {
        self.begin();
        let _ = self.inner.abort_reason.compare_exchange(
            0,
            reason as u8,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        self.abort.cancel();
    }

    pub fn abort_reason(&self) -> AbortReason {
        match self.inner.abort_reason.load(Ordering::SeqCst) {
            1 => AbortReason::Deadline,
            2 => AbortReason::SecondSignal,
            _ => AbortReason::None,
        }
    }

    pub fn started(&self) -> Option<Instant> {
        self.inner.started.get().copied()
    }

    /// Time kept back at the end of the deadline for the final commit and the group leave.
    pub fn close_reserve(&self) -> Duration {
        close_reserve(self.inner.deadline)
    }

    /// When in-flight work must be given up: the deadline less the close reserve.
    pub fn abort_at(&self) -> Option<Instant> {
        Some(self.started()? + self.inner.deadline - self.close_reserve())
    }

    /// The hard end: the process exits by then whatever is still running.
    pub fn hard_deadline(&self) -> Option<Instant> {
        Some(self.started()? + self.inner.deadline)
    }

    /// Milliseconds since the first signal (0 before it).
    pub fn elapsed_ms(&self) -> u64 {
        self.started().map_or(0, |s| s.elapsed().as_millis() as u64)
    }

    /// Logs one line of the shutdown timeline.
    pub fn phase(&self, phase: &str) {
        tracing::info!(target: "log_processor::shutdown", phase, elapsed_ms = self.elapsed_ms(), "shutdown: {phase}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_abort_reason_wins_and_begin_is_idempotent() {
        let s = Shutdown::new(Duration::from_secs(10));
        assert!(s.abort_at().is_none());
        assert!(s.begin());
        assert!(!s.begin());
        assert!(s.drain.is_cancelled() && !s.abort.is_cancelled());
        let at = s.abort_at().unwrap();
        assert_eq!(s.hard_deadline().unwrap() - at, Duration::from_secs(2));
        s.abort(AbortReason::SecondSignal);
        s.abort(AbortReason::Deadline);
        assert_eq!(s.abort_reason(), AbortReason::SecondSignal);
        assert!(s.abort.is_cancelled());
    }
}
