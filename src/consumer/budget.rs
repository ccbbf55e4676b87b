//! One bound on the memory that batches hold, across every partition: records in open
//! batches, batches waiting for their worker, queued, and being written. When it is reached,
//! fetching stops for every partition until the workers have released a tenth of it.

/// Bytes of records held in batches (`RawRecord::size`), against the limit.
#[derive(Debug)]
pub(super) struct Budget {
    limit: usize,
    used: usize,
    peak: usize,
    exhausted: bool,
}

impl Budget {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            limit,
            used: 0,
            peak: 0,
            exhausted: false,
        }
    }

    /// A record entered a batch.
    pub(super) fn take(&mut self, bytes: usize) {
        self.used += bytes;
        self.peak = self.peak.max(self.used);
    }

    /// Records left memory: their batch was acknowledged, discarded or dropped.
    pub(super) fn release(&mut self, bytes: usize) {
        self.used = self.used.saturating_sub(bytes);
    }

    /// Whether fetching must stop: from the limit on, until usage is back below 90% of it
    /// (so fetching does not flap around the limit).
    pub(super) fn exhausted(&mut self) -> bool {
        if self.used >= self.limit {
            self.exhausted = true;
        } else if self.used < self.limit / 10 * 9 {
            self.exhausted = false;
        }
        self.exhausted
    }

    pub(super) fn used(&self) -> usize {
        self.used
    }

    pub(super) fn peak(&self) -> usize {
        self.peak
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_at_the_limit_and_resumes_below_ninety_percent() {
        let mut b = Budget::new(1000);
        b.take(999);
        assert!(!b.exhausted());
        b.take(1);
        assert!(b.exhausted());
        b.release(50);
        assert!(b.exhausted(), "950 is not below 900");
        b.release(60);
        assert!(!b.exhausted());
        assert_eq!((b.used(), b.peak()), (890, 1000));
        b.release(5000);
        assert_eq!(b.used(), 0);
    }
}
