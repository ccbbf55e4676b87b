//! The daemon over secured connections, against the real servers `tests/infra/secure.sh`
//! starts: Kafka over SASL_SSL with SCRAM-SHA-512 (the test itself produces and reads back
//! through the same broker's plaintext listener), PostgreSQL with `sslmode=verify-full` and
//! TLS-only `hostssl` rules, Elasticsearch with x-pack security over HTTPS with a user and
//! password. Plus the refusals: wrong password, unknown CA, wrong host name, expired
//! certificate, each named in the daemon's log with no secret in its output.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::chaos_kit::*;
use common::*;

/// A refusal case: what it is, the settings that cause it, what the log must say.
type Case<'a> = (&'a str, Vec<(&'a str, String)>, Vec<&'a str>);

/// What `secure.sh env` reports.
struct Secure(HashMap<String, String>);

impl Secure {
    fn get(&self, k: &str) -> String {
        self.0
            .get(k)
            .cloned()
            .unwrap_or_else(|| panic!("secure.sh env lacks {k}"))
    }
    fn cert(&self, name: &str) -> PathBuf {
        Path::new(&self.get("SECURE_CERTS")).join(name)
    }
}

/// Starts the secured services (idempotent) and points the harness at them: records are
/// produced to the secured broker's plaintext listener and read back from the TLS-only
/// PostgreSQL. Runs before this binary starts any client thread.
fn secure() -> &'static Secure {
    static S: OnceLock<Secure> = OnceLock::new();
    S.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/infra/secure.sh");
        let up = Command::new("bash").args([script, "up"]).output().unwrap();
        assert!(
            up.status.success(),
            "tests/infra/secure.sh up failed:\n{}{}",
            String::from_utf8_lossy(&up.stdout),
            String::from_utf8_lossy(&up.stderr)
        );
        let env = Command::new("bash").args([script, "env"]).output().unwrap();
        let vars: HashMap<String, String> = String::from_utf8_lossy(&env.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let s = Secure(vars);
        let harness_pg = format!(
            "{}?sslmode=verify-full&sslrootcert={}",
            s.get("SECURE_PG_URL").replace(
                "://logproc@",
                &format!("://logproc:{}@", s.get("SECURE_PG_PASSWORD"))
            ),
            s.cert("ca.crt").display()
        );
        // SAFETY: set once, before this test binary creates a Kafka or PostgreSQL client.
        unsafe {
            std::env::set_var("KAFKA_BROKERS", s.get("SECURE_KAFKA_PLAINTEXT"));
            std::env::set_var("DATABASE_URL", harness_pg);
            std::env::set_var(
                "ELASTICSEARCH_URL",
                s.get("SECURE_ES_URL").replace(
                    "https://",
                    &format!(
                        "https://{}:{}@",
                        s.get("SECURE_ES_USER"),
                        s.get("SECURE_ES_PASSWORD")
                    ),
                ),
            );
            std::env::set_var("ELASTICSEARCH_CA_FILE", s.cert("ca.crt"));
        }
        s
    })
}

/// A secret written to a file for the daemon's `..._FILE` settings.
fn secret_file(name: &str, value: &str) -> String {
    let path = std::env::temp_dir().join(unique(name));
    std::fs::write(&path, format!("{value}\n")).unwrap();
    path.display().to_string()
}

/// The daemon's environment for `s` over the secured connections: SASL_SSL with SCRAM, the
/// password and the PostgreSQL URL from files, verify-full against the test CA, HTTPS to the
/// search store with its password from a file.
fn secured_env(sec: &Secure, base: &[(String, String)]) -> Vec<(String, String)> {
    let pg_url = sec.get("SECURE_PG_URL").replace(
        "://logproc@",
        &format!("://logproc:{}@", sec.get("SECURE_PG_PASSWORD")),
    );
    let ca = sec.cert("ca.crt").display().to_string();
    let env: Vec<_> = base
        .iter()
        .filter(|(k, _)| k != "LP_DATABASE_URL" && k != "LP_ELASTICSEARCH_URL")
        .cloned()
        .collect();
    with(
        &env,
        &[
            ("LP_KAFKA_BROKERS", sec.get("SECURE_KAFKA_SASL_SSL")),
            ("LP_KAFKA_SECURITY_PROTOCOL", "SASL_SSL".into()),
            ("LP_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512".into()),
            ("LP_KAFKA_SASL_USERNAME", sec.get("SECURE_KAFKA_USER")),
            (
                "LP_KAFKA_SASL_PASSWORD_FILE",
                secret_file("kafka-pw", &sec.get("SECURE_KAFKA_PASSWORD")),
            ),
            ("LP_KAFKA_SSL_CA_FILE", ca.clone()),
            ("LP_DATABASE_URL_FILE", secret_file("pg-url", &pg_url)),
            ("LP_PG_SSLMODE", "verify-full".into()),
            ("LP_PG_SSLROOTCERT", ca.clone()),
            ("LP_ELASTICSEARCH_URL", sec.get("SECURE_ES_URL")),
            ("LP_ES_CA_FILE", ca),
            ("LP_ES_USERNAME", sec.get("SECURE_ES_USER")),
            (
                "LP_ES_PASSWORD_FILE",
                secret_file("es-pw", &sec.get("SECURE_ES_PASSWORD")),
            ),
        ],
    )
}

/// No secret of the secured setup in `text`.
fn assert_no_secret(sec: &Secure, text: &str, what: &str) {
    for k in [
        "SECURE_KAFKA_PASSWORD",
        "SECURE_PG_PASSWORD",
        "SECURE_ES_PASSWORD",
    ] {
        assert!(
            !text.contains(&sec.get(k)),
            "{what}: the value of {k} appears in the output:\n{text}"
        );
    }
    assert!(
        !text.contains("wrong-pw-123"),
        "{what}: a wrong password appears:\n{text}"
    );
}

fn full_log(d: &Daemon) -> String {
    d.lines
        .lock()
        .unwrap()
        .iter()
        .map(|(_, l)| strip_ansi(l))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_over_sasl_ssl_and_verify_full() {
    let sec = secure();
    let s = Scenario::new("secured", 4).await;
    let bad = s.produce(0, 5_000, 0.01);
    let env = secured_env(sec, &s.env());
    let mut d = Daemon::start(&env);
    s.wait_all_stored(Duration::from_secs(180)).await;
    wait_committed_to_end(&s, Duration::from_secs(60)).await;
    // The daemon really uses TLS: PostgreSQL's own view of the daemon's connections.
    let pool = s.pg().await;
    let (conns, tls): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a \
         JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = 'log-processor'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        conns > 0 && tls == conns,
        "daemon connections {conns}, over TLS {tls}"
    );
    d.signal("TERM");
    let code = d.wait(Duration::from_secs(30));
    assert_eq!(code, 0, "clean exit; log:\n{}", d.tail(30));
    let v = s.verify().await;
    v.assert_exact("secured");
    assert_eq!(
        v.dead_lettered, bad,
        "exactly the malformed records are dead-lettered"
    );
    assert_eq!(s.pg_watermarks().await, s.end_offsets());
    assert_no_secret(sec, &full_log(&d), "daemon log");
    println!(
        "secured: records={} dead_lettered={} over SASL_SSL/SCRAM-SHA-512 and verify-full",
        v.records, v.dead_lettered
    );
    s.cleanup().await;
}

/// SIGKILL at random moments and inside the write windows, over the secured connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn sigkill_over_secured_connections() {
    let sec = secure();
    let mut rng = Rng::for_scenario("secured_sigkill");
    let s = Scenario::new("secured_kill", 4).await;
    let env = with(
        &secured_env(sec, &chaos_env(&s)),
        &[("LP_BATCH_MAX_RECORDS", "200".into())],
    );
    let points = [
        "after_es_bulk",
        "in_pg_transaction",
        "after_pg_commit",
        "random",
    ];
    let mut produced = 0u64;
    let mut kills = 0u64;
    let started = Instant::now();
    for point in points {
        s.produce(produced, 4_000, 0.01);
        produced += 4_000;
        let before = stored_total(&s).await;
        if point == "random" {
            let mut d = Daemon::start(&env);
            wait_line(&d, "partitions assigned", Duration::from_secs(90)).await;
            wait_progress(&s, before, Duration::from_secs(30)).await;
            tokio::time::sleep(rng.millis(0, 1500)).await;
            assert!(alive(&mut d), "daemon exited; log:\n{}", d.tail(30));
            d.kill();
        } else {
            let mut d = Daemon::start(&with(&env, &[("LP_FAILPOINTS", format!("{point}=0.2"))]));
            let t = Instant::now();
            while !d.has_line("failpoint reached") {
                assert!(
                    t.elapsed() < Duration::from_secs(120),
                    "failpoint {point} not reached (built with --features failpoints?); log:\n{}",
                    d.tail(30)
                );
                assert!(alive(&mut d), "daemon exited; log:\n{}", d.tail(30));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            d.kill();
        }
        kills += 1;
        println!(
            "secured_sigkill: killed at {point} ({:.0?})",
            started.elapsed()
        );
    }
    final_clean_run(&s, &env, "secured_sigkill").await;
    verify_and_report(&s, "secured_sigkill", kills).await;
    s.cleanup().await;
}

/// Starts the daemon with `env`, waits for a log line holding every one of `needles` (the
/// connection and the cause), checks it never became ready and printed no secret, and stops it.
async fn refused(sec: &Secure, env: &[(String, String)], needles: &[&str], what: &str) {
    let mut d = Daemon::start(env);
    let start = Instant::now();
    let line = loop {
        let found = d
            .lines
            .lock()
            .unwrap()
            .iter()
            .map(|(_, l)| strip_ansi(l).to_lowercase())
            .find(|l| needles.iter().all(|n| l.contains(&n.to_lowercase())));
        if let Some(l) = found {
            break l;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what}: no log line with {needles:?}; log:\n{}",
            d.tail(40)
        );
        if !alive(&mut d) {
            // An exit is also an answer, if its message names the cause.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let log = full_log(&d).to_lowercase();
            assert!(
                needles.iter().all(|n| log.contains(&n.to_lowercase())),
                "{what}: exited without naming {needles:?}; log:\n{log}"
            );
            break log;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        !d.has_line("partitions assigned"),
        "{what}: the consumer joined anyway"
    );
    if alive(&mut d) {
        let (status, _) = http("GET", &format!("http://{}/readyz", d.http_addr()), None).await;
        assert_eq!(status, 503, "{what}: not ready while refused");
        d.kill();
    }
    assert_no_secret(sec, &full_log(&d), what);
    println!("secured_refusal: {what}: {}", line.trim());
}

fn kafka_variant(
    sec: &Secure,
    s: &Scenario,
    overrides: &[(&str, String)],
) -> Vec<(String, String)> {
    with(&secured_env(sec, &s.env()), overrides)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_refusals_name_connection_and_cause() {
    let sec = secure();
    let s = Scenario::new("secured_refuse", 1).await;
    let wrong_pw = secret_file("wrong-kafka-pw", "wrong-pw-123");
    let cases: Vec<Case> = vec![
        (
            "kafka wrong password",
            vec![("LP_KAFKA_SASL_PASSWORD_FILE", wrong_pw)],
            vec!["sasl_ssl://", "authentication", "invalid credentials"],
        ),
        (
            "kafka unknown CA",
            vec![(
                "LP_KAFKA_SSL_CA_FILE",
                sec.cert("other-ca.crt").display().to_string(),
            )],
            vec!["sasl_ssl://", "certificate verify failed"],
        ),
        (
            "kafka wrong hostname",
            vec![("LP_KAFKA_BROKERS", sec.get("SECURE_KAFKA_WRONGHOST"))],
            vec!["sasl_ssl://", "certificate verify failed"],
        ),
        (
            "kafka expired certificate",
            vec![("LP_KAFKA_BROKERS", sec.get("SECURE_KAFKA_EXPIRED"))],
            vec!["sasl_ssl://", "certificate verify failed"],
        ),
    ];
    for (what, overrides, needles) in cases {
        refused(sec, &kafka_variant(sec, &s, &overrides), &needles, what).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refusals_name_connection_and_cause() {
    let sec = secure();
    let s = Scenario::new("secured_pg_refuse", 1).await;
    let base = secured_env(sec, &s.env());
    let url = |user_pw: &str, host: &str| {
        sec.get("SECURE_PG_URL")
            .replace("://logproc@localhost", &format!("://{user_pw}@{host}"))
    };
    let cases: Vec<Case> = vec![
        (
            "postgresql wrong password",
            vec![(
                "LP_DATABASE_URL_FILE",
                secret_file("pg-wrong", &url("logproc:wrong-pw-123", "localhost")),
            )],
            vec!["postgresql", "password authentication failed"],
        ),
        (
            "postgresql unknown CA",
            vec![(
                "LP_PG_SSLROOTCERT",
                sec.cert("other-ca.crt").display().to_string(),
            )],
            vec!["postgresql", "unknownissuer"],
        ),
        (
            "postgresql wrong hostname",
            vec![(
                "LP_DATABASE_URL_FILE",
                secret_file(
                    "pg-host",
                    &url(
                        &format!("logproc:{}", sec.get("SECURE_PG_PASSWORD")),
                        "127.0.0.2",
                    ),
                ),
            )],
            vec!["postgresql", "not valid for name"],
        ),
        (
            "postgresql without TLS",
            vec![("LP_PG_SSLMODE", "disable".into())],
            vec!["postgresql", "no encryption"],
        ),
    ];
    for (what, overrides, needles) in cases {
        refused(sec, &with(&base, &overrides), &needles, what).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_store_refusals_name_connection_and_cause() {
    let sec = secure();
    let s = Scenario::new("secured_es_refuse", 1).await;
    let base = secured_env(sec, &s.env());
    let cases: Vec<Case> = vec![
        (
            "elasticsearch wrong password",
            vec![(
                "LP_ES_PASSWORD_FILE",
                secret_file("es-wrong", "wrong-pw-123"),
            )],
            vec!["elasticsearch", "401"],
        ),
        (
            "elasticsearch unknown CA",
            vec![(
                "LP_ES_CA_FILE",
                sec.cert("other-ca.crt").display().to_string(),
            )],
            vec!["elasticsearch", "unknownissuer"],
        ),
        (
            "elasticsearch wrong hostname",
            vec![(
                "LP_ELASTICSEARCH_URL",
                sec.get("SECURE_ES_URL").replace("localhost", "127.0.0.2"),
            )],
            vec!["elasticsearch", "not valid for name"],
        ),
    ];
    for (what, overrides, needles) in cases {
        refused(sec, &with(&base, &overrides), &needles, what).await;
    }
}

/// A client certificate in place of a password: `migrate` as the `cert`-authenticated role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_client_certificate_authenticates() {
    let sec = secure();
    let schema = unique("certrole").to_lowercase();
    let out = Command::new(binary())
        .arg("migrate")
        .env("LP_DATABASE_URL", sec.get("SECURE_PG_CERT_URL"))
        .env("LP_PG_SCHEMA", &schema)
        .env("LP_PG_SSLMODE", "verify-full")
        .env("LP_PG_SSLROOTCERT", sec.cert("ca.crt"))
        .env("LP_PG_SSLCERT", sec.cert("client.crt"))
        .env("LP_PG_SSLKEY", sec.cert("client.key"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "migrate with a client certificate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pool = Scenario::new("secured_cert", 1).await.pg().await;
    let (owner,): (String,) = sqlx::query_as(
        "SELECT tableowner::text FROM pg_tables WHERE schemaname = $1 AND tablename = 'log_records'",
    )
    .bind(&schema)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        owner, "logproc_cert",
        "the tables were made by the certificate's role"
    );
}

/// `check-config` shows each connection's security with the secrets masked, and a missing
/// certificate or an unsupported mechanism stops start-up naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_shows_security_masked_and_names_bad_fields() {
    let sec = secure();
    let s = Scenario::new("secured_cfg", 1).await;
    let env = secured_env(sec, &s.env());
    let run = |env: &[(String, String)]| {
        Command::new(binary())
            .arg("check-config")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap()
    };
    let out = run(&env);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    for expected in [
        "kafka: security.protocol=SASL_SSL sasl.mechanism=SCRAM-SHA-512 sasl.username=logproc sasl.password=**** (from ",
        "verify_hostname=true",
        "postgresql: sslmode=verify-full",
        "search store: url=https://localhost:",
        "auth=basic user=logproc password=**** (from ",
    ] {
        assert!(
            text.contains(expected),
            "check-config lacks {expected:?}:\n{text}"
        );
    }
    assert_no_secret(sec, &text, "check-config");

    for (var, value, field) in [
        (
            "LP_KAFKA_SSL_CA_FILE",
            "/nonexistent/ca.pem",
            "LP_KAFKA_SSL_CA_FILE",
        ),
        (
            "LP_KAFKA_SASL_MECHANISM",
            "GSSAPI",
            "LP_KAFKA_SASL_MECHANISM",
        ),
        (
            "LP_PG_SSLROOTCERT",
            "/nonexistent/root.crt",
            "LP_PG_SSLROOTCERT",
        ),
        (
            "LP_KAFKA_SASL_PASSWORD_FILE",
            "/nonexistent/pw",
            "LP_KAFKA_SASL_PASSWORD_FILE",
        ),
    ] {
        let out = run(&with(&env, &[(var, value.into())]));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}={value}: {err}");
        assert!(
            err.contains(field),
            "{var}={value}: error names the field: {err}"
        );
        assert_no_secret(sec, &err, var);
    }
}
