//! Operators' own tables and indices (`LP_MAPPING_FILE`) against real Kafka, PostgreSQL and
//! OpenSearch: records routed by topic name, `^` pattern and field value into typed tables
//! and index patterns, checked record by record against what Kafka holds; a kill inside a
//! transaction spanning two tables; a column added and the rows before it filled; a value
//! that does not fit its column; the changes the daemon refuses.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use common::verify::{KafkaRecord, es_hits, read_topic};
use common::*;
use log_processor::loadgen;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::{Map, Value, json};

/// Three topics (and one no route takes) of one test, and the mapping's file.
struct Routed {
    s: Scenario,
    http: String,
    edge: String,
    app: String,
    other: String,
    file: std::path::PathBuf,
}

fn mapping_text(s: &Scenario, with_took: bool) -> String {
    let took = if with_took {
        "  { name = \"took\", path = \"took_ms\", type = \"double precision\" },\n"
    } else {
        ""
    };
    format!(
        r#"
[tables.http_logs]
columns = [
  {{ name = "status_code", path = "status_code", type = "bigint", index = true }},
  {{ name = "trace_id", path = "trace.id", type = "uuid" }},
  {{ name = "client", path = "client_ip", type = "inet" }},
{took}]

[tables.edge_logs]
columns = [
  {{ name = "status_code", path = "status_code", type = "bigint" }},
  {{ name = "region", path = "region", type = "text" }},
  {{ name = "cached", path = "cached", type = "boolean" }},
]

[tables.billing_logs]
columns = [
  {{ name = "amount", path = "amount", type = "double" }},
  {{ name = "paid_at", path = "paid_at", type = "timestamptz" }},
  {{ name = "meta", path = "meta", type = "jsonb" }},
]

[[routes]]
topics = ["{p}-http"]
table = "http_logs"
index = "{i}-web-%Y.%m.%d"

[[routes]]
topics = ["^{p}-edge-.*"]
table = "edge_logs"
index = "{i}-web-%Y.%m.%d"

[[routes]]
topics = ["{p}-app"]
when = {{ field = "service", values = ["billing"] }}
table = "billing_logs"
index = "{i}-billing-%Y.%m.%d"
"#,
        p = s.topic,
        i = s.index
    )
}

impl Routed {
    async fn new(name: &str) -> Routed {
        let s = Scenario::new(name, 1).await;
        let (http, edge, app, other) = (
            format!("{}-http", s.topic),
            format!("{}-edge-eu", s.topic),
            format!("{}-app", s.topic),
            format!("{}-other", s.topic),
        );
        for (t, partitions) in [(&http, 2), (&edge, 1), (&app, 2), (&other, 1)] {
            loadgen::create_topic(&kafka_brokers(), t, partitions, 1 << 20)
                .await
                .expect("create topic");
        }
        let file = std::env::temp_dir().join(format!("{}.toml", s.topic));
        std::fs::write(&file, mapping_text(&s, true)).unwrap();
        Routed {
            s,
            http,
            edge,
            app,
            other,
            file,
        }
    }

    fn topics(&self) -> [&str; 4] {
        [&self.http, &self.edge, &self.app, &self.other]
    }

    fn env(&self) -> Vec<(String, String)> {
        with(
            &self.s.env(),
            &[
                ("LP_TOPICS", self.topics().join(",")),
                ("LP_MAPPING_FILE", self.file.display().to_string()),
            ],
        )
    }

    /// Where a record of `topic` belongs: table and index prefix.
    fn expected(&self, topic: &str, payload: &Value) -> (&'static str, String) {
        let i = &self.s.index;
        if topic == self.http {
            ("http_logs", format!("{i}-web-"))
        } else if topic == self.edge {
            ("edge_logs", format!("{i}-web-"))
        } else if topic == self.app && payload["service"] == "billing" {
            ("billing_logs", format!("{i}-billing-"))
        } else {
            ("log_records", format!("{i}-2"))
        }
    }
}

/// A record of `topic`, number `n`: every type of the mapping, values varying with `n`.
fn payload(topic_kind: &str, n: u64) -> Value {
    let ts = format!(
        "2026-12-0{}T10:{:02}:{:02}.{:03}Z",
        1 + n % 3,
        n % 60,
        (n / 60) % 60,
        n % 1000
    );
    let status = [200, 201, 404, 500, 503][(n % 5) as usize];
    match topic_kind {
        "http" => json!({
            "timestamp": ts, "level": "info", "service": "web", "message": format!("GET /{n}"),
            "status_code": status,
            "trace": {"id": format!("{:08x}-4c1e-4f55-9a3e-{:012x}", n, n * 7)},
            "client_ip": if n.is_multiple_of(2) { format!("10.0.{}.{}", n % 256, (n / 256) % 256) } else { format!("2001:db8::{:x}", n) },
            "took_ms": (n as f64) * 0.25,
            "path": format!("/{n}")
        }),
        "edge" => json!({
            "@timestamp": ts, "message": format!("edge {n}"),
            "status_code": if n.is_multiple_of(3) { json!("304") } else { json!(200) },
            "region": "eu-west", "cached": n.is_multiple_of(2)
        }),
        _ => json!({
            "timestamp": ts, "level": "info",
            "service": if n.is_multiple_of(2) { "billing" } else { "shop" },
            "message": format!("order {n}"),
            "amount": (n as f64) / 8.0,
            "paid_at": format!("2026-11-30T08:00:{:02}+01:00", n % 60),
            "meta": {"n": n, "tags": ["a", "b"]}
        }),
    }
}

fn produce(topic: &str, kind: &str, from: u64, count: u64) {
    let producer: BaseProducer = producer_config().create().expect("producer");
    for n in from..from + count {
        let body = payload(kind, n).to_string();
        let key = n.to_string();
        loadgen::send(&producer, BaseRecord::to(topic).key(&key).payload(&body)).expect("produce");
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
}

fn produce_raw(topic: &str, body: &str) {
    let producer: BaseProducer = producer_config().create().expect("producer");
    loadgen::send(&producer, BaseRecord::<str, str>::to(topic).payload(body)).expect("produce");
    producer.flush(Duration::from_secs(60)).expect("flush");
}

fn ends(topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
    let c: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .create()
        .unwrap();
    (0..partitions)
        .map(|p| {
            let (_, high) = rdkafka::consumer::Consumer::fetch_watermarks(
                &c,
                topic,
                p,
                Duration::from_secs(10),
            )
            .unwrap();
            (p, high)
        })
        .collect()
}

/// Whether the daemon created a table yet.
async fn exists(pool: &sqlx::PgPool, name: &str) -> bool {
    let found: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(name)
        .fetch_one(pool)
        .await
        .unwrap();
    found.is_some()
}

/// Every row of every table, by coordinates: (table, row as JSON).
async fn rows(r: &Routed) -> HashMap<(String, i32, i64), Vec<(String, Value)>> {
    let pool = r.s.pg().await;
    let mut out: HashMap<(String, i32, i64), Vec<(String, Value)>> = HashMap::new();
    for table in ["http_logs", "edge_logs", "billing_logs", "log_records"] {
        if !exists(&pool, &format!("{}.{table}", r.s.schema)).await {
            continue;
        }
        let q = format!(
            "SELECT topic, kafka_partition, kafka_offset, to_jsonb(t) FROM {}.{table} t",
            r.s.schema
        );
        let found: Vec<(String, i32, i64, Value)> = sqlx::query_as(sqlx::AssertSqlSafe(q))
            .fetch_all(&pool)
            .await
            .unwrap();
        for (topic, p, o, row) in found {
            out.entry((topic, p, o))
                .or_default()
                .push((table.to_string(), row));
        }
    }
    out
}

async fn dead_letters(r: &Routed) -> HashMap<(String, i32, i64), String> {
    let pool = r.s.pg().await;
    if !exists(&pool, &format!("{}.dead_letters", r.s.schema)).await {
        return HashMap::new();
    }
    let q = format!(
        "SELECT topic, kafka_partition, kafka_offset, stage || ': ' || reason FROM {}.dead_letters",
        r.s.schema
    );
    let found: Vec<(String, i32, i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(q))
        .fetch_all(&pool)
        .await
        .unwrap();
    found
        .into_iter()
        .map(|(t, p, o, why)| ((t, p, o), why))
        .collect()
}

/// The typed columns a record's row must hold, as `to_jsonb` shows them.
fn typed_expected(table: &str, v: &Value) -> Map<String, Value> {
    let mut m = Map::new();
    let int = |x: &Value| match x {
        Value::String(s) => json!(s.parse::<i64>().unwrap()),
        other => other.clone(),
    };
    match table {
        "http_logs" => {
            m.insert("status_code".into(), int(&v["status_code"]));
            m.insert("trace_id".into(), v["trace"]["id"].clone());
            m.insert("client".into(), v["client_ip"].clone());
            m.insert("took".into(), v["took_ms"].clone());
        }
        "edge_logs" => {
            m.insert("status_code".into(), int(&v["status_code"]));
            m.insert("region".into(), v["region"].clone());
            m.insert("cached".into(), v["cached"].clone());
        }
        "billing_logs" => {
            m.insert("amount".into(), v["amount"].clone());
            let paid =
                chrono::DateTime::parse_from_rfc3339(v["paid_at"].as_str().unwrap()).unwrap();
            m.insert(
                "paid_at".into(),
                json!(paid.with_timezone(&chrono::Utc).to_rfc3339()),
            );
            m.insert("meta".into(), v["meta"].clone());
        }
        _ => {}
    }
    m
}

/// Same number whether PostgreSQL wrote it as 1 or 1.0; timestamps as instants.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::String(x), Value::String(y)) => match (
            chrono::DateTime::parse_from_rfc3339(x),
            chrono::DateTime::parse_from_rfc3339(y),
        ) {
            (Ok(p), Ok(q)) => p == q,
            _ => x == y,
        },
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| same(v, w))
        }
        _ => a == b,
    }
}

/// Reads every topic back from Kafka and checks each record: one row in the table its route
/// names (typed columns equal to the record's values) and no other, one document in its index
/// pattern, or a dead letter where `bad` says so. Returns (rows, documents, dead letters).
async fn verify(r: &Routed, bad: &HashMap<(String, i32, i64), &str>) -> (usize, usize, usize) {
    let rows = rows(r).await;
    let dead = dead_letters(r).await;
    let mut docs: HashMap<String, Vec<(String, Value)>> = HashMap::new();
    es_hits(&format!("{}-*", r.s.index), |h| {
        docs.entry(h["_id"].as_str().unwrap().to_string())
            .or_default()
            .push((
                h["_index"].as_str().unwrap().to_string(),
                h["_source"].clone(),
            ));
    })
    .await;
    let (mut stored, mut indexed, mut lettered, mut problems) = (0, 0, 0, Vec::new());
    let parts = [(&r.http, 2), (&r.edge, 1), (&r.app, 2), (&r.other, 1)];
    for (topic, partitions) in parts {
        let records: HashMap<(i32, i64), KafkaRecord> = read_topic(topic, &ends(topic, partitions));
        for ((p, o), rec) in records {
            let at = (topic.to_string(), p, o);
            if let Some(why) = bad.get(&at) {
                match dead.get(&at) {
                    Some(reason) if reason.contains(why) => lettered += 1,
                    other => problems.push(format!(
                        "{topic}/{p}@{o}: dead letter {other:?}, expected one saying {why:?}"
                    )),
                }
                if rows.contains_key(&at) {
                    problems.push(format!("{topic}/{p}@{o}: a bad record has a row"));
                }
                continue;
            }
            let v: Value = serde_json::from_slice(&rec.payload).unwrap();
            let (table, index) = r.expected(topic, &v);
            match rows.get(&at).map(Vec::as_slice) {
                Some([(t, row)]) if t == table => {
                    let typed = typed_expected(table, &v);
                    let differ: Vec<&String> = typed
                        .iter()
                        .filter(|(k, want)| !same(&row[k.as_str()], want))
                        .map(|(k, _)| k)
                        .collect();
                    if !differ.is_empty() || row["message"] != v["message"] {
                        problems.push(format!(
                            "{topic}/{p}@{o}: row {row} differs in {differ:?} from {v}"
                        ));
                    }
                    stored += 1;
                }
                other => problems.push(format!(
                    "{topic}/{p}@{o}: rows {other:?}, expected one in {table}"
                )),
            }
            match docs.get(&format!("{topic}-{p}-{o}")).map(Vec::as_slice) {
                Some([(idx, doc)])
                    if idx.starts_with(&index)
                        && doc["message"] == v["message"]
                        && doc["fields"]["status_code"] == v["status_code"] =>
                {
                    indexed += 1
                }
                other => problems.push(format!(
                    "{topic}/{p}@{o}: documents {other:?}, expected one in {index}*"
                )),
            }
            if dead.contains_key(&at) {
                problems.push(format!("{topic}/{p}@{o}: a good record is a dead letter"));
            }
        }
    }
    let total_rows: usize = rows.values().map(Vec::len).sum();
    assert_eq!(total_rows, stored, "rows beyond one per good record");
    assert!(
        problems.is_empty(),
        "{} problems, first: {:#?}",
        problems.len(),
        &problems[..problems.len().min(10)]
    );
    (stored, indexed, lettered)
}

async fn wait_accounted(r: &Routed, expected: usize, timeout: Duration) {
    let start = Instant::now();
    loop {
        let n = rows(r).await.values().map(Vec::len).sum::<usize>() + dead_letters(r).await.len();
        if n >= expected {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "only {n} of {expected} records stored after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_to_typed_tables_and_indices_nothing_lost_across_a_kill_in_a_two_table_transaction()
{
    let r = Routed::new("mapping").await;
    // First only the topic whose batches span two tables (billing and the rest), and the daemon
    // stopped inside the first batch's transaction, rows of both tables inserted, uncommitted.
    produce(&r.app, "app", 0, 400);
    let env = r.env();
    let mut d = Daemon::start(&with(
        &env,
        &[("LP_FAILPOINTS", "in_pg_transaction=1".into())],
    ));
    d.wait_for_line(
        "failpoint reached name=\"in_pg_transaction\"",
        Duration::from_secs(60),
    );
    let pool = r.s.pg().await;
    let open: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction' AND application_name = 'log-processor'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        open >= 1,
        "the fault: a batch transaction is open when the daemon is killed"
    );
    d.kill();
    let before = rows(&r).await.len();
    assert_eq!(
        before, 0,
        "nothing of the killed transaction is in either table"
    );

    // Then everything, with one record whose status code is no number.
    produce(&r.http, "http", 0, 600);
    produce(&r.edge, "edge", 0, 300);
    produce(&r.other, "other", 0, 100);
    let bad_body =
        json!({"timestamp": "2026-12-01T00:00:00Z", "message": "bad", "status_code": "abc"})
            .to_string();
    produce_raw(&r.http, &bad_body);
    let bad_at = {
        let all = read_topic(&r.http, &ends(&r.http, 2));
        let ((p, o), _) = all
            .iter()
            .find(|(_, k)| k.payload == bad_body.as_bytes())
            .expect("the bad record");
        (r.http.clone(), *p, *o)
    };
    let bad: HashMap<_, _> = [(
        bad_at,
        "decode: column status_code of http_logs (status_code): string \"abc\" does not fit bigint",
    )]
    .into();
    // One record over LP_MAX_RECORD_BYTES: a dead letter now, replayed into its route later.
    let mut big = payload("http", 9999);
    big["path"] = json!("x".repeat(1200));
    produce_raw(&r.http, &big.to_string());
    let small = with(&env, &[("LP_MAX_RECORD_BYTES", "1000".into())]);
    let started = Instant::now();
    let mut d = Daemon::start(&small);
    wait_accounted(&r, 1402, Duration::from_secs(180)).await;
    println!(
        "mapping: 1,402 records routed to 4 tables in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let (status, metrics) = http("GET", &format!("http://{}/metrics", d.http_addr()), None).await;
    assert_eq!(status, 200);
    for (table, n) in [
        ("http_logs", 600),
        ("edge_logs", 300),
        ("billing_logs", 200),
        ("log_records", 300),
    ] {
        let line = format!("log_processor_rows_stored_total{{table=\"{table}\"}} {n}");
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
    }
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(40)), 0, "{}", d.tail(30));
    assert_eq!(
        dead_letters(&r).await.len(),
        2,
        "the misfit and the record over the limit"
    );
    let out = ok(
        &with(&env, &[("LP_MAX_RECORD_BYTES", "100000".into())]),
        &["dead-letters", "replay", "--topic", &r.http],
    );
    println!("mapping: {}", out.trim());
    assert!(out.contains("replayed=1 still_failing=1"), "{out}");

    let (stored, indexed, lettered) = verify(&r, &bad).await;
    println!(
        "mapping: records=1402 stored={stored} indexed={indexed} dead_lettered={lettered} lost=0 duplicates=0"
    );
    assert_eq!((stored, indexed, lettered), (1401, 1401, 1));
    // `status` says where each topic's records go.
    let status = ok(&env, &["status"]);
    let app_route = format!(
        "route: {} -> billing_logs / {i}-billing-%Y.%m.%d when service in [billing]; else log_records / {i}-%Y.%m.%d",
        r.app,
        i = r.s.index
    );
    assert!(status.contains(&app_route), "{app_route} in:\n{status}");
    // The audit reads every table and index pattern of the mapping: nothing diverges.
    let (code, out, err) = lp(&env, &["audit"]);
    assert_eq!(code, 0, "audit with a mapping:\n{out}\n{err}");
    println!("mapping: {}", out.lines().last().unwrap_or_default());
    let replayed: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {}.http_logs WHERE length(fields->>'path') = 1200 AND status_code IS NOT NULL",
        r.s.schema
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        replayed, 1,
        "the replayed record is in its route's table, typed"
    );

    // The typed columns answer queries the fields alone could not, indexed, and the index
    // templates gave the same fields the same types.
    let errors: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {}.http_logs WHERE status_code >= 500",
        r.s.schema
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        errors, 241,
        "600 generated records, two status codes in five 5xx, and the replayed one (503)"
    );
    let v6: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {}.http_logs WHERE family(client) = 6",
        r.s.schema
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        v6, 301,
        "odd records carry IPv6 addresses, the replayed one too"
    );
    let indexed_column: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_indexes WHERE schemaname = $1 AND indexname = 'http_logs_status_code_idx'").bind(&r.s.schema).fetch_one(&pool).await.unwrap();
    assert_eq!(indexed_column, 1);
    let (_, mapping) = http(
        "GET",
        &format!("{}/{}-web-*/_mapping", elasticsearch_url(), r.s.index),
        None,
    )
    .await;
    let mapping: Value = serde_json::from_str(&mapping).unwrap();
    let (_, index) = mapping.as_object().unwrap().iter().next().unwrap();
    let fields = &index["mappings"]["properties"]["fields"]["properties"];
    assert_eq!(fields["status_code"]["type"], "long", "{fields}");
    assert_eq!(fields["client_ip"]["type"], "ip", "{fields}");
    assert_eq!(
        fields["trace"]["properties"]["id"]["type"], "keyword",
        "{fields}"
    );
    assert_eq!(fields["cached"]["type"], "boolean", "{fields}");
    let (_, billing) = http(
        "GET",
        &format!("{}/{}-billing-*/_mapping", elasticsearch_url(), r.s.index),
        None,
    )
    .await;
    assert!(
        billing.contains(r#""paid_at":{"type":"date","format":"strict_date_optional_time"}"#),
        "{billing}"
    );
    r.s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_added_under_load_fills_the_rows_before_it_and_loses_nothing() {
    let r = Routed::new("mapcol").await;
    std::fs::write(&r.file, mapping_text(&r.s, false)).unwrap();
    produce(&r.http, "http", 0, 500);
    let env = r.env();
    let mut d = Daemon::start(&env);
    wait_accounted(&r, 500, Duration::from_secs(120)).await;
    let producing = std::thread::spawn({
        let topic = r.http.clone();
        move || produce(&topic, "http", 500, 1500)
    });
    std::thread::sleep(Duration::from_millis(300));
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(40)), 0, "{}", d.tail(30));
    let pool = r.s.pg().await;
    let without: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {}.http_logs",
        r.s.schema
    )))
    .fetch_one(&pool)
    .await
    .unwrap();

    // The column `took` added to the mapping; restarted while records keep coming.
    std::fs::write(&r.file, mapping_text(&r.s, true)).unwrap();
    let mut d = Daemon::start(&env);
    producing.join().unwrap();
    wait_accounted(&r, 2000, Duration::from_secs(180)).await;
    d.wait_for_line(
        "rows stored before the column was added are filled",
        Duration::from_secs(60),
    );
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(40)), 0, "{}", d.tail(30));
    assert!(
        d.has_line("ALTER TABLE http_logs ADD COLUMN IF NOT EXISTS took double precision"),
        "{}",
        d.tail(30)
    );
    let (stored, _, lettered) = verify(&r, &HashMap::new()).await;
    println!(
        "mapcol: {without} rows stored before the column existed, all filled; records=2000 stored={stored} dead_lettered={lettered}"
    );
    assert!(
        without >= 500,
        "the fault: rows existed before the column ({without})"
    );
    assert_eq!((stored, lettered), (2000, 0));
    r.s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_the_daemon_never_makes_stop_start_up_naming_what_to_run() {
    let r = Routed::new("mapref").await;
    std::fs::write(&r.file, mapping_text(&r.s, false)).unwrap();
    let env = r.env();
    assert_eq!(lp(&env, &["migrate"]).0, 0);

    // LP_MIGRATE=off with a column the table lacks: the exact statement.
    std::fs::write(&r.file, mapping_text(&r.s, true)).unwrap();
    let (code, _, err) = lp(&with(&env, &[("LP_MIGRATE", "off".into())]), &["run"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("ALTER TABLE http_logs ADD COLUMN IF NOT EXISTS took double precision;"),
        "{err}"
    );

    // A column whose type changed (narrowed, or another type).
    let narrowed = mapping_text(&r.s, false).replacen("type = \"uuid\"", "type = \"text\"", 1);
    std::fs::write(&r.file, narrowed).unwrap();
    let (code, _, err) = lp(&env, &["run"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("column trace_id of http_logs is uuid in PostgreSQL but text in the mapping"),
        "{err}"
    );
    assert!(
        err.contains("ALTER TABLE http_logs ALTER COLUMN trace_id TYPE text"),
        "{err}"
    );

    // A mapped column removed.
    let removed = mapping_text(&r.s, false).replace(
        "  { name = \"client\", path = \"client_ip\", type = \"inet\" },\n",
        "",
    );
    std::fs::write(&r.file, removed).unwrap();
    let (code, _, err) = lp(&env, &["run"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("ALTER TABLE http_logs DROP COLUMN client"),
        "{err}"
    );

    // Refusals of the file itself, at check-config, naming the field.
    for (text, field) in [
        (
            "[tables.t]\ncolumns = [{ name = \"c\", path = \"c\", type = \"int128\" }]",
            "tables.t.columns.c.type",
        ),
        (
            "[tables.t]\ncolumns = [{ name = \"c\", path = \"c\", type = \"bigint\", search = \"keyword\" }]",
            "tables.t.columns.c.search",
        ),
    ] {
        std::fs::write(&r.file, text).unwrap();
        let (code, out, err) = lp(&env, &["check-config"]);
        assert_eq!(code, 2, "{out}{err}");
        assert!(
            err.contains(&format!("LP_MAPPING_FILE (--mapping-file): {field}")),
            "{err}"
        );
    }
    r.s.cleanup().await;
}
