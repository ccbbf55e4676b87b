//! Chaos suite: the real binary (one or several instances in one group) against the real
//! services, killed, stopped short and starved of its dependencies while it works through a
//! generated workload of known content. Each scenario ends with a clean run and reads the
//! stores back: nothing lost, nothing duplicated, Elasticsearch equal to PostgreSQL, Kafka's
//! committed offsets never ahead of PostgreSQL's watermark and both at the end offsets.
//!
//! Reduced sizes by default (part of `make test`); `CHAOS_FULL=1` selects the full sizes
//! (`make chaos`). `CHAOS_SEED=N` replays the test's own random choices (kill kinds, moments,
//! targets); the daemon's failpoints roll their own dice.
//!
//! Needs the `failpoints` feature: `cargo test --features failpoints --test chaos`.
#![cfg(feature = "failpoints")]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::chaos_kit::*;
use common::proxy::{Mode, Proxy};
use common::*;
use log_processor::failpoint::POINTS;

/// Bound on the daemon's peak resident memory through the dependency failures.
const RSS_BOUND_KIB: u64 = 300 * 1024;

// ---------------------------------------------------------------------------------------------
// Helpers

/// `url` with its host:port replaced by 127.0.0.1:`port`.
fn via_proxy(url: &str, port: u16) -> String {
    let (scheme, rest) = url.split_once("://").expect("URL with scheme");
    let (auth, hostpath) = match rest.rsplit_once('@') {
        Some((a, h)) => (format!("{a}@"), h),
        None => (String::new(), rest),
    };
    let path = hostpath.find('/').map_or("", |i| &hostpath[i..]);
    format!("{scheme}://{auth}127.0.0.1:{port}{path}")
}

fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit('@').next().unwrap();
    rest.split('/').next().unwrap().to_string()
}

/// The failpoint a daemon reported reaching, if any.
fn failpoint_hit(d: &Daemon) -> Option<&'static str> {
    let lines = d.lines.lock().unwrap();
    lines
        .iter()
        .find(|(_, l)| l.contains("failpoint reached"))
        .and_then(|(_, l)| {
            let plain = strip_ansi(l);
            POINTS.into_iter().find(|p| {
                [
                    format!("name={p}"),
                    format!("name=\"{p}\""),
                    format!("\"name\":\"{p}\""),
                ]
                .iter()
                .any(|n| plain.contains(n.as_str()))
            })
        })
}

fn infra(verb: &str, service: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/infra/infra.sh");
    let started = Instant::now();
    let ok = std::process::Command::new("bash")
        .args([script, verb, service])
        .status()
        .unwrap()
        .success();
    assert!(ok, "tests/infra/infra.sh {verb} {service} failed");
    println!(
        "chaos: infra {verb} {service} took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Stops the broker for 10 s, longer than the chaos session timeout, and starts it again.
async fn restart_kafka() {
    infra("down", "kafka");
    tokio::time::sleep(Duration::from_secs(10)).await;
    infra("up", "kafka");
}

fn peak_rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmHWM:").expect("VmHWM")
}

// ---------------------------------------------------------------------------------------------
// 1. SIGKILL at random moments, inside the windows that matter

#[derive(Clone, Copy, Debug)]
enum Kill {
    /// SIGKILL once the daemon reports reaching this failpoint.
    At(&'static str),
    /// SIGKILL at a random moment after the group join.
    Random,
    /// SIGTERM, then SIGKILL 0-300 ms later, in the middle of the graceful shutdown.
    DuringShutdown,
}

const KILL_KINDS: [Kill; 7] = [
    Kill::At("after_es_bulk"),
    Kill::At("in_pg_transaction"),
    Kill::At("after_pg_commit"),
    Kill::At("before_kafka_commit"),
    Kill::At("in_revoke"),
    Kill::Random,
    Kill::DuringShutdown,
];

const NO_FAILPOINT: &str = "no failpoint line appeared: was the test built with `--features failpoints`? \
     Run `cargo test --features failpoints --test chaos` (or `make test` / `make chaos`)";

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn chaos_1_sigkill_at_random_moments() {
    let mut rng = Rng::for_scenario("sigkill");
    let full = chaos().full;
    let (records, target_kills) = if full {
        (300_000u64, 35u64)
    } else {
        (40_000, 7)
    };
    let s = Scenario::new("chaos_kill", 6).await;
    // Small batches: many PostgreSQL transactions, ES bulks and commits per second.
    let env = with(&chaos_env(&s), &[("LP_BATCH_MAX_RECORDS", "200".into())]);
    let chunk = records / target_kills;
    let mut produced = 0u64;
    let produce = |n: u64, produced: &mut u64| {
        s.produce(*produced, n, MALFORMED);
        *produced += n;
    };
    let mut windows: BTreeMap<&str, u64> = BTreeMap::new();
    let mut kills = 0u64;
    let mut plan: Vec<Kill> = Vec::new();
    let started = Instant::now();
    let mut cycle = 0;
    while kills < target_kills {
        assert!(
            cycle < target_kills * 3,
            "too many cycles without reaching {target_kills} kills"
        );
        if plan.is_empty() {
            plan = KILL_KINDS.to_vec();
            rng.shuffle(&mut plan);
        }
        let kind = plan.pop().unwrap();
        if produced < records {
            produce(chunk.min(records - produced), &mut produced);
        }
        cycle += 1;
        let before = stored_total(&s).await;
        let killed: Option<&str> = match kind {
            Kill::At("in_revoke") => {
                // A second member joins; the first stops inside its revoke callback.
                let mut a = Daemon::start(&with(&env, &[("LP_FAILPOINTS", "in_revoke=1".into())]));
                wait_line(&a, "partitions assigned", Duration::from_secs(90)).await;
                wait_progress(&s, before, Duration::from_secs(20)).await;
                tokio::time::sleep(rng.millis(0, 1500)).await;
                let mut b = Daemon::start(&env);
                let t = Instant::now();
                while failpoint_hit(&a).is_none() {
                    assert!(
                        t.elapsed() < Duration::from_secs(90),
                        "{NO_FAILPOINT}; log:\n{}",
                        a.tail(30)
                    );
                    assert!(alive(&mut a), "daemon exited; log:\n{}", a.tail(30));
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                a.kill();
                // The other member takes everything over, then stops cleanly.
                wait_line(&b, "partitions assigned", Duration::from_secs(60)).await;
                tokio::time::sleep(rng.millis(0, 2000)).await;
                b.signal("TERM");
                let code = b.wait(Duration::from_secs(30));
                assert!(
                    matches!(code, 0 | 3),
                    "second member exit {code}; log:\n{}",
                    b.tail(30)
                );
                Some("in_revoke")
            }
            Kill::At(point) => {
                let p = if point == "before_kafka_commit" {
                    0.2
                } else {
                    0.1
                };
                let mut d =
                    Daemon::start(&with(&env, &[("LP_FAILPOINTS", format!("{point}={p}"))]));
                let t = Instant::now();
                let mut last_check = Instant::now();
                loop {
                    if let Some(hit) = failpoint_hit(&d) {
                        d.kill();
                        break Some(hit);
                    }
                    assert!(
                        t.elapsed() < Duration::from_secs(180),
                        "{NO_FAILPOINT}; log:\n{}",
                        d.tail(30)
                    );
                    assert!(alive(&mut d), "daemon exited; log:\n{}", d.tail(30));
                    if last_check.elapsed() > Duration::from_secs(2) {
                        last_check = Instant::now();
                        // Backlog worked off without the point firing: give it more work.
                        if stored_total(&s).await >= topic_total(&s) {
                            produce(2000, &mut produced);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            Kill::Random => {
                let mut d = Daemon::start(&env);
                wait_line(&d, "partitions assigned", Duration::from_secs(90)).await;
                tokio::time::sleep(rng.millis(0, 3000)).await;
                let was_alive = alive(&mut d);
                d.kill();
                was_alive.then_some("random")
            }
            Kill::DuringShutdown => {
                // A backlog, so that the shutdown has batches to drain when the kill comes.
                if stored_total(&s).await >= topic_total(&s) {
                    produce(chunk.max(2000), &mut produced);
                }
                let mut d = Daemon::start(&env);
                wait_line(&d, "partitions assigned", Duration::from_secs(90)).await;
                wait_progress(&s, before, Duration::from_secs(20)).await;
                d.signal("TERM");
                tokio::time::sleep(rng.millis(0, 300)).await;
                if alive(&mut d) {
                    d.kill();
                    Some("during_shutdown")
                } else {
                    let code = d.wait(Duration::from_secs(1));
                    assert!(matches!(code, 0 | 3), "exit {code}; log:\n{}", d.tail(30));
                    None
                }
            }
        };
        match killed {
            Some(w) => {
                kills += 1;
                *windows.entry(w).or_default() += 1;
            }
            None => plan.push(kind), // the moment was missed: the same kind goes next
        }
        println!(
            "chaos: sigkill cycle={cycle} kind={kind:?} killed_in={} stored={} produced={produced} t={:.0}s",
            killed.unwrap_or("-"),
            stored_total(&s).await,
            started.elapsed().as_secs_f64()
        );
        check_offsets(&s, &format!("sigkill cycle {cycle}"), true).await;
    }
    let order = [
        "after_es_bulk",
        "in_pg_transaction",
        "after_pg_commit",
        "before_kafka_commit",
        "in_revoke",
        "random",
        "during_shutdown",
    ];
    println!(
        "chaos: windows {}",
        order
            .iter()
            .map(|w| format!("{w}={}", windows.get(w).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join(" ")
    );
    for w in [
        "after_es_bulk",
        "in_pg_transaction",
        "after_pg_commit",
        "before_kafka_commit",
        "in_revoke",
        "during_shutdown",
    ] {
        assert!(
            windows.get(w).copied().unwrap_or(0) > 0,
            "no kill landed in {w}"
        );
    }
    if produced < records {
        produce(records - produced, &mut produced);
    }
    final_clean_run(&s, &env, "sigkill").await;
    verify_and_report(&s, "sigkill", kills).await;
    finish(&s, "sigkill", started).await;
}

// ---------------------------------------------------------------------------------------------
// 2. Three replicas in one group, killed and stopped at random and restarted

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn chaos_2_replicas_killed_and_restarted() {
    let mut rng = Rng::for_scenario("replicas");
    let full = chaos().full;
    let (records, actions, per_tick) = if full {
        (150_000u64, 30u64, 150u64)
    } else {
        (30_000, 8, 100)
    };
    let s = Scenario::new("chaos_replicas", 12).await;
    let env = chaos_env(&s);
    let started = Instant::now();
    let mut members: Vec<Daemon> = (0..3).map(|_| Daemon::start(&env)).collect();
    let load = Load::start(&s, 0, per_tick, Some(records));
    let (mut kills, mut terms) = (0u64, 0u64);
    let mut exits: BTreeMap<i32, u64> = BTreeMap::new();
    for a in 0..actions {
        tokio::time::sleep(rng.millis(1500, 5000)).await;
        let i = rng.below(3) as usize;
        let how = if rng.coin() { "SIGKILL" } else { "SIGTERM" };
        let d = &mut members[i];
        assert!(
            alive(d),
            "member {i} exited on its own; log:\n{}",
            d.tail(30)
        );
        if how == "SIGKILL" {
            d.kill();
            kills += 1;
        } else {
            d.signal("TERM");
            let code = d.wait(Duration::from_secs(30));
            assert!(
                matches!(code, 0 | 3),
                "member {i} exit {code}; log:\n{}",
                d.tail(30)
            );
            *exits.entry(code).or_default() += 1;
            terms += 1;
        }
        check_offsets(&s, &format!("replicas action {a}"), false).await;
        tokio::time::sleep(rng.millis(0, 2000)).await;
        members[i] = Daemon::start(&env);
        println!(
            "chaos: replicas action={a} member={i} {how} stored={} t={:.0}s",
            stored_total(&s).await,
            started.elapsed().as_secs_f64()
        );
    }
    load.handle.join().expect("producer thread");
    s.wait_all_stored(Duration::from_secs(900)).await;
    wait_committed_to_end(&s, Duration::from_secs(120)).await;
    for (i, d) in members.iter_mut().enumerate() {
        d.signal("TERM");
        let code = d.wait(Duration::from_secs(30));
        assert_eq!(
            code,
            0,
            "member {i}: clean stop at the end; log:\n{}",
            d.tail(30)
        );
    }
    println!("chaos: replicas sigkill={kills} sigterm={terms} sigterm_exits={exits:?}");
    verify_and_report(&s, "replicas", kills + terms).await;
    finish(&s, "replicas", started).await;
}

// ---------------------------------------------------------------------------------------------
// 3. Dependencies failing under load, one daemon riding it all out

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn chaos_3_dependencies_fail_under_load() {
    let _rng = Rng::for_scenario("dependencies");
    let full = chaos().full;
    let es_outage = Duration::from_secs(if full { 60 } else { 15 });
    let pg_outage = Duration::from_secs(if full { 20 } else { 10 });
    let s = Scenario::new("chaos_deps", 6).await;
    let es = Proxy::start(&host_port(&elasticsearch_url())).await;
    let pg = Proxy::start(&host_port(&database_url())).await;
    let env = with(
        &chaos_env(&s),
        &[
            (
                "LP_ELASTICSEARCH_URL",
                via_proxy(&elasticsearch_url(), es.port),
            ),
            ("LP_DATABASE_URL", via_proxy(&database_url(), pg.port)),
            // A silent PostgreSQL is noticed after statement + connect timeout (6 s here).
            ("LP_PG_STATEMENT_TIMEOUT_MS", "4000".into()),
            ("LP_PG_CONNECT_TIMEOUT_MS", "2000".into()),
        ],
    );
    let started = Instant::now();
    let mut d = Daemon::start(&env);
    wait_line(&d, "partitions assigned", Duration::from_secs(90)).await;
    let load = Load::start(&s, 0, 200, None);
    let step = |what: &str| {
        println!(
            "chaos: dependencies {what} t={:.0}s",
            started.elapsed().as_secs_f64()
        );
    };
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Each outage must end with records flowing again, without a restart of the daemon.
    for (proxy, mode, outage, what) in [
        (&es, Mode::Down, es_outage, "opensearch down"),
        (&pg, Mode::Down, pg_outage, "postgresql unreachable"),
        (&pg, Mode::Silent, pg_outage, "postgresql silent"),
    ] {
        if mode == Mode::Silent {
            // Slow first, so that every worker is inside a transaction when the peer goes quiet.
            proxy.set(Mode::Delay(Duration::from_millis(500)));
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        step(what);
        proxy.set(mode);
        tokio::time::sleep(outage).await;
        assert!(alive(&mut d), "survives {what}; log:\n{}", d.tail(30));
        proxy.set(Mode::Pass);
        step(&format!("{what}: over"));
        let took = expect_progress(&s, &d, what, Duration::from_secs(60)).await;
        step(&format!(
            "{what}: records stored again after {:.1} s",
            took.as_secs_f64()
        ));
    }
    if full {
        step("postgresql restart");
        infra("down", "postgres");
        tokio::time::sleep(Duration::from_secs(3)).await;
        infra("up", "postgres");
        assert!(
            alive(&mut d),
            "survives the PostgreSQL restart; log:\n{}",
            d.tail(30)
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
    }

    // The broker stays down past the session timeout, so the group loses the member. The
    // daemon must get its partitions back by itself: from librdkafka's rejoin, or else from
    // replacing a consumer whose group state stalled (LP_GROUP_STALL_TIMEOUT_MS, 30 s here).
    step("kafka restart");
    restart_kafka().await;
    assert!(
        alive(&mut d),
        "survives the Kafka restart; log:\n{}",
        d.tail(30)
    );
    step("kafka back");
    let back = Instant::now();
    expect_progress(&s, &d, "the broker's return", Duration::from_secs(150)).await;
    println!(
        "chaos: dependencies kafka_recovered_after_s={:.1} consumer_replacements={}",
        back.elapsed().as_secs_f64(),
        metric(&d, "log_processor_consumer_replacements_total").await
    );
    tokio::time::sleep(Duration::from_secs(5)).await;

    let produced = load.finish();
    step(&format!("load stopped after {produced} records"));
    s.wait_all_stored(Duration::from_secs(900)).await;
    wait_committed_to_end(&s, Duration::from_secs(180)).await;
    check_offsets(&s, "dependencies", false).await;
    assert!(
        alive(&mut d),
        "the same process did all the work; log:\n{}",
        d.tail(30)
    );
    let rss = peak_rss_kib(d.pid());
    d.signal("TERM");
    let code = d.wait(Duration::from_secs(30));
    assert_eq!(code, 0, "clean stop; log:\n{}", d.tail(30));
    println!(
        "chaos: dependencies peak_rss_mib={:.1} (bound {} MiB)",
        rss as f64 / 1024.0,
        RSS_BOUND_KIB / 1024
    );
    verify_and_report(&s, "dependencies", 0).await;
    assert!(
        rss < RSS_BOUND_KIB,
        "peak RSS {rss} KiB above {RSS_BOUND_KIB} KiB"
    );
    finish(&s, "dependencies", started).await;
}

// ---------------------------------------------------------------------------------------------
// 4. Hostile input

enum Expect {
    Stored,
    Dead(&'static str, &'static str),
}

struct Case {
    name: &'static str,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    expect: Expect,
}

fn hostile_cases() -> Vec<Case> {
    use Expect::*;
    let case = |name, key: Option<&str>, payload: Vec<u8>, expect| Case {
        name,
        key: key.map(|k| k.as_bytes().to_vec()),
        payload,
        expect,
    };
    let nested = |depth: usize, name: &str| {
        let mut v = serde_json::json!({"leaf": 1});
        for _ in 0..depth {
            v = serde_json::json!({ "a": v });
        }
        serde_json::json!({"case": name, "message": "nested", "deep": v})
            .to_string()
            .into_bytes()
    };
    let many_fields = {
        let mut m = serde_json::Map::new();
        m.insert("case".into(), "fields_3000".into());
        for i in 0..3000 {
            m.insert(format!("f{i:04}"), i.into());
        }
        serde_json::Value::Object(m).to_string().into_bytes()
    };
    let big = serde_json::json!({"case": "big_5mib", "message": "x".repeat(5 * 1024 * 1024)})
        .to_string()
        .into_bytes();
    let ts = |name: &str, ts: serde_json::Value| {
        serde_json::json!({"case": name, "message": "time", "timestamp": ts})
            .to_string()
            .into_bytes()
    };
    vec![
        case(
            "bad_utf8",
            Some("h1"),
            b"{\"case\":\"bad_utf8\",\"message\":\"\xff\xfe\xfd\"}".to_vec(),
            Dead("decode", "invalid UTF-8"),
        ),
        case(
            "array",
            Some("h2"),
            b"[1, 2, 3]".to_vec(),
            Dead("decode", "not an object"),
        ),
        case(
            "string",
            None,
            b"\"just a string\"".to_vec(),
            Dead("decode", "not an object"),
        ),
        case(
            "number",
            Some("h3"),
            b"42".to_vec(),
            Dead("decode", "not an object"),
        ),
        case(
            "null",
            None,
            b"null".to_vec(),
            Dead("decode", "not an object"),
        ),
        case(
            "not_json",
            Some("h4"),
            b"this is not json {".to_vec(),
            Dead("decode", "invalid JSON"),
        ),
        case(
            "nested_200",
            Some("h5"),
            nested(200, "nested_200"),
            Dead("decode", "invalid JSON"),
        ),
        case(
            "nested_40",
            Some("h6"),
            nested(40, "nested_40"),
            Dead("index", "parsing_exception"),
        ),
        case("nested_10", Some("h7"), nested(10, "nested_10"), Stored),
        case(
            "nul_byte",
            Some("h8"),
            b"{\"case\":\"nul_byte\",\"message\":\"a\x00b\"}".to_vec(),
            Dead("decode", "NUL byte"),
        ),
        case(
            "nul_escape",
            None,
            b"{\"case\":\"nul_escape\",\"message\":\"a\\u0000b\"}".to_vec(),
            Dead("decode", "NUL character"),
        ),
        case("big_5mib", Some("h9"), big, Stored),
        case(
            "no_timestamp",
            None,
            b"{\"case\":\"no_timestamp\",\"message\":\"no time\"}".to_vec(),
            Stored,
        ),
        case(
            "ts_unparseable",
            Some("h10"),
            ts("ts_unparseable", "yesterday at noon".into()),
            Dead("decode", "unparseable timestamp"),
        ),
        case(
            "ts_bool",
            Some("h11"),
            serde_json::json!({"case": "ts_bool", "@timestamp": true})
                .to_string()
                .into_bytes(),
            Dead("decode", "unparseable @timestamp"),
        ),
        case(
            "ts_1850",
            Some("h12"),
            ts("ts_1850", "1850-01-01T00:00:00Z".into()),
            Dead("decode", "outside the years"),
        ),
        case(
            "ts_2500",
            None,
            ts("ts_2500", "2500-01-01T00:00:00Z".into()),
            Dead("decode", "outside the years"),
        ),
        case(
            "ts_epoch_year_3000",
            Some("h13"),
            ts("ts_epoch_year_3000", 32_503_680_000_000i64.into()),
            Dead("decode", "outside the years"),
        ),
        case(
            "ts_epoch_huge",
            Some("h14"),
            ts("ts_epoch_huge", 1e20.into()),
            Dead("decode", "unparseable timestamp"),
        ),
        case(
            "ts_1901",
            Some("h15"),
            ts("ts_1901", "1901-03-04T05:06:07Z".into()),
            Stored,
        ),
        case(
            "ts_2150",
            None,
            ts("ts_2150", "2150-06-01T12:00:00+02:00".into()),
            Stored,
        ),
        case(
            "fields_3000",
            Some("h16"),
            many_fields,
            Dead("index", "fields"),
        ),
        // Same partition (same key), same index (same timestamp): the string maps the field,
        // the object that follows conflicts with that mapping.
        case(
            "conflict_string",
            Some("conflict"),
            br#"{"case":"conflict_string","timestamp":"2026-01-15T10:00:00Z","fields_x":"a"}"#
                .to_vec(),
            Stored,
        ),
        case(
            "conflict_object",
            Some("conflict"),
            br#"{"case":"conflict_object","timestamp":"2026-01-15T10:00:01Z","fields_x":{"b":1}}"#
                .to_vec(),
            Dead("index", "fields_x"),
        ),
        case(
            "empty_keyed",
            Some("h17"),
            Vec::new(),
            Dead("decode", "empty payload"),
        ),
        case(
            "empty_null_key",
            None,
            Vec::new(),
            Dead("decode", "empty payload"),
        ),
        case(
            "null_key",
            None,
            b"{\"case\":\"null_key\",\"level\":\"info\",\"message\":\"no key\"}".to_vec(),
            Stored,
        ),
        case(
            "level_not_string",
            Some("h18"),
            br#"{"case":"level_not_string","level":{"nested":true},"message":7}"#.to_vec(),
            Stored,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn chaos_4_hostile_input() {
    let _rng = Rng::for_scenario("hostile_input");
    let full = chaos().full;
    let good = if full { 20_000u64 } else { 5_000 };
    let s = Scenario::new("chaos_hostile", 4).await;
    let env = chaos_env(&s);
    let started = Instant::now();
    let mut d = Daemon::start(&env);
    wait_line(&d, "partitions assigned", Duration::from_secs(90)).await;
    let cases = hostile_cases();
    // Good records before, the hostile ones, good records after (which must not be held up).
    s.produce(0, good / 2, 0.0);
    let raw: Vec<_> = cases
        .iter()
        .map(|c| (c.key.clone(), c.payload.clone()))
        .collect();
    s.produce_raw(&raw);
    s.produce_raw(&raw[..raw.len() / 2]); // a second copy of half of them, further on
    s.produce(good / 2, good - good / 2, 0.0);
    s.wait_all_stored(Duration::from_secs(300)).await;
    wait_committed_to_end(&s, Duration::from_secs(60)).await;
    d.signal("TERM");
    let code = d.wait(Duration::from_secs(30));
    assert_eq!(code, 0, "clean stop; log:\n{}", d.tail(30));

    let pool = s.pg().await;
    let dead_q = format!(
        "SELECT stage, reason FROM {}.dead_letters WHERE payload = $1",
        s.schema
    );
    let rows_q = format!(
        "SELECT count(*), count(*) FILTER (WHERE kafka_key IS NULL) FROM {}.log_records WHERE fields->>'case' = $1",
        s.schema
    );
    let mut report = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        // Each payload was produced once, or twice for the first half; identical payloads
        // (the two empty ones) count together.
        let copies = |j: usize| if j < cases.len() / 2 { 2 } else { 1 };
        let same: usize = cases
            .iter()
            .enumerate()
            .filter(|(_, o)| o.payload == c.payload)
            .map(|(j, _)| copies(j))
            .sum();
        let dead: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(dead_q.clone()))
            .bind(&c.payload)
            .fetch_all(&pool)
            .await
            .unwrap();
        match c.expect {
            Expect::Stored => {
                let (n, null_keys): (i64, i64) =
                    sqlx::query_as(sqlx::AssertSqlSafe(rows_q.clone()))
                        .bind(c.name)
                        .fetch_one(&pool)
                        .await
                        .unwrap();
                assert!(dead.is_empty(), "{}: dead-lettered: {dead:?}", c.name);
                assert_eq!(n as usize, copies(i), "{}: stored rows", c.name);
                if c.key.is_none() {
                    assert_eq!(null_keys, n, "{}: stored with a null key", c.name);
                }
                report.push(format!("{}=stored", c.name));
            }
            Expect::Dead(stage, reason) => {
                assert_eq!(dead.len(), same, "{}: dead letters {dead:?}", c.name);
                for (st, why) in &dead {
                    assert_eq!(st, stage, "{}: stage (reason {why:?})", c.name);
                    assert!(
                        why.to_lowercase().contains(&reason.to_lowercase()),
                        "{}: reason {why:?} does not mention {reason:?}",
                        c.name
                    );
                }
                report.push(format!("{}={stage}", c.name));
                println!(
                    "chaos: hostile {} -> {stage}: {}",
                    c.name,
                    dead[0].1.chars().take(160).collect::<String>()
                );
            }
        }
    }
    println!("chaos: hostile outcomes {}", report.join(" "));
    // Records refused by the index for their own content are dead letters too.
    let expect = Expectation {
        refused_by_index: cases
            .iter()
            .filter(|c| matches!(c.expect, Expect::Dead("index", _)))
            .map(|c| c.payload.clone())
            .collect(),
        ..Expectation::default()
    };
    let v = verify_and_report_with(&s, "hostile_input", 0, &expect).await;
    assert_eq!(
        v.stored,
        good + cases
            .iter()
            .enumerate()
            .filter(|(_, c)| matches!(c.expect, Expect::Stored))
            .map(|(j, _)| if j < cases.len() / 2 { 2 } else { 1 })
            .sum::<u64>()
    );
    finish(&s, "hostile_input", started).await;
}

// ---------------------------------------------------------------------------------------------
// 5. SIGTERM with a deadline too short for the work, repeated, with restarts

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn chaos_5_sigterm_with_too_short_deadline() {
    let mut rng = Rng::for_scenario("short_deadline");
    let full = chaos().full;
    let (rounds, per_round) = if full { (10u64, 8_000u64) } else { (2, 5_000) };
    let s = Scenario::new("chaos_deadline", 6).await;
    let pg = Proxy::start(&host_port(&database_url())).await;
    let grace = Duration::from_millis(5000);
    let env = with(
        &chaos_env(&s),
        &[
            ("LP_DATABASE_URL", via_proxy(&database_url(), pg.port)),
            ("LP_SHUTDOWN_DEADLINE_MS", "3000".into()),
            ("LP_GRACE_PERIOD_MS", grace.as_millis().to_string()),
        ],
    );
    let started = Instant::now();
    let mut produced = 0u64;
    let mut exits: BTreeMap<i32, u64> = BTreeMap::new();
    let mut longest = Duration::ZERO;
    for round in 0..rounds {
        s.produce(produced, per_round, MALFORMED);
        produced += per_round;
        pg.set(Mode::Pass);
        let before = stored_total(&s).await;
        let mut d = Daemon::start(&env);
        wait_line(&d, "partitions assigned", Duration::from_secs(90)).await;
        wait_progress(&s, before, Duration::from_secs(30)).await;
        // PostgreSQL turns slow: each batch's transaction (about eight round trips) now takes
        // seconds, more than the 3 s deadline leaves for the drain.
        let delay = rng.millis(400, 900);
        pg.set(Mode::Delay(delay));
        tokio::time::sleep(rng.millis(300, 1500)).await;
        let sent = Instant::now();
        d.signal("TERM");
        let code = d.wait(grace + Duration::from_secs(5));
        let took = sent.elapsed();
        longest = longest.max(took);
        assert!(
            matches!(code, 0 | 3),
            "round {round}: exit {code}; log:\n{}",
            d.tail(30)
        );
        assert!(
            took < grace,
            "round {round}: took {took:?}, beyond the {grace:?} grace period"
        );
        if code == 3 {
            assert!(
                d.has_line("deadline reached") || d.has_line("abandoned offsets"),
                "round {round}: exit 3 without a deadline warning or abandoned offsets; log:\n{}",
                d.tail(30)
            );
        }
        *exits.entry(code).or_default() += 1;
        pg.set(Mode::Pass);
        println!(
            "chaos: short_deadline round={round} delay_ms={} exit={code} shutdown_ms={} stored={} t={:.0}s",
            delay.as_millis(),
            took.as_millis(),
            stored_total(&s).await,
            started.elapsed().as_secs_f64()
        );
        check_offsets(&s, &format!("short_deadline round {round}"), true).await;
    }
    println!(
        "chaos: short_deadline exits {} longest_shutdown_ms={}",
        exits
            .iter()
            .map(|(c, n)| format!("code{c}={n}"))
            .collect::<Vec<_>>()
            .join(" "),
        longest.as_millis()
    );
    final_clean_run(&s, &chaos_env(&s), "short_deadline").await;
    verify_and_report(&s, "short_deadline", rounds).await;
    assert!(
        exits.get(&3).copied().unwrap_or(0) >= 1,
        "the deadline never bit: no round exited with code 3 ({exits:?}); the scenario tested nothing"
    );
    finish(&s, "short_deadline", started).await;
}

// ---------------------------------------------------------------------------------------------
// 6. A group membership that never recovers by itself

/// The broker restart outlives the session; the `lost_unassign` failpoint then withholds the
/// unassign librdkafka waits for, so its group handler is stuck for good, as it once was seen
/// stuck for real. The daemon must notice (LP_GROUP_STALL_TIMEOUT_MS), replace its consumer
/// and carry on, without a restart and without losing or duplicating anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn chaos_6_stuck_group_membership_is_replaced() {
    let _rng = Rng::for_scenario("stuck_group");
    let s = Scenario::new("chaos_stuck", 4).await;
    let stall = Duration::from_secs(15);
    let env = with(
        &chaos_env(&s),
        &[
            ("LP_FAILPOINTS", "lost_unassign=1".into()),
            ("LP_GROUP_STALL_TIMEOUT_MS", stall.as_millis().to_string()),
        ],
    );
    let started = Instant::now();
    let mut d = Daemon::start(&env);
    wait_line(&d, "partitions assigned", Duration::from_secs(90)).await;
    let load = Load::start(&s, 0, 100, None);
    assert!(
        wait_progress(&s, 0, Duration::from_secs(60)).await,
        "no progress before the broker restart; log:\n{}",
        d.tail(30)
    );

    restart_kafka().await;
    let back = Instant::now();
    // librdkafka times the session out while the broker is down, or at the latest when it
    // hears from the coordinator again.
    wait_line(&d, "step skipped", Duration::from_secs(60)).await;
    wait_line(
        &d,
        "replacing the consumer",
        stall + Duration::from_secs(60),
    )
    .await;
    expect_progress(&s, &d, "the replacement", Duration::from_secs(120)).await;
    let replacements = metric(&d, "log_processor_consumer_replacements_total").await;
    println!(
        "chaos: stuck_group recovered_after_s={:.1} consumer_replacements={replacements}",
        back.elapsed().as_secs_f64()
    );
    assert!(
        replacements >= 1.0,
        "the replacement is counted in /metrics"
    );

    load.finish();
    s.wait_all_stored(Duration::from_secs(300)).await;
    wait_committed_to_end(&s, Duration::from_secs(120)).await;
    assert!(
        alive(&mut d),
        "the same process did all the work; log:\n{}",
        d.tail(30)
    );
    d.signal("TERM");
    let code = d.wait(Duration::from_secs(30));
    assert_eq!(
        code,
        0,
        "clean stop after a replacement; log:\n{}",
        d.tail(30)
    );
    verify_and_report(&s, "stuck_group", 0).await;
    finish(&s, "stuck_group", started).await;
}

// ---------------------------------------------------------------------------------------------
// 7. Failed asynchronous commits

/// librdkafka reports the result of a manual asynchronous commit to nobody, so one the broker
/// refused (a generation change in a rebalance, seen with several replicas) looks sent. The
/// `lost_async_commit` failpoint drops every periodic commit of moved watermarks that way;
/// Kafka's committed offsets must still reach the end while the daemon runs, through its
/// periodic commit of every durable watermark, not only at revocation or shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn chaos_7_lost_async_commits_are_repaired() {
    let started = Instant::now();
    let s = Scenario::new("chaos_lostcommit", 4).await;
    s.produce(0, 5_000, MALFORMED);
    let env = with(
        &chaos_env(&s),
        &[("LP_FAILPOINTS", "lost_async_commit=1".into())],
    );
    let mut d = Daemon::start(&env);
    s.wait_all_stored(Duration::from_secs(120)).await;
    wait_line(&d, "lost_async_commit", Duration::from_secs(30)).await;
    wait_committed_to_end(&s, Duration::from_secs(30)).await;
    assert!(
        alive(&mut d),
        "committed while running; log:\n{}",
        d.tail(30)
    );
    d.signal("TERM");
    let code = d.wait(Duration::from_secs(30));
    assert_eq!(code, 0, "clean stop; log:\n{}", d.tail(30));
    verify_and_report(&s, "lost_async_commit", 0).await;
    finish(&s, "lost_async_commit", started).await;
}
