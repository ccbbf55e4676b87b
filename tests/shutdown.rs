//! Graceful shutdown of the real binary under real load: exit codes, deadline, timeline,
//! atomicity of abandoned batches, and exactly-once recovery after each kind of stop.

mod common;

use std::time::{Duration, Instant};

use common::proxy::{self, Mode, Proxy};
use common::*;

async fn finish_and_verify(s: &Scenario, what: &str) {
    let mut d = Daemon::start(&s.env());
    s.wait_all_stored(Duration::from_secs(300)).await;
    let ends = s.end_offsets();
    let start = Instant::now();
    while s.committed() != ends {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what}: commits never reached the end"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(26)), 0);
    s.verify().await.assert_exact(what);
    s.cleanup().await;
}

/// Rows beyond PostgreSQL's watermark would be a partly visible batch: batches commit with
/// their offset row, so the rows of each partition are exactly the offsets below it.
async fn assert_no_partial_batch(s: &Scenario) {
    let pool = s.pg().await;
    let q = format!(
        "SELECT o.kafka_partition, o.next_offset, \
           (SELECT count(*) FROM {0}.log_records r WHERE r.kafka_partition = o.kafka_partition) + \
           (SELECT count(*) FROM {0}.dead_letters d WHERE d.kafka_partition = o.kafka_partition) \
         FROM {0}.consumer_offsets o WHERE o.group_id = $1",
        s.schema
    );
    let rows: Vec<(i32, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(q))
        .bind(&s.group)
        .fetch_all(&pool)
        .await
        .unwrap();
    for (p, next, stored) in &rows {
        assert_eq!(
            *next, *stored,
            "partition {p}: {stored} rows but watermark {next}: a batch is partly visible"
        );
    }
    let q = format!(
        "SELECT count(*) FROM {0}.log_records r WHERE NOT EXISTS (SELECT 1 FROM {0}.consumer_offsets o WHERE o.kafka_partition = r.kafka_partition)",
        s.schema
    );
    let (orphans,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(q))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(orphans, 0, "rows without a committed batch");
}

/// A producer thread at a steady rate until told to stop.
fn steady_load(
    s: &Scenario,
    start: u64,
    rate_per_100ms: u64,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<u64>,
) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (s, flag) = (s.clone(), stop.clone());
    let handle = std::thread::spawn(move || {
        let mut seq = start;
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            s.produce(seq, rate_per_100ms, 0.01);
            seq += rate_per_100ms;
            std::thread::sleep(Duration::from_millis(100));
        }
        seq - start
    });
    (stop, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_steady_load_drains_commits_and_exits_zero() {
    let s = Scenario::new("sd_steady", 6).await;
    let mut d = Daemon::start(&s.env());
    d.wait_for_line("partitions assigned", Duration::from_secs(60));
    let (stop, producer) = steady_load(&s, 0, 300);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let sent = Instant::now();
    d.signal("TERM");
    let code = d.wait(Duration::from_secs(26));
    let took = sent.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    producer.join().unwrap();
    println!(
        "shutdown: SIGTERM to exit under steady load: {} ms",
        took.as_millis()
    );
    assert_eq!(code, 0, "log:\n{}", d.tail(30));
    assert!(took < Duration::from_secs(25), "inside the deadline");
    for phase in [
        "signal received",
        "fetching stopped",
        "worker 0 drained",
        "offsets committed",
        "group left",
        "shutdown: exit",
    ] {
        assert!(
            d.has_line(phase),
            "timeline line {phase:?} missing:\n{}",
            d.tail(40)
        );
    }
    // Everything read was stored, and Kafka's commits agree with PostgreSQL's watermark.
    assert_eq!(s.committed(), s.pg_watermarks().await);
    assert_no_partial_batch(&s).await;
    finish_and_verify(&s, "steady sigterm").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_slow_store_exits_with_code_3_before_the_deadline() {
    let s = Scenario::new("sd_slow", 4).await;
    s.produce(0, 20_000, 0.01);
    let (pg, url) = proxy::in_front_of(&database_url()).await;
    let env = with(
        &s.env(),
        &[
            ("LP_DATABASE_URL", url),
            ("LP_SHUTDOWN_DEADLINE_MS", "4000".into()),
            ("LP_GRACE_PERIOD_MS", "6000".into()),
            ("LP_BATCH_MAX_RECORDS", "500".into()),
        ],
    );
    let mut d = Daemon::start(&env);
    // Let some batches commit, then make every PostgreSQL round trip take a second.
    let start = Instant::now();
    while s.pg_counts().await.0 < 2000 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no progress:\n{}",
            d.tail(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pg.set(Mode::Delay(Duration::from_millis(1000)));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let sent = Instant::now();
    d.signal("TERM");
    let code = d.wait(Duration::from_secs(10));
    let took = sent.elapsed();
    println!(
        "shutdown: deadline-exceeded exit after {} ms (deadline 4000 ms)",
        took.as_millis()
    );
    assert_eq!(code, 3, "deadline exceeded code; log:\n{}", d.tail(30));
    assert!(
        took < Duration::from_secs(5),
        "exit before deadline + 1 s, took {took:?}"
    );
    assert!(
        d.has_line("abandoned offsets"),
        "what was abandoned is logged:\n{}",
        d.tail(30)
    );
    pg.set(Mode::Pass);
    assert_no_partial_batch(&s).await;
    finish_and_verify(&s, "slow store").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_drains_and_a_second_signal_aborts_at_once() {
    let s = Scenario::new("sd_sigint", 4).await;
    // SIGINT alone behaves like SIGTERM.
    s.produce(0, 5_000, 0.01);
    let mut d = Daemon::start(&s.env());
    s.wait_all_stored(Duration::from_secs(120)).await;
    d.signal("INT");
    assert_eq!(d.wait(Duration::from_secs(26)), 0, "{}", d.tail(20));
    assert!(
        d.has_line("signal=\"SIGINT\"") || d.has_line("signal=SIGINT"),
        "{}",
        d.tail(20)
    );

    // With a slow store the drain takes long; a second SIGINT cuts it short safely.
    s.produce(5_000, 20_000, 0.01);
    let (pg, url) = proxy::in_front_of(&database_url()).await;
    let mut d = Daemon::start(&with(&s.env(), &[("LP_DATABASE_URL", url)]));
    let start = Instant::now();
    while s.pg_counts().await.0 < 7_000 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no progress:\n{}",
            d.tail(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pg.set(Mode::Delay(Duration::from_millis(800)));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    d.signal("INT");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = Instant::now();
    d.signal("INT");
    let code = d.wait(Duration::from_secs(10));
    println!(
        "shutdown: second signal to exit: {} ms",
        second.elapsed().as_millis()
    );
    assert_eq!(code, 4, "aborted code; log:\n{}", d.tail(30));
    assert!(
        second.elapsed() < Duration::from_millis(2500),
        "aborts at once"
    );
    pg.set(Mode::Pass);
    assert_no_partial_batch(&s).await;
    finish_and_verify(&s, "second signal").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_during_startup_exits_promptly() {
    let s = Scenario::new("sd_startup", 1).await;
    // Elasticsearch unreachable: start-up waits on its version detection, before joining the group.
    let es = Proxy::start(elasticsearch_url().trim_start_matches("http://")).await;
    es.set(Mode::Down);
    let env = with(
        &s.env(),
        &[(
            "LP_ELASTICSEARCH_URL",
            format!("http://127.0.0.1:{}", es.port),
        )],
    );
    let mut d = Daemon::start(&env);
    d.wait_for_line(
        "elasticsearch version detection failed",
        Duration::from_secs(30),
    );
    let sent = Instant::now();
    d.signal("TERM");
    let code = d.wait(Duration::from_secs(5));
    println!(
        "shutdown: signal during start-up to exit: {} ms",
        sent.elapsed().as_millis()
    );
    assert_eq!(code, 0);
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "prompt exit, took {:?}",
        sent.elapsed()
    );
    assert!(d.has_line("exit during start-up"));
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_shutdown_line_within_100ms_of_the_signal_even_mid_write() {
    let s = Scenario::new("sd_latency", 2).await;
    s.produce(0, 10_000, 0.0);
    let (pg, url) = proxy::in_front_of(&database_url()).await;
    let mut d = Daemon::start(&with(&s.env(), &[("LP_DATABASE_URL", url)]));
    let start = Instant::now();
    while s.pg_counts().await.0 < 1000 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no progress:\n{}",
            d.tail(20)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every PostgreSQL round trip now takes 500 ms: a batch is being written when the signal lands.
    pg.set(Mode::Delay(Duration::from_millis(500)));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let sent = Instant::now();
    d.signal("TERM");
    let seen = d.wait_for_line("shutdown: signal received", Duration::from_secs(5));
    let latency = seen.duration_since(sent);
    println!(
        "shutdown: signal to first shutdown log line: {} ms",
        latency.as_millis()
    );
    assert!(latency < Duration::from_millis(100), "took {latency:?}");
    pg.set(Mode::Pass);
    assert_eq!(d.wait(Duration::from_secs(26)), 0);
    finish_and_verify(&s, "signal latency").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_as_pid_1_in_its_own_pid_namespace() {
    let s = Scenario::new("sd_pid1", 2).await;
    s.produce(0, 5_000, 0.01);
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc", binary(), "run"]);
    let mut d = Daemon::start_with(&mut cmd, &s.env());
    s.wait_all_stored(Duration::from_secs(120)).await;
    // The daemon is PID 1 inside; from outside it is unshare's only child.
    let children =
        std::fs::read_to_string(format!("/proc/{}/task/{}/children", d.pid(), d.pid())).unwrap();
    let inner: u32 = children
        .split_whitespace()
        .next()
        .expect("unshare's child")
        .parse()
        .unwrap();
    let status = std::fs::read_to_string(format!("/proc/{inner}/status")).unwrap();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(
        nspid.trim().ends_with("\t1") || nspid.split_whitespace().last() == Some("1"),
        "PID 1 inside: {nspid}"
    );
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &inner.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let code = d.wait(Duration::from_secs(26));
    assert_eq!(code, 0, "log:\n{}", d.tail(30));
    assert!(
        d.has_line("shutdown: group left"),
        "the handler ran the whole sequence:\n{}",
        d.tail(30)
    );
    finish_and_verify(&s, "pid 1").await;
}

/// The broker's state of a consumer group (`Stable`, `PreparingRebalance`, ...).
fn group_state(group: &str) -> String {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = producer_config().create().expect("client");
    let list = c
        .fetch_group_list(Some(group), Duration::from_secs(10))
        .expect("describe group");
    list.groups()
        .first()
        .map_or_else(String::new, |g| g.state().to_string())
}

/// Starts a second replica while the group's first member is frozen (SIGSTOP), so the broker
/// holds the replica's JoinGroup (the rebalance waits for the frozen member to rejoin), and
/// returns the two once the broker shows the rebalance under way: a signal now lands during
/// the join.
async fn replica_joining(s: &Scenario, env: &[(String, String)]) -> (Daemon, Daemon) {
    s.produce(0, 2_000, 0.0);
    let mut a = Daemon::start(env);
    s.wait_all_stored(Duration::from_secs(120)).await;
    a.wait_for_line("partitions assigned", Duration::from_secs(30));
    a.signal("STOP");
    let b = Daemon::start(env);
    b.wait_for_line("stores ready", Duration::from_secs(30));
    let start = Instant::now();
    while group_state(&s.group) != "PreparingRebalance" {
        if start.elapsed() > Duration::from_secs(10) {
            a.signal("CONT");
            a.kill();
            panic!(
                "the broker never showed the second replica's join (group {}); log:\n{}",
                group_state(&s.group),
                b.tail(20)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !b.has_line("partitions assigned"),
        "the second replica was assigned partitions: the join was not held, nothing tested"
    );
    (a, b)
}

/// A pod stopped during a rolling update is often one still joining its group. The signal
/// lands while the broker holds this replica's JoinGroup; the other member rejoins 200 ms
/// later, as a live member does on its next heartbeat. The process must exit as soon as the
/// join is answered and leave the group cleanly (librdkafka alone waited its 5 s LeaveGroup
/// timeout), so that a replica started next is assigned the partitions at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_joining_the_group_exits_at_once_and_leaves_it() {
    let s = Scenario::new("sd_join", 2).await;
    // The default session timeout: a member left behind would hold its place for 30 s.
    let env = with(&s.env(), &[("LP_SESSION_TIMEOUT_MS", "30000".into())]);
    let (mut a, mut b) = replica_joining(&s, &env).await;
    let sent = Instant::now();
    b.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.signal("CONT");
    let code = b.wait(Duration::from_secs(26));
    let took = sent.elapsed();
    println!(
        "shutdown: signal during the group join to exit: {} ms",
        took.as_millis()
    );
    assert_eq!(code, 0, "log:\n{}", b.tail(30));
    assert!(
        took < Duration::from_millis(1000),
        "exit took {took:?} after a signal during the join; log:\n{}",
        b.tail(30)
    );
    assert!(
        b.has_line("shutdown: group left"),
        "left without a LeaveGroup; log:\n{}",
        b.tail(30)
    );

    // The first member leaves too; nobody is left in the group, so a new replica is assigned
    // both partitions well inside one session timeout, and stores what follows.
    a.signal("TERM");
    assert_eq!(a.wait(Duration::from_secs(26)), 0, "log:\n{}", a.tail(30));
    let started = Instant::now();
    let mut c = Daemon::start(&env);
    c.wait_for_line("partitions assigned", Duration::from_secs(30));
    let assigned_after = started.elapsed();
    println!(
        "shutdown: replica started after the exit assigned in {} ms",
        assigned_after.as_millis()
    );
    assert!(
        assigned_after < Duration::from_secs(8),
        "the next replica waited {assigned_after:?} for its partitions: a member was left behind"
    );
    s.produce(2_000, 500, 0.0);
    s.wait_all_stored(Duration::from_secs(120)).await;
    c.signal("TERM");
    assert_eq!(c.wait(Duration::from_secs(26)), 0);
    s.verify().await.assert_exact("signal during the join");
    s.cleanup().await;
}

/// The same signal while the other member stays frozen: the join is never answered, so the
/// LeaveGroup behind it cannot be either. The wait for it is bounded and named in the
/// timeline; the process exits with code 0 (offsets were committed before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_a_join_is_held_for_good_exits_within_the_leave_bound() {
    let s = Scenario::new("sd_join_held", 2).await;
    let env = with(&s.env(), &[("LP_SESSION_TIMEOUT_MS", "30000".into())]);
    let (mut a, mut b) = replica_joining(&s, &env).await;
    let sent = Instant::now();
    b.signal("TERM");
    let code = b.wait(Duration::from_secs(26));
    let took = sent.elapsed();
    a.signal("CONT");
    println!(
        "shutdown: signal during a join held for good to exit: {} ms",
        took.as_millis()
    );
    assert_eq!(code, 0, "log:\n{}", b.tail(30));
    assert!(
        took < Duration::from_millis(1500),
        "exit took {took:?}; log:\n{}",
        b.tail(30)
    );
    assert!(
        b.has_line("shutdown: group leave abandoned"),
        "log:\n{}",
        b.tail(30)
    );
    a.signal("TERM");
    assert_eq!(a.wait(Duration::from_secs(26)), 0);
    s.verify().await.assert_exact("signal during a held join");
    s.cleanup().await;
}
