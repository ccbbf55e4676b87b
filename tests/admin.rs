//! The operator commands against the real binary and the real services: `status` compared
//! with what Kafka and PostgreSQL hold (and its two warnings), `dead-letters list` and its
//! filters, and `dead-letters replay` after the cause is fixed: dry run changes nothing, a
//! replay SIGKILLed mid-way and run again stores each record exactly once, and what still
//! fails stays with its new reason. Everything is read back from Kafka and both stores.
//!
//! Needs the `failpoints` feature (the kill window): `cargo test --features failpoints --test admin`.
#![cfg(feature = "failpoints")]

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use common::*;

async fn dead_letters_by_partition(s: &Scenario) -> BTreeMap<i32, i64> {
    let q = format!(
        "SELECT kafka_partition, count(*) FROM {}.dead_letters GROUP BY 1",
        s.schema
    );
    let rows: Vec<(i32, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(q))
        .fetch_all(&s.pg().await)
        .await
        .unwrap();
    rows.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_where_each_partition_stands_and_warns() {
    let s = Scenario::new("status", 2).await;
    s.produce(0, 40, 0.0);
    let bad: Vec<(Option<Vec<u8>>, Vec<u8>)> = (0..3)
        .map(|i| (Some(format!("bad{i}").into_bytes()), b"{not json".to_vec()))
        .collect();
    s.produce_raw(&bad);
    process_all(&s, &s.env()).await;

    let ends = s.end_offsets();
    let committed = s.committed();
    let watermarks = s.pg_watermarks().await;
    let dead = dead_letters_by_partition(&s).await;
    assert_eq!(dead.values().sum::<i64>(), 3);
    let status = json(&s.env(), &["status", "--json"]);
    assert_eq!(status["group"], s.group.as_str());
    let rows = status["partitions"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{status}");
    for row in rows {
        let p = row["partition"].as_i64().unwrap() as i32;
        assert_eq!(row["topic"], s.topic.as_str());
        assert_eq!(row["end_offset"].as_i64(), Some(ends[&p]), "{row}");
        assert_eq!(
            row["committed_offset"].as_i64(),
            committed.get(&p).copied(),
            "{row}"
        );
        assert_eq!(
            row["watermark"].as_i64(),
            watermarks.get(&p).copied(),
            "{row}"
        );
        assert_eq!(
            row["watermark"].as_i64(),
            Some(ends[&p]),
            "caught up: {row}"
        );
        assert_eq!(row["lag"].as_i64(), Some(0), "{row}");
        assert_eq!(
            row["dead_letters"].as_i64(),
            Some(*dead.get(&p).unwrap_or(&0))
        );
        assert_eq!(row["warnings"].as_array().unwrap().len(), 0, "{row}");
    }
    println!("{}", ok(&s.env(), &["status"]));

    // PostgreSQL behind Kafka's commit on partition 0 (a restored database); PostgreSQL
    // beyond the topic's end on partition 1 (a recreated topic).
    let pool = s.pg().await;
    let set = |p: i32, o: i64| {
        let q = format!(
            "UPDATE {}.consumer_offsets SET next_offset = {o} WHERE group_id = $1 AND kafka_partition = {p}",
            s.schema
        );
        let (pool, group) = (pool.clone(), s.group.clone());
        async move {
            let done = sqlx::query(sqlx::AssertSqlSafe(q))
                .bind(group)
                .execute(&pool)
                .await
                .unwrap();
            assert_eq!(done.rows_affected(), 1);
        }
    };
    set(0, ends[&0] - 2).await;
    set(1, ends[&1] + 5).await;
    let status = json(&s.env(), &["status", "--json"]);
    let row = |p: i64| {
        status["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["partition"].as_i64() == Some(p))
            .unwrap()
            .clone()
    };
    let (r0, r1) = (row(0), row(1));
    assert_eq!(r0["lag"].as_i64(), Some(2), "{r0}");
    let w0 = r0["warnings"][0].as_str().unwrap_or_default();
    assert!(w0.contains("is ahead of PostgreSQL's watermark"), "{r0}");
    let w1 = r1["warnings"][0].as_str().unwrap_or_default();
    assert!(w1.contains("below PostgreSQL's watermark"), "{r1}");
    let text = ok(&s.env(), &["status"]);
    assert!(
        text.contains(&format!("warning: {}/0: Kafka's committed offset", s.topic))
            && text.contains(&format!("warning: {}/1: the topic ends at", s.topic))
            && text.contains("warnings=2"),
        "{text}"
    );
    println!("{text}");
    s.cleanup().await;
}

/// A valid record larger than 500 bytes (generated records stay below), dead-lettered under a 500-byte limit.
fn big(i: usize) -> (Option<Vec<u8>>, Vec<u8>) {
    let payload = format!(
        r#"{{"timestamp":"2026-11-30T06:00:00.{i:03}Z","level":"info","message":"big {i}","pad":"{}"}}"#,
        "x".repeat(600)
    );
    (Some(format!("big{i}").into_bytes()), payload.into_bytes())
}

async fn dead_letter_rows(s: &Scenario) -> Vec<(i32, i64, String, String, Option<Vec<u8>>)> {
    let q = format!(
        "SELECT kafka_partition, kafka_offset, stage, reason, payload FROM {}.dead_letters ORDER BY 1, 2",
        s.schema
    );
    sqlx::query_as(sqlx::AssertSqlSafe(q))
        .fetch_all(&s.pg().await)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_and_replayed_exactly_once() {
    let s = Scenario::new("replay", 2).await;
    // 12 valid but too large under the first limit, 2 too large that stay invalid JSON, one
    // invalid UTF-8, and good records.
    let mut records: Vec<(Option<Vec<u8>>, Vec<u8>)> = (0..12).map(big).collect();
    for i in 0..2 {
        let broken = format!(r#"{{"message":"broken {i}","pad":"{}""#, "y".repeat(600));
        records.push((Some(format!("broken{i}").into_bytes()), broken.into_bytes()));
    }
    records.push((Some(b"utf8".to_vec()), b"{\"message\":\"\xff\"}".to_vec()));
    s.produce_raw(&records);
    s.produce(0, 30, 0.0);
    let strict = with(&s.env(), &[("LP_MAX_RECORD_BYTES", "500".into())]);
    process_all(&s, &strict).await;

    // list: counts and filters.
    let all = json(&strict, &["dead-letters", "list", "--json"]);
    assert_eq!(all["total"], 15, "{all}");
    assert_eq!(all["by_stage"]["decode"], 15, "{all}");
    assert_eq!(all["dead_letters"].as_array().unwrap().len(), 15);
    let count = |args: &[&str]| {
        let mut a = vec!["dead-letters", "list", "--json"];
        a.extend_from_slice(args);
        json(&strict, &a)["total"].as_i64().unwrap()
    };
    assert_eq!(count(&["--reason", "EXCEEDS the 500-byte"]), 14);
    assert_eq!(count(&["--reason", "utf-8", "--stage", "decode"]), 1);
    assert_eq!(count(&["--stage", "index"]), 0);
    let by_partition = dead_letters_by_partition(&s).await;
    for p in 0..2 {
        let n = count(&["--partition", &p.to_string()]);
        assert_eq!(n, *by_partition.get(&p).unwrap_or(&0), "partition {p}");
    }
    assert_eq!(count(&["--topic", "no-such-topic"]), 0);
    assert_eq!(count(&["--since", "2999-01-01T00:00:00Z"]), 0);
    assert_eq!(count(&["--until", "2999-01-01T00:00:00Z"]), 15);
    assert_eq!(count(&["--since", "2000-01-01T00:00:00Z"]), 15);
    let (code, _, err) = lp(&strict, &["dead-letters", "list", "--since", "yesterday"]);
    assert_eq!(code, 2, "{err}");
    println!("{}", ok(&strict, &["dead-letters", "list", "--limit", "3"]));

    // The cause fixed: a larger limit. A dry run decodes and changes nothing.
    let fixed = with(&s.env(), &[("LP_MAX_RECORD_BYTES", "100000".into())]);
    let before = (dead_letter_rows(&s).await, s.pg_counts().await);
    let docs_before = es_documents(&format!("{}-*", s.index)).await.len();
    let dry = ok(&fixed, &["dead-letters", "replay", "--dry-run"]);
    assert!(
        dry.contains("selected=15 would_replay=12 still_failing=3 not_replayable=0"),
        "{dry}"
    );
    assert_eq!((dead_letter_rows(&s).await, s.pg_counts().await), before);
    assert_eq!(
        es_documents(&format!("{}-*", s.index)).await.len(),
        docs_before
    );
    println!("{dry}");

    // A replay SIGKILLed mid-way: after its first round is stored, inside a later round whose
    // documents are indexed but whose rows are not.
    let mut cmd = Command::new(binary());
    cmd.args(["dead-letters", "replay", "--chunk-size", "3"]);
    let mut killed = Daemon::start_with(
        &mut cmd,
        &with(&fixed, &[("LP_FAILPOINTS", "redrive_after_index=1".into())]),
    );
    killed.wait_for_line("failpoint reached", Duration::from_secs(60));
    killed.signal("KILL");
    killed.wait(Duration::from_secs(10));
    let (rows_after_kill, dead_after_kill) = s.pg_counts().await;
    assert!(
        rows_after_kill > before.1.0 && dead_after_kill > 3,
        "killed mid-way: rows {rows_after_kill} (were {}), dead letters {dead_after_kill}",
        before.1.0
    );
    let dead_now: Vec<(i32, i64)> = dead_letter_rows(&s)
        .await
        .into_iter()
        .map(|d| (d.0, d.1))
        .collect();
    let docs = es_documents(&format!("{}-*", s.index)).await;
    let orphans = docs
        .iter()
        .filter(|d| {
            let at = (
                d["kafka"]["partition"].as_i64().unwrap() as i32,
                d["kafka"]["offset"].as_i64().unwrap(),
            );
            dead_now.contains(&at)
        })
        .count();
    assert!(
        orphans > 0,
        "the kill fell between indexing and the PostgreSQL transaction"
    );

    // Run again: each record stored once, what still fails stays with its new reason.
    let out = ok(&fixed, &["dead-letters", "replay"]);
    assert!(out.contains("still_failing=3 not_replayable=0"), "{out}");
    println!("after the kill: {out}");
    let left = dead_letter_rows(&s).await;
    assert_eq!(left.len(), 3, "{left:?}");
    let broken: Vec<_> = left
        .iter()
        .filter(|d| d.3.contains("invalid JSON"))
        .collect();
    assert_eq!(broken.len(), 2, "the new reason: {left:?}");
    assert!(
        left.iter().any(|d| d.3.contains("invalid UTF-8")),
        "{left:?}"
    );
    for d in &left {
        let raw = records.iter().find(|r| Some(&r.1) == d.4.as_ref());
        assert!(raw.is_some(), "a dead letter keeps its raw bytes: {d:?}");
    }
    s.verify_with(&Expectation {
        max_record_bytes: 100_000,
        ..Expectation::default()
    })
    .await
    .assert_exact("replay");

    let again = ok(&fixed, &["dead-letters", "replay"]);
    assert!(
        again.contains("selected=3 replayed=0 still_failing=3"),
        "{again}"
    );
    s.cleanup().await;
}

/// A dead letter sealed (aes-256-gcm) under redaction keeps that protection on replay: replayed
/// with the key but without the redaction settings, replay refuses, names what is missing,
/// exits non-zero and writes nothing; with the settings it stores the record redacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_dead_letter_is_never_replayed_with_less_redaction() {
    let s = Scenario::new("replay_sealed", 1).await;
    let secret = "hunter2-do-not-store";
    // Valid, but too large under the daemon's first limit: a dead letter, sealed.
    let sealed = format!(
        r#"{{"timestamp":"2026-11-30T06:00:00Z","message":"login","password":"{secret}","pad":"{}"}}"#,
        "x".repeat(600)
    );
    s.produce_raw(&[(Some(b"sealed".to_vec()), sealed.clone().into_bytes())]);
    s.produce(0, 10, 0.0);
    let key = ("LP_DEAD_LETTER_KEY", "ab".repeat(32));
    let redacting = with(
        &s.env(),
        &[
            ("LP_MAX_RECORD_BYTES", "500".into()),
            ("LP_REDACT_DROP", "password".into()),
            key.clone(),
        ],
    );
    process_all(&s, &redacting).await;

    let pool = s.pg().await;
    let dead = async || -> Vec<(i64, String, Vec<u8>, Option<String>)> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT kafka_offset, payload_encoding, payload, redaction FROM {}.dead_letters",
            s.schema
        )))
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    let in_clear = async || -> (i64, usize) {
        let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {}.log_records WHERE fields::text LIKE '%' || $1 || '%' \
             OR message LIKE '%' || $1 || '%'",
            s.schema
        )))
        .bind(secret)
        .fetch_one(&pool)
        .await
        .unwrap();
        let docs = es_documents(&format!("{}-*", s.index))
            .await
            .iter()
            .filter(|d| d.to_string().contains(secret))
            .count();
        (rows, docs)
    };
    // The fault: the record is a sealed dead letter, its password unreadable there.
    let before = dead().await;
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(before[0].1, "aes-256-gcm");
    assert!(!String::from_utf8_lossy(&before[0].2).contains(secret));
    assert!(
        before[0]
            .3
            .as_deref()
            .is_some_and(|r| r.contains("password")),
        "the redaction it was written under: {:?}",
        before[0].3
    );
    let counts = s.pg_counts().await;

    // The cause fixed (a larger limit) and the key given, but no redaction settings.
    let unredacted = with(
        &s.env(),
        &[("LP_MAX_RECORD_BYTES", "100000".into()), key.clone()],
    );
    let (code, out, err) = lp(&unredacted, &["dead-letters", "replay"]);
    println!("replay without redaction: exit {code}: {}", err.trim());
    assert_ne!(code, 0, "{out}\n{err}");
    assert!(err.contains("LP_REDACT_DROP lacks password"), "{err}");
    assert_eq!(in_clear().await, (0, 0), "the password stored in clear");
    assert_eq!(dead().await, before, "the dead letter is still there");
    assert_eq!(s.pg_counts().await, counts, "nothing written");

    // With the redaction it was written under, it is replayed, redacted.
    let fixed = with(&unredacted, &[("LP_REDACT_DROP", "password".into())]);
    let out = ok(&fixed, &["dead-letters", "replay"]);
    assert!(out.contains("replayed=1 still_failing=0"), "{out}");
    assert_eq!(in_clear().await, (0, 0), "the password stored in clear");
    assert!(dead().await.is_empty());
    s.verify_with(&Expectation {
        max_record_bytes: 100_000,
        redact_drop: vec!["password".into()],
        ..Expectation::default()
    })
    .await
    .assert_exact("sealed replay");
    s.cleanup().await;
}
