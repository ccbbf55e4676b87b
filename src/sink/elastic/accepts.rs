//! Whether the search store is taking documents at all: the evidence that tells a refusal by
//! one destination index (park the records bound there) from the whole store refusing (hold
//! the partition: Kafka is the better buffer then).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// When the latest request the store took documents from was sent.
#[derive(Debug)]
pub(super) struct Accepts {
    epoch: Instant,
    /// Microseconds after `epoch` at which that request was sent (plus one; 0: none yet).
    sent: AtomicU64,
}

impl Default for Accepts {
    fn default() -> Self {
        Accepts {
            epoch: Instant::now(),
            sent: AtomicU64::new(0),
        }
    }
}

impl Accepts {
    /// The clock's reading now.
    pub(super) fn now(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64 + 1
    }

    /// A request sent at `sent` had documents taken.
    pub(super) fn took(&self, sent: u64) {
        self.sent.fetch_max(sent, Relaxed);
    }

    /// Whether the store took documents from a request sent at `since` or later: the request
    /// that carried a refusal, or one sent after it, taken shows that the store as a whole
    /// accepts writes; a request in flight before it says nothing about the refusal.
    pub(super) fn taken_since(&self, since: u64) -> bool {
        self.sent.load(Relaxed) >= since
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_refused_request_or_a_later_one_counts() {
        let a = Accepts::default();
        let before = a.now();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let refused = a.now();
        a.took(before);
        assert!(
            !a.taken_since(refused),
            "a request in flight before the refusal"
        );
        a.took(refused);
        assert!(
            a.taken_since(refused),
            "the refused request itself had documents taken"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
        let later = a.now();
        assert!(!a.taken_since(later));
        a.took(later);
        assert!(a.taken_since(later));
    }
}
