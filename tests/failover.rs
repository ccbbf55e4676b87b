//! Partition leader failover: the daemon against a three-broker KRaft cluster
//! (tests/infra/kafka-cluster.sh, replication factor 3, min.insync.replicas 2) under load.
//!
//! Reduced (part of `make test`): a rolling restart, each broker stopped and started again in
//! turn. Full (`CHAOS_FULL=1`, `make chaos`): `leader_failover`, the broker leading the most
//! partitions SIGKILLed and restarted later, then the same for another broker.
//! Either way the run ends with a clean run and the stores read back against the topic.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::chaos_kit::*;
use common::*;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/infra/kafka-cluster.sh");

/// Runs the cluster script; fails the test when it fails.
fn cluster(args: &[&str]) -> String {
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(SCRIPT)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tests/infra/kafka-cluster.sh {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "chaos: kafka-cluster {} took {:.1} s",
        args.join(" "),
        started.elapsed().as_secs_f64()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stops the whole cluster when the test ends, passed or not.
struct ClusterGuard;
impl Drop for ClusterGuard {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(SCRIPT).arg("down").status();
    }
}

/// Leader node of each partition of the topic, from the cluster's metadata.
fn leaders(topic: &str) -> BTreeMap<i32, i32> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .create()
        .expect("metadata client");
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    md.topics()[0]
        .partitions()
        .iter()
        .map(|p| (p.id(), p.leader()))
        .collect()
}

/// The node leading the most partitions, among `candidates`.
fn busiest_leader(topic: &str, candidates: &[i32]) -> (i32, usize) {
    let l = leaders(topic);
    candidates
        .iter()
        .map(|&n| (n, l.values().filter(|&&x| x == n).count()))
        .max_by_key(|&(n, count)| (count, -n))
        .unwrap()
}

/// End offsets, retried while a new leader cannot answer yet (bounded).
async fn settled_ends(s: &Scenario) -> BTreeMap<i32, i64> {
    let started = Instant::now();
    loop {
        match s.try_end_offsets() {
            Ok(ends) => return ends,
            Err(e) if started.elapsed() < Duration::from_secs(60) => {
                println!("chaos: end offsets not available yet ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("end offsets of {} for 60 s: {e}", s.topic),
        }
    }
}

/// Waits until the topic's end has moved past `before` on every partition: records were
/// produced after the fault, on whichever broker leads each partition now. Returns those ends.
async fn ends_moved_past(
    s: &Scenario,
    before: &BTreeMap<i32, i64>,
    what: &str,
) -> BTreeMap<i32, i64> {
    let started = Instant::now();
    loop {
        // Just after a leader change the new leader may not answer yet (OffsetNotAvailable).
        let now = s.try_end_offsets().unwrap_or_default();
        if before
            .iter()
            .all(|(p, e)| now.get(p).copied().unwrap_or(0) > *e)
        {
            return now;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{what}: the load produced nothing new on some partition within 120 s (before {before:?}, now {now:?})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until PostgreSQL's watermark of every partition reaches `ends` (records produced
/// after the fault): records flow again on every partition, not only on those the fault
/// spared. Returns how long that took.
async fn wait_all_partitions_past(
    s: &Scenario,
    d: &mut Daemon,
    ends: &BTreeMap<i32, i64>,
    what: &str,
) -> Duration {
    let started = Instant::now();
    loop {
        let wm = s.pg_watermarks().await;
        if ends
            .iter()
            .all(|(p, e)| wm.get(p).copied().unwrap_or(0) >= *e)
        {
            return started.elapsed();
        }
        assert!(
            alive(d),
            "the daemon exited after {what}; log:\n{}",
            folded_tail(d, 40)
        );
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "{what}: partitions did not reach {ends:?} within 180 s (watermarks {wm:?}); log:\n{}",
            folded_tail(d, 60)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn leader_failover() {
    let full = chaos().full;
    let name = if full {
        "leader_failover"
    } else {
        "rolling_restart"
    };
    let _rng = Rng::for_scenario(name);
    let started = Instant::now();
    let _guard = ClusterGuard;
    cluster(&["up"]);
    let brokers = cluster(&["env"])
        .trim()
        .strip_prefix("export KAFKA_CLUSTER_BROKERS=")
        .expect("brokers from kafka-cluster.sh env")
        .to_string();
    // SAFETY: set before any other thread of this test binary reads the environment.
    unsafe { std::env::set_var("KAFKA_BROKERS", &brokers) };

    let s = Scenario::replicated("failover", 6, 3, 2).await;
    let env = chaos_env(&s);
    let mut d = Daemon::start(&env);
    wait_line_alive(&mut d, "partitions assigned", Duration::from_secs(90)).await;
    // 1,000 records/s in full, 200/s in the reduced form (which must stay short in `make test`).
    let load = Load::start(&s, 0, if full { 100 } else { 20 }, None);
    tokio::time::sleep(Duration::from_secs(5)).await;

    let mut faults = 0u64;
    let mut recovered = Vec::new();
    let plan: Vec<i32> = if full { vec![0, 0] } else { vec![1, 2, 3] };
    let mut done: Vec<i32> = Vec::new();
    for planned in plan {
        // Full: the busiest leader not yet killed; reduced: each node in turn.
        let (node, led) = if planned == 0 {
            let rest: Vec<i32> = [1, 2, 3]
                .into_iter()
                .filter(|n| !done.contains(n))
                .collect();
            busiest_leader(&s.topic, &rest)
        } else {
            let l = leaders(&s.topic);
            (planned, l.values().filter(|&&x| x == planned).count())
        };
        // The fault must hit a leader: the point is the daemon's partitions moving to another.
        assert!(
            led > 0,
            "node {node} led no partition of {}: no failover to observe",
            s.topic
        );
        let before = settled_ends(&s).await;
        if full {
            cluster(&["kill", &node.to_string()]);
        } else {
            cluster(&["stop", &node.to_string()]);
        }
        let stopped_at = Instant::now();
        faults += 1;
        println!(
            "chaos: {name} node={node} led={led} stopped t={:.0}s",
            started.elapsed().as_secs_f64()
        );
        // Records produced after the fault, stored on every partition with one broker gone.
        let after = ends_moved_past(&s, &before, &format!("node {node} down")).await;
        wait_all_partitions_past(&s, &mut d, &after, &format!("node {node} down")).await;
        let took = stopped_at.elapsed();
        recovered.push(took.as_secs_f64());
        println!(
            "chaos: {name} node={node} records produced after the stop stored on every partition {:.1} s after it",
            took.as_secs_f64()
        );
        tokio::time::sleep(Duration::from_secs(if full { 10 } else { 3 })).await;
        let before = settled_ends(&s).await;
        cluster(&["start", &node.to_string()]);
        let started_at = Instant::now();
        let after = ends_moved_past(&s, &before, &format!("node {node} back")).await;
        wait_all_partitions_past(&s, &mut d, &after, &format!("node {node} back")).await;
        println!(
            "chaos: {name} node={node} restarted, records produced since stored on every partition {:.1} s later (t={:.0}s)",
            started_at.elapsed().as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
        done.push(node);
    }
    let produced = load.finish();
    println!("chaos: {name} load stopped after {produced} records");
    assert!(
        alive(&mut d),
        "survives the broker faults; log:\n{}",
        folded_tail(&d, 40)
    );
    d.signal("TERM");
    let code = d.wait(Duration::from_secs(30));
    assert_eq!(code, 0, "clean stop after the faults; log:\n{}", d.tail(30));
    final_clean_run(&s, &env, name).await;
    verify_and_report(&s, name, faults).await;
    println!(
        "chaos: {name} recovered_after_s=[{}]",
        recovered
            .iter()
            .map(|t| format!("{t:.1}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    finish(&s, name, started).await;
}
