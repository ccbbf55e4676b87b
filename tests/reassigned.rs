//! A partition paused when it is revoked is read again when it comes back. librdkafka keeps a
//! partition's pause across unassign and assign; the consumer's rules forget a revoked
//! partition, pause included, so unless every assigned partition starts resumed, one paused
//! by this consumer, revoked and assigned back to it is never read again, without a word.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// The log lines of `d` that contain every one of `needles`.
fn lines_with(d: &Daemon, needles: &[&str]) -> Vec<String> {
    let lines = d.lines.lock().unwrap();
    let found = lines
        .iter()
        .filter(|(_, l)| needles.iter().all(|n| l.contains(n)));
    found.map(|(_, l)| l.clone()).collect()
}

async fn wait_for(what: &str, timeout: Duration, mut done: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !done().await {
        assert!(
            started.elapsed() < timeout,
            "{what}: not within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_paused_when_revoked_is_read_again_when_it_comes_back() {
    let s = Scenario::new("reassigned", 2).await;
    let env = with(
        &s.env(),
        &[
            ("LP_WORKERS", "1".into()),
            ("LP_WORKER_QUEUE", "1".into()),
            ("LP_BATCH_MAX_RECORDS", "50".into()),
            ("LP_SESSION_TIMEOUT_MS", "6000".into()),
            ("LP_REVOKE_DRAIN_TIMEOUT_MS", "2000".into()),
            ("LP_SHUTDOWN_DEADLINE_MS", "5000".into()),
        ],
    );
    let mut a = Daemon::start(&env);
    a.wait_for_line("partitions assigned", Duration::from_secs(60));
    // Every row refused by a constraint of the store: both partitions held (never dead
    // letters), their later batches waiting in the consumer, their fetching paused.
    let table = format!("{}.log_records", s.schema);
    s.sql(&format!(
        "ALTER TABLE {table} ADD CONSTRAINT lp_hold_all CHECK (kafka_offset < 0) NOT VALID"
    ))
    .await;
    s.produce(0, 3_000, 0.0);
    let metrics = format!("http://{}/metrics", a.http_addr());
    wait_for(
        "both partitions held in the first member",
        Duration::from_secs(60),
        async || {
            let (_, body) = http("GET", &metrics, None).await;
            let held = body
                .lines()
                .filter(|l| l.starts_with("log_processor_partition_stalled{") && l.ends_with(" 1"));
            held.count() >= 2
        },
    )
    .await;

    // A second member takes one partition, then leaves: it comes back to the first.
    let mut b = Daemon::start(&env);
    b.wait_for_line("partitions assigned", Duration::from_secs(60));
    let assigned_b = lines_with(&b, &["partitions assigned"]).join("\n");
    let moved = (0..2)
        .find(|p| assigned_b.contains(&format!("{}/{p}\"", s.topic)))
        .unwrap_or_else(|| panic!("the second member was assigned no partition:\n{assigned_b}"));
    let tp = format!("{}/{moved}\"", s.topic);
    wait_for(
        "the first member gives the partition up",
        Duration::from_secs(30),
        async || !lines_with(&a, &["partitions revoked", &tp]).is_empty(),
    )
    .await;
    b.signal("TERM");
    let code = b.wait(Duration::from_secs(40));
    assert!(
        matches!(code, 0 | 3),
        "second member exit {code}:\n{}",
        b.tail(20)
    );
    wait_for(
        "the partition assigned back to the first member",
        Duration::from_secs(60),
        async || lines_with(&a, &["partitions assigned", &tp]).len() >= 2,
    )
    .await;
    println!("reassigned: partition {moved} paused and held, revoked, assigned back");

    // The store takes rows again: every record of both partitions is stored.
    s.sql(&format!("ALTER TABLE {table} DROP CONSTRAINT lp_hold_all"))
        .await;
    s.wait_all_stored(Duration::from_secs(90)).await;
    a.signal("TERM");
    assert_eq!(a.wait(Duration::from_secs(40)), 0, "{}", a.tail(20));
    s.verify().await.assert_exact("reassigned");
    s.cleanup().await;
}
