//! Named cases of the core's rules: turns between partitions, worker choice, late acks.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::batcher::Limits;
use crate::metrics::Metrics;
use crate::model::{RawRecord, TopicPartition};

use super::super::Core;
use super::{Event, Queues, World, no_log_start, tp};

#[test]
fn partitions_sharing_a_worker_take_turns() {
    let mut core = Core::new(
        Limits {
            max_records: 1,
            max_bytes: 1000,
            linger: Duration::from_millis(10),
        },
        1,
        1 << 20,
        Arc::new(Metrics::default()),
    );
    let lanes = Queues(RefCell::new(vec![VecDeque::new()]));
    for p in [0, 1] {
        core.own(tp(p), tp(p));
        for offset in 0..4 {
            let record = RawRecord {
                offset,
                key: None,
                payload: Some(b"{}".to_vec()),
                kafka_timestamp_ms: None,
            };
            core.record(&tp(p), record, Instant::now(), &no_log_start);
        }
    }
    // Each time the worker takes one batch, the partition that waited longer sends next.
    let mut taken = Vec::new();
    for _ in 0..6 {
        core.dispatch(&lanes);
        let batch = lanes.0.borrow_mut()[0].pop_front().expect("a batch");
        taken.push(batch.tp.partition);
        core.watermarks
            .get_mut(&batch.tp)
            .completed(batch.first_offset(), batch.next_offset);
    }
    let zeros = taken.iter().filter(|&&p| p == 0).count();
    assert_eq!(
        (zeros, taken.len() - zeros),
        (3, 3),
        "taken in the order {taken:?}"
    );
}

#[test]
fn partitions_go_to_the_least_loaded_worker() {
    let limits = Limits {
        max_records: 10,
        max_bytes: 1000,
        linger: Duration::from_millis(10),
    };
    let mut core = Core::new(limits, 4, 1 << 20, Arc::new(Metrics::default()));
    // What a pod of R = 4 replicas gets with round-robin partitions: 0, 4, 8, ...
    for p in (0..48).step_by(4) {
        core.own(tp(p), tp(p));
    }
    let mut load = [0; 4];
    for o in core.assigned.values() {
        load[o.worker] += 1;
    }
    assert_eq!(load, [3, 3, 3, 3]);
    // A revoked partition frees its worker for the next one.
    let w = core.assigned[&tp(8)].worker;
    core.forget(&[tp(8)]);
    let other = TopicPartition::new("other", 0);
    core.own(other.clone(), other.clone());
    assert_eq!(core.assigned[&other].worker, w);
}

/// A batch of an earlier assignment of the same partition, acknowledged late (it was still in
/// its worker's queue at the revocation), must not touch the batch of the new assignment that
/// covers the same offsets.
#[test]
fn a_late_ack_of_an_earlier_assignment_changes_nothing() {
    let mut world = World::new(100);
    let run = |world: &mut World, events: Vec<Event>| {
        for e in events {
            world.apply(e).unwrap();
        }
    };
    let records = |n| {
        (0..n).map(|_| Event::Record {
            partition: 0,
            skip: 0,
        })
    };
    run(&mut world, vec![Event::Assign(0)]);
    run(&mut world, records(6).collect());
    // The write of [0, 3) fails; [3, 6) waits in the worker's queue when the partition goes.
    run(
        &mut world,
        vec![
            Event::Dispatch,
            Event::Work {
                worker: 0,
                fails: true,
            },
            Event::Dispatch,
        ],
    );
    world.acks.clear();
    run(
        &mut world,
        vec![
            Event::Revoke {
                partition: 0,
                lost: true,
            },
            Event::Assign(0),
        ],
    );
    // The worker gives the revoked [3, 6) up; its ack comes late.
    world.work(0, false);
    let late = world.acks.pop().expect("the given-up batch's ack");
    assert!(!late.durable && late.first_offset == 3);
    // The new assignment starts at PostgreSQL's watermark, 0, and writes [0, 3) and [3, 6).
    run(&mut world, records(6).collect());
    for _ in 0..2 {
        run(
            &mut world,
            vec![
                Event::Dispatch,
                Event::Work {
                    worker: 0,
                    fails: false,
                },
            ],
        );
    }
    let second = world.acks.pop().unwrap();
    let first = world.acks.pop().unwrap();
    assert_eq!((first.first_offset, second.first_offset), (0, 3));
    // The new [3, 6) is done, then the late ack of the old [3, 6), then the new [0, 3).
    world.core.ack(second, world.now);
    world.core.ack(late, world.now);
    world.core.ack(first, world.now);
    let durable = world.core.watermarks.get(&tp(0)).and_then(|w| w.durable());
    assert_eq!(
        durable,
        Some(6),
        "the new assignment's batches are all durable"
    );
}

/// Offsets that go back while a batch is open (librdkafka reset a vanished position to the
/// earliest within the linger): the partition is held, and nothing of the mixed batch is sent.
#[test]
fn offsets_going_back_inside_an_open_batch_hold_the_partition() {
    let mut world = World::new(100);
    world.apply(Event::Assign(0)).unwrap();
    // Offsets 0 and 1 wait in an open batch of up to three records; then offset 0 again.
    read(&mut world, 2);
    world.apply(Event::OffsetsBack(0)).unwrap();
    read(&mut world, 1);
    assert!(world.core.held.contains_key(&tp(0)), "held");
    for e in [Event::Expire, Event::Dispatch] {
        world.apply(e).unwrap();
    }
    assert!(
        world.lanes.0.borrow().iter().all(VecDeque::is_empty),
        "nothing dispatched"
    );
    assert_eq!(
        world.core.budget.used(),
        0,
        "the open batch's memory released"
    );
}

/// A partition assigned again while owned starts afresh: its new batches become durable even
/// though the acks of the earlier assignment's batches come late.
#[test]
fn a_partition_assigned_again_while_owned_starts_afresh() {
    let mut world = World::new(100);
    world.apply(Event::Assign(0)).unwrap();
    read(&mut world, 3);
    world.apply(Event::Dispatch).unwrap();
    world.apply(Event::Assign(0)).unwrap();
    // The earlier assignment's batch is given up by its worker; its ack comes after the new
    // assignment's batch is written.
    world.work(0, false);
    let late = world.acks.pop().expect("the earlier batch's ack");
    assert!(!late.durable, "given up: its partition was revoked");
    read(&mut world, 3);
    world.apply(Event::Dispatch).unwrap();
    world.work(0, false);
    let new = world.acks.pop().expect("the new batch's ack");
    world.core.ack(late, world.now);
    world.core.ack(new, world.now);
    let durable = world.core.watermarks.get(&tp(0)).and_then(|w| w.durable());
    assert_eq!(durable, Some(3));
    assert_eq!(world.core.budget.used(), 0);
}

/// A partition whose worker cannot take its batches reads ahead until they hold its share of
/// the budget, then pauses until they are down to half of it: not at its first batch waiting,
/// since every pause costs librdkafka's prefetch and up to a second before fetching again.
#[test]
fn a_partition_reads_ahead_to_its_share_and_resumes_at_half_of_it() {
    let size = super::record(0).size();
    // Room for 24 records waiting, in batches of 3, for the one partition.
    let mut world = World::new(96);
    world.apply(Event::Assign(0)).unwrap();
    let share = world.core.budget.read_ahead(1);
    assert_eq!(
        share,
        24 * size,
        "a quarter of the budget, copies not counted"
    );
    let waiting = |w: &World| w.core.waiting_bytes(&tp(0));
    let mut reads = 0;
    while waiting(&world) < share {
        read(&mut world, 1);
        world.core.dispatch(&world.lanes);
        reads += 1;
        if waiting(&world) > 0 && waiting(&world) < share {
            let change = world.core.pause_change();
            assert!(
                change.pause.is_empty(),
                "paused with {} of {share} bytes waiting",
                waiting(&world)
            );
        }
        assert!(reads < 1000, "nothing ever waited");
    }
    assert_eq!(
        world.core.pause_change().pause,
        vec![tp(0)],
        "paused at its share"
    );
    // The worker takes batches: still paused above half the share, resumed at or below it.
    let worker = world.core.assigned[&tp(0)].worker;
    while waiting(&world) > share / 2 {
        assert!(
            world.core.pause_change().resume.is_empty(),
            "resumed above half"
        );
        world
            .apply(Event::Work {
                worker,
                fails: false,
            })
            .unwrap();
        while let Some(ack) = world.acks.pop() {
            world.core.ack(ack, world.now);
        }
        world.core.dispatch(&world.lanes);
    }
    assert_eq!(
        world.core.pause_change().resume,
        vec![tp(0)],
        "resumed at half"
    );
}

/// The next `n` records of partition 0.
fn read(world: &mut World, n: usize) {
    for _ in 0..n {
        let record = Event::Record {
            partition: 0,
            skip: 0,
        };
        world.apply(record).unwrap();
    }
}
