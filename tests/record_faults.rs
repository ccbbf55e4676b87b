//! A record whose row PostgreSQL refuses for its own content, after the search store took its
//! document: it becomes a dead letter with its raw bytes, and its document is removed, so no
//! document exists without its row. Against the real daemon and services.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_postgresql_refuses_is_dead_lettered_and_its_document_removed() {
    refused_row("record_fault", &[]).await;
}

/// The same in data-stream mode, where a document is removed by query, not by id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_data_stream_mode_too() {
    refused_row("record_fault_ds", &[("LP_ES_DATA_STREAM", "true".into())]).await;
}

async fn refused_row(name: &str, settings: &[(&str, String)]) {
    let s = Scenario::new(name, 1).await;
    // The first record maps `fields.n` as text, so the search store takes the third record's
    // number as text; PostgreSQL's jsonb cannot hold it ("value overflows numeric format").
    let refused = br#"{"message":"overflow","n":1e200000}"#.to_vec();
    let records: Vec<(Option<Vec<u8>>, Vec<u8>)> = vec![
        (None, br#"{"message":"first","n":"text"}"#.to_vec()),
        (None, br#"{"message":"second","n":"more"}"#.to_vec()),
        (None, refused.clone()),
        (None, br#"{"message":"fourth","n":"last"}"#.to_vec()),
    ];
    // One batch for all four: linger long enough that they travel together.
    s.produce_raw(&records);
    let env = with(&s.env(), &[("LP_BATCH_LINGER_MS", "1000".into())]);
    let mut d = Daemon::start(&with(&env, settings));
    s.wait_all_stored(Duration::from_secs(60)).await;
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(30)), 0, "{}", d.tail(20));
    assert!(
        d.has_line("bisecting the batch"),
        "the fault: PostgreSQL refused the batch\n{}",
        d.tail(20)
    );

    let pool = s.pg().await;
    let rows: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT kafka_offset FROM {}.log_records ORDER BY 1",
        s.schema
    )))
    .fetch_all(&pool)
    .await
    .unwrap();
    let dead: Vec<(i64, String, Vec<u8>, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT kafka_offset, stage, payload, reason FROM {}.dead_letters",
        s.schema
    )))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows, vec![0, 1, 3]);
    assert_eq!(dead.len(), 1, "{dead:?}");
    let (offset, stage, payload, reason) = &dead[0];
    assert_eq!((*offset, stage.as_str()), (2, "store"));
    assert_eq!(payload, &refused, "the raw bytes");
    assert!(reason.contains("numeric"), "{reason}");

    let docs = es_documents(&format!("{}-*", s.index)).await;
    let offsets: BTreeSet<i64> = docs
        .iter()
        .map(|d| d["kafka"]["offset"].as_i64().unwrap())
        .collect();
    assert_eq!(
        offsets,
        BTreeSet::from([0, 1, 3]),
        "no document without its row"
    );
    let mut indices = BTreeSet::new();
    common::verify::es_hits(&format!("{}-*", s.index), |h| {
        indices.insert(h["_index"].as_str().unwrap_or_default().to_string());
    })
    .await;
    let data_stream = settings.contains(&("LP_ES_DATA_STREAM", "true".into()));
    assert!(
        indices.iter().all(|i| i.starts_with(".ds-") == data_stream),
        "documents in {indices:?} (data stream mode {data_stream})"
    );
    println!("record fault: indices {indices:?},");
    println!(
        "record fault: rows {rows:?}, dead letter {offset} at stage {stage} ({reason}), documents {offsets:?}"
    );
    s.cleanup().await;
}

/// A SIGKILL on either side of the commit of a batch with rows PostgreSQL refuses: after their
/// documents were removed but before the commit, and right after the commit (where the
/// removal used to be). No kill may leave a durable offset with a document but no row, and
/// after a clean run the dead letters are exactly the refused records, checked against Kafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_kill_around_the_commit_leaves_a_document_without_its_row() {
    let s = Scenario::new("record_fault_kill", 1).await;
    let bad = [5i64, 37, 38, 90];
    let payload = |i: i64| match (i, bad.contains(&i)) {
        // The first record maps `fields.n` as text, so the search store takes the overflowing
        // numbers; PostgreSQL's jsonb cannot hold them.
        (0, _) => br#"{"message":"first","n":"text"}"#.to_vec(),
        (_, true) => format!(r#"{{"message":"overflow {i}","n":1e200000}}"#).into_bytes(),
        _ => format!(r#"{{"message":"m{i}","n":"v{i}"}}"#).into_bytes(),
    };
    let records: Vec<(Option<Vec<u8>>, Vec<u8>)> = (0..120)
        .map(|i| (Some(format!("r{i}").into_bytes()), payload(i)))
        .collect();
    s.produce_raw(&records);
    let env = with(&s.env(), &[("LP_BATCH_LINGER_MS", "1000".into())]);
    let pool = s.pg().await;
    for point in ["refused_documents_removed", "after_refused_commit"] {
        let mut d = Daemon::start(&with(&env, &[("LP_FAILPOINTS", format!("{point}=1"))]));
        chaos_kit::wait_line_alive(&mut d, "failpoint reached", Duration::from_secs(60)).await;
        assert!(d.has_line(point), "stopped at {point}:\n{}", d.tail(20));
        d.kill();
        assert!(
            d.has_line("bisecting the batch"),
            "the fault: PostgreSQL refused a row\n{}",
            d.tail(20)
        );
        let watermark: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT max(next_offset) FROM {}.consumer_offsets",
            s.schema
        )))
        .fetch_one(&pool)
        .await
        .unwrap();
        let rows: BTreeSet<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT kafka_offset FROM {}.log_records",
            s.schema
        )))
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
        let store_dead: BTreeSet<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT kafka_offset FROM {}.dead_letters WHERE stage = 'store'",
            s.schema
        )))
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
        let docs: BTreeSet<i64> = es_documents(&format!("{}-*", s.index))
            .await
            .iter()
            .map(|d| d["kafka"]["offset"].as_i64().unwrap())
            .collect();
        let durable = watermark.unwrap_or(0);
        let orphans: Vec<i64> = docs
            .iter()
            .copied()
            .filter(|o| *o < durable && !rows.contains(o))
            .collect();
        println!(
            "record fault kill at {point}: watermark {watermark:?}, {} rows, store dead letters {store_dead:?}, {} documents",
            rows.len(),
            docs.len()
        );
        assert_eq!(
            orphans,
            Vec::<i64>::new(),
            "{point}: documents without their rows"
        );
        match point {
            // Killed before the commit: nothing of the batch is durable, its refused documents
            // are gone already.
            "refused_documents_removed" => {
                assert!(durable <= bad[0], "killed before the commit: {watermark:?}");
                assert!(docs.iter().all(|o| !bad.contains(o)), "{docs:?}");
            }
            // Killed after it: the refused records are dead letters, their documents gone.
            _ => {
                assert!(durable > bad[0], "killed after the commit: {watermark:?}");
                let expect: BTreeSet<i64> = bad.iter().copied().filter(|o| *o < durable).collect();
                assert_eq!(store_dead, expect);
            }
        }
    }
    chaos_kit::final_clean_run(&s, &env, "record fault kill").await;
    let expect = Expectation {
        refused_by_store: bad.iter().map(|&i| payload(i)).collect(),
        ..Expectation::default()
    };
    let v = chaos_kit::verify_and_report_with(&s, "record_fault_kill", 2, &expect).await;
    assert_eq!(v.dead_lettered, bad.len() as u64);
    s.cleanup().await;
}

/// Runs the daemon until every record is a row or a dead letter, stops it, and checks that
/// exactly one record was dead-lettered, by the search store, for a reason naming `cause`.
/// Returns how long storing took and that reason.
async fn one_index_dead_letter(
    s: &Scenario,
    env: &[(String, String)],
    cause: &str,
) -> (Duration, String) {
    let started = std::time::Instant::now();
    let mut d = Daemon::start(env);
    s.wait_all_stored(Duration::from_secs(90)).await;
    let took = started.elapsed();
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(30)), 0, "{}", d.tail(20));
    let pool = s.pg().await;
    let dead: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT stage, reason FROM {}.dead_letters",
        s.schema
    )))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0, "index");
    assert!(dead[0].1.contains(cause), "the fault: {}", dead[0].1);
    (took, dead[0].1.clone())
}

/// A value Lucene cannot index (a 40,000-character `level`, a keyword field: one term over
/// 32,766 bytes) is refused the same way every time: a dead letter naming the cause, while
/// every other record of every partition is stored, not held behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_immense_term_is_a_dead_letter_and_nothing_waits_for_it() {
    let s = Scenario::new("immense_term", 3).await;
    s.produce(0, 1_500, 0.0);
    let immense = format!(
        r#"{{"message":"immense","level":"{}"}}"#,
        "x".repeat(40_000)
    )
    .into_bytes();
    s.produce_raw(&[(None, immense.clone())]);
    s.produce(1_500, 1_500, 0.0);
    let (took, _) = one_index_dead_letter(&s, &s.env(), "immense term").await;
    let expect = common::verify::Expectation {
        refused_by_index: vec![immense],
        ..Default::default()
    };
    s.verify_with(&expect).await.assert_exact("immense term");
    println!("immense term: 3,000 other records stored in {took:?} with it in the topic");
    s.cleanup().await;
}

/// A second OpenSearch node beside the suite's, with `http.max_content_length` of 1 MiB:
/// started by the project's script, stopped and wiped when dropped.
struct SmallLimitStore {
    url: String,
}

impl SmallLimitStore {
    const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/infra/opensearch.sh");

    fn script(action: &str) -> std::process::Output {
        std::process::Command::new("bash")
            .args([Self::SCRIPT, action])
            .env("OPENSEARCH_INSTANCE", "opensearch-small-limit")
            .env("OPENSEARCH_PORT", "9210")
            .env("OPENSEARCH_TRANSPORT_PORT", "9310")
            .env("OPENSEARCH_HTTP_MAX_CONTENT_LENGTH", "1mb")
            .env("OPENSEARCH_HEAP", "512m")
            .output()
            .expect("run tests/infra/opensearch.sh")
    }

    fn start() -> SmallLimitStore {
        let out = Self::script("start");
        assert!(
            out.status.success(),
            "the small-limit OpenSearch did not start:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        SmallLimitStore {
            url: "http://127.0.0.1:9210".into(),
        }
    }
}

impl Drop for SmallLimitStore {
    fn drop(&mut self) {
        Self::script("reset");
    }
}

/// A document larger than the search store's `http.max_content_length` is refused (413) alone
/// in its request every time: a dead letter naming the limit, while the requests around it are
/// split until they fit and every other record is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_over_the_stores_request_limit_is_a_dead_letter_naming_the_limit() {
    let store = SmallLimitStore::start();
    let (status, body) = http(
        "GET",
        &format!("{}/_nodes/_local/settings", store.url),
        None,
    )
    .await;
    assert!(
        status == 200 && body.contains(r#""max_content_length":"1mb""#),
        "the node runs with the small limit: {status} {body:.300}"
    );
    let s = Scenario::new("request_limit", 3).await;
    s.produce(0, 1_500, 0.0);
    let over = format!(
        r#"{{"message":"{}","level":"info","service":"big"}}"#,
        "word ".repeat(300_000)
    )
    .into_bytes();
    // The store's own answer to this document alone, so the test knows its fault is real.
    let (status, _) = http(
        "POST",
        &format!("{}/_bulk", store.url),
        Some(format!(
            "{{\"index\":{{\"_index\":\"probe-request-limit\"}}}}\n{}\n",
            String::from_utf8_lossy(&over)
        )),
    )
    .await;
    assert_eq!(status, 413, "a 1.5 MB request to a 1 MiB store");
    s.produce_raw(&[(None, over.clone())]);
    s.produce(1_500, 1_500, 0.0);
    let env = with(&s.env(), &[("LP_ELASTICSEARCH_URL", store.url.clone())]);
    let (took, reason) = one_index_dead_letter(&s, &env, "http.max_content_length").await;
    let expect = common::verify::Expectation {
        refused_by_index: vec![over],
        search_url: Some(store.url.clone()),
        ..Default::default()
    };
    s.verify_with(&expect).await.assert_exact("request limit");
    println!(
        "request limit: 3,000 other records stored in {took:?} with a 1.5 MB record before a 1 MiB limit; dead letter: {reason}"
    );
    s.cleanup().await;
}
