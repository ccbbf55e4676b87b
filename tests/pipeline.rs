//! The daemon end to end against real Kafka, PostgreSQL and OpenSearch.

mod common;

use std::time::{Duration, Instant};

use common::proxy::{Mode, Proxy};
use common::*;

const DEADLINE: Duration = Duration::from_secs(25);

/// Waits until Kafka's committed offsets reach the end of every partition.
async fn wait_committed_to_end(s: &Scenario, timeout: Duration) {
    let start = Instant::now();
    let ends = s.end_offsets();
    while s.committed() != ends {
        assert!(
            start.elapsed() < timeout,
            "committed {:?} never reached end offsets {ends:?}",
            s.committed()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn stop(d: &mut Daemon) {
    d.signal("TERM");
    let code = d.wait(DEADLINE + Duration::from_secs(1));
    assert_eq!(code, 0, "clean exit expected; log:\n{}", d.tail(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_100k_records_exactly_once() {
    let s = Scenario::new("e2e", 6).await;
    let bad = s.produce(0, 100_000, 0.01);
    let started = Instant::now();
    let mut d = Daemon::start(&s.env());
    s.wait_all_stored(Duration::from_secs(600)).await;
    let took = started.elapsed();
    wait_committed_to_end(&s, Duration::from_secs(30)).await;
    stop(&mut d);
    println!(
        "e2e: 100000 records ({bad} malformed) stored in {:.1} s ({:.0} records/s)",
        took.as_secs_f64(),
        100_000.0 / took.as_secs_f64()
    );
    let v = s.verify().await;
    v.assert_exact("e2e");
    assert_eq!(
        v.dead_lettered, bad,
        "exactly the malformed records are dead-lettered"
    );
    let ends = s.end_offsets();
    assert_eq!(
        s.committed(),
        ends,
        "Kafka's committed offsets equal the end offsets"
    );
    assert_eq!(
        s.pg_watermarks().await,
        ends,
        "PostgreSQL's watermark equals the end offsets"
    );
    assert!(d.has_line("partitions assigned"));
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_sigterm_halfway_loses_and_duplicates_nothing() {
    let s = Scenario::new("restart", 6).await;
    s.produce(0, 40_000, 0.01);
    let mut d = Daemon::start(&s.env());
    let start = Instant::now();
    loop {
        let (r, dl) = s.pg_counts().await;
        if r + dl >= 15_000 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no progress: {}",
            d.tail(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop(&mut d);
    let (r, dl) = s.pg_counts().await;
    assert!(
        r + dl < 40_000,
        "the SIGTERM landed halfway ({} of 40000 stored)",
        r + dl
    );
    assert_eq!(
        s.committed(),
        s.pg_watermarks().await,
        "after a clean stop Kafka's offsets equal PostgreSQL's watermark"
    );

    let mut d = Daemon::start(&s.env());
    s.wait_all_stored(Duration::from_secs(300)).await;
    wait_committed_to_end(&s, Duration::from_secs(30)).await;
    stop(&mut d);
    s.verify().await.assert_exact("restart");
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_from_the_beginning_creates_no_duplicates() {
    let s = Scenario::new("replay", 4).await;
    s.produce(0, 20_000, 0.01);
    let mut d = Daemon::start(&s.env());
    s.wait_all_stored(Duration::from_secs(300)).await;
    wait_committed_to_end(&s, Duration::from_secs(30)).await;
    stop(&mut d);
    let first = s.verify().await;
    first.assert_exact("replay, first pass");

    // Forget every offset, in Kafka and in PostgreSQL, and read everything again.
    s.reset_group_offsets();
    let pool = s.pg().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM {}.consumer_offsets",
        s.schema
    )))
    .execute(&pool)
    .await
    .unwrap();
    let mut d = Daemon::start(&s.env());
    wait_committed_to_end(&s, Duration::from_secs(300)).await;
    stop(&mut d);
    let second = s.verify().await;
    second.assert_exact("replay, second pass");
    assert_eq!(
        (second.stored, second.indexed, second.dead_lettered),
        (first.stored, first.indexed, first.dead_lettered)
    );
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_outage_and_postgres_restart_are_ridden_out() {
    let s = Scenario::new("outage", 6).await;
    let es = Proxy::start(elasticsearch_url().trim_start_matches("http://")).await;
    let mut env = s.env();
    env.retain(|(k, _)| k != "LP_ELASTICSEARCH_URL");
    env.push((
        "LP_ELASTICSEARCH_URL".into(),
        format!("http://127.0.0.1:{}", es.port),
    ));
    s.produce(0, 20_000, 0.01);
    let mut d = Daemon::start(&env);
    let http = d.http_addr();

    // Elasticsearch unreachable for 20 s while records keep arriving.
    tokio::time::sleep(Duration::from_secs(2)).await;
    es.set(Mode::Down);
    let producer = {
        let s = s.clone();
        std::thread::spawn(move || s.produce(20_000, 20_000, 0.01))
    };
    tokio::time::sleep(Duration::from_secs(20)).await;
    let metrics = http_get(&http, "/metrics").await;
    assert!(
        d.child.try_wait().unwrap().is_none(),
        "the daemon survives the outage"
    );
    es.set(Mode::Pass);
    producer.join().unwrap();
    s.wait_all_stored(Duration::from_secs(300)).await;
    assert!(
        metrics.contains("log_processor_ready 1"),
        "still in its group during the outage:\n{metrics}"
    );

    // PostgreSQL restarted for real under load.
    let producer = {
        let s = s.clone();
        std::thread::spawn(move || s.produce(40_000, 20_000, 0.01))
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let infra = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/infra/infra.sh");
    assert!(
        std::process::Command::new("bash")
            .args([infra, "down", "postgres"])
            .status()
            .unwrap()
            .success()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        std::process::Command::new("bash")
            .args([infra, "up", "postgres"])
            .status()
            .unwrap()
            .success()
    );
    producer.join().unwrap();
    s.wait_all_stored(Duration::from_secs(300)).await;
    wait_committed_to_end(&s, Duration::from_secs(60)).await;
    let metrics = http_get(&http, "/metrics").await;
    stop(&mut d);
    let retries = |store: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("log_processor_retries_total{{store=\"{store}\"}}")))
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    assert!(
        retries("elasticsearch") > 0,
        "the outage was seen and retried"
    );
    println!(
        "outage: retries elasticsearch={} postgresql={}",
        retries("elasticsearch"),
        retries("postgresql")
    );
    s.verify().await.assert_exact("outage");
    s.cleanup().await;
}

async fn http_get(addr: &str, path: &str) -> String {
    http("GET", &format!("http://{addr}{path}"), None).await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redaction_applies_to_both_stores() {
    let s = Scenario::new("redact", 2).await;
    s.produce(0, 2_000, 0.0);
    let mut env = s.env();
    env.extend([
        ("LP_REDACT_DROP".to_string(), "host".to_string()),
        ("LP_REDACT_HASH".to_string(), "trace_id".to_string()),
        ("LP_REDACT_KEY".to_string(), "test-key".to_string()),
    ]);
    let mut d = Daemon::start(&env);
    s.wait_all_stored(Duration::from_secs(120)).await;
    stop(&mut d);
    assert!(!d.has_line("test-key"), "the redaction key is never logged");
    // Both stores are compared with the records as the documented redaction changes them.
    let v = s
        .verify_with(&Expectation {
            redact_drop: vec!["host".into()],
            redact_hash: vec!["trace_id".into()],
            redact_key: "test-key".into(),
            ..Expectation::default()
        })
        .await;
    v.assert_exact("redaction");
    let pool = s.pg().await;
    let q = format!(
        "SELECT count(*) FILTER (WHERE fields ? 'host'), count(*) FILTER (WHERE fields->>'trace_id' LIKE 'hmac:%'), count(*) FROM {}.log_records",
        s.schema
    );
    let (hosts, hashed, total): (i64, i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(q))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!((hosts, hashed, total), (0, 2_000, 2_000));
    // verify_with() compared every row and document with the redacted record; and directly:
    let docs = es_documents(&format!("{}-*", s.index)).await;
    assert!(docs.iter().all(|d| {
        d["fields"].get("host").is_none()
            && d["fields"]["trace_id"]
                .as_str()
                .unwrap()
                .starts_with("hmac:")
    }));
    s.cleanup().await;
}
