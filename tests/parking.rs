//! Records their destination index refuses while the store takes others are parked, not held:
//! every other record is stored at once, the parked ones wait in `parked_records` (counted by
//! `status` and a metric) and are written to both stores, once each, when the index takes
//! them again, across a SIGKILL while parked and one while they are released.
//!
//! Reduced sizes in `make test`; `CHAOS_FULL=1` (`make chaos`) selects the full ones.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::chaos_kit::*;
use common::verify::read_topic;
use common::*;
use log_processor::loadgen;

/// Last month's records land in an index lifecycle has made read-only.
const LATE_DAY: &str = "2025.10.15";

fn late(i: u64) -> (Option<Vec<u8>>, Vec<u8>) {
    let payload = serde_json::json!({
        "timestamp": format!("2025-10-15T08:{:02}:{:02}.000Z", (i / 60) % 60, i % 60),
        "level": "warn",
        "service": "billing",
        "message": format!("late record {i}"),
        "late": i,
    });
    (
        Some(format!("late-{i}").into_bytes()),
        payload.to_string().into_bytes(),
    )
}

/// A far-dated record: one new index per record (day `i` of 2026-03 or 2026-04).
fn far(i: u64) -> (Option<Vec<u8>>, Vec<u8>) {
    let day = chrono::NaiveDate::from_ymd_opt(2026, 3, 1).unwrap() + chrono::Days::new(i);
    let payload = serde_json::json!({
        "timestamp": format!("{day}T12:00:00.000Z"),
        "level": "info",
        "service": "scheduler",
        "message": format!("far record {i}"),
    });
    (
        Some(format!("far-{i}").into_bytes()),
        payload.to_string().into_bytes(),
    )
}

/// A record to produce: its key and payload.
type Keyed = (Option<Vec<u8>>, Vec<u8>);

/// `current` generated records with `extra(i)` after every `every`-th one.
fn mixed(
    current: u64,
    every: u64,
    extra: impl Fn(u64) -> Keyed,
    first_extra: u64,
) -> (Vec<Keyed>, u64) {
    let mut out = Vec::new();
    let mut n = 0;
    for seq in 0..current {
        out.push((
            Some(format!("k{seq}").into_bytes()),
            loadgen::payload(seq, 0.0).0,
        ));
        if seq % every == every / 2 {
            out.push(extra(first_extra + n));
            n += 1;
        }
    }
    (out, n)
}

/// The (partition, offset) of every record in Kafka whose key starts with `prefix`.
fn offsets_keyed(s: &Scenario, prefix: &str) -> BTreeSet<(i32, i64)> {
    read_topic(&s.topic, &s.end_offsets())
        .into_iter()
        .filter(|(_, r)| {
            r.key
                .as_deref()
                .is_some_and(|k| k.starts_with(prefix.as_bytes()))
        })
        .map(|(at, _)| at)
        .collect()
}

async fn parked(s: &Scenario) -> BTreeSet<(i32, i64)> {
    let rows: Vec<(i32, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT kafka_partition, kafka_offset FROM {}.parked_records",
        s.schema
    )))
    .fetch_all(&s.pg().await)
    .await
    .unwrap_or_default();
    rows.into_iter().collect()
}

async fn rows(s: &Scenario) -> i64 {
    s.pg_counts().await.0
}

/// Waits until PostgreSQL holds `want` rows; returns how long that took.
async fn wait_rows(s: &Scenario, d: &Daemon, want: i64, timeout: Duration, what: &str) -> Duration {
    let t = Instant::now();
    while rows(s).await < want {
        assert!(
            t.elapsed() < timeout,
            "{what}: {} of {want} rows after {timeout:?}; log:\n{}",
            rows(s).await,
            folded_tail(d, 40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.elapsed()
}

/// Waits until exactly `want` is parked.
async fn wait_parked(s: &Scenario, d: &Daemon, want: &BTreeSet<(i32, i64)>, what: &str) {
    let t = Instant::now();
    loop {
        let now = parked(s).await;
        if &now == want {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "{what}: parked {} records, not the {} expected (first extra {:?}, first missing {:?}); log:\n{}",
            now.len(),
            want.len(),
            now.difference(want).next(),
            want.difference(&now).next(),
            folded_tail(d, 40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `log-processor status` output for the scenario.
fn status(s: &Scenario) -> String {
    let out = std::process::Command::new(binary())
        .arg("status")
        .envs(s.env())
        .output()
        .expect("run status");
    assert!(out.status.success(), "status: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn set_write_block(index: &str, on: bool) {
    let url = format!("{}/{index}/_settings", elasticsearch_url());
    let body = serde_json::json!({ "index.blocks.write": on }).to_string();
    let (status, text) = http("PUT", &url, Some(body)).await;
    assert_eq!(status, 200, "index.blocks.write={on} on {index}: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn late_records_to_a_read_only_index_are_parked_then_released() {
    let name = "parked_late_records";
    let started = Instant::now();
    let (current, every) = if chaos().full {
        (30_000, 1_000)
    } else {
        (6_000, 200)
    };
    let s = Scenario::new("park_late", 3).await;
    let late_index = format!("{}-{LATE_DAY}", s.index);
    let env = with(&chaos_env(&s), &[("LP_PARKED_RETRY_MS", "1000".into())]);
    let mut d = Daemon::start(&env);
    // The late index exists (made from the daemon's template), then lifecycle makes it
    // read-only, as an ILM/ISM `readonly` action does.
    s.produce_raw(&[late(0)]);
    wait_rows(&s, &d, 1, Duration::from_secs(90), name).await;
    let stored_late = offsets_keyed(&s, "late-");
    set_write_block(&late_index, true).await;
    let (status_code, answer) = http(
        "POST",
        &format!("{}/{late_index}/_doc", elasticsearch_url()),
        Some(r#"{"probe": true}"#.into()),
    )
    .await;
    assert_eq!(status_code, 403, "the block refuses writes: {answer}");
    println!("chaos: {name} {late_index} blocked; a write answers {status_code}");

    let (records, n_late) = mixed(current, every, late, 1);
    let t = Instant::now();
    s.produce_raw(&records);
    let want_parked: BTreeSet<(i32, i64)> = offsets_keyed(&s, "late-")
        .difference(&stored_late)
        .copied()
        .collect();
    assert_eq!(want_parked.len() as u64, n_late);
    // Every current record is stored while the late ones wait: nothing is held.
    let stored_in = wait_rows(&s, &d, 1 + current as i64, Duration::from_secs(180), name).await;
    wait_parked(&s, &d, &want_parked, name).await;
    wait_committed_to_end(&s, Duration::from_secs(60)).await;
    assert_eq!(
        s.pg_watermarks().await,
        s.end_offsets(),
        "watermarks passed the parked records"
    );
    let gauge = "log_processor_parked_records";
    let t_gauge = Instant::now();
    while metric_opt(&d, gauge).await != Some(n_late as f64) {
        assert!(
            t_gauge.elapsed() < Duration::from_secs(30),
            "{gauge} never {n_late}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let shown = status(&s);
    assert!(
        shown.contains(&format!("parked: {late_index} records={n_late}"))
            && shown.contains(&format!("parked={n_late}")),
        "status shows the parked records:\n{shown}"
    );
    println!(
        "chaos: {name} current={current} stored_in_s={:.1} (produced to stored {:.1}) parked={n_late} destination={late_index}",
        stored_in.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );

    // SIGKILL while parked: they stay parked.
    d.kill();
    let mut d = Daemon::start(&env);
    wait_line_alive(&mut d, "partitions assigned", Duration::from_secs(90)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        parked(&s).await,
        want_parked,
        "still parked after a SIGKILL"
    );
    d.signal("TERM");
    assert_eq!(
        d.wait(Duration::from_secs(30)),
        0,
        "clean stop while parked"
    );

    // The block lifted; SIGKILL while they are released (documents indexed, rows not yet).
    set_write_block(&late_index, false).await;
    let mut d = Daemon::start(&with(
        &env,
        &[("LP_FAILPOINTS", "after_release_index=1.0".into())],
    ));
    let reached = r#"failpoint reached name="after_release_index""#;
    wait_line_alive(&mut d, reached, Duration::from_secs(60)).await;
    d.kill();
    assert_eq!(
        parked(&s).await,
        want_parked,
        "still parked after a kill in release"
    );
    // The window: documents of parked records (one partition's, the round goes partition by
    // partition) were indexed before the kill, their rows not written.
    let (_, _) = http(
        "POST",
        &format!("{}/{late_index}/_refresh", elasticsearch_url()),
        None,
    )
    .await;
    let (status, text) = http(
        "GET",
        &format!("{}/{late_index}/_count", elasticsearch_url()),
        None,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let indexed = serde_json::from_str::<serde_json::Value>(&text).unwrap()["count"]
        .as_u64()
        .unwrap();
    assert!(
        indexed > stored_late.len() as u64,
        "no parked document indexed before the kill: {text}"
    );

    let released_from = Instant::now();
    let mut d = Daemon::start(&env);
    while !parked(&s).await.is_empty() {
        assert!(
            released_from.elapsed() < Duration::from_secs(60),
            "parked records not released; log:\n{}",
            folded_tail(&d, 40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let released_in = released_from.elapsed();
    s.wait_all_stored(Duration::from_secs(60)).await;
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(30)), 0, "clean stop");
    println!(
        "chaos: {name} released={n_late} released_in_s={:.1} (from the daemon's start)",
        released_in.as_secs_f64()
    );
    verify_and_report(&s, name, 2).await;
    finish(&s, name, started).await;
}

async fn metric_opt(d: &Daemon, name: &str) -> Option<f64> {
    let (status, body) = http("GET", &format!("http://{}/metrics", d.http_addr()), None).await;
    assert_eq!(status, 200, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Resets `cluster.max_shards_per_node` even when the test fails, so no other test inherits it.
struct ShardLimit;

impl ShardLimit {
    async fn set(limit: Option<usize>) {
        let body = serde_json::json!({ "persistent": { "cluster.max_shards_per_node": limit } });
        let url = format!("{}/_cluster/settings", elasticsearch_url());
        let (status, text) = http("PUT", &url, Some(body.to_string())).await;
        assert_eq!(status, 200, "cluster.max_shards_per_node={limit:?}: {text}");
    }
}

impl Drop for ShardLimit {
    fn drop(&mut self) {
        std::thread::spawn(|| {
            tokio::runtime::Runtime::new()
                .expect("runtime")
                .block_on(ShardLimit::set(None))
        })
        .join()
        .ok();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn records_for_indices_the_shard_limit_forbids_are_parked_then_released() {
    let name = "parked_shard_limit";
    let started = Instant::now();
    let (current, every) = if chaos().full {
        (30_000, 1_000)
    } else {
        (3_000, 300)
    };
    let s = Scenario::new("park_shards", 2).await;
    let env = with(&chaos_env(&s), &[("LP_PARKED_RETRY_MS", "1000".into())]);
    let mut d = Daemon::start(&env);
    // Today's index for the generated records exists before the limit is reached.
    s.produce(1_000_000, 10, 0.0);
    wait_rows(&s, &d, 10, Duration::from_secs(90), name).await;

    let base = elasticsearch_url();
    let (_, shards) = http("GET", &format!("{base}/_cat/shards?h=index"), None).await;
    let open = shards.lines().filter(|l| !l.trim().is_empty()).count();
    let guard = ShardLimit;
    ShardLimit::set(Some(open)).await;
    let (probe, answer) = http("PUT", &format!("{base}/{}-probe", s.index), None).await;
    assert!(
        probe == 400 && answer.contains("maximum shards open"),
        "the limit forbids new indices: {probe} {answer}"
    );
    println!("chaos: {name} cluster.max_shards_per_node={open}; a new index answers {probe}");

    let (records, n_far) = mixed(current, every, far, 0);
    s.produce_raw(&records);
    let want_parked = offsets_keyed(&s, "far-");
    assert_eq!(want_parked.len() as u64, n_far);
    let stored_in = wait_rows(&s, &d, 10 + current as i64, Duration::from_secs(180), name).await;
    wait_parked(&s, &d, &want_parked, name).await;
    wait_committed_to_end(&s, Duration::from_secs(60)).await;
    let shown = status(&s);
    assert!(
        shown.contains(&format!("parked={n_far}")),
        "status:\n{shown}"
    );
    println!(
        "chaos: {name} current={current} stored_in_s={:.1} parked={n_far} destinations={n_far}",
        stored_in.as_secs_f64()
    );

    let lifted = Instant::now();
    ShardLimit::set(None).await;
    drop(guard);
    while !parked(&s).await.is_empty() {
        assert!(
            lifted.elapsed() < Duration::from_secs(60),
            "parked records not released; log:\n{}",
            folded_tail(&d, 40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let released_in = lifted.elapsed();
    s.wait_all_stored(Duration::from_secs(60)).await;
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(30)), 0, "clean stop");
    println!(
        "chaos: {name} released={n_far} released_in_s={:.1} (from the limit lifted)",
        released_in.as_secs_f64()
    );
    verify_and_report(&s, name, 0).await;
    finish(&s, name, started).await;
}
