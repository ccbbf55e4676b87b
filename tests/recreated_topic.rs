//! A topic is an identity, not a name. A topic deleted and recreated under the same name, or a
//! topic of the same name on another cluster, starts again at offset 0: read as the old one, its
//! records would land next to the old rows under the same coordinates (or pass below the stored
//! watermark). The daemon must hold it, name both identities, store nothing of it, and read it
//! under a name of its own once an operator runs `log-processor topics adopt`; the old
//! incarnation's rows and documents stay as they were.
//!
//! Reduced sizes in `make test`; `CHAOS_FULL=1` (`make chaos`) selects the full ones.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::chaos_kit::sized;
use common::verify::{Expectation, es_hits, read_topic_from};
use common::*;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::BaseProducer;

fn admin(brokers: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap()
}

async fn delete_topic(topic: &str) {
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in admin(&kafka_brokers())
        .delete_topics(&[topic], &opts)
        .await
        .unwrap()
    {
        r.unwrap_or_else(|(t, e)| panic!("delete {t}: {e}"));
    }
}

/// Deletes the topic and creates it again, empty, under the same name.
async fn recreate(s: &Scenario) {
    delete_topic(&s.topic).await;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if log_processor::loadgen::create_topic(&kafka_brokers(), &s.topic, s.partitions, 8 << 20)
            .await
            .is_ok()
            && s.try_end_offsets()
                .is_ok_and(|e| e.values().all(|&o| o == 0))
        {
            return;
        }
    }
    panic!("topic {} not recreated empty", s.topic);
}

/// Runs a `log-processor` operator command with the daemon's environment; its stdout.
fn command(env: &[(String, String)], args: &[&str]) -> String {
    let out = Command::new(binary())
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "log-processor {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `(offset, message)` of every row stored under `name`, and of every document whose
/// `kafka.topic` is `name`: the old incarnation, which nothing may touch.
async fn stored_under(s: &Scenario, name: &str) -> (Vec<(i64, String)>, Vec<(i64, String)>) {
    let pool = s.pg().await;
    let rows: Vec<(i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT kafka_offset, coalesce(message, '') FROM {}.log_records WHERE topic = $1 ORDER BY 1",
        s.schema
    )))
    .bind(name)
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut docs = Vec::new();
    es_hits(&format!("{}-*", s.index), |hit| {
        let src = &hit["_source"];
        if src["kafka"]["topic"] == name {
            docs.push((
                src["kafka"]["offset"].as_i64().unwrap_or(-1),
                src["message"].as_str().unwrap_or_default().to_string(),
            ));
        }
    })
    .await;
    docs.sort();
    (rows, docs)
}

/// The stored name `topics adopt` reports.
fn adopted_name(out: &str) -> String {
    out.split("is now stored as ")
        .nth(1)
        .and_then(|r| r.split(':').next())
        .unwrap_or_else(|| panic!("no stored name in: {out}"))
        .to_string()
}

/// The held partition's line in /metrics.
async fn stalled_line(d: &Daemon, topic: &str) -> String {
    let (_, metrics) = http("GET", &format!("http://{}/metrics", d.http_addr()), None).await;
    metrics
        .lines()
        .find(|l| l.starts_with("log_processor_partition_stalled{") && l.contains(topic))
        .unwrap_or_else(|| panic!("no stalled partition in /metrics:\n{metrics}"))
        .to_string()
}

/// Waits until PostgreSQL holds `want` rows and dead letters under `name`.
async fn wait_stored_under(s: &Scenario, name: &str, want: i64, timeout: Duration) -> Duration {
    let pool = s.pg().await;
    let started = Instant::now();
    loop {
        let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT (SELECT count(*) FROM {0}.log_records WHERE topic = $1) + (SELECT count(*) FROM {0}.dead_letters WHERE topic = $1)",
            s.schema
        )))
        .bind(name)
        .fetch_one(&pool)
        .await
        .unwrap_or((0,));
        if n >= want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "{n} of {want} records stored under {name} after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_topic_that_refilled_past_the_watermark_is_held_then_adopted() {
    let s = Scenario::new("recreated", 2).await;
    // The old incarnation's records, and the new one's: more than the old watermarks.
    let (n_old, n_new) = (sized(3_000, 30_000), sized(3_600, 36_000));
    let scale = n_new / 3_600;
    s.produce(0, n_old, 0.0);
    let mut d = Daemon::start(&s.env());
    s.wait_all_stored(Duration::from_secs(120 * scale)).await;
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(30)), 0);
    let old = stored_under(&s, &s.topic).await;
    assert_eq!((old.0.len(), old.1.len()), (n_old as usize, n_old as usize));
    let watermarks = s.pg_watermarks().await;

    // The nasty version: the new incarnation holds more records than the stored watermark, so
    // no end-offset check can tell it from the old one.
    recreate(&s).await;
    s.produce(100_000, n_new, 0.0);
    let ends = s.end_offsets();
    assert!(
        ends.iter().all(|(p, &e)| e > watermarks[p]),
        "the fault: every partition refilled past its watermark ({ends:?} vs {watermarks:?})"
    );

    let mut d = Daemon::start(&s.env());
    d.wait_for_line(
        "the topic was deleted and recreated, or this is another cluster",
        Duration::from_secs(60),
    );
    let held = stalled_line(&d, &s.topic).await;
    assert!(held.ends_with(" 1"), "{held}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        stored_under(&s, &s.topic).await,
        old,
        "nothing of the new incarnation is stored while it is held"
    );
    let status = command(&s.env(), &["status"]);
    assert!(
        status.contains("topics adopt --topic"),
        "status names the remedy:\n{status}"
    );

    // The documented operator step, while the daemon runs.
    let adopted = Instant::now();
    let out = command(&s.env(), &["topics", "adopt", "--topic", &s.topic]);
    let name = adopted_name(&out);
    assert!(name.starts_with(&format!("{}@", s.topic)), "{out}");
    let started = wait_stored_under(&s, &name, 1, Duration::from_secs(45)).await;
    assert!(
        adopted.elapsed() < Duration::from_secs(45),
        "picked up within the recheck"
    );
    wait_stored_under(&s, &name, n_new as i64, Duration::from_secs(60 * scale)).await;
    let took = adopted.elapsed();
    println!(
        "recreated topic: adopted as {name}, first row {started:?} and all {n_new} {took:?} after `topics adopt`"
    );

    let listing = command(&s.env(), &["topics", "list"]);
    let identities = listing
        .lines()
        .filter(|l| l.starts_with(&format!("{} ", s.topic)));
    assert_eq!(identities.count(), 2, "both identities listed:\n{listing}");
    let status = command(&s.env(), &["status"]);
    assert!(status.contains(&format!("(stored as {name})")), "{status}");

    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(30)), 0);
    // The old incarnation untouched, the new one exactly what Kafka holds, under its name.
    assert_eq!(
        stored_under(&s, &s.topic).await,
        old,
        "the old incarnation is untouched"
    );
    let adopted = Scenario {
        stored_as: Some(name),
        ..s.clone()
    };
    let kafka = adopted.read_back(&ends);
    adopted
        .verify_against(kafka, &Expectation::default())
        .await
        .assert_exact("recreated topic, new incarnation");
    s.cleanup().await;
}

const CLUSTER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/infra/kafka-cluster.sh");

/// Stops the second cluster when the test ends, passed or not.
struct ClusterGuard;
impl Drop for ClusterGuard {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(CLUSTER).arg("down").status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_clusters_topic_of_the_same_name_is_not_mixed() {
    let s = Scenario::new("twocluster", 1).await;
    let (n_first, n_second) = (sized(2_000, 20_000), sized(2_500, 25_000));
    let scale = n_second / 2_500;
    s.produce(0, n_first, 0.0);
    let mut d = Daemon::start(&s.env());
    s.wait_all_stored(Duration::from_secs(120 * scale)).await;
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(30)), 0);
    let old = stored_under(&s, &s.topic).await;
    assert_eq!(old.0.len(), n_first as usize);

    // A second cluster (its own cluster id) with a topic of the same name and more records.
    let _guard = ClusterGuard;
    let up = Command::new("bash")
        .arg(CLUSTER)
        .arg("up")
        .output()
        .unwrap();
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let env_out = Command::new("bash")
        .arg(CLUSTER)
        .arg("env")
        .output()
        .unwrap();
    let other = String::from_utf8_lossy(&env_out.stdout)
        .trim()
        .strip_prefix("export KAFKA_CLUSTER_BROKERS=")
        .expect("brokers from kafka-cluster.sh env")
        .to_string();
    let topic = NewTopic::new(&s.topic, 1, TopicReplication::Fixed(3));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in admin(&other).create_topics([&topic], &opts).await.unwrap() {
        r.unwrap_or_else(|(t, e)| panic!("create {t}: {e}"));
    }
    let producer: BaseProducer = producer_config()
        .set("bootstrap.servers", &other)
        .create()
        .unwrap();
    for seq in 200_000..200_000 + n_second {
        send_generated(&producer, &s.topic, seq, 0.0);
    }
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(60)).expect("flush");
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &other)
        .create()
        .unwrap();
    let (_, end) = probe
        .fetch_watermarks(&s.topic, 0, Duration::from_secs(10))
        .unwrap();
    assert_eq!(
        end, n_second as i64,
        "the fault: more records than the stored watermark"
    );

    let env = with(&s.env(), &[("LP_KAFKA_BROKERS", other.clone())]);
    let mut d = Daemon::start(&env);
    d.wait_for_line("or this is another cluster", Duration::from_secs(90));
    assert!(stalled_line(&d, &s.topic).await.ends_with(" 1"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        stored_under(&s, &s.topic).await,
        old,
        "nothing mixed in while held"
    );

    let name = format!("{}-cluster-b", s.topic);
    let out = command(
        &env,
        &["topics", "adopt", "--topic", &s.topic, "--as", &name],
    );
    assert_eq!(adopted_name(&out), name);
    let took = wait_stored_under(&s, &name, n_second as i64, Duration::from_secs(60 * scale)).await;
    println!("second cluster: adopted as {name}, stored {took:?} after `topics adopt`");
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(30)), 0);

    assert_eq!(
        stored_under(&s, &s.topic).await,
        old,
        "the first cluster's records untouched"
    );
    let second = Scenario {
        stored_as: Some(name),
        ..s.clone()
    };
    let kafka = read_topic_from(&other, &s.topic, &BTreeMap::from([(0, end)]));
    second
        .verify_against(kafka, &Expectation::default())
        .await
        .assert_exact("second cluster's topic of the same name");
    s.cleanup().await;
}
