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
