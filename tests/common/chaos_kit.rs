//! Helpers of the suites that run the real binary through faults under load (tests/chaos.rs,
//! tests/refusals.rs): run settings and the test's own dice, waiting on the daemon and the
//! stores, a steady load producer, offset checks, and the final verification with its summary
//! line `chaos: scenario=NAME kills=.. records=.. lost=.. ...`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseProducer, Producer};

use super::verify::{self, Expectation, Verdict};
use super::*;

/// Share of malformed records in the generated load.
pub const MALFORMED: f64 = 0.01;

// ---------------------------------------------------------------------------------------------
// Settings of a run: seed and size

pub struct Chaos {
    pub seed: u64,
    pub full: bool,
}

pub fn chaos() -> &'static Chaos {
    static C: OnceLock<Chaos> = OnceLock::new();
    C.get_or_init(|| {
        let seed = match std::env::var("CHAOS_SEED") {
            Ok(v) if !v.trim().is_empty() => v
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("CHAOS_SEED must be an unsigned integer, got {v:?}")),
            _ => {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    % 1_000_000_000
            }
        };
        let full = std::env::var("CHAOS_FULL").is_ok_and(|v| v == "1");
        Chaos { seed, full }
    })
}

/// `reduced` in `make test`, `full` under `CHAOS_FULL=1` (`make chaos`).
pub fn sized(reduced: u64, full: u64) -> u64 {
    if chaos().full { full } else { reduced }
}

/// Deterministic random choices of the test itself (splitmix64).
pub struct Rng(u64);

impl Rng {
    pub fn for_scenario(name: &str) -> Rng {
        let c = chaos();
        println!(
            "chaos: seed={} full={} scenario={name} (replay with CHAOS_SEED={})",
            c.seed, c.full, c.seed
        );
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for b in name.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        Rng(c.seed ^ h)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
    pub fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

/// Short session so that a killed member's partitions move within seconds.
pub fn chaos_env(s: &Scenario) -> Vec<(String, String)> {
    with(
        &s.env(),
        &[
            ("LP_SESSION_TIMEOUT_MS", "6000".into()),
            ("LP_REVOKE_DRAIN_TIMEOUT_MS", "3000".into()),
            ("LP_GROUP_STALL_TIMEOUT_MS", "30000".into()),
        ],
    )
}

pub fn alive(d: &mut Daemon) -> bool {
    d.child.try_wait().unwrap().is_none()
}

/// A counter or gauge from the daemon's /metrics.
pub async fn metric(d: &Daemon, name: &str) -> f64 {
    let (status, body) = http("GET", &format!("http://{}/metrics", d.http_addr()), None).await;
    assert_eq!(status, 200, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

pub async fn stored_total(s: &Scenario) -> i64 {
    let (r, d) = s.pg_counts().await;
    r + d
}

pub fn topic_total(s: &Scenario) -> i64 {
    s.end_offsets().values().sum()
}

pub async fn wait_line(d: &Daemon, needle: &str, timeout: Duration) {
    let start = Instant::now();
    while !d.has_line(needle) {
        assert!(
            start.elapsed() < timeout,
            "no log line with {needle:?} within {timeout:?}; log:\n{}",
            d.tail(40)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for a log line containing `needle`; fails at once, with the log, if the daemon exits.
pub async fn wait_line_alive(d: &mut Daemon, needle: &str, timeout: Duration) {
    let start = Instant::now();
    while !d.has_line(needle) {
        assert!(
            alive(d),
            "the daemon exited (code {:?}) before logging {needle:?}; log:\n{}",
            d.child.try_wait().ok().flatten().and_then(|s| s.code()),
            folded_tail(d, 40)
        );
        assert!(
            start.elapsed() < timeout,
            "no log line with {needle:?} within {timeout:?}; log:\n{}",
            folded_tail(d, 40)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until PostgreSQL holds more than `than` records (rows + dead letters).
pub async fn wait_progress(s: &Scenario, than: i64, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if stored_total(s).await > than {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Waits until PostgreSQL holds more records than now, or fails with a diagnosis: what Kafka
/// holds, what is stored, what the daemon reports, then its log with repeated retries folded.
/// Returns how long that took.
pub async fn expect_progress(s: &Scenario, d: &Daemon, after: &str, timeout: Duration) -> Duration {
    let started = Instant::now();
    let before = stored_total(s).await;
    let kafka_before = try_topic_total(s);
    if wait_progress(s, before, timeout).await {
        return started.elapsed();
    }
    let kafka_now = try_topic_total(s);
    let metrics = match tokio::time::timeout(
        Duration::from_secs(5),
        http("GET", &format!("http://{}/metrics", d.http_addr()), None),
    )
    .await
    {
        Ok((200, body)) => body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.contains("_bucket"))
            .collect::<Vec<_>>()
            .join(" | "),
        other => format!("/metrics unavailable: {other:?}"),
    };
    panic!(
        "no record stored within {timeout:?} after {after}: stored {before}, \
         records in Kafka {kafka_before:?} -> {kafka_now:?}\ndaemon metrics: {metrics}\nlog:\n{}",
        folded_tail(d, 60)
    );
}

/// The topic's records, or `None` while the broker cannot say (just after a restart).
pub fn try_topic_total(s: &Scenario) -> Option<i64> {
    s.try_end_offsets().ok().map(|ends| ends.values().sum())
}

/// The last `n` log lines with the retries of one batch folded into their latest line and a
/// count, and long lines clipped, so that a failure message shows what happened rather than a
/// wall of retries.
pub fn folded_tail(d: &Daemon, n: usize) -> String {
    let lines = d.lines.lock().unwrap();
    // key -> (position of its latest line, that line, how many)
    let mut seen: HashMap<String, (usize, String, usize)> = HashMap::new();
    for (i, (_, line)) in lines.iter().enumerate() {
        let plain = strip_ansi(line);
        // Retries of one batch differ only in the timestamp and what follows " attempt=".
        let body = plain
            .split_once(' ')
            .map_or(plain.as_str(), |(_, rest)| rest);
        let key = match body.split_once(" attempt=") {
            Some((head, _)) => head.to_string(),
            None => format!("{i}"),
        };
        let entry = seen.entry(key).or_insert((i, String::new(), 0));
        *entry = (i, plain, entry.2 + 1);
    }
    let mut kept: Vec<_> = seen.into_values().collect();
    kept.sort_by_key(|(i, _, _)| *i);
    let skip = kept.len().saturating_sub(n);
    kept[skip..]
        .iter()
        .map(|(_, l, c)| {
            // Long lines (a statement sqlx quotes in full) clipped to what identifies them.
            let l = match l.char_indices().nth(400) {
                Some((at, _)) => format!("{}...", &l[..at]),
                None => l.clone(),
            };
            if *c > 1 { format!("{l}   [x{c}]") } else { l }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub async fn wait_committed_to_end(s: &Scenario, timeout: Duration) {
    let start = Instant::now();
    let ends = s.end_offsets();
    loop {
        let committed = s.committed();
        if committed == ends {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "committed {committed:?} never reached end offsets {ends:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Kafka's committed offsets never ahead of PostgreSQL's watermark (read in that order, so the
/// check holds even while instances run). With `exact`, PostgreSQL also holds exactly the
/// offsets below its watermark, as sets: no hole, no partly visible batch, nothing beyond it.
/// That part reads one snapshot, so it holds with no instance running and also while a single
/// one runs (a partition's batches commit in order, each with its watermark).
pub async fn check_offsets(s: &Scenario, what: &str, exact: bool) {
    let committed = s.committed();
    let (wm, stored) = pg_snapshot(s).await;
    for (p, &c) in &committed {
        let w = wm.get(p).copied().unwrap_or(0);
        assert!(
            c <= w,
            "{what}: partition {p}: Kafka committed offset {c} is ahead of PostgreSQL's watermark {w}"
        );
    }
    if exact {
        let (n, lines) = verify::against_watermark(&wm, &stored);
        assert_eq!(
            n,
            0,
            "{what}: PostgreSQL's watermark does not cover exactly the stored offsets \
             (a later batch durable before an earlier one, or a partly visible batch):\n{}",
            lines.join("\n")
        );
    }
}

/// PostgreSQL's watermarks of the scenario's group and its stored offsets (rows and dead
/// letters) per partition, from one snapshot.
pub async fn pg_snapshot(s: &Scenario) -> (BTreeMap<i32, i64>, BTreeMap<i32, BTreeSet<i64>>) {
    let pool = s.pg().await;
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await
        .expect("snapshot");
    let q = format!(
        "SELECT kafka_partition, next_offset FROM {}.consumer_offsets WHERE group_id = $1 AND topic = $2",
        s.schema
    );
    let wm: Vec<(i32, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(q))
        .bind(&s.group)
        .bind(&s.topic)
        .fetch_all(&mut *tx)
        .await
        .expect("watermarks");
    let q = format!(
        "SELECT kafka_partition, kafka_offset FROM {0}.log_records \
         UNION ALL SELECT kafka_partition, kafka_offset FROM {0}.dead_letters",
        s.schema
    );
    let offsets: Vec<(i32, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(q))
        .fetch_all(&mut *tx)
        .await
        .expect("stored offsets");
    tx.rollback().await.expect("end snapshot");
    let mut stored: BTreeMap<i32, BTreeSet<i64>> = BTreeMap::new();
    for (p, o) in offsets {
        stored.entry(p).or_default().insert(o);
    }
    (wm.into_iter().collect(), stored)
}

/// A clean run to the end: one instance (no failpoints) until everything is stored and
/// committed, then SIGTERM and exit 0.
pub async fn final_clean_run(s: &Scenario, env: &[(String, String)], what: &str) {
    let mut d = Daemon::start(env);
    s.wait_all_stored(Duration::from_secs(900)).await;
    wait_committed_to_end(s, Duration::from_secs(120)).await;
    d.signal("TERM");
    let code = d.wait(Duration::from_secs(30));
    assert_eq!(code, 0, "{what}: final clean stop; log:\n{}", d.tail(30));
}

/// Verifies the end state against Kafka, prints the summary line, then fails on any loss,
/// duplicate, mismatch or good record dead-lettered, and unless Kafka's committed offsets and
/// PostgreSQL's watermark both equal the end offsets.
pub async fn verify_and_report(s: &Scenario, name: &str, kills: u64) -> Verdict {
    verify_and_report_with(s, name, kills, &Expectation::default()).await
}

/// [`verify_and_report`] for a daemon with other settings or input with other fates.
pub async fn verify_and_report_with(
    s: &Scenario,
    name: &str,
    kills: u64,
    expect: &Expectation,
) -> Verdict {
    let ends = s.end_offsets();
    let committed = s.committed();
    let wm = s.pg_watermarks().await;
    let v = s.verify_with(expect).await;
    println!(
        "chaos: scenario={name} kills={kills} records={} lost={} pg_duplicates={} es_duplicates={} mismatched={} dead_lettered={} good_dead_lettered={}",
        v.records,
        v.lost,
        v.pg_duplicates,
        v.es_duplicates,
        v.mismatched,
        v.dead_lettered,
        v.good_dead_lettered
    );
    v.assert_exact_unprinted(name);
    check_offsets(s, name, true).await;
    assert_eq!(
        committed, ends,
        "{name}: Kafka's committed offsets equal the end offsets"
    );
    assert_eq!(
        wm, ends,
        "{name}: PostgreSQL's watermark equals the end offsets"
    );
    v
}

/// A producer thread writing generated records (1% malformed) at a steady rate, `per_tick`
/// every 100 ms, until stopped or `limit` records are written. Joins to the records sent.
///
/// It rides out broker restarts (idempotent, records wait up to 10 minutes), including one
/// librdkafka (2.10 and later) does not: a restarting broker that answers a metadata request
/// with no brokers makes the client forget every broker for good. A producer left without
/// brokers is replaced; what it still held is dropped, never reaching Kafka, and the
/// verification reads what did reach Kafka from the topic itself.
pub struct Load {
    stop: Arc<AtomicBool>,
    pub handle: std::thread::JoinHandle<u64>,
}

/// Counts the brokers a producer knows, from its statistics (-1 before the first report).
pub struct BrokerCount(std::sync::atomic::AtomicI64);

impl rdkafka::ClientContext for BrokerCount {
    fn stats(&self, stats: rdkafka::Statistics) {
        let known = log_processor::group_watch::known_brokers(&stats);
        self.0.store(known as i64, Ordering::Relaxed);
    }
}

impl rdkafka::producer::ProducerContext for BrokerCount {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
}

pub type LoadProducer = BaseProducer<BrokerCount>;

pub fn load_producer() -> LoadProducer {
    producer_config()
        .set("message.timeout.ms", "600000")
        .set("statistics.interval.ms", "1000")
        .create_with_context(BrokerCount(std::sync::atomic::AtomicI64::new(-1)))
        .expect("producer")
}

impl Load {
    pub fn start(s: &Scenario, start_seq: u64, per_tick: u64, limit: Option<u64>) -> Load {
        Load::start_with_ratio(s, start_seq, per_tick, limit, MALFORMED)
    }

    /// [`Load::start`] with `ratio` of the records malformed.
    pub fn start_with_ratio(
        s: &Scenario,
        start_seq: u64,
        per_tick: u64,
        limit: Option<u64>,
        ratio: f64,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (topic, flag) = (s.topic.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            let mut p = load_producer();
            let mut seq = start_seq;
            let mut without_brokers: Option<Instant> = None;
            let end = limit.map_or(u64::MAX, |l| start_seq + l);
            while !flag.load(Ordering::Relaxed) && seq < end {
                let tick = Instant::now();
                for _ in 0..per_tick.min(end - seq) {
                    send_generated(&p, &topic, seq, ratio);
                    seq += 1;
                }
                if p.context().0.load(Ordering::Relaxed) == 0 {
                    let since = *without_brokers.get_or_insert(tick);
                    if since.elapsed() > Duration::from_secs(5) {
                        println!(
                            "chaos: load producer forgot every broker; replacing it ({} records dropped)",
                            p.in_flight_count()
                        );
                        p.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
                        p = load_producer();
                        without_brokers = None;
                    }
                } else {
                    without_brokers = None;
                }
                if let Some(rest) = Duration::from_millis(100).checked_sub(tick.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
            p.flush(Duration::from_secs(600)).expect("flush");
            assert_eq!(p.in_flight_count(), 0, "every record sent is delivered");
            seq - start_seq
        });
        Load { stop, handle }
    }

    pub fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("producer thread")
    }
}

/// The end of a scenario: its run time, then its topic, tables and index removed.
pub async fn finish(s: &Scenario, name: &str, started: Instant) {
    println!(
        "chaos: {name} took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    s.cleanup().await;
}
