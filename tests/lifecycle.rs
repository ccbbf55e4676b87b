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
