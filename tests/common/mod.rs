//! Shared test harness: the real services, the real binary, and checks read back from the
//! stores themselves. A service that cannot be reached fails the test with a message saying how
//! to start it; nothing is skipped.
#![allow(dead_code)]

pub mod chaos_kit;
pub mod proxy;
pub mod verify;

#[allow(unused_imports)]
pub use verify::{Expectation, Verdict};

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log_processor::loadgen;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::Value;
use sqlx::postgres::{PgPool, PgPoolOptions};

pub const START_HINT: &str =
    "start the services with `tests/infra/infra.sh up` (or `make test`, which does it)";

pub fn kafka_brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://logproc:logproc@127.0.0.1:5432/logproc".into())
}
pub fn elasticsearch_url() -> String {
    std::env::var("ELASTICSEARCH_URL").unwrap_or_else(|_| "http://127.0.0.1:9200".into())
}

/// Fails loudly when a service's port (the first of a comma-separated list) does not answer.
pub fn require(service: &str, addr: &str) {
    let hostport = addr
        .split(',')
        .next()
        .unwrap()
        .rsplit('@')
        .next()
        .unwrap()
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let sock = std::net::ToSocketAddrs::to_socket_addrs(&hostport)
        .ok()
        .and_then(|mut a| a.next());
    let ok = sock
        .is_some_and(|s| std::net::TcpStream::connect_timeout(&s, Duration::from_secs(2)).is_ok());
    assert!(ok, "{service} is not reachable at {hostport}: {START_HINT}");
}

pub fn require_all() {
    require("Kafka", &kafka_brokers());
    require("PostgreSQL", &database_url());
    require("OpenSearch/Elasticsearch", &elasticsearch_url());
}

/// The tests' producer settings: idempotent, and room for the 5 MiB hostile record.
pub fn producer_config() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", kafka_brokers())
        .set("linger.ms", "10")
        .set("enable.idempotence", "true")
        .set("message.max.bytes", "8388608");
    c
}

/// Queues generated record `seq` (key `k{seq}`) on `producer`; returns whether it is one of
/// the malformed ones under `ratio`.
pub fn send_generated<C: ProducerContext<DeliveryOpaque = ()>>(
    producer: &BaseProducer<C>,
    topic: &str,
    seq: u64,
    ratio: f64,
) -> bool {
    let (payload, bad) = loadgen::payload(seq, ratio);
    let key = format!("k{seq}");
    let rec = BaseRecord::<str, [u8]>::to(topic)
        .payload(&payload)
        .key(&key);
    loadgen::send(producer, rec).expect("produce");
    bad
}

/// `env` with the `overrides` replacing (or adding) variables.
pub fn with(env: &[(String, String)], overrides: &[(&str, String)]) -> Vec<(String, String)> {
    let mut env: Vec<_> = env
        .iter()
        .filter(|(k, _)| !overrides.iter().any(|(o, _)| o == k))
        .cloned()
        .collect();
    env.extend(overrides.iter().map(|(k, v)| (k.to_string(), v.clone())));
    env
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        % 100_000_000;
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        t,
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Everything one test run of the daemon uses, isolated from other tests.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub topic: String,
    pub group: String,
    pub schema: String,
    /// Index prefix; the daemon writes `{index}-%Y.%m.%d`.
    pub index: String,
    pub partitions: i32,
    /// The name the daemon stores the topic's records under, when not the topic's own (an
    /// incarnation adopted with `log-processor topics adopt`): what the verification reads;
    /// rows and documents of the topic's own name are then another incarnation's.
    pub stored_as: Option<String>,
    /// Other topics one daemon reads into the same schema and index (a pattern in
    /// LP_TOPICS): their rows, dead letters and documents are not this verification's.
    pub neighbours: Vec<String>,
}

impl Scenario {
    pub async fn new(name: &str, partitions: i32) -> Self {
        Self::with_record_limit(name, partitions, 8 * 1024 * 1024).await
    }

    /// [`Scenario::new`] on a topic that takes records of up to `max_message_bytes`.
    pub async fn with_record_limit(name: &str, partitions: i32, max_message_bytes: usize) -> Self {
        require_all();
        let id = unique(name).to_lowercase();
        let s = Scenario {
            topic: format!("t_{id}"),
            group: format!("g_{id}"),
            schema: format!("s_{id}"),
            index: format!("i-{}", id.replace('_', "-")),
            partitions,
            stored_as: None,
            neighbours: Vec::new(),
        };
        loadgen::create_topic(&kafka_brokers(), &s.topic, partitions, max_message_bytes)
            .await
            .expect("create topic");
        s
    }

    /// [`Scenario::new`] on a topic with `replicas` replicas and `min.insync.replicas` (a
    /// cluster's test topic).
    pub async fn replicated(name: &str, partitions: i32, replicas: i32, min_isr: i32) -> Self {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        require_all();
        let id = unique(name).to_lowercase();
        let s = Scenario {
            topic: format!("t_{id}"),
            group: format!("g_{id}"),
            schema: format!("s_{id}"),
            index: format!("i-{}", id.replace('_', "-")),
            partitions,
            stored_as: None,
            neighbours: Vec::new(),
        };
        let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", kafka_brokers())
            .create()
            .expect("admin client");
        let isr = min_isr.to_string();
        let topic = NewTopic::new(&s.topic, partitions, TopicReplication::Fixed(replicas))
            .set("min.insync.replicas", &isr)
            .set("max.message.bytes", "8388608");
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        for r in admin
            .create_topics([&topic], &opts)
            .await
            .expect("create topic")
        {
            r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
        }
        s
    }

    /// Environment for `log-processor run` against this scenario.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("LP_KAFKA_BROKERS", kafka_brokers()),
            ("LP_TOPICS", self.topic.clone()),
            ("LP_GROUP_ID", self.group.clone()),
            ("LP_DATABASE_URL", database_url()),
            ("LP_PG_SCHEMA", self.schema.clone()),
            ("LP_ELASTICSEARCH_URL", elasticsearch_url()),
            ("LP_ES_INDEX", format!("{}-%Y.%m.%d", self.index)),
            ("LP_HTTP_ADDR", "127.0.0.1:0".into()),
            ("LP_SESSION_TIMEOUT_MS", "10000".into()),
            ("LP_REVOKE_DRAIN_TIMEOUT_MS", "5000".into()),
            ("LP_BATCH_LINGER_MS", "100".into()),
            ("LP_RETRY_MAX_MS", "1000".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Produces `count` generated records starting at sequence `start` (1% malformed when
    /// `malformed` is set) and waits for the broker to acknowledge them all.
    pub fn produce(&self, start: u64, count: u64, malformed_ratio: f64) -> u64 {
        let producer: BaseProducer = producer_config().create().expect("producer");
        let mut bad = 0;
        for seq in start..start + count {
            bad += u64::from(send_generated(&producer, &self.topic, seq, malformed_ratio));
        }
        producer.flush(Duration::from_secs(60)).expect("flush");
        bad
    }

    /// Produces explicit payloads (hostile input).
    pub fn produce_raw(&self, records: &[(Option<Vec<u8>>, Vec<u8>)]) {
        let producer: BaseProducer = producer_config().create().expect("producer");
        for (key, payload) in records {
            self.send(&producer, key.as_deref(), payload);
        }
        producer.flush(Duration::from_secs(60)).expect("flush");
    }

    fn send(&self, producer: &BaseProducer, key: Option<&[u8]>, payload: &[u8]) {
        let mut rec = BaseRecord::<[u8], [u8]>::to(&self.topic).payload(payload);
        if let Some(k) = key {
            rec = rec.key(k);
        }
        loadgen::send(producer, rec).expect("produce");
    }

    /// End offsets of every partition.
    pub fn end_offsets(&self) -> BTreeMap<i32, i64> {
        self.try_end_offsets()
            .unwrap_or_else(|e| panic!("end offsets of {}: {e}", self.topic))
    }

    /// End offsets, or the error while the broker cannot say (just after a restart).
    pub fn try_end_offsets(&self) -> Result<BTreeMap<i32, i64>, rdkafka::error::KafkaError> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", kafka_brokers())
            .create()?;
        (0..self.partitions)
            .map(|p| {
                c.fetch_watermarks(&self.topic, p, Duration::from_secs(10))
                    .map(|(_, high)| (p, high))
            })
            .collect()
    }

    /// Kafka's committed offsets of the scenario's group (partitions without a commit omitted).
    pub fn committed(&self) -> BTreeMap<i32, i64> {
        let list = self
            .group_consumer()
            .committed_offsets(self.partition_list(None), Duration::from_secs(10))
            .unwrap();
        let out = list
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect();
        drop(list);
        out
    }

    /// Moves the group's committed offsets back to the beginning (the group must be empty).
    pub fn reset_group_offsets(&self) {
        self.group_consumer()
            .commit(
                &self.partition_list(Some(0)),
                rdkafka::consumer::CommitMode::Sync,
            )
            .expect("reset offsets");
    }

    /// A consumer in the scenario's group that never subscribes (for offset queries).
    fn group_consumer(&self) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", kafka_brokers())
            .set("group.id", &self.group)
            .create()
            .unwrap()
    }

    /// Every partition of the topic, at `offset` when given.
    fn partition_list(&self, offset: Option<i64>) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions {
            match offset {
                Some(o) => tpl
                    .add_partition_offset(&self.topic, p, Offset::Offset(o))
                    .unwrap(),
                None => {
                    tpl.add_partition(&self.topic, p);
                }
            }
        }
        tpl
    }

    pub async fn pg(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&database_url())
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL: {e}: {START_HINT}"))
    }

    /// The name the records are stored under (see `stored_as`).
    pub fn stored_name(&self) -> &str {
        self.stored_as.as_deref().unwrap_or(&self.topic)
    }

    /// PostgreSQL's stored next offsets for the group.
    pub async fn pg_watermarks(&self) -> BTreeMap<i32, i64> {
        let pool = self.pg().await;
        let q = format!(
            "SELECT kafka_partition, next_offset FROM {}.consumer_offsets WHERE group_id = $1 AND topic = $2",
            self.schema
        );
        let rows: Vec<(i32, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(q))
            .bind(&self.group)
            .bind(self.stored_name())
            .fetch_all(&pool)
            .await
            .unwrap_or_default();
        rows.into_iter().collect()
    }

    /// Runs one SQL statement as the tests' superuser; fails the test when it fails.
    pub async fn sql(&self, statement: &str) {
        sqlx::query(sqlx::AssertSqlSafe(statement.to_string()))
            .execute(&self.pg().await)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }

    pub async fn pg_counts(&self) -> (i64, i64) {
        let pool = self.pg().await;
        let q = format!(
            "SELECT (SELECT count(*) FROM {0}.log_records), (SELECT count(*) FROM {0}.dead_letters)",
            self.schema
        );
        sqlx::query_as(sqlx::AssertSqlSafe(q))
            .fetch_one(&pool)
            .await
            .unwrap_or((0, 0))
    }

    /// Waits until every offset of the topic is stored or dead-lettered in PostgreSQL.
    pub async fn wait_all_stored(&self, timeout: Duration) {
        let total: i64 = self.end_offsets().values().sum();
        let start = Instant::now();
        loop {
            let (r, d) = self.pg_counts().await;
            if r + d >= total {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "only {r} rows + {d} dead letters of {total} records after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    pub async fn cleanup(&self) {
        let pool = self.pg().await;
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            self.schema
        )))
        .execute(&pool)
        .await;
        let _ = reqwest_like_delete(&format!("{}/{}-*", elasticsearch_url(), self.index)).await;
    }
}

/// All documents (`_source`) of an index pattern, refreshed first.
pub async fn es_documents(pattern: &str) -> Vec<Value> {
    let mut out = Vec::new();
    verify::es_hits(pattern, |hit| out.push(hit["_source"].clone())).await;
    out
}

async fn reqwest_like_delete(url: &str) -> u16 {
    http("DELETE", url, None).await.0
}

/// A tiny HTTP/1.1 client over a TCP stream, enough for test queries (no extra crate).
pub async fn http(method: &str, url: &str, body: Option<String>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if url.starts_with("https://") {
        return https(method, url, body).await;
    }
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(host))
        .await
        .unwrap_or_else(|_| panic!("{url}: connect timed out: {START_HINT}"))
        .unwrap_or_else(|e| panic!("{url}: {e}: {START_HINT}"));
    let body = body.unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut buf))
        .await
        .expect("http read timed out")
        .unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

/// HTTPS through curl (a secured search store in tests/secured.rs), trusting the CA of
/// `ELASTICSEARCH_CA_FILE`; credentials ride in the URL.
async fn https(method: &str, url: &str, body: Option<String>) -> (u16, String) {
    let ca =
        std::env::var("ELASTICSEARCH_CA_FILE").expect("ELASTICSEARCH_CA_FILE for an https URL");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "60", "--cacert", &ca, "-X", method])
        .args([
            "-H",
            "Content-Type: application/json",
            "-w",
            "\n%{http_code}",
        ])
        .arg(url);
    if let Some(b) = body {
        cmd.args(["--data-binary", &b]);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    assert!(
        out.status.success(),
        "curl {method} {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A running `log-processor run` child process, its stderr collected line by line.
pub struct Daemon {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<(Instant, String)>>>,
    pub log_path: PathBuf,
}

/// The daemon binary cargo built for these tests, or the one `LOG_PROCESSOR_BIN` names (a
/// release build, or a copy that a concurrent build in the same target directory cannot
/// replace mid-run).
pub fn binary() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("LOG_PROCESSOR_BIN")
            .ok()
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_log-processor").to_string())
    })
}

impl Daemon {
    pub fn start(env: &[(String, String)]) -> Daemon {
        Self::start_with(Command::new(binary()).arg("run"), env)
    }

    pub fn start_with(cmd: &mut Command, env: &[(String, String)]) -> Daemon {
        cmd.envs(env.iter().map(|(k, v)| (k, v)))
            .env("LP_LOG", "info,librdkafka=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start log-processor");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let log_path = std::env::temp_dir().join(format!("log-processor-{}.log", child.id()));
        let (l, path) = (lines.clone(), log_path.clone());
        std::thread::spawn(move || {
            let mut file = std::fs::File::create(&path).ok();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(f) = file.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(f, "{line}");
                }
                l.lock().unwrap().push((Instant::now(), line));
            }
        });
        Daemon {
            child,
            lines,
            log_path,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {}", self.pid());
    }

    /// Waits for exit; panics with the log tail when it does not exit in time.
    pub fn wait(&mut self, timeout: Duration) -> i32 {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(50)); // let the reader thread finish
                return status.code().unwrap_or(128 + 9);
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                panic!(
                    "log-processor did not exit within {timeout:?}; log:\n{}",
                    self.tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for a log line containing `needle`; returns when it was seen.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> Instant {
        let start = Instant::now();
        loop {
            if let Some((t, _)) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|(_, l)| l.contains(needle))
            {
                return *t;
            }
            assert!(
                start.elapsed() < timeout,
                "no log line with {needle:?} within {timeout:?}; log:\n{}",
                self.tail(40)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn has_line(&self, needle: &str) -> bool {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .any(|(_, l)| l.contains(needle))
    }

    pub fn tail(&self, n: usize) -> String {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .rev()
            .take(n)
            .rev()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The HTTP address from the `http listening` line.
    pub fn http_addr(&self) -> String {
        self.wait_for_line("http listening", Duration::from_secs(30));
        let lines = self.lines.lock().unwrap();
        let line = &lines
            .iter()
            .find(|(_, l)| l.contains("http listening"))
            .unwrap()
            .1;
        let plain = strip_ansi(line);
        plain
            .split("addr=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `kB` field of `/proc/PID/status` (`VmHWM:`, `RssAnon:`, ...), while the process exists.
pub fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Runs `log-processor ARGS` to the end (bounded); returns exit code, stdout and stderr.
pub fn lp(env: &[(String, String)], args: &[&str]) -> (i32, String, String) {
    let mut child = Command::new(binary())
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("LP_LOG", "warn,librdkafka=off")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start log-processor");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).ok();
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        err.read_to_string(&mut s).ok();
        s
    });
    let started = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code().unwrap_or(-1);
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("log-processor {args:?} did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (code, reader.join().unwrap(), err_reader.join().unwrap())
}

pub fn ok(env: &[(String, String)], args: &[&str]) -> String {
    let (code, out, err) = lp(env, args);
    assert_eq!(code, 0, "log-processor {args:?}:\n{out}\n{err}");
    out
}

pub fn json(env: &[(String, String)], args: &[&str]) -> Value {
    let out = ok(env, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

/// Runs the daemon until both stores hold every record, then stops it cleanly.
pub async fn process_all(s: &Scenario, env: &[(String, String)]) {
    let mut d = Daemon::start(env);
    s.wait_all_stored(Duration::from_secs(90)).await;
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(40)), 0, "{}", d.tail(30));
}

/// Deletes partition 0's records below `cut` (what retention or `kafka-delete-records` does)
/// and checks that the log starts there now.
pub async fn delete_records_below(s: &Scenario, cut: i64) {
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        ClientConfig::new()
            .set("bootstrap.servers", kafka_brokers())
            .create()
            .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&s.topic, 0, Offset::Offset(cut))
        .unwrap();
    let opts = rdkafka::admin::AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let result = admin
        .delete_records(&tpl, &opts)
        .await
        .expect("delete records");
    assert_eq!(
        result.elements()[0].offset(),
        Offset::Offset(cut),
        "the fault: the log of partition 0 now starts at {cut}"
    );
}
