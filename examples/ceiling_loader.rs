//! The benchmark's ceiling loader: writes the records of a topic dump straight to PostgreSQL
//! (`COPY ... FROM STDIN`, one statement per chunk) and/or the search store (`_bulk`), with no
//! Kafka and no daemon in the way. `--mode both` writes each chunk to both stores at once, the
//! combined ceiling. Every row and document is encoded before the clock starts, so the loader
//! spends its measured time waiting on the stores; bench/bench.py records its CPU to show that.
//!
//! Input: lines of `partition \t offset \t key \t kafka-timestamp-ms \t payload` (kcat's
//! `-f '%p\t%o\t%k\t%T\t%s\n'`). Output: one JSON line with the timing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use elasticsearch::Elasticsearch;
use elasticsearch::http::headers::{CONTENT_TYPE, HeaderMap, HeaderValue};
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::http::{Method, Url};
use serde_json::{Map, Value, json};
use sqlx::{Connection, PgConnection};

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Mode {
    Pg,
    Es,
    Both,
}

#[derive(Parser)]
struct Args {
    #[arg(long)]
    dump: String,
    #[arg(long)]
    topic: String,
    #[arg(long, value_enum)]
    mode: Mode,
    /// Records per COPY statement and per `_bulk` request.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Chunks in flight at once (each with its own PostgreSQL connection).
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Table written by COPY (schema-qualified).
    #[arg(long, default_value = "public.log_records")]
    table: String,
    /// Documents go to `PREFIX-YYYY.MM.DD` of their own timestamp.
    #[arg(long, default_value = "ceiling")]
    index_prefix: String,
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    #[arg(long, env = "ELASTICSEARCH_URL")]
    elasticsearch_url: String,
}

/// One chunk, encoded for both stores.
struct Chunk {
    copy: Vec<u8>,
    bulk: Vec<u8>,
}

const RECOGNISED: [&str; 4] = ["timestamp", "level", "service", "message"];

fn copy_field(out: &mut Vec<u8>, v: Option<&str>) {
    match v {
        None => out.extend_from_slice(b"\\N"),
        Some(s) => {
            for b in s.bytes() {
                match b {
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b'\t' => out.extend_from_slice(b"\\t"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    b'\r' => out.extend_from_slice(b"\\r"),
                    _ => out.push(b),
                }
            }
        }
    }
}

fn encode(topic: &str, line: &str, chunk: &mut Chunk) -> anyhow::Result<()> {
    let mut parts = line.splitn(5, '\t');
    let mut next = || {
        parts
            .next()
            .ok_or_else(|| anyhow::anyhow!("short line: {line:.80}"))
    };
    let (p, o, key, kts, payload) = (next()?, next()?, next()?, next()?, next()?);
    let mut doc: Map<String, Value> = serde_json::from_str(payload)?;
    let text =
        |d: &Map<String, Value>, k: &str| d.get(k).and_then(Value::as_str).map(str::to_owned);
    let (ts, level, service, message) = (
        text(&doc, "timestamp").ok_or_else(|| anyhow::anyhow!("no timestamp"))?,
        text(&doc, "level"),
        text(&doc, "service"),
        text(&doc, "message"),
    );
    for k in RECOGNISED {
        doc.remove(k);
    }
    let fields = serde_json::to_string(&doc)?;
    let kafka_ts = chrono::DateTime::from_timestamp_millis(kts.parse()?)
        .ok_or_else(|| anyhow::anyhow!("bad kafka timestamp {kts}"))?
        .to_rfc3339();
    let c = &mut chunk.copy;
    for f in [Some(topic), Some(p), Some(o), Some(ts.as_str())] {
        copy_field(c, f);
        c.push(b'\t');
    }
    for f in [&level, &service, &message] {
        copy_field(c, f.as_deref());
        c.push(b'\t');
    }
    copy_field(c, Some(&fields));
    c.extend_from_slice(b"\t\\\\x");
    for b in key.bytes() {
        c.extend_from_slice(format!("{b:02x}").as_bytes());
    }
    c.push(b'\t');
    copy_field(c, Some(&kafka_ts));
    c.push(b'\n');
    let day = ts.get(..10).unwrap_or("1970-01-01").replace('-', ".");
    let action = json!({"index": {"_index": format!("{}-{day}", INDEX_PREFIX.get().unwrap()),
                                  "_id": format!("{topic}-{p}-{o}")}});
    let body = json!({"@timestamp": ts, "level": level, "service": service, "message": message,
                      "fields": doc, "kafka": {"topic": topic, "partition": p.parse::<i32>()?,
                                               "offset": o.parse::<i64>()?}});
    serde_json::to_writer(&mut chunk.bulk, &action)?;
    chunk.bulk.push(b'\n');
    serde_json::to_writer(&mut chunk.bulk, &body)?;
    chunk.bulk.push(b'\n');
    Ok(())
}

static INDEX_PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn load(args: &Args) -> anyhow::Result<(Vec<Chunk>, usize)> {
    let text = std::fs::read_to_string(&args.dump)?;
    let (mut chunks, mut n) = (Vec::new(), 0);
    let mut cur = Chunk {
        copy: Vec::new(),
        bulk: Vec::new(),
    };
    let mut in_cur = 0;
    for line in text.lines().filter(|l| !l.is_empty()) {
        encode(&args.topic, line, &mut cur)?;
        (n, in_cur) = (n + 1, in_cur + 1);
        if in_cur == args.batch {
            chunks.push(std::mem::replace(
                &mut cur,
                Chunk {
                    copy: Vec::new(),
                    bulk: Vec::new(),
                },
            ));
            in_cur = 0;
        }
    }
    if in_cur > 0 {
        chunks.push(cur);
    }
    Ok((chunks, n))
}

async fn copy(conn: &mut PgConnection, table: &str, data: &[u8]) -> anyhow::Result<()> {
    let stmt = format!(
        "COPY {table} (topic, kafka_partition, kafka_offset, ts, level, service, message, \
         fields, kafka_key, kafka_ts) FROM STDIN"
    );
    let mut c = conn.copy_in_raw(&stmt).await?;
    c.send(data).await?;
    c.finish().await?;
    Ok(())
}

async fn bulk(es: &Elasticsearch, data: &[u8]) -> anyhow::Result<()> {
    for attempt in 0.. {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        let r = es
            .send(
                Method::Post,
                "/_bulk",
                headers,
                Some(&[("filter_path", "errors")]),
                Some(data.to_vec()),
                Some(Duration::from_secs(120)),
            )
            .await?;
        let status = r.status_code().as_u16();
        let text = r.text().await?;
        if status == 200 && text.contains("\"errors\":false") {
            return Ok(());
        }
        if attempt >= 20 {
            anyhow::bail!("_bulk failed: {status} {text:.300}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    unreachable!()
}

/// This process's user+system CPU seconds so far (`/proc/self/stat`, in clock ticks of 1/100 s,
/// Linux's USER_HZ on every architecture it reports through procfs).
fn own_cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    f.get(11)
        .zip(f.get(12))
        .map(|(u, s)| (u + s) as f64 / 100.0)
        .unwrap_or(0.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    INDEX_PREFIX.set(args.index_prefix.clone()).ok();
    let prep = Instant::now();
    let (chunks, n) = load(&args)?;
    let prep_s = prep.elapsed().as_secs_f64();
    let chunks = Arc::new(chunks);
    let next = Arc::new(AtomicUsize::new(0));
    let transport = TransportBuilder::new(SingleNodeConnectionPool::new(Url::parse(
        &args.elasticsearch_url,
    )?))
    .enable_meta_header(false)
    .build()?;
    let es = Elasticsearch::new(transport);
    let mut conns = Vec::new();
    if args.mode != Mode::Es {
        for _ in 0..args.concurrency {
            conns.push(PgConnection::connect(&args.database_url).await?);
        }
    }
    let cpu0 = own_cpu_s();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.concurrency {
        let (args, chunks, next, es) = (args.clone(), chunks.clone(), next.clone(), es.clone());
        let mut conn = conns.pop();
        tasks.push(tokio::spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(ch) = chunks.get(k) else {
                    return anyhow::Ok(());
                };
                let pg = async {
                    match conn.as_mut() {
                        Some(c) => copy(c, &args.table, &ch.copy).await,
                        None => Ok(()),
                    }
                };
                let os = async {
                    if args.mode == Mode::Pg {
                        Ok(())
                    } else {
                        bulk(&es, &ch.bulk).await
                    }
                };
                let (a, b) = tokio::join!(pg, os);
                a.and(b)
                    .map_err(|e| e.context(format!("task {i}, chunk {k}")))?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = own_cpu_s() - cpu0;
    println!(
        "{}",
        json!({"records": n, "seconds": (secs * 100.0).round() / 100.0,
               "records_per_s": (n as f64 / secs).round(), "batch": args.batch,
               "concurrency": args.concurrency,
               "loader_cpu_s": (cpu * 100.0).round() / 100.0, "prep_seconds": (prep_s * 100.0).round() / 100.0})
    );
    Ok(())
}
