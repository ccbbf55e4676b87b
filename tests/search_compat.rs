//! What differs between search stores (Elasticsearch 8/9, OpenSearch 2/3), against whichever
//! store the infra runs (`LP_TEST_SEARCH`, see tests/infra/search-dist.sh): the version the
//! daemon detects, its index template beside a built-in `logs-*-*` template, and data-stream
//! mode across a replay.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// What the store reports about itself, read independently of the daemon.
async fn store_version() -> (bool, String) {
    let (status, text) = http(
        "GET",
        &format!("{}/_nodes/_local", elasticsearch_url()),
        None,
    )
    .await;
    assert_eq!(status, 200, "node info: {text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    let node = v["nodes"].as_object().unwrap().values().next().unwrap();
    // OpenSearch nodes list `opensearch` among their modules' or build's names.
    let (status, root) = http("GET", &format!("{}/", elasticsearch_url()), None).await;
    let opensearch = status == 200 && root.contains("\"opensearch\"");
    (opensearch, node["version"].as_str().unwrap().to_string())
}

async fn wait_committed(s: &Scenario, timeout: Duration) {
    let start = Instant::now();
    let ends = s.end_offsets();
    while s.committed() != ends {
        assert!(
            start.elapsed() < timeout,
            "committed {:?} never reached {ends:?}",
            s.committed()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn stop(d: &mut Daemon) {
    d.signal("TERM");
    assert_eq!(
        d.wait(Duration::from_secs(30)),
        0,
        "clean exit; log:\n{}",
        d.tail(30)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_detects_the_store_and_its_version() {
    let s = Scenario::new("detect", 1).await;
    s.produce(0, 100, 0.0);
    // Not the stores' default (1s): the index must carry the daemon's own setting.
    let mut d = Daemon::start(&with(&s.env(), &[("LP_ES_REFRESH_MS", "250".into())]));
    s.wait_all_stored(Duration::from_secs(60)).await;
    stop(&mut d);
    let (opensearch, version) = store_version().await;
    let product = if opensearch {
        "opensearch"
    } else {
        "elasticsearch"
    };
    let line = d
        .lines
        .lock()
        .unwrap()
        .iter()
        .map(|(_, l)| strip_ansi(l))
        .find(|l| l.contains("search store detected"))
        .unwrap_or_else(|| panic!("no detection line; log:\n{}", d.tail(30)));
    assert!(
        line.contains(&format!("{product} {version}")),
        "store is {product} {version}; the daemon logged: {line}"
    );
    println!("compat: detected {product} {version}");
    let (status, text) = http(
        "GET",
        &format!(
            "{}/{}-*/_settings/index.refresh_interval",
            elasticsearch_url(),
            s.index
        ),
        None,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("\"refresh_interval\":\"250ms\""),
        "LP_ES_REFRESH_MS=250 reaches the index: {text}"
    );
    s.cleanup().await;
}

/// Elasticsearch ships `logs-*-*` at priority 100 and refuses a second template whose
/// patterns overlap at the same priority. The daemon's default priority must not collide:
/// shown against a template of that shape (created here when the store lacks it), first
/// provoking the refusal with priority 100, then running with the default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_template_does_not_collide_with_a_builtin_logs_template() {
    let base = elasticsearch_url();
    let (status, text) = http("GET", &format!("{base}/_index_template"), None).await;
    assert_eq!(status, 200, "{text}");
    let templates: Value = serde_json::from_str(&text).unwrap();
    let builtin = templates["index_templates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| {
            t["index_template"]["index_patterns"]
                .as_array()
                .is_some_and(|p| p.contains(&json!("logs-*-*")))
        })
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_string(),
                t["index_template"]["priority"].clone(),
            )
        });
    match &builtin {
        Some((name, priority)) => {
            println!("compat: built-in template {name} logs-*-* priority {priority}")
        }
        None => {
            let (status, text) = http(
                "PUT",
                &format!("{base}/_index_template/logs-builtin-shape"),
                Some(
                    json!({"index_patterns": ["logs-*-*"], "priority": 100, "data_stream": {}})
                        .to_string(),
                ),
            )
            .await;
            assert_eq!(status, 200, "create a logs-*-* template: {text}");
            println!("compat: created logs-builtin-shape logs-*-* priority 100");
        }
    }

    let mut s = Scenario::new("builtin", 2).await;
    // Records go to `logs-<id>-YYYY.MM.DD`: inside `logs-*-*`.
    s.index = format!("logs-{}", s.index.trim_start_matches("i-"));
    let env = with(
        &s.env(),
        &[("LP_ES_INDEX", format!("{}-%Y.%m.%d", s.index))],
    );

    // At the built-in priority the template is refused and start-up stops, naming the setting.
    let mut d = Daemon::start(&with(&env, &[("LP_ES_TEMPLATE_PRIORITY", "100".into())]));
    let code = d.wait(Duration::from_secs(60));
    assert_ne!(
        code,
        0,
        "a colliding template must stop the start-up; log:\n{}",
        d.tail(20)
    );
    let log = d.tail(20);
    assert!(
        log.contains("same priority") && log.contains("LP_ES_TEMPLATE_PRIORITY"),
        "the refusal names the setting:\n{log}"
    );

    // The default priority passes, and the template (not the built-in one) shapes the index.
    s.produce(0, 2_000, 0.01);
    let mut d = Daemon::start(&env);
    s.wait_all_stored(Duration::from_secs(120)).await;
    wait_committed(&s, Duration::from_secs(30)).await;
    stop(&mut d);
    let v = s.verify().await;
    v.assert_exact("beside logs-*-*");
    let mut indices = BTreeSet::new();
    common::verify::es_hits(&format!("{}-*", s.index), |h| {
        indices.insert(h["_index"].as_str().unwrap().to_string());
    })
    .await;
    assert!(
        indices.iter().all(|i| i.starts_with(&s.index)),
        "plain indices, not the built-in template's data streams: {indices:?}"
    );
    let (status, text) = http(
        "GET",
        &format!("{base}/{}-*/_mapping/field/kafka.offset", s.index),
        None,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("\"long\""),
        "the daemon's mapping applies: {text}"
    );
    println!("compat: template beside logs-*-*: indices {indices:?}");
    if builtin.is_none() {
        http(
            "DELETE",
            &format!("{base}/_index_template/logs-builtin-shape"),
            None,
        )
        .await;
    }
    s.cleanup().await;
}

/// Data-stream mode: documents land in a data stream's backing indices, and a replay from
/// the beginning (every document answered 409) leaves exactly one of each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_stream_mode_replays_without_duplicates() {
    let s = Scenario::new("datastream", 3).await;
    let env = with(&s.env(), &[("LP_ES_DATA_STREAM", "true".into())]);
    s.produce(0, 5_000, 0.01);
    let mut d = Daemon::start(&env);
    s.wait_all_stored(Duration::from_secs(120)).await;
    wait_committed(&s, Duration::from_secs(30)).await;
    stop(&mut d);
    let first = s.verify().await;
    first.assert_exact("data stream, first pass");

    s.reset_group_offsets();
    let pool = s.pg().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM {}.consumer_offsets",
        s.schema
    )))
    .execute(&pool)
    .await
    .unwrap();
    let mut d = Daemon::start(&env);
    wait_committed(&s, Duration::from_secs(120)).await;
    stop(&mut d);
    let second = s.verify().await;
    second.assert_exact("data stream, replay");
    assert_eq!(
        (second.stored, second.indexed, second.dead_lettered),
        (first.stored, first.indexed, first.dead_lettered)
    );
    let mut indices = BTreeSet::new();
    common::verify::es_hits(&format!("{}-*", s.index), |h| {
        indices.insert(h["_index"].as_str().unwrap().to_string());
    })
    .await;
    assert!(
        !indices.is_empty() && indices.iter().all(|i| i.starts_with(".ds-")),
        "documents in data streams' backing indices: {indices:?}"
    );
    println!(
        "compat: data stream mode: {} records indexed once across a replay, backing indices {indices:?}",
        second.indexed
    );
    s.cleanup().await;
}
