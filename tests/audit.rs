//! `log-processor audit` against the real binary and services: divergence made by hand on a
//! consumed topic is reported exactly, offset by offset and kind by kind; `--repair` mends it
//! while the daemon keeps consuming, after which the audit is clean and every record is read
//! back from Kafka against its row and its document; records gone from Kafka and from both
//! stores are reported as lost; and the daemon's sampled check counts a divergence within its
//! interval.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::chaos_kit::metric;
use common::*;
use serde_json::{Value, json};

type Offsets = BTreeSet<(i32, i64)>;

/// The offsets of each kind an `audit --json` reported, and the lost ones.
fn found(report: &Value) -> BTreeMap<String, Offsets> {
    let mut out: BTreeMap<String, Offsets> = BTreeMap::new();
    for p in report["partitions"].as_array().expect("partitions") {
        let partition = p["partition"].as_i64().unwrap() as i32;
        let kinds = p["found"].as_object().unwrap().iter();
        let lost = std::iter::once(("lost".to_string(), &p["lost"]));
        for (kind, spans) in kinds.map(|(k, v)| (k.clone(), v)).chain(lost) {
            for s in spans["spans"].as_array().unwrap() {
                let (a, b) = (s["from"].as_i64().unwrap(), s["to"].as_i64().unwrap());
                let set = out.entry(kind.clone()).or_default();
                set.extend((a..b).map(|o| (partition, o)));
            }
        }
    }
    out.retain(|_, v| !v.is_empty());
    out
}

async fn offsets(s: &Scenario, table: &str) -> Vec<(i32, i64)> {
    let q = format!(
        "SELECT kafka_partition, kafka_offset FROM {}.{table} ORDER BY 1, 2",
        s.schema
    );
    sqlx::query_as(sqlx::AssertSqlSafe(q))
        .fetch_all(&s.pg().await)
        .await
        .unwrap()
}

/// Every document of the scenario's indices by id: (index, source).
async fn documents(s: &Scenario) -> BTreeMap<String, (String, Value)> {
    let mut out = BTreeMap::new();
    verify::es_hits(&format!("{}-*", s.index), |h| {
        let id = h["_id"].as_str().unwrap().to_string();
        let index = h["_index"].as_str().unwrap().to_string();
        out.insert(id, (index, h["_source"].clone()));
    })
    .await;
    out
}

fn id(s: &Scenario, (p, o): (i32, i64)) -> String {
    format!("{}-{p}-{o}", s.topic)
}

/// One `_bulk` request of `lines` holding `items` actions; every one must succeed (the fault
/// happened).
async fn bulk(lines: &[Value], items: usize) -> Value {
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let (status, text) = http(
        "POST",
        &format!("{}/_bulk?refresh=true", elasticsearch_url()),
        Some(body),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["errors"], false, "every change made by hand: {text}");
    assert_eq!(answer["items"].as_array().unwrap().len(), items);
    answer
}

/// Deletes the documents of these offsets (the search store here has no `_delete_by_query`:
/// the integration-test build leaves out the reindex module). Each must have existed.
async fn delete_documents(s: &Scenario, which: &Offsets) {
    let docs = documents(s).await;
    let deletes: Vec<Value> = (which.iter())
        .map(|&o| json!({ "delete": { "_index": docs[&id(s, o)].0, "_id": id(s, o) } }))
        .collect();
    let answer = bulk(&deletes, which.len()).await;
    let mut items = answer["items"].as_array().unwrap().iter();
    assert!(
        items.all(|i| i["delete"]["result"] == "deleted"),
        "{answer}"
    );
}

async fn delete_rows(s: &Scenario, which: &Offsets) -> u64 {
    let list: Vec<String> = which.iter().map(|(p, o)| format!("({p},{o})")).collect();
    let q = format!(
        "DELETE FROM {}.log_records WHERE (kafka_partition, kafka_offset) IN ({})",
        s.schema,
        list.join(",")
    );
    sqlx::query(sqlx::AssertSqlSafe(q))
        .execute(&s.pg().await)
        .await
        .unwrap()
        .rows_affected()
}

fn audit(env: &[(String, String)], args: &[&str]) -> (i32, Value, String) {
    let mut all = vec!["audit", "--json"];
    all.extend_from_slice(args);
    let (code, out, err) = lp(env, &all);
    let report = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("audit {args:?} (exit {code}): {e}: {out}\n{err}"));
    (code, report, err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn divergence_made_by_hand_is_reported_exactly_and_repaired_while_the_daemon_runs() {
    let s = Scenario::new("audit", 2).await;
    let bad = s.produce(0, 1400, 0.05);
    assert!(bad >= 20, "dead letters to put orphan documents on: {bad}");
    let env = s.env();
    process_all(&s, &env).await;
    let (code, report, _) = audit(&env, &[]);
    assert_eq!(code, 0, "a consumed topic audits clean: {report}");
    assert_eq!(found(&report), BTreeMap::new());

    // Disjoint sets of stored rows, the first row of each partition left alone (where the
    // audit starts by default).
    let rows = offsets(&s, "log_records").await;
    let mut seen = BTreeSet::new();
    let candidates: Vec<(i32, i64)> = rows.into_iter().filter(|(p, _)| !seen.insert(*p)).collect();
    let pick = |class: usize, n: usize| -> Offsets {
        (candidates.iter().enumerate())
            .filter(|(i, _)| i % 7 == class)
            .map(|(_, &o)| o)
            .take(n)
            .collect()
    };
    let (no_doc, no_row, altered, copied) = (pick(0, 100), pick(1, 50), pick(2, 10), pick(3, 5));
    assert_eq!(
        (no_doc.len(), no_row.len(), altered.len(), copied.len()),
        (100, 50, 10, 5)
    );
    let orphaned: Offsets = offsets(&s, "dead_letters")
        .await
        .into_iter()
        .take(20)
        .collect();
    assert_eq!(orphaned.len(), 20);
    let docs = documents(&s).await;
    delete_documents(&s, &no_doc).await;
    assert_eq!(delete_rows(&s, &no_row).await, 50);
    let mut lines = Vec::new();
    for &o in &altered {
        let (index, _) = &docs[&id(&s, o)];
        lines.push(json!({ "update": { "_index": index, "_id": id(&s, o) } }));
        lines.push(json!({ "doc": { "message": "altered by hand" } }));
    }
    for &o in &copied {
        let (_, source) = &docs[&id(&s, o)];
        let index = format!("{}-1999.01.01", s.index);
        lines.push(json!({ "index": { "_index": index, "_id": id(&s, o) } }));
        lines.push(source.clone());
    }
    for &(p, o) in &orphaned {
        let index = format!("{}-1999.01.02", s.index);
        lines.push(json!({ "index": { "_index": index, "_id": id(&s, (p, o)) } }));
        lines.push(
            json!({ "@timestamp": "1999-01-02T00:00:00Z", "message": "orphan",
            "kafka": { "topic": s.topic, "partition": p, "offset": o } }),
        );
    }
    bulk(&lines, lines.len() / 2).await;

    let (code, report, _) = audit(&env, &[]);
    assert_eq!(code, 3, "divergence found: {report}");
    let expected: BTreeMap<String, Offsets> = [
        ("row_without_document", no_doc.clone()),
        ("unaccounted", no_row.clone()),
        (
            "document_without_row",
            no_row.union(&orphaned).copied().collect(),
        ),
        ("document_mismatch", altered.clone()),
        ("duplicate_document", copied.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(
        found(&report),
        expected,
        "exactly the offsets made, by kind"
    );
    let (_, text, _) = lp(&env, &["audit"]);
    println!("{text}");

    // Repaired while the daemon consumes more.
    s.produce(1400, 600, 0.05);
    let mut d = Daemon::start(&env);
    let (code, report, err) = audit(&env, &["--repair"]);
    assert_eq!(code, 0, "all of it repairable: {report}\n{err}");
    let repaired = &report["repair"]["repaired"];
    assert_eq!(
        repaired,
        &json!({ "unaccounted": 50, "row_without_document": 100, "document_without_row": 70,
                 "duplicate_document": 5, "document_mismatch": 10 }),
        "{report}"
    );
    assert_eq!(report["repair"]["unrepaired"], json!({}));
    s.wait_all_stored(Duration::from_secs(120)).await;
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(40)), 0, "{}", d.tail(30));
    let (code, report, _) = audit(&env, &[]);
    assert_eq!(code, 0, "clean after the repair: {report}");
    assert_eq!(found(&report), BTreeMap::new());
    // Against the source: every record of the topic is its row and its document, once.
    s.verify().await.assert_exact("audit repaired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_gone_from_kafka_and_both_stores_are_reported_as_lost() {
    let s = Scenario::new("audit_lost", 1).await;
    s.produce(0, 300, 0.0);
    let env = s.env();
    process_all(&s, &env).await;
    let lost: Offsets = (20..30).map(|o| (0, o)).collect();
    let gone_from_es: Offsets = (60..64).map(|o| (0, o)).collect();
    assert_eq!(delete_rows(&s, &lost).await, 10);
    delete_documents(&s, &lost.union(&gone_from_es).copied().collect()).await;
    delete_records_below(&s, 100).await;

    let (code, report, _) = audit(&env, &[]);
    assert_eq!(code, 3, "{report}");
    assert_eq!(report["partitions"][0]["log_start"], 100);
    let expected: BTreeMap<String, Offsets> = [
        ("unaccounted", lost.clone()),
        ("lost", lost.clone()),
        ("row_without_document", gone_from_es.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(found(&report), expected);

    let (code, report, _) = audit(&env, &["--repair"]);
    assert_eq!(code, 3, "losses cannot be repaired: {report}");
    assert_eq!(
        report["repair"]["repaired"],
        json!({ "row_without_document": 4 })
    );
    assert_eq!(report["repair"]["unrepaired"], json!({ "unaccounted": 10 }));
    let notes = report["repair"]["notes"].as_array().unwrap();
    for o in 20..30 {
        let named = notes.iter().any(|n| {
            let n = n.as_str().unwrap();
            n.starts_with(&format!("unaccounted@{o}:")) && n.contains("lost")
        });
        assert!(named, "offset {o} named as lost: {notes:?}");
    }
    let (code, report, _) = audit(&env, &[]);
    assert_eq!(code, 3);
    let left = found(&report);
    assert_eq!(
        left.keys().collect::<Vec<_>>(),
        ["lost", "unaccounted"],
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sampled_check_counts_a_divergence_within_its_interval() {
    let s = Scenario::new("audit_sample", 1).await;
    s.produce(0, 300, 0.0);
    let env = with(
        &s.env(),
        &[
            ("LP_AUDIT_INTERVAL_MS", "1000".into()),
            ("LP_AUDIT_SAMPLE", "100".into()),
        ],
    );
    let mut d = Daemon::start(&env);
    s.wait_all_stored(Duration::from_secs(90)).await;
    let name = "log_processor_divergence_total{kind=\"row_without_document\"}";
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(metric(&d, name).await, 0.0, "nothing diverges yet");
    assert!(metric(&d, "log_processor_audited_offsets_total").await >= 100.0);
    delete_documents(&s, &(250..257).map(|o| (0, o)).collect()).await;
    let made = Instant::now();
    // One interval, the recheck 3 s later, and the time a round takes.
    let bound = Duration::from_secs(1 + 3 + 6);
    loop {
        let n = metric(&d, name).await;
        if n >= 7.0 {
            assert_eq!(n, 7.0, "each counted once per round");
            break;
        }
        assert!(
            made.elapsed() < bound,
            "not counted within {bound:?}: {}",
            d.tail(20)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "sampled check counted 7 divergences {:?} after they were made",
        made.elapsed()
    );
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(40)), 0, "{}", d.tail(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_outside_the_daemons_indices_is_found_by_its_id() {
    // What `parked reroute` does: a record's document lives in an index LP_ES_INDEX does not
    // name. Its row is not one without a document.
    let s = Scenario::new("audit_elsewhere", 1).await;
    s.produce(0, 100, 0.0);
    let env = s.env();
    process_all(&s, &env).await;
    let moved: Offsets = (40..45).map(|o| (0, o)).collect();
    let docs = documents(&s).await;
    let elsewhere = format!("q{}", s.index);
    let mut lines = Vec::new();
    for &o in &moved {
        let (_, source) = &docs[&id(&s, o)];
        lines.push(json!({ "index": { "_index": elsewhere, "_id": id(&s, o) } }));
        lines.push(source.clone());
    }
    bulk(&lines, moved.len()).await;
    delete_documents(&s, &moved).await;
    let (code, report, _) = audit(&env, &[]);
    assert_eq!(code, 0, "found where they are: {report}");
    assert_eq!(report["partitions"][0]["documents_read"], 100);
    let (status, text) = http(
        "DELETE",
        &format!("{}/{elsewhere}", elasticsearch_url()),
        None,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let (code, report, _) = audit(&env, &[]);
    assert_eq!(code, 3, "and missing once they are gone: {report}");
    assert_eq!(
        found(&report),
        [("row_without_document".to_string(), moved)]
            .into_iter()
            .collect()
    );
}
