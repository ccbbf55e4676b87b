//! `log-processor reindex` against the real services: a one-hour window out of three read
//! again into a new index and a new table, SIGKILLed half way, then SIGKILLed inside the
//! `reindex_before_commit` failpoint (documents indexed, rows and position not committed) and
//! resumed, compared record by
//! record with what Kafka holds, with the alias switched at the end and the daemon running on
//! the same topic undisturbed; a window whose start retention deleted, the missing offsets
//! reported exactly and the rest written; and the rate of a re-index of 100,000 records
//! beside the daemon's own on the same records.
//!
//! `cargo test --features failpoints --test reindex -- --test-threads=1 --nocapture`

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use common::verify::{Fate, KafkaRecord, Row, doc_differs, es_hits, fate, read_topic, row_differs};
use common::*;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::Value;

const HOUR_MS: i64 = 3_600_000;

/// Produces `count` generated records (2% malformed), record `seq` to partition
/// `seq % partitions` with the CreateTime `start_ms + seq * step_ms`: each partition's times
/// rise with its offsets, as a producer's clock makes them.
fn produce_spread(s: &Scenario, count: u64, start_ms: i64, step_ms: i64) {
    let producer: BaseProducer = producer_config().create().expect("producer");
    for seq in 0..count {
        let (payload, _) = log_processor::loadgen::payload(seq, 0.02);
        let key = format!("k{seq}");
        let record = BaseRecord::<str, [u8]>::to(&s.topic)
            .partition((seq % s.partitions as u64) as i32)
            .timestamp(start_ms + seq as i64 * step_ms)
            .key(&key)
            .payload(&payload);
        log_processor::loadgen::send(&producer, record).expect("produce");
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
}

fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// An hour-aligned start four hours ago (inside any retention the broker applies by time).
fn hours_ago(h: i64) -> i64 {
    let now = Utc::now().timestamp_millis();
    now - now % HOUR_MS - h * HOUR_MS
}

/// The records of the topic whose Kafka timestamp is in `[since, until)`.
fn window(
    kafka: &HashMap<(i32, i64), KafkaRecord>,
    since: i64,
    until: i64,
) -> BTreeMap<(i32, i64), KafkaRecord> {
    kafka
        .iter()
        .filter(|(_, r)| r.timestamp_ms.is_some_and(|t| since <= t && t < until))
        .map(|(k, r)| (*k, r.clone()))
        .collect()
}

/// How far the job stands: offsets read and offsets in range, from its own table.
async fn job_progress(s: &Scenario) -> (i64, i64) {
    let q = format!(
        "SELECT coalesce(sum(next_offset - from_offset), 0)::bigint, \
         coalesce(sum(to_offset - from_offset), 0)::bigint FROM {}.reindex_positions",
        s.schema
    );
    sqlx::query_as(sqlx::AssertSqlSafe(q))
        .fetch_one(&s.pg().await)
        .await
        .unwrap_or((0, 0))
}

/// Each partition's committed position in the job (one job per scenario).
async fn positions(s: &Scenario) -> BTreeMap<i32, i64> {
    let q = format!(
        "SELECT kafka_partition, next_offset FROM {}.reindex_positions",
        s.schema
    );
    let rows: Vec<(i32, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(q))
        .fetch_all(&s.pg().await)
        .await
        .expect("read the positions");
    rows.into_iter().collect()
}

async fn target_rows(s: &Scenario, table: &str) -> Vec<Row> {
    let q = format!(
        "SELECT topic, kafka_partition, kafka_offset, ts, level, service, message, fields::text, \
         kafka_key, kafka_ts FROM {}.{table}",
        s.schema
    );
    sqlx::query_as(sqlx::AssertSqlSafe(q))
        .fetch_all(&s.pg().await)
        .await
        .expect("read the target table")
}

/// The target table holds exactly the window's decodable records, each equal to its Kafka
/// record under the documented rules; returns how many window records are dead letters.
async fn assert_rows_are_the_window(
    s: &Scenario,
    table: &str,
    window: &BTreeMap<(i32, i64), KafkaRecord>,
) -> u64 {
    let rows = target_rows(s, table).await;
    let mut seen = BTreeSet::new();
    for r in &rows {
        assert!(seen.insert((r.1, r.2)), "row {}/{} twice", r.1, r.2);
        let k = window
            .get(&(r.1, r.2))
            .unwrap_or_else(|| panic!("row {}@{} is outside the window", r.1, r.2));
        assert_eq!(r.0, s.topic);
        match fate(k, &Expectation::default()) {
            Fate::Stored(e) => {
                if let Some(why) = row_differs(r, &e, k) {
                    panic!("row {}@{}: {why}", r.1, r.2);
                }
            }
            Fate::Dead(why) => panic!("row {}@{} must be a dead letter: {why}", r.1, r.2),
        }
    }
    let good: BTreeSet<(i32, i64)> = window
        .iter()
        .filter(|(_, k)| matches!(fate(k, &Expectation::default()), Fate::Stored(_)))
        .map(|(at, _)| *at)
        .collect();
    assert_eq!(seen, good, "the table's rows against the window's records");
    (window.len() - good.len()) as u64
}

/// Every document of `pattern` is a window record's, equal to it, once.
async fn assert_documents_are_the_window(
    s: &Scenario,
    index: &str,
    window: &BTreeMap<(i32, i64), KafkaRecord>,
) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut indices = BTreeSet::new();
    let mut problems = Vec::new();
    es_hits(&format!("{index}-*"), |hit| {
        let kafka = &hit["_source"]["kafka"];
        let at = (
            kafka["partition"].as_i64().unwrap() as i32,
            kafka["offset"].as_i64().unwrap(),
        );
        let id = format!("{}-{}-{}", s.topic, at.0, at.1);
        if hit["_id"] != id.as_str() {
            problems.push(format!("{at:?}: id {}", hit["_id"]));
        }
        if !seen.insert(at) {
            problems.push(format!("{at:?}: twice"));
        }
        indices.insert(hit["_index"].as_str().unwrap().to_string());
        match window.get(&at).map(|k| fate(k, &Expectation::default())) {
            Some(Fate::Stored(e)) => {
                if let Some(why) = doc_differs(hit, &e, &s.topic, index) {
                    problems.push(format!("{at:?}: {why}"));
                }
            }
            other => problems.push(format!("{at:?}: not a window record to store: {other:?}")),
        }
    })
    .await;
    assert!(problems.is_empty(), "documents: {problems:?}");
    let good: BTreeSet<(i32, i64)> = window
        .iter()
        .filter(|(_, k)| matches!(fate(k, &Expectation::default()), Fate::Stored(_)))
        .map(|(at, _)| *at)
        .collect();
    assert_eq!(
        seen, good,
        "the index's documents against the window's records"
    );
    indices
}

async fn cleanup_target(s: &Scenario, index: &str) {
    let base = elasticsearch_url();
    http("DELETE", &format!("{base}/{index}-*"), None).await;
    http(
        "DELETE",
        &format!("{base}/_index_template/log-processor-{index}"),
        None,
    )
    .await;
    s.cleanup().await;
}

fn reindex_command(args: &[String]) -> Command {
    let mut cmd = Command::new(binary());
    cmd.arg("reindex").args(args);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_killed_half_way_and_resumed_holds_exactly_its_records() {
    let s = Scenario::new("reindex", 2).await;
    let start = hours_ago(4);
    // 3,000 records over three hours, 1,000 of them in the middle hour.
    produce_spread(&s, 3_000, start, 3_600);
    let (since, until) = (start + HOUR_MS, start + 2 * HOUR_MS);

    // The daemon runs on the same topic, in its own group, through the whole re-index.
    let mut daemon = Daemon::start(&s.env());
    s.wait_all_stored(Duration::from_secs(120)).await;
    let ends = s.end_offsets();
    let watermarks = s.pg_watermarks().await;
    assert_eq!(watermarks, ends, "the daemon stored everything first");
    // Kafka's committed offsets trail the stored watermark: wait until they caught up, so
    // that any later change would be the re-index's doing.
    let waiting = Instant::now();
    while s.committed() != ends {
        assert!(
            waiting.elapsed() < Duration::from_secs(60),
            "committed {:?} of {ends:?}",
            s.committed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let committed = s.committed();

    let target = format!("r{}", s.index);
    let args: Vec<String> = [
        "--since",
        &rfc3339(since),
        "--until",
        &rfc3339(until),
        "--to-index",
        &format!("{target}-%Y.%m.%d"),
        "--to-table",
        "log_records_reindexed",
        "--max-rate",
        "100",
    ]
    .map(String::from)
    .to_vec();

    // First run: slowed by --max-rate, SIGKILLed once its position has passed half the range.
    let mut first = Daemon::start_with(&mut reindex_command(&args), &s.env());
    let started = Instant::now();
    loop {
        let (done, total) = job_progress(&s).await;
        if total > 0 && done * 2 >= total {
            println!("reindex: SIGKILL at {done}/{total} offsets");
            assert!(done < total, "the first run finished before the kill");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "reindex made no progress: {}",
            first.tail(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first.signal("KILL");
    assert_eq!(first.wait(Duration::from_secs(10)), 137);
    let (status, alias_before) = http(
        "GET",
        &format!("{}/_alias/{}", elasticsearch_url(), s.index),
        None,
    )
    .await;
    assert_eq!(
        status, 404,
        "the alias exists before the end: {alias_before}"
    );

    // Second run: stopped by the failpoint after a batch's documents are indexed and before
    // its rows and position commit, and SIGKILLed there: the case the resumed run must make
    // good without a record twice.
    let mut env = s.env();
    env.push((
        "LP_FAILPOINTS".to_string(),
        "reindex_before_commit=1.0".to_string(),
    ));
    let mut second = Daemon::start_with(&mut reindex_command(&args), &env);
    second.wait_for_line("failpoint reached", Duration::from_secs(60));
    let at_kill = positions(&s).await;
    second.signal("KILL");
    assert_eq!(second.wait(Duration::from_secs(10)), 137);
    assert_eq!(positions(&s).await, at_kill, "the batch was not committed");
    let mut beyond = 0;
    es_hits(&format!("{target}-*"), |hit| {
        let kafka = &hit["_source"]["kafka"];
        let p = kafka["partition"].as_i64().unwrap() as i32;
        if kafka["offset"].as_i64().unwrap() >= at_kill[&p] {
            beyond += 1;
        }
    })
    .await;
    println!("reindex: killed inside the failpoint at {at_kill:?}, {beyond} documents beyond");
    assert!(
        beyond > 0,
        "no document beyond the committed position {at_kill:?}: the kill was not between the \
         index write and the commit"
    );

    // Resumed: the same command line, the same job.
    let resumed = Instant::now();
    let argv: Vec<&str> = ["reindex"]
        .into_iter()
        .chain(args.iter().map(String::as_str))
        .collect();
    let (code, out, err) = lp(&s.env(), &argv);
    println!("{}\n{out}", err.trim_end());
    assert_eq!(code, 0, "resumed reindex:\n{out}\n{err}");
    println!("reindex: resumed run took {:?}", resumed.elapsed());

    let kafka = read_topic(&s.topic, &ends);
    let window = window(&kafka, since, until);
    assert_eq!(window.len(), 1_000);
    let dead = assert_rows_are_the_window(&s, "log_records_reindexed", &window).await;
    let indices = assert_documents_are_the_window(&s, &target, &window).await;
    assert!(dead > 0, "the window holds malformed records");
    assert!(
        out.contains(&format!(
            "total: in_range=1000 written={} dead={dead} refused=0 missing=0",
            1_000 - dead
        )),
        "summary: {out}"
    );

    // The alias names exactly the new indices.
    let (status, text) = http(
        "GET",
        &format!("{}/_alias/{}", elasticsearch_url(), s.index),
        None,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let aliased: BTreeSet<String> = serde_json::from_str::<Value>(&text)
        .unwrap()
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(aliased, indices, "the alias after the cut-over");

    // The daemon: still running, its positions and committed offsets unchanged, its stores
    // complete.
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "the daemon exited"
    );
    assert_eq!(s.pg_watermarks().await, watermarks);
    assert_eq!(s.committed(), committed);
    daemon.signal("TERM");
    assert_eq!(
        daemon.wait(Duration::from_secs(40)),
        0,
        "{}",
        daemon.tail(20)
    );
    s.verify().await.assert_exact("the daemon's stores");
    cleanup_target(&s, &target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_whose_start_retention_deleted_reports_it_and_writes_the_rest() {
    let s = Scenario::new("reindex_gone", 1).await;
    let start = hours_ago(4);
    // 300 records over three hours: offsets 100..200 are the middle hour.
    produce_spread(&s, 300, start, 36_000);
    process_all(&s, &s.env()).await;
    let ends = s.end_offsets();
    let kafka = read_topic(&s.topic, &ends);
    delete_records_below(&s, 150).await;
    let (since, until) = (start + HOUR_MS, start + 2 * HOUR_MS);
    let full = window(&kafka, since, until);
    assert_eq!(full.keys().next(), Some(&(0, 100)));
    assert_eq!(full.keys().last(), Some(&(0, 199)));

    let (code, out, err) = lp(
        &s.env(),
        &[
            "reindex",
            "--since",
            &rfc3339(since),
            "--until",
            &rfc3339(until),
            "--to-table",
            "log_records_reindexed",
        ],
    );
    println!("{}\n{out}", err.trim_end());
    assert_eq!(
        code, 3,
        "a window Kafka holds only in part exits 3:\n{out}\n{err}"
    );
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("{}/0 ", s.topic)))
        .unwrap_or_else(|| panic!("no line of partition 0: {out}"));
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&cells[1..4], ["150", "200", "50"], "{line}");
    assert!(
        line.ends_with("[100, 150) deleted by retention"),
        "the missing offsets: {line}"
    );
    // What Kafka still holds of the window is written, exactly.
    let rest: BTreeMap<(i32, i64), KafkaRecord> = (full.clone().into_iter())
        .filter(|((_, o), _)| *o >= 150)
        .collect();
    assert_rows_are_the_window(&s, "log_records_reindexed", &rest).await;

    // What Kafka lost, re-indexed from the daemon's rows: the whole window, the same ids, the
    // documents equal to the records read from Kafka before they were deleted.
    let target = format!("r{}", s.index);
    let (code, out, err) = lp(
        &s.env(),
        &[
            "reindex",
            "--from",
            "postgres",
            "--since",
            &rfc3339(since),
            "--until",
            &rfc3339(until),
            "--to-index",
            &format!("{target}-%Y.%m.%d"),
        ],
    );
    println!("{}\n{out}", err.trim_end());
    assert_eq!(code, 0, "reindex --from postgres:\n{out}\n{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("{}/0 ", s.topic)))
        .unwrap_or_else(|| panic!("no line of partition 0: {out}"));
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&cells[1..3], ["100", "200"], "{line}");
    assert_documents_are_the_window(&s, &target, &full).await;

    // The daemon's rows of offsets below 120 deleted: its rows now begin inside the window, so
    // they no longer say where it began; the report is a bound, not [120, 150).
    let pool = s.pg().await;
    for table in ["log_records", "dead_letters"] {
        let q = format!(
            "DELETE FROM {}.{table} WHERE topic = $1 AND kafka_offset < 120",
            s.schema
        );
        sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(&s.topic)
            .execute(&pool)
            .await
            .expect("delete the daemon's first rows");
    }
    let (code, out, err) = lp(
        &s.env(),
        &[
            "reindex",
            "--since",
            &rfc3339(since),
            "--until",
            &rfc3339(until),
            "--to-table",
            "log_records_reindexed_2",
        ],
    );
    println!("{}\n{out}", err.trim_end());
    assert_eq!(code, 3, "{out}\n{err}");
    assert!(
        out.contains("at most [0, 150) deleted by retention"),
        "a start the stores cannot vouch for is a bound: {out}"
    );
    cleanup_target(&s, &target).await;
}

/// The rate of a re-index without --max-rate, beside the daemon's on the same records and
/// services: printed for the record, asserted only to be a whole run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reindex_rate_of_100k_records() {
    let s = Scenario::new("reindex_rate", 4).await;
    let n: u64 = 100_000;
    let since = Utc::now().timestamp_millis() - 60_000;
    s.produce(0, n, 0.0);

    let started = Instant::now();
    let mut daemon = Daemon::start(&s.env());
    s.wait_all_stored(Duration::from_secs(600)).await;
    let daemon_secs = started.elapsed().as_secs_f64();
    daemon.signal("TERM");
    assert_eq!(
        daemon.wait(Duration::from_secs(60)),
        0,
        "{}",
        daemon.tail(20)
    );

    let target = format!("r{}", s.index);
    let args: Vec<String> = [
        "--since",
        &rfc3339(since),
        "--to-index",
        &format!("{target}-%Y.%m.%d"),
        "--to-table",
        "log_records_reindexed",
    ]
    .map(String::from)
    .to_vec();
    let started = Instant::now();
    let mut run = Daemon::start_with(&mut reindex_command(&args), &s.env());
    let code = run.wait(Duration::from_secs(900));
    let reindex_secs = started.elapsed().as_secs_f64();
    assert_eq!(code, 0, "{}", run.tail(20));
    let rows = target_rows(&s, "log_records_reindexed").await.len() as u64;
    assert_eq!(rows, n, "rows re-indexed");
    let last = run
        .tail(40)
        .lines()
        .rev()
        .find(|l| l.starts_with("reindex: ") && l.contains("records/s"))
        .map(str::to_owned)
        .unwrap_or_default();
    println!(
        "rate: daemon {n} records in {daemon_secs:.1} s = {:.0} records/s (start to all stored); \
         reindex {n} records in {reindex_secs:.1} s = {:.0} records/s (process start to exit, \
         index + table); its last progress line: {last}",
        n as f64 / daemon_secs,
        n as f64 / reindex_secs
    );
    cleanup_target(&s, &target).await;
}

/// Arguments that cannot work stop the command before it reads or writes anything (exit 2),
/// naming the argument; an alias name that is an index, and a job name reused with other
/// arguments, are refused (exit 2) before anything is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_are_refused_naming_them() {
    let s = Scenario::new("reindex_args", 1).await;
    let since = "2026-12-01T00:00:00Z";
    for (args, field) in [
        (vec!["--since", since], "--to-index / --to-table"),
        (
            vec![
                "--since",
                since,
                "--until",
                "2026-11-01T00:00:00Z",
                "--to-table",
                "x",
            ],
            "--until",
        ),
        (
            vec!["--since", since, "--to-table", "Bad-Name"],
            "--to-table",
        ),
        (
            vec!["--since", since, "--to-table", "log_records"],
            "--to-table",
        ),
        (
            vec!["--since", since, "--to-table", "reindex_positions"],
            "--to-table",
        ),
        (
            vec!["--since", since, "--to-table", "dead_letters"],
            "--to-table",
        ),
        (vec!["--since", since, "--to-index", "UPPER"], "--to-index"),
        (
            vec!["--since", since, "--to-index", "x", "--alias", "a b"],
            "--alias",
        ),
        (
            vec!["--since", since, "--from", "postgres", "--to-table", "x"],
            "--from",
        ),
        (vec!["--since", "yesterday", "--to-table", "x"], "--since"),
        (
            vec!["--since", since, "--to-table", "x", "--max-rate", "0"],
            "--max-rate",
        ),
    ] {
        let argv: Vec<&str> = ["reindex"].into_iter().chain(args.clone()).collect();
        let (code, out, err) = lp(&s.env(), &argv);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(err.contains(field), "{args:?} must name {field}: {err}");
        println!("{args:?}: {}", err.lines().next().unwrap_or_default());
    }
    // A target pattern sharing the daemon's template name (log-processor-<index>).
    let shared = format!("{}-%Y.%m.%d-v2", s.index);
    let (code, out, err) = lp(
        &s.env(),
        &["reindex", "--since", since, "--to-index", &shared],
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("--to-index") && err.contains("template"),
        "{err}"
    );
    println!(
        "--to-index {shared}: {}",
        err.lines().next().unwrap_or_default()
    );
    // An alias name that is an existing index: refused once the store is asked, before
    // anything is created (no template for the target either).
    let base = elasticsearch_url();
    let taken = format!("{}-plain", s.index);
    let (status, text) = http("PUT", &format!("{base}/{taken}"), None).await;
    assert_eq!(status, 200, "{text}");
    let target = format!("r{}", s.index);
    let (code, out, err) = lp(
        &s.env(),
        &[
            "reindex",
            "--since",
            since,
            "--to-index",
            &format!("{target}-%Y.%m.%d"),
            "--alias",
            &taken,
        ],
    );
    http("DELETE", &format!("{base}/{taken}"), None).await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("--alias") && err.contains(&taken), "{err}");
    println!(
        "--alias {taken}: {}",
        err.lines().next().unwrap_or_default()
    );
    let (status, _) = http(
        "GET",
        &format!("{base}/_index_template/log-processor-{target}"),
        None,
    )
    .await;
    assert_eq!(
        status, 404,
        "the refused run installed the target's template"
    );
    // Nothing was created by the refusals: not even the schema.
    let (schemas,): (i64,) = sqlx::query_as("SELECT count(*) FROM pg_namespace WHERE nspname = $1")
        .bind(&s.schema)
        .fetch_one(&s.pg().await)
        .await
        .unwrap();
    assert_eq!(schemas, 0, "the refusals created the schema");

    s.produce(0, 10, 0.0);
    let first = [
        "reindex",
        "--since",
        since,
        "--to-table",
        "rt",
        "--job",
        "j1",
    ];
    let (code, out, err) = lp(&s.env(), &first);
    assert_eq!(code, 0, "{out}{err}");
    let other = [
        "reindex",
        "--since",
        since,
        "--to-table",
        "rt2",
        "--job",
        "j1",
    ];
    let (code, out, err) = lp(&s.env(), &other);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("--job") && err.contains("other arguments"),
        "{err}"
    );
    println!("{}", err.trim_end());
    // Refused before any side effect: no table rt2.
    let (tables,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename = 'rt2'",
    )
    .bind(&s.schema)
    .fetch_one(&s.pg().await)
    .await
    .unwrap();
    assert_eq!(tables, 0, "the refused job created its table");
    s.cleanup().await;
}

/// Records of a job's range deleted by retention between two runs: the resumed run stops at
/// them, saying so, instead of skipping them or retrying for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_deleted_between_runs_stops_the_resumed_run_saying_so() {
    let s = Scenario::new("reindex_cut", 1).await;
    let start = hours_ago(4);
    produce_spread(&s, 300, start, 1_000);
    let args: Vec<String> = [
        "--since",
        &rfc3339(start),
        "--to-table",
        "rt",
        "--max-rate",
        "50",
    ]
    .map(String::from)
    .to_vec();
    let mut first = Daemon::start_with(&mut reindex_command(&args), &s.env());
    let started = Instant::now();
    while job_progress(&s).await.0 < 50 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{}",
            first.tail(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first.signal("KILL");
    first.wait(Duration::from_secs(10));
    let (done, _) = job_progress(&s).await;
    assert!(done < 250, "read up to {done}");
    delete_records_below(&s, 250).await;
    let argv: Vec<&str> = ["reindex"]
        .into_iter()
        .chain(args.iter().map(String::as_str))
        .collect();
    let (code, out, err) = lp(&s.env(), &argv);
    println!("{}", err.trim_end());
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!("offset {done} is no longer in Kafka")),
        "{err}"
    );
    assert_eq!(job_progress(&s).await.0, done, "the position stayed");
    s.cleanup().await;
}

/// Produces `count` records to partition 0, record `i` logged at `hour(i)`:00:`i` seconds on
/// 2025-11-24, its message `m{i}`.
fn produce_hours(s: &Scenario, count: u64, hour: impl Fn(u64) -> u64) {
    let producer: BaseProducer = producer_config().create().expect("producer");
    for i in 0..count {
        let payload = serde_json::json!({
            "timestamp": format!("2025-11-24T{:02}:00:{:02}Z", hour(i), i % 60),
            "level": "info",
            "message": format!("m{i}"),
        })
        .to_string();
        let record = BaseRecord::<str, str>::to(&s.topic)
            .partition(0)
            .payload(&payload);
        log_processor::loadgen::send(&producer, record).expect("produce");
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
}

/// One batch going to three hourly indices: the first closed (its documents parked), the
/// second open, the third mapping `message` as a number (its documents refused for their
/// own content). The parked documents are sent again, not counted as refused, and the batch
/// does not commit until they are taken; the refused ones are listed and the run exits 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_documents_hold_the_position_and_refused_ones_exit_3() {
    let s = Scenario::new("reindex_parked", 1).await;
    let since = Utc::now().timestamp_millis() - 600_000;
    produce_hours(&s, 90, |i| 10 + i / 30);
    let target = format!("r{}", s.index);
    let base = elasticsearch_url();
    let closed = format!("{target}-2025.11.24.10");
    let numeric = format!("{target}-2025.11.24.12");
    let (status, text) = http("PUT", &format!("{base}/{closed}"), None).await;
    assert_eq!(status, 200, "{text}");
    let (status, text) = http("POST", &format!("{base}/{closed}/_close"), None).await;
    assert_eq!(status, 200, "{text}");
    let mapping = r#"{"mappings":{"properties":{"message":{"type":"long"}}}}"#;
    let (status, text) = http("PUT", &format!("{base}/{numeric}"), Some(mapping.into())).await;
    assert_eq!(status, 200, "{text}");

    let args: Vec<String> = [
        "--since",
        &rfc3339(since),
        "--to-index",
        &format!("{target}-%Y.%m.%d.%H"),
        "--to-table",
        "rt",
        "--batch-records",
        "1000",
    ]
    .map(String::from)
    .to_vec();
    let mut run = Daemon::start_with(&mut reindex_command(&args), &s.env());
    run.wait_for_line(
        &format!("parked by index {closed}"),
        Duration::from_secs(60),
    );
    // Parked, not passed: the batch is not committed while its index refuses.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(job_progress(&s).await, (0, 90), "{}", run.tail(20));
    let (status, text) = http("POST", &format!("{base}/{closed}/_open"), None).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(run.wait(Duration::from_secs(90)), 3, "{}", run.tail(30));

    // Taken once the index opened: the first hour's documents and rows are there.
    http("POST", &format!("{base}/{target}-*/_refresh"), None).await;
    let (_, text) = http("GET", &format!("{base}/{closed}/_count"), None).await;
    let count: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(count["count"], 30, "{text}");
    let rows: Vec<i64> = target_rows(&s, "rt").await.iter().map(|r| r.2).collect();
    let rows: BTreeSet<i64> = rows.into_iter().collect();
    assert_eq!(rows, (0..60).collect(), "rows of the first two hours only");
    // The summary (the finished job read again) lists the refused offsets and exits 3.
    let argv: Vec<&str> = ["reindex"]
        .into_iter()
        .chain(args.iter().map(String::as_str))
        .collect();
    let (code, out, err) = lp(&s.env(), &argv);
    println!("{}\n{out}", err.trim_end());
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        out.contains("total: in_range=90 written=60 dead=0 refused=30 missing=0"),
        "{out}"
    );
    let listed: Vec<String> = (60..90).map(|o: i64| o.to_string()).collect();
    assert!(
        out.contains(&format!(
            "refused by the index, not written: {}/0 offsets {}",
            s.topic,
            listed.join(",")
        )),
        "{out}"
    );
    cleanup_target(&s, &target).await;
}

/// A topic whose current incarnation is stored under another name (adopted after a recreate),
/// or whose recorded incarnation is not the current one, is refused (exit 2, naming --topic)
/// rather than read under the Kafka name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_of_another_incarnation_or_stored_name_is_refused() {
    let s = Scenario::new("reindex_identity", 1).await;
    s.produce(0, 10, 0.0);
    process_all(&s, &s.env()).await;
    let since = rfc3339(Utc::now().timestamp_millis() - 600_000);
    let argv = ["reindex", "--since", &since, "--to-table", "rt"];
    let pool = s.pg().await;
    let set = |sql: &str| {
        format!(
            "UPDATE {}.topic_identities SET {sql} WHERE topic = $1",
            s.schema
        )
    };
    // Adopted under another name: the daemon stores this incarnation as `<topic>_b`.
    sqlx::query(sqlx::AssertSqlSafe(set("stored_as = topic || '_b'")))
        .bind(&s.topic)
        .execute(&pool)
        .await
        .unwrap();
    let (code, out, err) = lp(&s.env(), &argv);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("--topic") && err.contains(&format!("stored under the name {}_b", s.topic)),
        "{err}"
    );
    println!("{}", err.trim_end());
    // Recorded under its own name, but from another incarnation (another topic id).
    sqlx::query(sqlx::AssertSqlSafe(set(
        "stored_as = topic, topic_id = 'AAAAAAAAAAAAAAAAAAAAAQ'",
    )))
    .bind(&s.topic)
    .execute(&pool)
    .await
    .unwrap();
    let (code, out, err) = lp(&s.env(), &argv);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("--topic") && err.contains("mix two incarnations"),
        "{err}"
    );
    println!("{}", err.trim_end());
    let (tables,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename = 'rt'")
            .bind(&s.schema)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(tables, 0, "a refused run created its table");
    s.cleanup().await;
}

/// A record whose row PostgreSQL refuses for its content (a number jsonb cannot hold) in the
/// middle of a batch: a dead letter, listed, its document removed; the rest of the batch is
/// written and the run ends, instead of stopping at that batch on every run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_postgresql_refuses_is_a_dead_letter_and_the_batch_goes_on() {
    let s = Scenario::new("reindex_row_refused", 1).await;
    let since = Utc::now().timestamp_millis() - 600_000;
    // The first record maps `fields.n` as text, so the search store takes the third record's
    // number as text; PostgreSQL's jsonb cannot hold it ("value overflows numeric format").
    s.produce_raw(&[
        (None, br#"{"message":"first","n":"text"}"#.to_vec()),
        (None, br#"{"message":"second","n":"more"}"#.to_vec()),
        (None, br#"{"message":"overflow","n":1e200000}"#.to_vec()),
        (None, br#"{"message":"fourth","n":"last"}"#.to_vec()),
    ]);
    let target = format!("r{}", s.index);
    let (code, out, err) = lp(
        &s.env(),
        &[
            "reindex",
            "--since",
            &rfc3339(since),
            "--to-index",
            &format!("{target}-%Y.%m.%d"),
            "--to-table",
            "rt",
        ],
    );
    println!("{}\n{out}", err.trim_end());
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("total: in_range=4 written=3 dead=1 refused=0 missing=0"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "rows refused by PostgreSQL, dead letters: {}/0 offsets 2",
            s.topic
        )),
        "{out}"
    );
    let rows: BTreeSet<i64> = target_rows(&s, "rt").await.iter().map(|r| r.2).collect();
    assert_eq!(rows, [0, 1, 3].into());
    let mut docs = BTreeSet::new();
    es_hits(&format!("{target}-*"), |hit| {
        docs.insert(hit["_source"]["kafka"]["offset"].as_i64().unwrap());
    })
    .await;
    assert_eq!(docs, rows, "no document without its row");
    cleanup_target(&s, &target).await;
}

/// An index that keeps refusing its documents (closed) while the store takes the batch's
/// others: once the bound is spent (shortened here) the run stops, exit 1, naming the index and
/// the reason, the position where it was; with the index open again, the same command writes
/// the whole window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_refusing_past_the_bound_stops_the_run_keeping_the_position() {
    let s = Scenario::new("reindex_stuck", 1).await;
    let since = Utc::now().timestamp_millis() - 600_000;
    produce_hours(&s, 60, |i| 10 + i / 30);
    let target = format!("r{}", s.index);
    let base = elasticsearch_url();
    let closed = format!("{target}-2025.11.24.10");
    let (status, text) = http("PUT", &format!("{base}/{closed}"), None).await;
    assert_eq!(status, 200, "{text}");
    let (status, text) = http("POST", &format!("{base}/{closed}/_close"), None).await;
    assert_eq!(status, 200, "{text}");
    let argv: Vec<String> = [
        "reindex",
        "--since",
        &rfc3339(since),
        "--to-index",
        &format!("{target}-%Y.%m.%d.%H"),
        "--to-table",
        "rt",
    ]
    .map(String::from)
    .to_vec();
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut env = s.env();
    env.push(("LP_REINDEX_STORE_BOUND_SECS".into(), "6".into()));
    let (code, out, err) = lp(&env, &argv);
    println!("{}\n{out}", err.trim_end());
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!("index {closed} still refuses 30 documents"))
            && err.contains("the position stays at 0"),
        "{err}"
    );
    assert_eq!(job_progress(&s).await, (0, 60), "the position moved");
    assert!(
        target_rows(&s, "rt").await.is_empty(),
        "rows were committed"
    );

    let (status, text) = http("POST", &format!("{base}/{closed}/_open"), None).await;
    assert_eq!(status, 200, "{text}");
    let (code, out, err) = lp(&s.env(), &argv);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("total: in_range=60 written=60 dead=0 refused=0 missing=0"),
        "{out}"
    );
    cleanup_target(&s, &target).await;
}
