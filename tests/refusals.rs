//! Store refusals under load: the real binary against the real services while a store refuses
//! work for reasons that are not the record's fault. The rule: only a fault of the record itself
//! makes a dead letter. Any other refusal (permission denied, a CHECK constraint, a refusal by
//! the bookkeeping tables, a write-blocked index, statement and lock timeouts) holds the
//! partition where it is and retries with backoff until the store accepts; nothing after it
//! becomes durable first. While a partition is held the daemon shows
//! `log_processor_partition_stalled{topic,partition,reason} 1` on /metrics and logs a line
//! with `partition held` once per change of reason.
//!
//! Each scenario proves its fault happened (the store answers the refusal to the test too, and
//! the daemon reports the held partitions), watches the daemon through it (no good record
//! dead-lettered, no watermark past a refused batch, nothing made durable while refused), lifts
//! it, and ends with the chaos suite's verification and summary line. The daemon's own role
//! needs the tests' PostgreSQL user to have CREATEROLE (tests/infra/postgres.sh grants it).
//!
//! Reduced sizes by default (part of `make test`); `CHAOS_FULL=1` (`make chaos`) runs longer
//! faults under more load. Needs the `failpoints` feature, like tests/chaos.rs.
#![cfg(feature = "failpoints")]

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::chaos_kit::*;
use common::*;
use sqlx::Connection;
use sqlx::postgres::PgConnection;

/// Sizes: load (records per 100 ms) and how long a fault lasts.
fn sizes() -> (u64, Duration) {
    if chaos().full {
        (100, Duration::from_secs(30))
    } else {
        (30, Duration::from_secs(10))
    }
}

/// Once the daemon has met a refusal, how long its in-flight work may still take to settle
/// before nothing more may become durable.
const SETTLE: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------------------------
// Watching a daemon through a refusal

/// The partitions (of the scenario's topic) the daemon reports held, with their reasons.
async fn stalled(s: &Scenario, d: &Daemon) -> Vec<(i32, String)> {
    let (status, body) = http("GET", &format!("http://{}/metrics", d.http_addr()), None).await;
    assert_eq!(status, 200, "/metrics");
    body.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("log_processor_partition_stalled{")?;
            let (labels, value) = rest.rsplit_once("} ")?;
            if value.trim().parse::<f64>().ok()? != 1.0 {
                return None;
            }
            let label = |name: &str| -> Option<String> {
                let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
                let tail = &labels[start..];
                // The reason may hold escaped quotes; it ends at the last quote of its label.
                let end = if name == "reason" {
                    tail.rfind('"')?
                } else {
                    tail.find('"')?
                };
                Some(tail[..end].to_string())
            };
            (label("topic")? == s.topic).then_some(())?;
            Some((label("partition")?.parse().ok()?, label("reason")?))
        })
        .collect()
}

/// PostgreSQL's watermarks summed: how far the group's records are durable.
async fn durable_total(s: &Scenario) -> i64 {
    s.pg_watermarks().await.values().sum()
}

/// Fails on any dead letter that is not a decode failure: the load's only records at fault are
/// the malformed ones, so anything else is a good record dead-lettered for a store's refusal.
async fn assert_no_refusal_dead_letters(s: &Scenario, what: &str) {
    let pool = s.pg().await;
    let q = format!(
        "SELECT stage, left(reason, 300), count(*) FROM {}.dead_letters WHERE stage <> 'decode' GROUP BY 1, 2",
        s.schema
    );
    let refused: Vec<(String, String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(q))
        .fetch_all(&pool)
        .await
        .expect("dead letters by stage");
    assert!(
        refused.is_empty(),
        "{what}: good records dead-lettered for a store's refusal (stage, reason, records): {refused:#?}"
    );
}

/// What the daemon showed during a fault.
#[derive(Default)]
struct Held {
    partitions: BTreeSet<i32>,
    reasons: BTreeSet<String>,
}

/// Watches the daemon through `window` of a fault that began at `since`: it stays up,
/// dead-letters no good record, and once it has met the refusal makes nothing more durable;
/// with `read_rows` (log_records readable) no watermark may pass an offset that is not stored.
/// Then it must have shown every partition (all under load) held on /metrics and logged
/// `partition held` since the fault began, not once per retry.
async fn watch_hold(
    s: &Scenario,
    d: &mut Daemon,
    what: &str,
    since: Instant,
    window: Duration,
    read_rows: bool,
) -> Held {
    let started = Instant::now();
    let mut held = Held::default();
    let mut frozen: Option<i64> = None;
    while started.elapsed() < window {
        assert!(
            alive(d),
            "{what}: the daemon exited during the fault; log:\n{}",
            folded_tail(d, 40)
        );
        assert_no_refusal_dead_letters(s, what).await;
        if read_rows {
            check_offsets(s, what, true).await;
        }
        for (p, reason) in stalled(s, d).await {
            held.partitions.insert(p);
            held.reasons.insert(reason);
        }
        let durable = durable_total(s).await;
        if started.elapsed() >= SETTLE {
            let before = *frozen.get_or_insert(durable);
            assert_eq!(
                durable,
                before,
                "{what}: {} more records became durable while the store refused; log:\n{}",
                durable - before,
                folded_tail(d, 30)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let metrics = http("GET", &format!("http://{}/metrics", d.http_addr()), None)
        .await
        .1;
    assert_eq!(
        held.partitions,
        (0..s.partitions).collect::<BTreeSet<i32>>(),
        "{what}: partitions seen as log_processor_partition_stalled{{topic=\"{}\",..}} 1 on /metrics \
         during the fault (all are under load and refused)\n/metrics:\n{}\nlog:\n{}",
        s.topic,
        metrics
            .lines()
            .filter(|l| !l.starts_with('#') && !l.contains("_bucket"))
            .collect::<Vec<_>>()
            .join("\n"),
        folded_tail(d, 30)
    );
    let held_lines = d
        .lines
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, l)| *t >= since && l.contains("partition held"))
        .count();
    assert!(
        held_lines > 0,
        "{what}: no `partition held` log line; log:\n{}",
        folded_tail(d, 30)
    );
    let bound = s.partitions as usize * (held.reasons.len() + 1);
    assert!(
        held_lines <= bound,
        "{what}: {held_lines} `partition held` lines in {window:?}: one per change of reason \
         expected (at most {bound} for {} partitions and {} reasons seen)",
        s.partitions,
        held.reasons.len()
    );
    println!(
        "chaos: {what} held partitions={:?} partition_held_lines={held_lines} reasons={:?}",
        held.partitions, held.reasons
    );
    held
}

/// After the fault: records flow again and no partition stays reported held.
async fn expect_release(s: &Scenario, d: &Daemon, what: &str) {
    let took = expect_progress(s, d, what, Duration::from_secs(60)).await;
    let start = Instant::now();
    loop {
        let held = stalled(s, d).await;
        if held.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what}: still reported held 30 s after the store accepts again: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "chaos: {what} records stored again after {:.1} s",
        took.as_secs_f64()
    );
}

/// The end of a scenario under load: the load stopped, every record stored and committed, a
/// clean stop, and the suite's verification and summary line.
async fn drain_and_verify(s: &Scenario, d: &mut Daemon, load: Load, name: &str, kills: u64) {
    let produced = load.finish();
    s.wait_all_stored(Duration::from_secs(300)).await;
    wait_committed_to_end(s, Duration::from_secs(120)).await;
    d.signal("TERM");
    let code = d.wait(Duration::from_secs(30));
    assert_eq!(code, 0, "{name}: clean stop; log:\n{}", folded_tail(d, 30));
    println!("chaos: {name} produced={produced}");
    verify_and_report(s, name, kills).await;
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL as the test sees it

/// Runs one statement as the tests' owner user.
/// The SQLSTATE PostgreSQL answers `statement` with on a connection to `url`, inside a
/// transaction that is rolled back (`None` when it is accepted).
async fn refusal(url: &str, statement: &str) -> Option<String> {
    let mut conn = PgConnection::connect(url).await.expect("connect");
    let mut tx = conn.begin().await.expect("begin");
    let result = sqlx::query(sqlx::AssertSqlSafe(statement.to_string()))
        .execute(&mut *tx)
        .await;
    let _ = tx.rollback().await;
    result.err().map(|e| {
        let db = e.as_database_error().expect("a database error");
        format!("{} {}", db.code().unwrap_or_default(), db.message())
    })
}

/// Applies the schema as the owner, as an operator would before running the daemon as a
/// least-privilege role.
fn migrate_as_owner(s: &Scenario) {
    let out = Command::new(binary())
        .arg("migrate")
        .envs(s.env())
        .env("LP_LOG", "warn")
        .output()
        .expect("run log-processor migrate");
    assert!(
        out.status.success(),
        "log-processor migrate as the owner: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A login role for the daemon with only USAGE on the scenario's schema and SELECT, INSERT and
/// UPDATE on its three tables: no CREATE anywhere, owner of nothing.
struct Role {
    name: String,
    password: String,
    schema: String,
}

impl Role {
    async fn create(s: &Scenario) -> Role {
        let pool = s.pg().await;
        let (can,): (bool,) = sqlx::query_as(
            "SELECT rolcreaterole OR rolsuper FROM pg_roles WHERE rolname = current_user",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert!(
            can,
            "the tests' PostgreSQL user needs CREATEROLE to make the daemon's own role: \
             `tests/infra/infra.sh up` grants it (or, as a superuser, ALTER ROLE logproc CREATEROLE)"
        );
        let role = Role {
            name: unique("lp_role"),
            password: format!("pw{}", std::process::id()),
            schema: s.schema.clone(),
        };
        s.sql(&format!(
            "CREATE ROLE {} LOGIN PASSWORD '{}'",
            role.name, role.password
        ))
        .await;
        s.sql(&format!(
            "GRANT USAGE ON SCHEMA {} TO {}",
            s.schema, role.name
        ))
        .await;
        s.sql(
            &format!(
                "GRANT SELECT, INSERT, UPDATE ON {0}.log_records, {0}.dead_letters, {0}.consumer_offsets, {0}.source_gaps, {0}.topic_identities TO {1}",
                s.schema, role.name
            ),
        )
        .await;
        // Released parked records leave their table.
        s.sql(&format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON {}.parked_records TO {}",
            s.schema, role.name
        ))
        .await;
        role
    }

    /// The tests' database URL with this role's credentials.
    fn url(&self) -> String {
        let url = database_url();
        let (scheme, rest) = url.split_once("://").expect("URL with scheme");
        let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
        format!("{scheme}://{}:{}@{host}", self.name, self.password)
    }

    /// Proof that the role is what it claims: it may not create anything, anywhere.
    async fn assert_least_privilege(&self, s: &Scenario) {
        let (db_create, schema_create, owns): (bool, bool, i64) = sqlx::query_as(
            "SELECT has_database_privilege($1, current_database(), 'CREATE'), \
                    has_schema_privilege($1, $2, 'CREATE'), \
                    (SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner WHERE r.rolname = $1)",
        )
        .bind(&self.name)
        .bind(&s.schema)
        .fetch_one(&s.pg().await)
        .await
        .unwrap();
        assert_eq!(
            (db_create, schema_create, owns),
            (false, false, 0),
            "the role may create nothing (database CREATE, schema CREATE, relations owned)"
        );
    }

    /// Sessions PostgreSQL has open for this role.
    async fn sessions(&self, s: &Scenario) -> i64 {
        let (n,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM pg_stat_activity WHERE usename = $1")
                .bind(&self.name)
                .fetch_one(&s.pg().await)
                .await
                .unwrap();
        n
    }

    /// The end of a scenario: its schema, topic and index removed, then (on drop) the role.
    async fn remove(self, s: &Scenario) {
        s.cleanup().await;
    }
}

/// The role is a cluster-wide object: it goes even when its scenario fails (its schema stays
/// then, for a look at what happened, without the role's grants).
impl Drop for Role {
    fn drop(&mut self) {
        let (name, schema, url) = (self.name.clone(), self.schema.clone(), database_url());
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut conn = PgConnection::connect(&url).await?;
                // Gone with the schema already when the scenario got to its end.
                for revoke in [
                    format!("REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {name}"),
                    format!("REVOKE ALL ON SCHEMA {schema} FROM {name}"),
                ] {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(revoke))
                        .execute(&mut conn)
                        .await;
                }
                sqlx::query(sqlx::AssertSqlSafe(format!("DROP ROLE IF EXISTS {name}")))
                    .execute(&mut conn)
                    .await
                    .map(|_| ())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("role {}: could not be dropped: {dropped:?}", self.name);
        }
    }
}

/// The daemon's environment as `role` with `LP_MIGRATE=migrate`.
fn as_role(s: &Scenario, role: &Role, migrate: &str) -> Vec<(String, String)> {
    with(
        &chaos_env(s),
        &[
            ("LP_DATABASE_URL", role.url()),
            ("LP_MIGRATE", migrate.to_string()),
        ],
    )
}

/// A row for `log_records` that PostgreSQL would take (the test's own probe of a refusal).
fn probe_row(schema: &str) -> String {
    format!(
        "INSERT INTO {schema}.log_records (topic, kafka_partition, kafka_offset, ts, fields) \
         VALUES ('probe', -1, -1, now(), '{{}}')"
    )
}

// ---------------------------------------------------------------------------------------------
// 1. The daemon's role loses INSERT on log_records for a while

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn refusal_1_privileges_revoked() {
    let name = "privileges_revoked";
    let mut rng = Rng::for_scenario(name);
    let (per_tick, fault) = sizes();
    let started = Instant::now();
    let s = Scenario::new("ref_revoke", 4).await;
    migrate_as_owner(&s);
    let role = Role::create(&s).await;
    let mut d = Daemon::start(&as_role(&s, &role, "off"));
    wait_line_alive(&mut d, "partitions assigned", Duration::from_secs(90)).await;
    let load = Load::start(&s, 0, per_tick, None);
    expect_progress(&s, &d, "the start", Duration::from_secs(60)).await;
    tokio::time::sleep(rng.millis(500, 2000)).await;

    let fault_at = Instant::now();
    s.sql(&format!(
        "REVOKE INSERT ON {}.log_records FROM {}",
        s.schema, role.name
    ))
    .await;
    let answer = refusal(&role.url(), &probe_row(&s.schema)).await;
    println!("chaos: {name} revoked; PostgreSQL answers the role's INSERT with {answer:?}");
    assert!(
        answer.as_deref().is_some_and(|a| a.starts_with("42501")),
        "the revoke took effect: {answer:?}"
    );
    watch_hold(&s, &mut d, name, fault_at, fault, true).await;
    assert!(
        d.has_line("permission denied"),
        "{name}: the daemon met the refusal; log:\n{}",
        folded_tail(&d, 30)
    );
    s.sql(&format!(
        "GRANT INSERT ON {}.log_records TO {}",
        s.schema, role.name
    ))
    .await;
    expect_release(&s, &d, name).await;

    drain_and_verify(&s, &mut d, load, name, 0).await;
    println!(
        "chaos: {name} took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    role.remove(&s).await;
}

// ---------------------------------------------------------------------------------------------
// 2. dead_letters refuses every row while malformed records flow; a restart while held

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn refusal_2_dead_letters_constraint() {
    let name = "dead_letters_constraint";
    let mut rng = Rng::for_scenario(name);
    let (per_tick, fault) = sizes();
    let started = Instant::now();
    let s = Scenario::new("ref_deadcheck", 4).await;
    // A short deadline: the stop while held must not wait for a store that refuses.
    let env = with(
        &chaos_env(&s),
        &[
            ("LP_SHUTDOWN_DEADLINE_MS", "5000".into()),
            ("LP_GRACE_PERIOD_MS", "8000".into()),
        ],
    );
    let mut d = Daemon::start(&env);
    wait_line_alive(&mut d, "partitions assigned", Duration::from_secs(90)).await;
    // 5% malformed: every partition meets a dead letter within a second of the constraint.
    let load = Load::start_with_ratio(&s, 0, per_tick, None, 0.05);
    expect_progress(&s, &d, "the start", Duration::from_secs(60)).await;
    tokio::time::sleep(rng.millis(500, 2000)).await;

    let fault_at = Instant::now();
    s.sql(&format!(
        "ALTER TABLE {}.dead_letters ADD CONSTRAINT no_dl CHECK (false) NOT VALID",
        s.schema
    ))
    .await;
    let answer = refusal(
        &database_url(),
        &format!(
            "INSERT INTO {}.dead_letters (topic, kafka_partition, kafka_offset, stage, reason) \
             VALUES ('probe', -1, -1, 'decode', 'probe')",
            s.schema
        ),
    )
    .await;
    println!("chaos: {name} constraint added; PostgreSQL answers a dead letter with {answer:?}");
    assert!(
        answer.as_deref().is_some_and(|a| a.starts_with("23514")),
        "the constraint refuses dead letters: {answer:?}"
    );
    watch_hold(&s, &mut d, name, fault_at, fault / 2 + SETTLE, true).await;
    assert!(
        d.has_line("no_dl"),
        "{name}: the daemon met the refusal; log:\n{}",
        folded_tail(&d, 30)
    );

    // Stopped while it holds: it may give the held batches up, never skip them.
    d.signal("TERM");
    let code = d.wait(Duration::from_secs(15));
    assert!(
        matches!(code, 0 | 3),
        "{name}: stop while held: exit {code}; log:\n{}",
        folded_tail(&d, 30)
    );
    println!("chaos: {name} stopped while held: exit {code}");
    check_offsets(&s, &format!("{name}: after the stop while held"), true).await;
    assert_no_refusal_dead_letters(&s, name).await;

    // A new process meets the same refusal and holds again.
    let restarted = Instant::now();
    let mut d = Daemon::start(&env);
    wait_line_alive(&mut d, "partitions assigned", Duration::from_secs(90)).await;
    watch_hold(
        &s,
        &mut d,
        &format!("{name} after the restart"),
        restarted,
        fault / 2 + SETTLE,
        true,
    )
    .await;
    s.sql(&format!(
        "ALTER TABLE {}.dead_letters DROP CONSTRAINT no_dl",
        s.schema
    ))
    .await;
    expect_release(&s, &d, name).await;

    drain_and_verify(&s, &mut d, load, name, 1).await;
    // Dead letters say how their payload is kept; the raw bytes were compared above.
    let (raw, total): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FILTER (WHERE payload_encoding = 'raw'), count(*) FROM {}.dead_letters",
        s.schema
    )))
    .fetch_one(&s.pg().await)
    .await
    .unwrap_or_else(|e| panic!("{name}: dead_letters.payload_encoding: {e}"));
    assert_eq!(raw, total, "{name}: every dead letter holds its raw bytes");
    finish(&s, name, started).await;
}

// ---------------------------------------------------------------------------------------------
// 3. The search indices refuse writes for a while

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn refusal_3_index_read_only() {
    let name = "index_read_only";
    let mut rng = Rng::for_scenario(name);
    let (per_tick, fault) = sizes();
    let started = Instant::now();
    let s = Scenario::new("ref_readonly", 4).await;
    let mut d = Daemon::start(&chaos_env(&s));
    wait_line_alive(&mut d, "partitions assigned", Duration::from_secs(90)).await;
    let load = Load::start(&s, 0, per_tick, None);
    expect_progress(&s, &d, "the start", Duration::from_secs(60)).await;
    tokio::time::sleep(rng.millis(500, 2000)).await;

    let base = elasticsearch_url();
    let block = |on: bool| {
        let url = format!("{base}/{}-*/_settings", s.index);
        async move {
            let body = serde_json::json!({ "index.blocks.write": on }).to_string();
            let (status, text) = http("PUT", &url, Some(body)).await;
            assert_eq!(status, 200, "index.blocks.write={on}: {text}");
        }
    };
    let fault_at = Instant::now();
    block(true).await;
    let (_, indices) = http(
        "GET",
        &format!("{base}/_cat/indices/{}-*?h=index", s.index),
        None,
    )
    .await;
    let first = indices
        .split_whitespace()
        .next()
        .expect("an index")
        .to_string();
    let (status, answer) = http(
        "POST",
        &format!("{base}/{first}/_doc"),
        Some(r#"{"probe": true}"#.into()),
    )
    .await;
    println!(
        "chaos: {name} blocked {}; the index answers a write with {status} {}",
        indices.split_whitespace().collect::<Vec<_>>().join(","),
        answer.chars().take(200).collect::<String>()
    );
    assert_eq!(status, 403, "the block refuses writes: {answer}");
    watch_hold(&s, &mut d, name, fault_at, fault, true).await;
    block(false).await;
    expect_release(&s, &d, name).await;

    drain_and_verify(&s, &mut d, load, name, 0).await;
    finish(&s, name, started).await;
}

// ---------------------------------------------------------------------------------------------
// 4. A lock held past the statement timeout

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn refusal_4_lock_past_statement_timeout() {
    let name = "lock_past_statement_timeout";
    let mut rng = Rng::for_scenario(name);
    let (per_tick, fault) = sizes();
    let hold = fault.mul_f64(0.8);
    let started = Instant::now();
    let s = Scenario::new("ref_lock", 4).await;
    let env = with(
        &chaos_env(&s),
        &[("LP_PG_STATEMENT_TIMEOUT_MS", "2000".into())],
    );
    let mut d = Daemon::start(&env);
    wait_line_alive(&mut d, "partitions assigned", Duration::from_secs(90)).await;
    let load = Load::start(&s, 0, per_tick, None);
    expect_progress(&s, &d, "the start", Duration::from_secs(60)).await;
    tokio::time::sleep(rng.millis(500, 2000)).await;

    let mut locker = PgConnection::connect(&database_url())
        .await
        .expect("connect");
    let fault_at = Instant::now();
    let mut lock = locker.begin().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "LOCK TABLE {}.log_records IN ACCESS EXCLUSIVE MODE",
        s.schema
    )))
    .execute(&mut *lock)
    .await
    .unwrap();
    let (locker_pid,): (i32,) = sqlx::query_as("SELECT pg_backend_pid()")
        .fetch_one(&mut *lock)
        .await
        .unwrap();
    // log_records cannot be read while locked: the watch reads the other tables only, and
    // PostgreSQL shows the daemon's sessions waiting on the lock.
    let blocked = {
        let s = s.clone();
        tokio::spawn(async move {
            let pool = s.pg().await;
            let mut most = 0i64;
            let t = Instant::now();
            while t.elapsed() < hold {
                let (n,): (i64,) = sqlx::query_as(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE application_name = 'log-processor' AND $1 = ANY(pg_blocking_pids(pid))",
                )
                .bind(locker_pid)
                .fetch_one(&pool)
                .await
                .unwrap();
                most = most.max(n);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            most
        })
    };
    watch_hold(&s, &mut d, name, fault_at, hold, false).await;
    let blocked = blocked.await.unwrap();
    lock.rollback().await.unwrap();
    println!("chaos: {name} lock released; daemon sessions seen waiting on it: {blocked}");
    assert!(blocked >= 1, "{name}: the daemon waited on the lock");
    assert!(
        d.has_line("statement timeout"),
        "{name}: the daemon's statements ran into the statement timeout; log:\n{}",
        folded_tail(&d, 30)
    );
    expect_release(&s, &d, name).await;

    drain_and_verify(&s, &mut d, load, name, 0).await;
    finish(&s, name, started).await;
}

// ---------------------------------------------------------------------------------------------
// 5. A least-privilege role: schema migrated by its owner, daemon without CREATE anywhere

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn refusal_5_least_privilege_role() {
    let name = "least_privilege_role";
    let _rng = Rng::for_scenario(name);
    let (per_tick, fault) = sizes();
    let started = Instant::now();
    let s = Scenario::new("ref_leastpriv", 4).await;
    migrate_as_owner(&s);
    let role = Role::create(&s).await;
    role.assert_least_privilege(&s).await;
    let mut seq = 0;
    for migrate in ["auto", "off"] {
        let what = format!("{name} LP_MIGRATE={migrate}");
        let mut d = Daemon::start(&as_role(&s, &role, migrate));
        wait_line_alive(&mut d, "partitions assigned", Duration::from_secs(90)).await;
        let load = Load::start(&s, seq, per_tick, Some(per_tick * 10 * fault.as_secs() / 2));
        expect_progress(&s, &d, &what, Duration::from_secs(60)).await;
        let sessions = role.sessions(&s).await;
        assert!(
            sessions >= 1,
            "{what}: the daemon is connected as {}",
            role.name
        );
        seq += load.handle.join().expect("producer thread");
        s.wait_all_stored(Duration::from_secs(120)).await;
        wait_committed_to_end(&s, Duration::from_secs(60)).await;
        assert_no_refusal_dead_letters(&s, &what).await;
        d.signal("TERM");
        let code = d.wait(Duration::from_secs(30));
        assert_eq!(code, 0, "{what}: clean stop; log:\n{}", folded_tail(&d, 30));
        println!(
            "chaos: {what} stored all {seq} records as {} ({sessions} sessions)",
            role.name
        );
    }
    role.assert_least_privilege(&s).await;
    verify_and_report(&s, name, 0).await;
    println!(
        "chaos: {name} took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    role.remove(&s).await;
}
