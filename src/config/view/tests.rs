use std::collections::BTreeSet;

use clap::{Args, CommandFactory, FromArgMatches, Parser};

use super::super::Settings;
use super::{Source, Sources, View};

#[derive(Parser)]
struct T {
    #[command(flatten)]
    s: Settings,
}

/// The settings these flags give and the view of them, as `check-config` builds it.
fn view(args: &[&str], from_config_file: &[&str]) -> View {
    let argv = std::iter::once("t").chain(args.iter().copied());
    let matches = T::command().try_get_matches_from(argv).unwrap();
    let s = T::from_arg_matches(&matches).unwrap().s;
    let file: Vec<String> = from_config_file.iter().map(|s| s.to_string()).collect();
    View::new(&s, &Sources::from_matches(&matches, &file))
}

fn entry<'v>(v: &'v View, name: &str) -> &'v super::Entry {
    let found = v.settings.iter().find(|e| e.name == name);
    found.unwrap_or_else(|| panic!("{name} not in the view"))
}

#[test]
fn every_option_is_listed_once() {
    let command = Settings::augment_args(clap::Command::new("s"));
    let options: BTreeSet<String> = command
        .get_arguments()
        .filter_map(|a| a.get_env()?.to_str().map(String::from))
        .collect();
    let v = view(&[], &[]);
    let listed: Vec<&str> = v.settings.iter().map(|e| e.name.as_str()).collect();
    let unique: BTreeSet<String> = listed.iter().map(|n| n.to_string()).collect();
    assert_eq!(listed.len(), unique.len(), "a setting listed twice");
    assert_eq!(unique, options, "the view and the options differ");
}

#[test]
fn each_value_names_its_source() {
    let v = view(
        &["--workers", "6", "--kafka-option", "fetch.wait.max.ms=50"],
        &[],
    );
    assert_eq!(entry(&v, "LP_WORKERS").source, Source::Flag);
    assert_eq!(entry(&v, "LP_WORKERS").value, "6");
    assert_eq!(entry(&v, "LP_GROUP_ID").source, Source::Default);
    // Unset with a default computed from other settings: the effective value, derived.
    let pool = entry(&v, "LP_PG_POOL_SIZE");
    assert_eq!((pool.value.as_str(), pool.source), ("14", Source::Derived));
    let drain = entry(&v, "LP_REVOKE_DRAIN_TIMEOUT_MS");
    assert_eq!(
        (drain.value.as_str(), drain.source),
        ("10000", Source::Derived)
    );
    assert_eq!(entry(&v, "LP_ES_USERNAME").source, Source::Unset);
    let o = entry(&v, "LP_KAFKA_OPTION_FETCH_WAIT_MAX_MS");
    assert_eq!((o.value.as_str(), o.source), ("50", Source::Flag));
    // Value enums as their variables take them.
    let v = view(
        &["--pg-sslmode", "verify-full", "--log-format", "json"],
        &[],
    );
    assert_eq!(entry(&v, "LP_PG_SSLMODE").value, "verify-full");
    assert_eq!(entry(&v, "LP_LOG_FORMAT").value, "json");
    assert_eq!(entry(&v, "LP_KAFKA_SECURITY_PROTOCOL").value, "PLAINTEXT");
}

#[test]
fn secrets_read_from_files_say_so() {
    let v = view(&["--es-password-file", "/run/secrets/es"], &[]);
    // `load_secret_files` is not run here: the file's presence alone decides the source.
    let pw = entry(&v, "LP_ES_PASSWORD");
    assert_eq!((pw.value.as_str(), pw.source), ("****", Source::SecretFile));
    assert_eq!(entry(&v, "LP_ES_PASSWORD_FILE").value, "/run/secrets/es");
}

#[test]
fn text_is_one_line_per_setting_by_section_then_derived_and_security() {
    let v = view(&["--shutdown-deadline-ms", "20000"], &[]);
    let text = v.to_string();
    let mut sections = Vec::new();
    for line in text.lines().take_while(|l| *l != "[derived]") {
        if let Some(name) = line.strip_prefix('[') {
            sections.push(name.trim_end_matches(']'));
            continue;
        }
        if line.is_empty() {
            continue;
        }
        let (name, rest) = line.split_once('=').expect(line);
        assert!(name.starts_with("LP_"), "{line}");
        let source = rest.rsplit_once("  (").map(|(_, s)| s).expect(line);
        let known = [
            "default",
            "derived",
            "environment",
            "config file",
            "flag",
            "_FILE",
        ];
        assert!(
            known.iter().any(|k| source == format!("{k})")) || source == "unset)",
            "{line}"
        );
    }
    assert_eq!(sections.first(), Some(&"kafka"), "{text}");
    assert_eq!(sections.len(), 8, "{text}");
    assert!(
        text.contains("LP_SHUTDOWN_DEADLINE_MS=20000  (flag)"),
        "{text}"
    );
    // 20 s deadline: 2 s kept for the close, 18 s of drain, 10 s left to the grace period.
    assert!(
        text.contains("in-flight batches drain for 18000 ms, 2000 ms kept"),
        "{text}"
    );
    assert!(text.contains("leaves 10000 ms"), "{text}");
    let worst = v.derived.worst_case_memory_mib;
    assert!(text.contains(&format!("\nworst-case memory: {worst} MiB (")));
    assert!(text.contains("\n[security]\nkafka: security.protocol=PLAINTEXT\n"));
    assert!(
        text.contains("\npostgresql: sslmode=prefer (default)"),
        "{text}"
    );
    assert!(
        text.contains("\nsearch store: url=http://127.0.0.1:9200"),
        "{text}"
    );
}

#[test]
fn json_is_one_object_keyed_by_variable() {
    let v = view(&["--workers", "3"], &[]);
    let j: serde_json::Value = serde_json::from_str(&v.to_json()).unwrap();
    assert_eq!(j["settings"]["LP_WORKERS"]["value"], "3");
    assert_eq!(j["settings"]["LP_WORKERS"]["source"], "flag");
    assert_eq!(
        j["settings"]["LP_WORKERS"]["section"],
        "batching and memory"
    );
    assert_eq!(j["settings"]["LP_TOPICS"]["source"], "default");
    assert_eq!(j["settings"]["LP_LIVENESS_TIMEOUT_MS"]["source"], "derived");
    let v = view(&["--es-password-file", "/run/secrets/es"], &[]);
    let j: serde_json::Value = serde_json::from_str(&v.to_json()).unwrap();
    assert_eq!(j["settings"]["LP_ES_PASSWORD"]["source"], "_FILE");
    let v = view(&["--workers", "3"], &[]);
    let j: serde_json::Value = serde_json::from_str(&v.to_json()).unwrap();
    assert_eq!(j["derived"]["shutdown_deadline_ms"], 25000);
    assert_eq!(j["derived"]["shutdown_drain_ms"], 23000);
    assert_eq!(
        j["derived"]["worst_case_memory_mib"],
        v.derived.worst_case_memory_mib
    );
    assert_eq!(j["security"]["kafka"], "security.protocol=PLAINTEXT");
    let one_line: serde_json::Value = serde_json::from_str(&v.to_json_line()).unwrap();
    assert_eq!(one_line, j);
}
