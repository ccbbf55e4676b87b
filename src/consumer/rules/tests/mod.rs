//! The core run against a model of Kafka, the workers and the stores, over random orders of
//! events: assignments, revocations (also lost ones), records, offsets going back, acks out of
//! order, failed writes, budget pressure and shutdown. After every event the invariants hold:
//!
//! - a committed offset never passes an offset the stores do not hold;
//! - only owned partitions are committed, and a held or unowned partition is never dispatched;
//! - a partition's batches reach its worker in order, each following the previous without a
//!   hole;
//! - once every batch is written and acknowledged, the budget is back at zero, no batch is
//!   left in flight, and every offset read is committable unless a write was given up.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use crate::batcher::Limits;
use crate::metrics::Metrics;
use crate::model::{Ack, Batch, RawRecord, TopicPartition};

use super::{Core, Lanes, Phase};

mod cases;

const PARTITIONS: i32 = 3;
const WORKERS: usize = 2;
const LANE_CAPACITY: usize = 1;
const RECORD_BYTES: usize = 100;

/// The workers' queues, in memory.
struct Queues(RefCell<Vec<VecDeque<Batch>>>);

impl Lanes for Queues {
    fn count(&self) -> usize {
        self.0.borrow().len()
    }

    fn capacity(&self, _: usize) -> usize {
        LANE_CAPACITY
    }

    fn try_send(&self, w: usize, batch: Batch) -> Result<(), Batch> {
        let mut lanes = self.0.borrow_mut();
        if lanes[w].len() >= LANE_CAPACITY {
            return Err(batch);
        }
        lanes[w].push_back(batch);
        Ok(())
    }
}

#[derive(Debug, Clone)]
enum Event {
    Assign(i32),
    Revoke {
        partition: i32,
        lost: bool,
    },
    /// The next record of a partition, `skip` offsets after the previous (transaction markers).
    Record {
        partition: i32,
        skip: i64,
    },
    /// librdkafka reset the partition's position to 0: the topic was recreated.
    OffsetsBack(i32),
    Expire,
    Dispatch,
    /// A worker takes its next batch and writes it, or fails to.
    Work {
        worker: usize,
        fails: bool,
    },
    /// An ack reaches the consumer; which one of those on the way is random.
    Deliver(prop::sample::Index),
    Pause,
    Commit {
        all: bool,
    },
    Hold(i32),
    Close,
}

fn event() -> impl Strategy<Value = Event> {
    let p = 0..PARTITIONS;
    prop_oneof![
        2 => p.clone().prop_map(Event::Assign),
        1 => (p.clone(), any::<bool>()).prop_map(|(partition, lost)| Event::Revoke { partition, lost }),
        8 => (p.clone(), prop_oneof![4 => Just(0i64), 1 => 1i64..3]).prop_map(|(partition, skip)| Event::Record { partition, skip }),
        1 => p.clone().prop_map(Event::OffsetsBack),
        2 => Just(Event::Expire),
        3 => Just(Event::Dispatch),
        3 => (0..WORKERS, prop::bool::weighted(0.15)).prop_map(|(worker, fails)| Event::Work { worker, fails }),
        3 => any::<prop::sample::Index>().prop_map(Event::Deliver),
        1 => Just(Event::Pause),
        2 => any::<bool>().prop_map(|all| Event::Commit { all }),
        1 => p.prop_map(Event::Hold),
        1 => Just(Event::Close),
    ]
}

/// What the stores and Kafka hold, and what the test knows about the core from outside.
struct World {
    core: Core,
    lanes: Queues,
    now: Instant,
    /// Offsets both stores hold, per partition, whichever assignment wrote them.
    stored: HashMap<i32, BTreeSet<i64>>,
    /// Where the reader of an owned partition is: the next offset Kafka hands over.
    reading: HashMap<i32, i64>,
    /// Where each owned partition's next batch must begin.
    next_batch: HashMap<i32, i64>,
    /// Owned partitions held by the test or the core.
    held: HashSet<i32>,
    /// Owned partitions a write was given up for in this assignment.
    gave_up: HashSet<i32>,
    /// Owned partitions whose offsets went back (the core must notice on its own).
    went_back: HashSet<i32>,
    acks: Vec<Ack>,
}

fn tp(p: i32) -> TopicPartition {
    TopicPartition::new("logs", p)
}

fn record(offset: i64) -> RawRecord {
    RawRecord {
        offset,
        key: None,
        payload: Some(vec![b'x'; RECORD_BYTES]),
        kafka_timestamp_ms: None,
    }
}

fn no_log_start(_: &TopicPartition) -> Option<i64> {
    None
}

impl World {
    fn new(budget_records: usize) -> Self {
        let limits = Limits {
            max_records: 3,
            max_bytes: 1 << 20,
            linger: Duration::from_millis(10),
        };
        let budget = budget_records * record(0).size() * RawRecord::COPIES;
        World {
            core: Core::new(limits, WORKERS, budget, Arc::new(Metrics::default())),
            lanes: Queues(RefCell::new(
                (0..WORKERS).map(|_| VecDeque::new()).collect(),
            )),
            now: Instant::now(),
            stored: HashMap::new(),
            reading: HashMap::new(),
            next_batch: HashMap::new(),
            held: HashSet::new(),
            gave_up: HashSet::new(),
            went_back: HashSet::new(),
            acks: Vec::new(),
        }
    }

    /// PostgreSQL's watermark: the end of the prefix of offsets the stores hold.
    fn watermark(&self, p: i32) -> i64 {
        let stored = self.stored.get(&p);
        (0..)
            .find(|o| !stored.is_some_and(|s| s.contains(o)))
            .unwrap()
    }

    fn apply(&mut self, event: Event) -> Result<(), TestCaseError> {
        let closing = self.core.phase() == Phase::Closing;
        match event {
            Event::Assign(p) if !closing => {
                // Assigned again while owned: it starts afresh, as after a lost one.
                for set in [&mut self.held, &mut self.gave_up, &mut self.went_back] {
                    set.remove(&p);
                }
                self.core.own(tp(p), tp(p));
                let start = self.watermark(p);
                self.core.start_at(&tp(p), start);
                self.reading.insert(p, start);
                self.next_batch.insert(p, start);
            }
            Event::Revoke { partition: p, lost } if self.core.owns(&tp(p)) => {
                let tps = [tp(p)];
                self.core.begin_revoke(&tps);
                self.core.cancel_writes(&tps);
                if !lost {
                    self.commit(true)?;
                }
                self.core.forget(&tps);
                for set in [&mut self.held, &mut self.gave_up, &mut self.went_back] {
                    set.remove(&p);
                }
                self.reading.remove(&p);
            }
            Event::Record { partition: p, skip } if !closing => {
                if let Some(at) = self.reading.get_mut(&p) {
                    let offset = *at + skip;
                    let record = record(offset);
                    *at = offset + 1;
                    self.core.record(&tp(p), record, self.now, &no_log_start);
                }
            }
            Event::OffsetsBack(p) => {
                if let Some(at) = self.reading.get_mut(&p)
                    && *at > 0
                {
                    *at = 0;
                    self.went_back.insert(p);
                }
            }
            Event::Expire => {
                self.now += Duration::from_millis(20);
                self.core.expire(self.now, &no_log_start);
            }
            Event::Dispatch => self.dispatch()?,
            Event::Work { worker, fails } => self.work(worker, fails),
            Event::Deliver(i) if !self.acks.is_empty() => {
                let ack = self.acks.swap_remove(i.index(self.acks.len()));
                self.core.ack(ack, self.now);
            }
            Event::Pause => {
                let before = self.core.paused.clone();
                let change = self.core.pause_change();
                let mut after = before.clone();
                after.retain(|tp| !change.resume.contains(tp));
                after.extend(change.pause.iter().cloned());
                prop_assert_eq!(&after, &self.core.paused, "pause and resume add up");
                for p in &self.held {
                    prop_assert!(after.contains(&tp(*p)), "held partition {} not paused", p);
                }
                if self.core.budget.exhausted() {
                    prop_assert_eq!(after.len(), self.core.assigned.len(), "budget used up");
                } else {
                    let share = self.core.budget.read_ahead(self.core.assigned.len());
                    for tp in self.core.assigned.keys() {
                        let waiting = self.core.waiting_bytes(tp);
                        let held = self.core.held.contains_key(tp);
                        prop_assert!(
                            held || waiting > 0 || !after.contains(tp),
                            "{} paused with nothing waiting",
                            tp
                        );
                        prop_assert!(
                            waiting == 0 || waiting < share || after.contains(tp),
                            "{} read past its share ({} of {} bytes)",
                            tp,
                            waiting,
                            share
                        );
                    }
                }
            }
            Event::Commit { all } => self.commit(all)?,
            Event::Hold(p) if self.core.owns(&tp(p)) => {
                self.core.hold(tp(p), "held by the test".into());
                self.held.insert(p);
            }
            Event::Close if !closing => {
                let all = self.core.begin_close();
                prop_assert_eq!(
                    all.len(),
                    self.reading.len(),
                    "closing pauses every partition"
                );
            }
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self) -> Result<(), TestCaseError> {
        let before: Vec<usize> = self.lanes.0.borrow().iter().map(VecDeque::len).collect();
        self.core.dispatch(&self.lanes);
        for (lane, &had) in self.lanes.0.borrow().iter().zip(&before) {
            for batch in lane.iter().skip(had) {
                let p = batch.tp.partition;
                prop_assert!(self.core.owns(&batch.tp), "dispatched unowned {}", p);
                prop_assert!(!self.held.contains(&p), "dispatched held partition {}", p);
                let expected = self.next_batch[&p];
                prop_assert_eq!(batch.covered_from(), expected, "batches follow each other");
                self.next_batch.insert(p, batch.next_offset);
            }
        }
        Ok(())
    }

    /// A worker as `worker.rs` behaves: a batch of a revoked or draining partition is given
    /// up unwritten; otherwise it is written to both stores, or the write fails.
    fn work(&mut self, worker: usize, fails: bool) {
        let Some(batch) = self.lanes.0.borrow_mut()[worker].pop_front() else {
            return;
        };
        let skipped = batch.revoked.is_cancelled() || batch.drain.is_cancelled();
        let durable = !skipped && !fails;
        if durable {
            let stored = self.stored.entry(batch.tp.partition).or_default();
            stored.extend(batch.covered_from()..batch.next_offset);
        } else if !batch.revoked.is_cancelled() {
            // Given up in this assignment (a batch of an earlier one is not this one's loss).
            self.gave_up.insert(batch.tp.partition);
        }
        self.acks.push(Ack {
            tp: batch.tp.clone(),
            first_offset: batch.first_offset(),
            next_offset: batch.next_offset,
            durable,
            bytes: batch.bytes,
            reread: None,
            assignment: batch.assignment,
        });
    }

    fn commit(&mut self, all: bool) -> Result<(), TestCaseError> {
        let offsets = self.core.to_commit(all);
        for (tp, offset) in &offsets {
            let p = tp.partition;
            prop_assert!(self.reading.contains_key(&p), "committed unowned {}", p);
            let held = self.watermark(p);
            prop_assert!(
                *offset <= held,
                "partition {} committed at {} but the stores hold only [0, {})",
                p,
                offset,
                held
            );
        }
        self.core.committed(offsets);
        Ok(())
    }

    /// Everything read is cut, dispatched, written and acknowledged.
    fn settle(&mut self) -> Result<(), TestCaseError> {
        for _ in 0..1000 {
            self.apply(Event::Expire)?;
            self.dispatch()?;
            for w in 0..WORKERS {
                self.work(w, false);
            }
            for ack in std::mem::take(&mut self.acks) {
                self.core.ack(ack, self.now);
            }
            let idle = self.lanes.0.borrow().iter().all(VecDeque::is_empty);
            if idle && !self.core.has_pending() && self.core.next_expiry().is_none() {
                return Ok(());
            }
        }
        Err(TestCaseError::fail("the core never settled"))
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2000)))]

    #[test]
    fn the_core_keeps_its_invariants(
        budget_records in 2usize..20,
        events in proptest::collection::vec(event(), 1..80),
    ) {
        let mut world = World::new(budget_records);
        for event in events {
            world.apply(event)?;
        }
        world.settle()?;
        prop_assert_eq!(world.core.budget.used(), 0, "budget back at zero");
        world.commit(true)?;
        for (&p, &read) in &world.reading {
            let progress = world.core.watermarks.get(&tp(p));
            prop_assert_eq!(progress.map_or(0, |w| w.in_flight()), 0, "batches left in flight");
            let stopped = [&world.held, &world.gave_up, &world.went_back].iter().any(|s| s.contains(&p));
            if stopped || world.core.phase() == Phase::Closing {
                continue;
            }
            let durable = progress.and_then(|w| w.durable());
            prop_assert_eq!(durable.unwrap_or(read), read, "partition {} not durable to where it was read", p);
        }
    }
}
