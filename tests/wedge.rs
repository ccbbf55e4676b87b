//! Nothing wedges the daemon unnoticed: a revocation under backpressure returns quickly (a new
//! replica gets its partitions within seconds), a worker that dies ends the process, and a
//! consumer thread that stops polling fails liveness and starves systemd's watchdog.
//! Needs the `failpoints` feature for the forced faults.
#![cfg(feature = "failpoints")]

mod common;

use std::time::{Duration, Instant};

use common::chaos_kit::metric;
use common::*;

fn field(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(&format!("{key}="))? + key.len() + 1..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The bounds this test states: a newcomer stores records within 2 s of its partitions being
/// assigned, and within 10 s of starting, which includes its start-up and the two rounds of a
/// cooperative rebalance (each waits for the old member's next heartbeat, up to a third of the
/// 10 s session timeout: about 6 s here). Before revocations stopped waiting for batches that
/// were never going to be written, the drain timeout (8 s here) came on top: 14 s.
const NEWCOMER_BOUND: Duration = Duration::from_secs(10);
const AFTER_ASSIGNMENT_BOUND: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_replica_stores_records_within_seconds_of_joining_a_backlogged_group() {
    let s = Scenario::new("newcomer", 6).await;
    s.produce(0, 60_000, 0.0);
    // One worker with a queue of one: most cut batches wait in the consumer (backpressure).
    let env = with(
        &s.env(),
        &[
            ("LP_WORKERS", "1".into()),
            ("LP_WORKER_QUEUE", "1".into()),
            ("LP_SESSION_TIMEOUT_MS", "10000".into()),
            ("LP_REVOKE_DRAIN_TIMEOUT_MS", "8000".into()),
        ],
    );
    let mut a = Daemon::start(&env);
    let started = Instant::now();
    while s.pg_counts().await.0 < 3_000 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{}",
            a.tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        s.pg_counts().await.0 < 50_000,
        "the backlog must still be there"
    );

    let b_started = Instant::now();
    let mut b = Daemon::start(&env);
    let stored_by_b = loop {
        if metric(&b, "log_processor_records_stored_total").await > 0.0 {
            break b_started.elapsed();
        }
        assert!(
            b_started.elapsed() < Duration::from_secs(30),
            "the newcomer stored nothing in 30 s:\n{}",
            b.tail(30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let assigned = b
        .wait_for_line("partitions assigned", Duration::from_secs(1))
        .duration_since(b_started);
    a.wait_for_line("partitions revoked", Duration::from_secs(10));
    let revoked = a
        .lines
        .lock()
        .unwrap()
        .iter()
        .find(|(_, l)| l.contains("partitions revoked"))
        .map(|(_, l)| l.clone())
        .unwrap();
    let took_ms = field(&revoked, "took_ms").expect("took_ms on the revoke line");
    println!(
        "newcomer: partitions assigned {assigned:?} and first records stored {stored_by_b:?} after it started; the old member's revocation took {took_ms} ms (drain timeout 8000 ms)"
    );
    assert!(took_ms < 2_000, "revocation waited: {revoked}");
    assert!(
        stored_by_b < NEWCOMER_BOUND,
        "newcomer took {stored_by_b:?}"
    );
    assert!(
        stored_by_b.saturating_sub(assigned) < AFTER_ASSIGNMENT_BOUND,
        "assigned at {assigned:?}, first stored at {stored_by_b:?}"
    );

    s.wait_all_stored(Duration::from_secs(180)).await;
    for d in [&mut a, &mut b] {
        d.signal("TERM");
        assert_eq!(d.wait(Duration::from_secs(30)), 0, "{}", d.tail(20));
    }
    s.verify().await.assert_exact("newcomer");
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_dies_ends_the_daemon_with_code_1() {
    let s = Scenario::new("worker_dies", 2).await;
    s.produce(0, 200, 0.0);
    let mut d = Daemon::start(&with(
        &s.env(),
        &[("LP_FAILPOINTS", "worker_panic=1".into())],
    ));
    let code = d.wait(Duration::from_secs(60));
    assert!(d.has_line("failpoint worker_panic"), "{}", d.tail(20));
    assert_eq!(code, 1, "{}", d.tail(20));
    assert!(d.has_line("a worker ended unexpectedly"), "{}", d.tail(20));
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_consumer_thread_fails_liveness_and_starves_the_watchdog() {
    let s = Scenario::new("wedge", 1).await;
    let dir = std::env::temp_dir().join(unique("wedge_notify"));
    std::fs::create_dir_all(&dir).unwrap();
    let sock_path = dir.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut d = Daemon::start(&with(
        &s.env(),
        &[
            ("LP_FAILPOINTS", "consumer_wedge=1".into()),
            ("LP_SESSION_TIMEOUT_MS", "6000".into()),
            ("LP_REVOKE_DRAIN_TIMEOUT_MS", "3000".into()),
            ("LP_LIVENESS_TIMEOUT_MS", "24000".into()),
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap().into()),
            ("WATCHDOG_USEC", "1000000".into()),
        ],
    ));
    let wedged = d.wait_for_line("consumer_wedge", Duration::from_secs(60));
    let healthz =
        || async { http("GET", &format!("http://{}/healthz", d.http_addr()), None).await };
    assert_eq!(healthz().await.0, 200, "alive right after the wedge");

    // Watchdog pings arrive while liveness holds...
    let mut pings_before = 0;
    let mut buf = [0u8; 256];
    let (status, body, failed_after) = loop {
        if let Ok(n) = sock.recv(&mut buf) {
            pings_before += u32::from(&buf[..n] == b"WATCHDOG=1");
        }
        let (status, body) = healthz().await;
        if status != 200 {
            break (status, body, wedged.elapsed());
        }
        assert!(
            wedged.elapsed() < Duration::from_secs(40),
            "healthz stayed 200"
        );
    };
    println!(
        "wedge: /healthz {status} {failed_after:?} after the wedge ({body:?}); {pings_before} watchdog pings before"
    );
    assert_eq!(status, 503);
    assert!(body.contains("has not polled"), "{body}");
    assert!(failed_after >= Duration::from_secs(23), "{failed_after:?}");
    assert!(
        pings_before >= 3,
        "watchdog pings while alive: {pings_before}"
    );
    // ...and stop once it fails.
    let until = Instant::now() + Duration::from_secs(3);
    let mut pings_after = 0;
    while Instant::now() < until {
        if let Ok(n) = sock.recv(&mut buf) {
            pings_after += u32::from(&buf[..n] == b"WATCHDOG=1");
        }
    }
    assert_eq!(pings_after, 0, "the watchdog is still pinged");
    d.kill();
    let _ = std::fs::remove_dir_all(&dir);
    s.cleanup().await;
}

/// Peak resident memory of a process, from the kernel's high-water mark.
fn peak_rss_mib(pid: u32) -> f64 {
    proc_status_kib(pid, "VmHWM:").map_or(0.0, |kib| kib as f64 / 1024.0)
}

/// Runs the daemon for a while on a 48-partition backlog with PostgreSQL slowed down, and
/// returns (peak bytes held in batches, peak RSS in MiB).
async fn backlog_run(s: &Scenario, budget_mb: &str) -> (f64, f64) {
    // Each run its own group and schema: it starts from the beginning of the same backlog.
    let run = format!("{}_{budget_mb}", s.group);
    let (proxy, url) = common::proxy::in_front_of(&database_url()).await;
    proxy.set(common::proxy::Mode::Delay(Duration::from_millis(100)));
    let mut d = Daemon::start(&with(
        &s.env(),
        &[
            ("LP_DATABASE_URL", url),
            ("LP_GROUP_ID", run.clone()),
            ("LP_PG_SCHEMA", format!("{}_{budget_mb}", s.schema)),
            ("LP_MEMORY_BUDGET_MB", budget_mb.into()),
            ("LP_BATCH_MAX_RECORDS", "5000".into()),
            ("LP_BATCH_MAX_BYTES", "262144".into()),
            ("LP_BATCH_LINGER_MS", "10000".into()),
            ("LP_WORKERS", "2".into()),
        ],
    ));
    d.wait_for_line("partitions assigned", Duration::from_secs(60));
    tokio::time::sleep(Duration::from_secs(12)).await;
    let peak = metric(&d, "log_processor_batch_memory_peak_bytes").await;
    let rss = peak_rss_mib(d.pid());
    d.kill();
    (peak, rss)
}

/// 48 partitions of backlog, batches of up to 256 KiB each: without one global bound, every
/// partition holds an open batch and batches waiting (tens of MiB); with `LP_MEMORY_BUDGET_MB=2`
/// fetching stops at 2 MiB. The overshoot allowed is what librdkafka had already fetched when
/// the partitions were paused, up to one batch per partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_of_48_backlogged_partitions_stay_within_one_memory_budget() {
    let s = Scenario::new("budget", 48).await;
    s.produce(0, 110_000, 0.0);
    let (bounded, bounded_rss) = backlog_run(&s, "2").await;
    let (unbounded, unbounded_rss) = backlog_run(&s, "1024").await;
    let mib = |b: f64| b / 1024.0 / 1024.0;
    println!(
        "budget: peak batch memory {:.1} MiB with a 2 MiB budget (peak RSS {bounded_rss:.1} MiB), {:.1} MiB with 1024 MiB (peak RSS {unbounded_rss:.1} MiB)",
        mib(bounded),
        mib(unbounded)
    );
    assert!(
        mib(unbounded) > 8.0,
        "the load did not build a backlog in memory"
    );
    assert!(
        mib(bounded) <= 2.0 + 1.0,
        "budget passed: {:.1} MiB",
        mib(bounded)
    );
    assert!(bounded_rss < 150.0, "peak RSS {bounded_rss:.1} MiB");
    let pool = s.pg().await;
    // The killed daemons' sessions may still hold locks for a moment: retry the clean-up.
    for budget in ["2", "1024"] {
        let drop = format!("DROP SCHEMA IF EXISTS {}_{budget} CASCADE", s.schema);
        for _ in 0..5 {
            if sqlx::query(sqlx::AssertSqlSafe(drop.as_str()))
                .execute(&pool)
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    s.cleanup().await;
}
