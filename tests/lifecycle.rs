//! Index lifecycle (`LP_ES_LIFECYCLE`) and rollover, against the real services: a data stream
//! rolled over between the search-store write and the PostgreSQL commit, then the daemon
//! SIGKILLed, leaves exactly one document per record; lifecycle specs the daemon must refuse.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// The data streams whose names start with `prefix`, from `_resolve/index` (which both stores
/// and Elasticsearch's minimal distribution serve; `_data_stream` is absent from the latter).
async fn data_streams(prefix: &str) -> Vec<String> {
    let url = format!("{}/_resolve/index/{prefix}*", elasticsearch_url());
    let (status, text) = http("GET", &url, None).await;
    assert_eq!(status, 200, "resolve {prefix}*: {text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    let streams = v["data_streams"].as_array().cloned().unwrap_or_default();
    streams
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_string())
        .collect()
}

/// The backing indices holding the scenario's documents.
async fn backing_indices(s: &Scenario) -> BTreeSet<String> {
    let mut indices = BTreeSet::new();
    common::verify::es_hits(&format!("{}-*", s.index), |h| {
        indices.insert(h["_index"].as_str().unwrap().to_string());
    })
    .await;
    indices
}

/// Issue 26's window: a batch indexed into a data stream's write index, the stream rolled over
/// before the batch's PostgreSQL commit, the daemon SIGKILLed. The replay must not write the
/// batch's records again into the new write index (a `create` there answers 201, not 409).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollover_between_the_bulk_and_the_commit_leaves_one_document_per_record() {
    let s = Scenario::new("rollover", 2).await;
    let env = with(
        &s.env(),
        &[
            ("LP_ES_DATA_STREAM", "true".into()),
            ("LP_BATCH_MAX_RECORDS", "500".into()),
        ],
    );
    s.produce(0, 3_000, 0.01);

    let paused = with(&env, &[("LP_FAILPOINTS", "after_es_bulk=1".into())]);
    let mut d = Daemon::start(&paused);
    d.wait_for_line("failpoint reached", Duration::from_secs(60));
    // Let every partition's first batch reach the pause (one worker each).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rows, _) = s.pg_counts().await;
    let before = backing_indices(&s).await;
    let written: u64 = {
        let mut n = 0;
        common::verify::es_hits(&format!("{}-*", s.index), |_| n += 1).await;
        n
    };
    // The fault: documents in the store, none of their rows committed.
    assert!(
        written > 0 && rows == 0,
        "documents {written} written, rows {rows} committed"
    );
    let streams = data_streams(&s.index).await;
    assert!(!streams.is_empty(), "no data stream of {}", s.index);
    for stream in &streams {
        let url = format!("{}/{stream}/_rollover", elasticsearch_url());
        let (status, text) = http("POST", &url, None).await;
        assert_eq!(status, 200, "rollover {stream}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["rolled_over"], true, "rollover {stream}: {text}");
        println!(
            "lifecycle: rolled over {stream}: {} -> {}",
            v["old_index"], v["new_index"]
        );
    }
    d.kill();

    let mut d = Daemon::start(&env);
    s.wait_all_stored(Duration::from_secs(120)).await;
    // The replay found the paused batches' documents and did not send them again.
    assert!(
        d.has_line("not sent again"),
        "no replayed documents found; log:\n{}",
        d.tail(30)
    );
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(30)), 0, "log:\n{}", d.tail(30));
    let verdict = s.verify().await;
    verdict.assert_exact("rollover between bulk and commit");
    let after = backing_indices(&s).await;
    // The replay went on writing, into the new write indices: the rollover was in its way.
    assert!(
        after.iter().any(|i| !before.contains(i)),
        "no document in a backing index created by the rollover: before {before:?}, after {after:?}"
    );
    println!(
        "lifecycle: paused documents={written} rows=0; backing indices before {before:?} after {after:?}"
    );
    s.cleanup().await;
}

/// Sets the topic's `retention.ms` and `segment.ms` (its replay window is their sum).
async fn set_retention(s: &Scenario, retention_ms: u64, segment_ms: u64) {
    use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .create()
        .expect("admin client");
    let (r, seg) = (retention_ms.to_string(), segment_ms.to_string());
    let config = AlterConfig::new(ResourceSpecifier::Topic(&s.topic))
        .set("retention.ms", &r)
        .set("segment.ms", &seg);
    let answers = admin
        .alter_configs([&config], &AdminOptions::new())
        .await
        .expect("alter configs");
    for a in answers {
        a.unwrap_or_else(|(t, e)| panic!("alter {t:?}: {e}"));
    }
}

/// Runs the daemon until it exits (it must, within 60 s): its code and log.
fn run_to_exit(env: &[(String, String)]) -> (i32, String) {
    let mut d = Daemon::start(env);
    let code = d.wait(Duration::from_secs(60));
    (code, d.tail(40))
}

/// Which lifecycle API the store at `base` serves, asked independently of the daemon:
/// `(path, answer)` of the policy's read, `None` when no module serves it.
async fn lifecycle_api(base: &str) -> (bool, String) {
    let (status, root) = http("GET", &format!("{base}/_nodes/_local"), None).await;
    assert_eq!(status, 200, "node info: {root}");
    let path = match root.contains("\"opensearch") || root.contains("org.opensearch") {
        true => "/_plugins/_ism/policies/log-processor",
        false => "/_ilm/policy/log-processor",
    };
    let (status, text) = http("GET", &format!("{base}{path}"), None).await;
    let missing = status == 400 && text.contains("no handler found");
    println!("lifecycle: GET {path}: HTTP {status}: {text}");
    (!missing, text)
}

/// The replay window rule: a delete age the topic's records can outlive is refused, naming
/// the setting and the topic's retention; one beyond it passes the check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_age_within_the_topics_replay_window_is_refused() {
    let s = Scenario::new("lifecycle_window", 1).await;
    // Three days of retention and one-hour segments: readable for up to 3 d 1 h.
    set_retention(&s, 3 * 86_400_000, 3_600_000).await;
    let env = with(&s.env(), &[("LP_ES_LIFECYCLE", "warm=1d,delete=3d".into())]);
    let (code, log) = run_to_exit(&env);
    assert_ne!(
        code, 0,
        "started with a delete age inside the replay window:\n{log}"
    );
    let expected = format!(
        "LP_ES_LIFECYCLE: delete=3.00d must exceed the replay window of topic {}: retention.ms=259200000 (3.00d) plus segment.ms=3600000 (0.04d) = 3.04d",
        s.topic
    );
    assert!(
        log.contains(&expected),
        "no refusal {expected:?} in:\n{log}"
    );
    println!("lifecycle: refused (exit {code}): {expected}");

    // A day more passes the check: what follows depends on the store's lifecycle API.
    let env = with(&s.env(), &[("LP_ES_LIFECYCLE", "warm=1d,delete=4d".into())]);
    let (served, _) = lifecycle_api(&elasticsearch_url()).await;
    let mut d = Daemon::start(&env);
    if served {
        d.wait_for_line("index lifecycle policy installed", Duration::from_secs(60));
        d.signal("TERM");
        assert_eq!(d.wait(Duration::from_secs(30)), 0, "log:\n{}", d.tail(30));
        let (_, text) = lifecycle_api(&elasticsearch_url()).await;
        assert!(
            text.contains("345600s"),
            "the policy read back has no 4-day delete: {text}"
        );
    } else {
        let code = d.wait(Duration::from_secs(60));
        let log = d.tail(40);
        assert_ne!(code, 0, "started without the lifecycle API:\n{log}");
        assert!(
            log.contains("LP_ES_LIFECYCLE is set but") && log.contains("no handler found"),
            "no refusal naming the missing API in:\n{log}"
        );
        assert!(!log.contains("must exceed the replay window"), "{log}");
        let line = log
            .lines()
            .find(|l| l.contains("LP_ES_LIFECYCLE is set but"))
            .unwrap();
        println!("lifecycle: refused (exit {code}): {}", strip_ansi(line));
    }
    s.cleanup().await;
}

/// Date-named indices are written by name: a rollover there is refused at start-up, and so
/// is a data stream without one (its write index could never be deleted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollover_is_refused_outside_data_stream_mode_and_required_inside() {
    let s = Scenario::new("lifecycle_mode", 1).await;
    for (data_stream, spec, needle) in [
        (
            "false",
            "rollover=1gb/1d,delete=30d",
            "rollover needs LP_ES_DATA_STREAM=true",
        ),
        ("true", "delete=30d", "declare rollover=SIZE/AGE"),
        ("false", "delete=30", "is not an age"),
    ] {
        let env = with(
            &s.env(),
            &[
                ("LP_ES_LIFECYCLE", spec.into()),
                ("LP_ES_DATA_STREAM", data_stream.into()),
            ],
        );
        let (code, log) = run_to_exit(&env);
        assert_eq!(
            code, 2,
            "LP_ES_LIFECYCLE={spec} data stream {data_stream}:\n{log}"
        );
        assert!(
            log.contains("LP_ES_LIFECYCLE") && log.contains(needle),
            "{spec}: {log}"
        );
    }
    s.cleanup().await;
}
