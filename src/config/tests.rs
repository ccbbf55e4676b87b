//! The settings' parsing, validation and masking.

use super::*;
use clap::Parser;

#[derive(Parser)]
struct T {
    #[command(flatten)]
    s: Settings,
}

/// The settings these flags give (also used by `security_tests.rs`).
pub(super) fn parse(args: &[&str]) -> Settings {
    T::try_parse_from(std::iter::once("t").chain(args.iter().copied()))
        .unwrap()
        .s
}

#[test]
fn defaults_are_valid() {
    parse(&[]).validate().unwrap();
}

#[test]
fn passwords_never_survive_masking() {
    for (url, secret) in [
        ("postgres://u:s3cr/t?x#y@db:5432/logs", "s3cr"),
        (
            "postgres://u@db/logs?sslmode=require&password=hunter2",
            "hunter2",
        ),
        ("https://u:pw@es:9200", "pw@"),
        ("postgres://db/logs?SSLPASSWORD=keypass", "keypass"),
    ] {
        let masked = mask_url(url);
        assert!(!masked.contains(secret), "{url} -> {masked}");
    }
    assert_eq!(mask_url("http://es:9200/x"), "http://es:9200/x");
}

#[test]
fn scrub_masks_every_url_in_a_text() {
    assert_eq!(
        scrub_urls("error sending to http://u:pw@h:9200/_bulk: refused"),
        "error sending to http://u:****@h:9200/_bulk: refused"
    );
    assert_eq!(
        scrub_urls("bad URL postgres://a:secret@db/x and more"),
        "bad URL postgres://a:****@db/x and more"
    );
}

#[test]
fn deadline_must_fit_in_grace_period_with_margin() {
    let err = parse(&["--shutdown-deadline-ms", "29000"])
        .validate()
        .unwrap_err();
    assert!(err.to_string().contains("LP_SHUTDOWN_DEADLINE_MS"), "{err}");
    parse(&["--shutdown-deadline-ms", "28000"])
        .validate()
        .unwrap();
    let err = parse(&["--shutdown-margin-ms", "1000"])
        .validate()
        .unwrap_err();
    assert_eq!(err.field, "LP_SHUTDOWN_MARGIN_MS (--shutdown-margin-ms)");
}

#[test]
fn refresh_interval_is_bounded() {
    for ok in ["100", "1000", "3600000"] {
        parse(&["--es-refresh-ms", ok]).validate().unwrap();
    }
    for bad in ["0", "99", "3600001"] {
        let err = parse(&["--es-refresh-ms", bad]).validate().unwrap_err();
        assert_eq!(err.field, "LP_ES_REFRESH_MS (--es-refresh-ms)", "{bad}");
    }
}

#[test]
fn zero_is_refused_where_it_would_spin_or_time_out_at_once() {
    for (flag, field) in [
        ("--commit-interval-ms", "LP_COMMIT_INTERVAL_MS"),
        ("--batch-linger-ms", "LP_BATCH_LINGER_MS"),
        ("--es-timeout-ms", "LP_ES_TIMEOUT_MS"),
        ("--pg-statement-timeout-ms", "LP_PG_STATEMENT_TIMEOUT_MS"),
    ] {
        let err = parse(&[flag, "0"]).validate().unwrap_err();
        assert!(err.field.starts_with(field), "{flag}: {err}");
    }
}

#[test]
fn revoke_drain_default_follows_a_lowered_session_timeout() {
    let s = parse(&["--session-timeout-ms", "6000"]);
    s.validate().unwrap();
    assert_eq!(s.revoke_drain_timeout(), Duration::from_millis(3000));
    assert_eq!(parse(&[]).revoke_drain_timeout(), Duration::from_secs(10));
}

#[test]
fn the_memory_settings_name_their_field_and_enter_the_worst_case() {
    let err = parse(&["--kafka-fetch-max-bytes", "1048576"])
        .validate()
        .unwrap_err();
    assert!(err.field.starts_with("LP_KAFKA_FETCH_MAX_BYTES"), "{err:?}");
    // Two 4 MiB batches with four copies each need 32 MiB.
    let err = parse(&["--memory-budget-mb", "31"]).validate().unwrap_err();
    assert!(err.field.starts_with("LP_MEMORY_BUDGET_MB"), "{err:?}");
    parse(&["--memory-budget-mb", "32"]).validate().unwrap();
    // 64 + 16 (queue) + 17 (a 16 MiB fetch and framing) + 128 + 4 x 17.
    assert_eq!(parse(&[]).worst_case_memory_mib(), 293);
    let bigger = parse(&["--kafka-fetch-max-bytes", "33554432"]);
    assert_eq!(bigger.worst_case_memory_mib(), 293 + 5 * 16);
}

#[test]
fn revoke_drain_below_session_timeout() {
    let err = parse(&[
        "--session-timeout-ms",
        "6000",
        "--revoke-drain-timeout-ms",
        "6000",
    ])
    .validate()
    .unwrap_err();
    assert!(err.field.starts_with("LP_REVOKE_DRAIN_TIMEOUT_MS"));
}

#[test]
fn group_stall_timeout_follows_the_session_timeout() {
    assert_eq!(parse(&[]).group_stall_timeout(), Duration::from_secs(120));
    let long = parse(&[
        "--session-timeout-ms",
        "45000",
        "--max-poll-interval-ms",
        "300000",
    ]);
    assert_eq!(long.group_stall_timeout(), Duration::from_secs(180));
    long.validate().unwrap();
    let err = parse(&[
        "--session-timeout-ms",
        "6000",
        "--revoke-drain-timeout-ms",
        "3000",
        "--group-stall-timeout-ms",
        "11999",
    ])
    .validate()
    .unwrap_err();
    assert!(err.field.starts_with("LP_GROUP_STALL_TIMEOUT_MS"), "{err}");
}

#[test]
fn the_topic_refresh_is_short_only_where_patterns_expect_new_topics() {
    let refresh = |args: &[&str]| parse(args).topic_refresh().as_millis();
    assert_eq!(refresh(&["--topics", "logs"]), 300_000);
    assert_eq!(refresh(&["--topics", "logs, ^app-.*"]), 10_000);
    assert_eq!(
        refresh(&["--topics", "^app-", "--topic-refresh-ms", "2000"]),
        2_000
    );
    parse(&["--topics", "logs,^app-[0-9]+$"])
        .validate()
        .unwrap();
}

#[test]
fn bad_fields_are_named() {
    for (args, field) in [
        (vec!["--batch-max-records", "0"], "LP_BATCH_MAX_RECORDS"),
        (vec!["--workers", "0"], "LP_WORKERS"),
        (vec!["--topics", ""], "LP_TOPICS"),
        (vec!["--topics", "logs,^logs-("], "LP_TOPICS"),
        (vec!["--topics", r"^logs-\d+"], "LP_TOPICS"),
        (vec!["--topic-refresh-ms", "999"], "LP_TOPIC_REFRESH_MS"),
        (vec!["--database-url", "mysql://a:b@c/d"], "LP_DATABASE_URL"),
        (vec!["--es-index", "Logs"], "LP_ES_INDEX"),
        (vec!["--es-index", "logs-%Q"], "LP_ES_INDEX"),
        (vec!["--redact-hash", "email"], "LP_REDACT_KEY"),
        (vec!["--es-bulk-max-bytes", "1000"], "LP_ES_BULK_MAX_BYTES"),
    ] {
        let err = parse(&args).validate().unwrap_err();
        assert!(err.field.starts_with(field), "{args:?}: {err}");
    }
}

#[test]
fn masks_passwords() {
    assert_eq!(
        mask_url("postgres://u:secret@h:5432/db"),
        "postgres://u:****@h:5432/db"
    );
    // An '@' after the host makes the mask hide more than the password, never less.
    assert_eq!(mask_url("http://u:p%40ss@h/x@y"), "http://u:****@y");
    assert_eq!(mask_url("postgres://u@h/db"), "postgres://u@h/db");
    assert_eq!(mask_url("http://h:9200"), "http://h:9200");
    let s = parse(&[
        "--database-url",
        "postgres://u:hunter2@h/db",
        "--redact-key",
        "k3y",
    ]);
    let shown = View::new(&s, &Sources::default()).to_string();
    assert!(
        !shown.contains("hunter2") && !shown.contains("k3y"),
        "{shown}"
    );
}
