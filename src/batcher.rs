//! Groups records of each partition into batches bounded by count, bytes and linger time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::model::{RawRecord, TopicPartition};

/// Batch bounds.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_records: usize,
    pub max_bytes: usize,
    pub linger: Duration,
}

struct Open {
    records: Vec<RawRecord>,
    bytes: usize,
    started: Instant,
}

/// Open (still filling) batches, one per partition.
pub struct Batcher {
    limits: Limits,
    open: HashMap<TopicPartition, Open>,
}

impl Batcher {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            open: HashMap::new(),
        }
    }

    /// Adds a record; returns the batches it completed (at most two: the one it did not fit
    /// into, and its own when one record is a whole batch).
    pub fn push(
        &mut self,
        tp: &TopicPartition,
        record: RawRecord,
        now: Instant,
    ) -> Vec<Vec<RawRecord>> {
        let mut full = Vec::new();
        let size = record.size();
        if let Some(open) = self.open.get(tp)
            && !open.records.is_empty()
            && open.bytes + size > self.limits.max_bytes
        {
            full.extend(self.take(tp));
        }
        let open = self.open.entry(tp.clone()).or_insert_with(|| Open {
            records: Vec::new(),
            bytes: 0,
            started: now,
        });
        open.records.push(record);
        open.bytes += size;
        if open.records.len() >= self.limits.max_records || open.bytes >= self.limits.max_bytes {
            full.extend(self.take(tp));
        }
        full
    }

    /// Batches whose first record has waited the linger time.
    pub fn expired(&mut self, now: Instant) -> Vec<(TopicPartition, Vec<RawRecord>)> {
        let due: Vec<_> = self
            .open
            .iter()
            .filter(|(_, o)| now.duration_since(o.started) >= self.limits.linger)
            .map(|(tp, _)| tp.clone())
            .collect();
        due.into_iter()
            .filter_map(|tp| self.take(&tp).map(|b| (tp, b)))
            .collect()
    }

    /// When the oldest open batch expires.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.open
            .values()
            .map(|o| o.started + self.limits.linger)
            .min()
    }

    /// Forgets the open batch of a partition (revoked, or held): nothing was handed out.
    /// Returns the bytes it held.
    pub fn discard(&mut self, tp: &TopicPartition) -> usize {
        self.open.remove(tp).map_or(0, |o| o.bytes)
    }

    /// Whether records of `tp` wait in an open batch.
    pub fn holds(&self, tp: &TopicPartition) -> bool {
        self.open.contains_key(tp)
    }

    pub fn partitions(&self) -> Vec<TopicPartition> {
        self.open.keys().cloned().collect()
    }

    /// Takes the open batch of a partition as it is.
    pub fn take(&mut self, tp: &TopicPartition) -> Option<Vec<RawRecord>> {
        self.open.remove(tp).map(|o| o.records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(offset: i64, len: usize) -> RawRecord {
        RawRecord {
            offset,
            key: None,
            payload: Some(vec![b'x'; len]),
            kafka_timestamp_ms: None,
        }
    }
    fn limits(max_records: usize, max_bytes: usize) -> Limits {
        Limits {
            max_records,
            max_bytes,
            linger: Duration::from_millis(100),
        }
    }

    #[test]
    fn count_bound() {
        let mut b = Batcher::new(limits(3, 1 << 20));
        let tp = TopicPartition::new("t", 0);
        let now = Instant::now();
        assert!(b.push(&tp, rec(0, 1), now).is_empty());
        assert!(b.push(&tp, rec(1, 1), now).is_empty());
        let full = b.push(&tp, rec(2, 1), now);
        assert_eq!(full.len(), 1);
        assert_eq!(
            full[0].iter().map(|r| r.offset).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert!(b.next_expiry().is_none());
    }

    #[test]
    fn byte_bound_never_exceeded_except_by_a_single_record() {
        let mut b = Batcher::new(limits(1000, 250));
        let tp = TopicPartition::new("t", 0);
        let now = Instant::now();
        let mut batches = Vec::new();
        for i in 0..20 {
            batches.extend(b.push(&tp, rec(i, 50 + (i as usize % 3) * 40), now));
        }
        batches.extend(b.push(&tp, rec(20, 1000), now)); // alone above the bound
        for batch in &batches {
            let bytes: usize = batch.iter().map(RawRecord::size).sum();
            assert!(
                bytes <= 250 || batch.len() == 1,
                "{bytes} bytes in {} records",
                batch.len()
            );
        }
        let offsets: Vec<i64> = batches.iter().flatten().map(|r| r.offset).collect();
        assert_eq!(
            offsets,
            (0..=20).collect::<Vec<_>>(),
            "order kept, nothing lost"
        );
    }

    #[test]
    fn linger_bound_per_partition() {
        let mut b = Batcher::new(limits(100, 1 << 20));
        let (a, c) = (TopicPartition::new("t", 0), TopicPartition::new("t", 1));
        let t0 = Instant::now();
        b.push(&a, rec(0, 1), t0);
        b.push(&c, rec(0, 1), t0 + Duration::from_millis(60));
        assert_eq!(b.next_expiry(), Some(t0 + Duration::from_millis(100)));
        assert!(b.expired(t0 + Duration::from_millis(99)).is_empty());
        let due = b.expired(t0 + Duration::from_millis(100));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].0, a);
        assert_eq!(b.discard(&c), rec(0, 1).size(), "the bytes it held");
        assert_eq!(b.discard(&c), 0);
        assert!(b.partitions().is_empty());
    }
}
