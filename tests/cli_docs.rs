//! Shell completions and man pages, generated from the clap definitions by the binary itself
//! (`log-processor completions SHELL`, `log-processor man`): they name every command, the man
//! pages render with groff (scripts/system-deps.sh installs groff-base), and none shows a secret
//! that is in the environment when they are generated. Needs no service.

use std::collections::BTreeMap;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_log-processor");

const COMMANDS: [&str; 11] = [
    "run",
    "migrate",
    "check-config",
    "loadgen",
    "status",
    "audit",
    "dead-letters",
    "topics",
    "parked",
    "completions",
    "man",
];

/// Every secret option set, as an operator's shell would have them while generating.
fn secrets() -> BTreeMap<&'static str, String> {
    [
        (
            "LP_DATABASE_URL",
            "postgres://lp:docs-hunter2@db/logs".into(),
        ),
        (
            "LP_ELASTICSEARCH_URL",
            "https://lp:docs-hunter2@es:9200".into(),
        ),
        ("LP_ES_PASSWORD", "docs-hunter2".into()),
        ("LP_ES_API_KEY", "docs-hunter2".into()),
        ("LP_KAFKA_SASL_PASSWORD", "docs-hunter2".into()),
        ("LP_KAFKA_SSL_KEY_PASSWORD", "docs-hunter2".into()),
        ("LP_REDACT_KEY", "docs-hunter2".into()),
        ("LP_DEAD_LETTER_KEY", "cd".repeat(32)),
    ]
    .into_iter()
    .collect()
}

fn assert_no_secret(text: &str, what: &str) {
    for secret in ["docs-hunter2", &"cd".repeat(32)] {
        assert!(!text.contains(secret), "{what} shows {secret}");
    }
}

/// Runs the binary with the secrets in its environment; its stdout.
fn lp(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .envs(secrets())
        .output()
        .expect("run log-processor");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?}: {stderr}");
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn completions_name_every_command_and_no_secret() {
    for shell in ["bash", "zsh", "fish"] {
        let script = lp(&["completions", shell]);
        for command in COMMANDS {
            assert!(script.contains(command), "{shell}: {command} missing");
        }
        // fish spells a long option `-l shutdown-deadline-ms`.
        assert!(
            script.contains("shutdown-deadline-ms"),
            "{shell}: run's options"
        );
        assert_no_secret(&script, shell);
        println!("{shell}: {} bytes", script.len());
    }
    // The bash script is valid bash.
    let dir = std::env::temp_dir().join(format!("lp-completions-{}", std::process::id()));
    std::fs::write(&dir, lp(&["completions", "bash"])).unwrap();
    let check = Command::new("bash").arg("-n").arg(&dir).output().unwrap();
    std::fs::remove_file(&dir).ok();
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "bash -n: {err}");
}

/// groff's text rendering of a page; any warning (-ww) fails.
fn render(page: &str, what: &str) -> String {
    use std::io::Write;
    let mut groff = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("groff (groff-base, installed by scripts/system-deps.sh)");
    groff
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = groff.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.is_empty(),
        "groff on {what}: {err}"
    );
    // Bold and underline come as backspace sequences on a terminal device; drop them.
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut plain = String::new();
    for c in text.chars() {
        match c {
            '\u{8}' => {
                plain.pop();
            }
            c => plain.push(c),
        }
    }
    plain
}

#[test]
fn man_pages_render_and_show_no_secret() {
    let page = lp(&["man"]);
    assert!(page.contains(".TH log-processor 1"), "{page}");
    assert_no_secret(&page, "man");
    let text = render(&page, "log-processor.1");
    for section in ["NAME", "SYNOPSIS", "DESCRIPTION", "SUBCOMMANDS", "VERSION"] {
        assert!(text.contains(section), "no {section}:\n{text}");
    }
    for command in COMMANDS {
        assert!(
            text.contains(&format!("log-processor-{command}(1)")),
            "{command}:\n{text}"
        );
    }

    // One page per command, written where packagers want them.
    let dir = std::env::temp_dir().join(format!("lp-man-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    lp(&["man", "--out-dir", dir.to_str().unwrap()]);
    let run = std::fs::read_to_string(dir.join("log-processor-run.1"));
    let pages = std::fs::read_dir(&dir).unwrap().count();
    std::fs::remove_dir_all(&dir).ok();
    let run = run.expect("log-processor-run.1 written");
    assert!(pages > COMMANDS.len(), "{pages} pages");
    assert_no_secret(&run, "log-processor-run.1");
    let text = render(&run, "log-processor-run.1");
    // Options with their variables; secrets by name only.
    for expected in [
        "--shutdown-deadline-ms",
        "LP_SHUTDOWN_DEADLINE_MS",
        "LP_ES_API_KEY",
    ] {
        assert!(text.contains(expected), "no {expected}:\n{text}");
    }
}
