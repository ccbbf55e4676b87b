//! The deployment files (Dockerfile, k8s/, deploy/systemd/) checked against the binary itself:
//! every variable they set is an option it accepts, the shutdown deadline fits the supervisors'
//! grace periods, the probes answer where the manifests look, and the container-like run (PID 1
//! of its own PID namespace, non-root) shuts down cleanly on SIGTERM.
//!
//! Rendered manifests are checked for real: kustomize renders k8s/, helm the chart of
//! deploy/helm/log-processor, and every object, the opt-in KEDA ScaledObject and PrometheusRule
//! too, is decoded into its Go API type with unknown fields rejected; the alert rules pass
//! `promtool check rules` and `promtool test rules`. Those tools
//! come from scripts/go-tools.sh, systemd-analyze from scripts/system-deps.sh: none is optional.
//!
//! No service is needed: the daemon is started with an unreachable PostgreSQL, where it serves
//! HTTP and retries its migration until a signal ends it (exit 0).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_log-processor");
const SECRET_NAME: &str = "log-processor-credentials";
/// What the validation requires at least between the deadline and the grace period.
const MIN_MARGIN_MS: u64 = 2000;
const UNREACHABLE_PG: &str = "postgres://x:y@127.0.0.1:1/x";

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// A small reader for the block-style YAML of k8s/: maps, lists, plain and quoted scalars and
// comments. It flattens a document into its scalar leaves keyed by path, e.g.
// `spec.template.spec.containers[0].readinessProbe.httpGet.path`.

struct Yaml {
    file: String,
    leaves: Vec<(String, String)>,
}

impl Yaml {
    fn load(rel: &str) -> Yaml {
        Yaml {
            file: rel.to_string(),
            leaves: yaml_leaves(&read(rel), rel),
        }
    }

    fn get(&self, path: &str) -> Option<&str> {
        self.leaves
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, v)| v.as_str())
    }

    fn must(&self, path: &str) -> &str {
        self.get(path)
            .unwrap_or_else(|| panic!("{}: no value at {path}", self.file))
    }

    fn has_prefix(&self, prefix: &str) -> bool {
        self.leaves.iter().any(|(p, _)| p.starts_with(prefix))
    }

    /// Leaves directly under `prefix.` (one more path segment).
    fn children(&self, prefix: &str) -> Vec<(String, String)> {
        let lead = format!("{prefix}.");
        self.leaves
            .iter()
            .filter_map(|(p, v)| {
                let rest = p.strip_prefix(&lead)?;
                (!rest.contains(['.', '['])).then(|| (rest.to_string(), v.clone()))
            })
            .collect()
    }

    fn len_of(&self, list: &str) -> usize {
        (0..)
            .take_while(|i| self.has_prefix(&format!("{list}[{i}]")))
            .count()
    }
}

fn yaml_leaves(text: &str, file: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    // (indent in half columns: a list dash counts half a column deeper than a key, path,
    // next list index)
    let mut stack: Vec<(i64, String, usize)> = vec![(-1, String::new(), 0)];
    let mut seen_content = false;
    for (no, raw) in text.lines().enumerate() {
        let where_ = format!("{file}:{}", no + 1);
        let line = strip_comment(raw);
        let content = line.trim();
        if content.is_empty() {
            continue;
        }
        if content == "---" {
            assert!(!seen_content, "{where_}: one document per file expected");
            continue;
        }
        seen_content = true;
        assert!(!line.contains('\t'), "{where_}: tab in indentation");
        let col = line.len() - line.trim_start().len();
        if content == "-" || content.starts_with("- ") {
            let level = 2 * col as i64 + 1;
            while stack.last().unwrap().0 >= level {
                stack.pop();
            }
            let parent = stack.last_mut().unwrap();
            let path = format!("{}[{}]", parent.1, parent.2);
            parent.2 += 1;
            let rest = content[1..].trim_start();
            stack.push((level, path.clone(), 0));
            if rest.is_empty() {
                continue;
            }
            let rest_col = col + (content.len() - rest.len());
            match split_key(rest) {
                Some((k, v)) => key_line(&mut stack, &mut out, 2 * rest_col as i64, k, v, &where_),
                None => out.push((path, unquote(rest, &where_))),
            }
        } else {
            let level = 2 * col as i64;
            while stack.last().unwrap().0 >= level {
                stack.pop();
            }
            let (k, v) = split_key(content)
                .unwrap_or_else(|| panic!("{where_}: expected `key: value`: {content}"));
            key_line(&mut stack, &mut out, level, k, v, &where_);
        }
    }
    out
}

fn key_line(
    stack: &mut Vec<(i64, String, usize)>,
    out: &mut Vec<(String, String)>,
    level: i64,
    key: &str,
    value: &str,
    where_: &str,
) {
    let parent = &stack.last().unwrap().1;
    let path = if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    };
    if value.is_empty() {
        stack.push((level, path, 0));
    } else {
        out.push((path, unquote(value, where_)));
    }
}

fn split_key(s: &str) -> Option<(&str, &str)> {
    if s.starts_with(['"', '\'', '[', '{']) {
        return None;
    }
    if let Some(k) = s.strip_suffix(':') {
        return Some((k.trim(), ""));
    }
    let i = s.find(": ")?;
    Some((s[..i].trim(), s[i + 2..].trim()))
}

fn unquote(v: &str, where_: &str) -> String {
    assert!(
        !v.starts_with(['|', '>', '&', '*', '!']),
        "{where_}: block scalars, anchors and tags are not supported here: {v}"
    );
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q).and_then(|v| v.strip_suffix(q)) {
            return inner.to_string();
        }
    }
    v.to_string()
}

fn strip_comment(line: &str) -> &str {
    let (mut single, mut double, mut prev_space) = (false, false, true);
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && prev_space => return &line[..i],
            _ => {}
        }
        prev_space = c.is_whitespace();
    }
    line
}

#[test]
fn yaml_reader_reads_block_style() {
    let doc = "a:\n  b: \"x: 1\" # c\n  l:\n  - name: n1\n    v: '2'\n  - name: n2\n    f:\n      g: h\n  s:\n    - ALL\n    - x\nz: 3\n";
    let leaves = yaml_leaves(doc, "inline");
    let expect = [
        ("a.b", "x: 1"),
        ("a.l[0].name", "n1"),
        ("a.l[0].v", "2"),
        ("a.l[1].name", "n2"),
        ("a.l[1].f.g", "h"),
        ("a.s[0]", "ALL"),
        ("a.s[1]", "x"),
        ("z", "3"),
    ];
    let got: Vec<(&str, &str)> = leaves
        .iter()
        .map(|(p, v)| (p.as_str(), v.as_str()))
        .collect();
    assert_eq!(got, expect);
}

// ---------------------------------------------------------------------------------------------
// What the manifests set.

const CONTAINER: &str = "spec.template.spec.containers[0]";

struct Manifests {
    configmap: Yaml,
    deployment: Yaml,
}

impl Manifests {
    fn load() -> Manifests {
        Manifests {
            configmap: Yaml::load("k8s/configmap.yaml"),
            deployment: Yaml::load("k8s/deployment.yaml"),
        }
    }

    /// The container's environment: ConfigMap data (via envFrom), literal `env` values, and
    /// `secretKeyRef` entries (name -> secret key).
    fn env(&self) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
        let d = &self.deployment;
        let cm_name = d.must(&format!("{CONTAINER}.envFrom[0].configMapRef.name"));
        assert_eq!(
            cm_name,
            self.configmap.must("metadata.name"),
            "envFrom names the ConfigMap"
        );
        assert_eq!(self.configmap.must("kind"), "ConfigMap");
        let mut literal: BTreeMap<String, String> =
            self.configmap.children("data").into_iter().collect();
        assert!(!literal.is_empty(), "configmap.yaml has data");
        let mut secret = BTreeMap::new();
        for i in 0..d.len_of(&format!("{CONTAINER}.env")) {
            let e = format!("{CONTAINER}.env[{i}]");
            let name = d.must(&format!("{e}.name")).to_string();
            if let Some(v) = d.get(&format!("{e}.value")) {
                let before = literal.insert(name.clone(), v.to_string());
                assert!(
                    before.is_none(),
                    "{name} is set both in the ConfigMap and in env"
                );
            } else {
                let sec = d.must(&format!("{e}.valueFrom.secretKeyRef.name"));
                assert_eq!(sec, SECRET_NAME, "{name} comes from the credentials Secret");
                let key = d.must(&format!("{e}.valueFrom.secretKeyRef.key"));
                assert!(
                    !literal.contains_key(&name),
                    "{name} is set both in the ConfigMap and from the Secret"
                );
                secret.insert(name, key.to_string());
            }
        }
        (literal, secret)
    }

    /// The environment check-config gets: the literals plus a dummy value per secret.
    fn env_with_dummy_secrets(&self) -> BTreeMap<String, String> {
        let (mut env, secret) = self.env();
        for name in secret.keys() {
            env.insert(name.clone(), dummy_secret(name));
        }
        env
    }

    fn grace_period_ms(&self) -> u64 {
        num(self
            .deployment
            .must("spec.template.spec.terminationGracePeriodSeconds"))
            * 1000
    }
}

fn dummy_secret(name: &str) -> String {
    match name {
        "LP_DATABASE_URL" => "postgres://u:p@127.0.0.1:5432/db".into(),
        "LP_ELASTICSEARCH_URL" => "http://u:p@127.0.0.1:9200".into(),
        "LP_REDACT_KEY" => "dummy-key".into(),
        other => {
            panic!("no dummy value for the secret variable {other}: add one to dummy_secret()")
        }
    }
}

fn num(s: &str) -> u64 {
    s.trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {s:?}"))
}

/// KEY=VALUE lines of an environment file (comments and blank lines skipped).
fn env_file(rel: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (no, line) in read(rel).lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{rel}:{}: expected KEY=VALUE", no + 1));
        // Plain values only, so systemd and `log-processor --config` read them alike.
        assert!(
            k.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'),
            "{rel}:{}: key {k:?}",
            no + 1
        );
        assert!(
            !v.contains(['"', '\'', '\\', '$', ' ', '\t']),
            "{rel}:{}: keep values plain (no quotes, spaces, $ or \\): {v}",
            no + 1
        );
        assert!(
            out.insert(k.to_string(), v.to_string()).is_none(),
            "{rel}: {k} twice"
        );
    }
    out
}

/// `[Section] Key=Value` lines of a systemd unit; a key may repeat.
fn unit_file(rel: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut section = String::new();
    for line in read(rel).lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        let (k, v) = line.split_once('=').expect("Key=Value");
        out.entry(format!("{section}.{}", k.trim()))
            .or_default()
            .push(v.trim().to_string());
    }
    out
}

fn unit_value<'a>(unit: &'a BTreeMap<String, Vec<String>>, key: &str) -> &'a str {
    unit.get(key)
        .and_then(|v| v.last())
        .unwrap_or_else(|| panic!("log-processor.service has no {key}"))
}

/// systemd time span in seconds: `35`, `35s`, `1min`, `1min 5s`.
fn seconds(span: &str) -> u64 {
    let mut total = 0;
    for part in span.split_whitespace() {
        let digits: String = part.chars().take_while(|c| c.is_ascii_digit()).collect();
        let unit = &part[digits.len()..];
        let n = num(&digits);
        total += match unit {
            "" | "s" | "sec" => n,
            "m" | "min" => n * 60,
            other => panic!("time unit {other} in {span}"),
        };
    }
    total
}

// ---------------------------------------------------------------------------------------------
// Running the binary.

fn lp(args: &[&str], env: &BTreeMap<String, String>) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env);
    cmd
}

/// Runs to completion within `timeout`: (exit code, stdout, stderr).
fn run_bounded(mut cmd: Command, timeout: Duration) -> (i32, String, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let o = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let e = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {timeout:?}; stderr:\n{}",
                e.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (
        status.code().unwrap_or(-1),
        o.join().unwrap(),
        e.join().unwrap(),
    )
}

fn help_text() -> String {
    let (code, out, err) = run_bounded(
        lp(&["run", "--help"], &BTreeMap::new()),
        Duration::from_secs(10),
    );
    assert_eq!(code, 0, "run --help: {err}");
    out
}

/// Secrets in the environment never reach `--help` or `check-config`.
#[test]
fn secrets_never_appear_in_help_or_check_config() {
    let env: BTreeMap<String, String> = [
        (
            "LP_DATABASE_URL",
            "postgres://lp:pg-hunter2@db:5432/logs?sslpassword=key-hunter2",
        ),
        ("LP_ELASTICSEARCH_URL", "https://lp:es-hunter2@es:9200"),
        ("LP_REDACT_HASH", "email"),
        ("LP_REDACT_KEY", "redact-hunter2"),
        ("LP_DEAD_LETTER_KEY", &"ab".repeat(32)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let (code, help, err) = run_bounded(lp(&["run", "--help"], &env), Duration::from_secs(10));
    assert_eq!(code, 0, "run --help: {err}");
    let effective =
        check_config(&env, &[], "secrets") + &check_config(&env, &["--json"], "secrets");
    for secret in ["hunter2", &"ab".repeat(32)] {
        assert!(!help.contains(secret), "--help shows {secret}:\n{help}");
        assert!(
            !effective.contains(secret),
            "check-config shows {secret}:\n{effective}"
        );
    }
}

/// `check-config` names where each value came from: default, environment, config file, flag,
/// a `_FILE`, or derived from other settings; `--json` says the same to scripts.
#[test]
fn check_config_names_each_source() {
    let dir = TempDir::new("sources");
    let config = dir.0.join("lp.env");
    // LP_WORKERS is in the environment too, which wins over the file.
    std::fs::write(&config, "LP_BATCH_MAX_RECORDS=500\nLP_WORKERS=9\n").unwrap();
    let password = dir.0.join("es-password");
    std::fs::write(&password, "file-hunter2\n").unwrap();
    let env: BTreeMap<String, String> = [
        ("LP_WORKERS", "3"),
        ("LP_ES_USERNAME", "lp"),
        ("LP_ES_PASSWORD_FILE", password.to_str().unwrap()),
        ("LP_KAFKA_OPTION_FETCH_WAIT_MAX_MS", "50"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let args = ["--config", config.to_str().unwrap(), "--group-id", "g1"];
    let text = check_config(&env, &args, "every source");
    println!("{text}");
    for (key, value, source) in [
        ("LP_BATCH_MAX_RECORDS", "500", "config file"),
        ("LP_WORKERS", "3", "environment"),
        ("LP_GROUP_ID", "g1", "flag"),
        ("LP_TOPICS", "logs", "default"),
        ("LP_PG_POOL_SIZE", "8", "derived"),
        ("LP_ES_PASSWORD", "****", "_FILE"),
        ("LP_KAFKA_OPTION_FETCH_WAIT_MAX_MS", "50", "environment"),
        ("LP_ES_API_KEY", "", "unset"),
    ] {
        assert_eq!(
            effective_setting(&text, key),
            Some((value, source)),
            "{key}:\n{text}"
        );
    }
    let mut json_args = args.to_vec();
    json_args.push("--json");
    let json = check_config(&env, &json_args, "every source, as JSON");
    let v: serde_json::Value = serde_json::from_str(&json).expect("check-config --json");
    assert_eq!(
        v["settings"]["LP_BATCH_MAX_RECORDS"]["source"],
        "config file"
    );
    assert_eq!(v["settings"]["LP_ES_PASSWORD"]["value"], "****");
    assert_eq!(v["derived"]["shutdown_deadline_ms"], 25000);
    for out in [&text, &json] {
        assert!(
            !out.contains("hunter2"),
            "the password file's content shown:\n{out}"
        );
    }
}

/// `check-config` must accept `env` (exit 0); returns its output (the effective settings).
fn check_config(env: &BTreeMap<String, String>, extra: &[&str], what: &str) -> String {
    let mut args = vec!["check-config"];
    args.extend_from_slice(extra);
    let (code, out, err) = run_bounded(lp(&args, env), Duration::from_secs(10));
    assert_eq!(
        code, 0,
        "check-config rejected {what}:\n{err}\nenv: {env:#?}"
    );
    out
}

/// Every variable is an option of `run` (so a misspelt key fails), took the value given where
/// the effective settings show it plainly (secrets and URLs are masked), and came from `source`
/// (`environment`, `config file`): check-config prints `LP_NAME=value  (source)` per setting.
fn assert_options(vars: &BTreeMap<String, String>, effective: &str, source: &str, what: &str) {
    let help = help_text();
    for (key, value) in vars {
        assert!(
            key.starts_with("LP_"),
            "{what}: {key} is not an LP_* option"
        );
        // Secret options show their variable without a value: `[env: LP_DATABASE_URL]`.
        assert!(
            help.contains(&format!("[env: {key}=")) || help.contains(&format!("[env: {key}]")),
            "{what}: {key} is not an option of `log-processor run` (misspelt?)"
        );
        let (shown, from) = effective_setting(effective, key).unwrap_or_else(|| {
            panic!("{what}: {key} not listed; check-config printed:\n{effective}")
        });
        assert_eq!(
            from, source,
            "{what}: {key} should come from the {source}; check-config printed:\n{effective}"
        );
        if value.contains("://") || shown == "****" {
            continue; // masked
        }
        // Lists are shown joined by commas; value enums as their canonical names.
        let given: Vec<&str> = value.split(',').map(str::trim).collect();
        assert!(
            shown.eq_ignore_ascii_case(value) || shown == given.join(","),
            "{what}: {key}={value} not in effect (shows {shown:?}); check-config printed:\n{effective}"
        );
    }
}

/// The value and the source check-config prints for `key`.
fn effective_setting<'a>(effective: &'a str, key: &str) -> Option<(&'a str, &'a str)> {
    let line = effective
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))?;
    let (value, source) = line.rsplit_once("  (")?;
    Some((value, source.strip_suffix(')')?))
}

/// Port of the effective `LP_HTTP_ADDR` in check-config's output.
fn effective_http_port(effective: &str) -> u16 {
    let (addr, _) =
        effective_setting(effective, "LP_HTTP_ADDR").expect("LP_HTTP_ADDR in check-config output");
    addr.parse::<SocketAddr>().unwrap().port()
}

/// A directory under the system temp dir, removed when dropped (also when a test fails).
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("lp-deploy-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Status code of `GET path`, or None when nothing answers.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// A `log-processor run` (possibly wrapped, e.g. by unshare) whose stderr is collected.
struct Daemon {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    /// A process to SIGKILL on drop before the child (PID 1 of a namespace).
    inner: Option<u32>,
}

impl Daemon {
    fn start(mut cmd: Command) -> Daemon {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start log-processor");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        Daemon {
            child,
            lines,
            inner: None,
        }
    }

    fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    fn has_line(&self, needle: &str) -> bool {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
    }

    fn wait_for_line(&mut self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        while !self.has_line(needle) {
            if let Some(s) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "exited ({s}) before logging {needle:?}; stderr:\n{}",
                    self.log()
                );
            }
            assert!(
                start.elapsed() < timeout,
                "no line with {needle:?} within {timeout:?}; stderr:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Exit code within `timeout` (panics with the log otherwise).
    fn wait(&mut self, timeout: Duration) -> i32 {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100)); // let the reader drain
                return s.code().unwrap_or(-1);
            }
            assert!(
                start.elapsed() < timeout,
                "did not exit within {timeout:?}; stderr:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(pid) = self.inner {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kill(sig: &str, pid: u32) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// The shutdown timeline phases from JSON log lines, with their elapsed_ms.
fn timeline(log: &str) -> Vec<(String, u64)> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "log_processor::shutdown")
        .map(|v| {
            (
                v["fields"]["phase"].as_str().unwrap_or("").to_string(),
                v["fields"]["elapsed_ms"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect()
}

/// The manifests' environment with stores that cannot be reached and HTTP on a free local port.
fn startup_env(m: &Manifests, port: u16) -> BTreeMap<String, String> {
    let mut env = m.env_with_dummy_secrets();
    env.insert("LP_HTTP_ADDR".into(), format!("127.0.0.1:{port}"));
    env.insert("LP_DATABASE_URL".into(), UNREACHABLE_PG.into());
    env.insert("LP_PG_CONNECT_TIMEOUT_MS".into(), "300".into());
    env.insert("LP_ELASTICSEARCH_URL".into(), "http://127.0.0.1:1".into());
    env.insert("LP_KAFKA_BROKERS".into(), "127.0.0.1:1".into());
    env
}

/// A signal during start-up ends the daemon from two tasks at once: the signal task logs
/// `shutdown: signal received` (and sends STOPPING=1) only after it cancelled the start-up, so
/// `shutdown: exit during start-up` can come first, or the process can exit before that line.
/// Only reported: exit code and `shutdown: exit` are what the tests require.
fn note_startup_signal_race(log: &str) {
    let phases = timeline(log);
    let received = phases.iter().position(|p| p.0 == "signal received");
    let exit = phases.iter().position(|p| p.0.starts_with("exit"));
    match (received, exit) {
        (Some(r), Some(e)) if r < e => {}
        (None, _) => println!("NOTE: `shutdown: signal received` missing from the log"),
        _ => println!("NOTE: `shutdown: signal received` logged after the exit line"),
    }
}

// ---------------------------------------------------------------------------------------------
// (a) every variable the deployment files set is an option the binary accepts.

#[test]
fn kubernetes_environment_is_accepted_by_check_config() {
    let m = Manifests::load();
    let (literal, secret) = m.env();
    assert!(
        secret.contains_key("LP_DATABASE_URL") && secret.contains_key("LP_ELASTICSEARCH_URL"),
        "the store URLs (with passwords) come from the Secret, got {secret:?}"
    );
    assert!(
        !literal.contains_key("LP_REDACT_KEY"),
        "LP_REDACT_KEY belongs in the Secret"
    );
    let env = m.env_with_dummy_secrets();
    let effective = check_config(&env, &[], "the k8s environment");
    assert_options(&env, &effective, "environment", "k8s/");
    // The daemon's worst case under these settings fits in the container's memory limit.
    let worst: u64 = effective
        .lines()
        .find_map(|l| l.strip_prefix("worst-case memory: "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("check-config prints the worst-case memory");
    let limit = read("k8s/deployment.yaml")
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("limits:"))
        .find_map(|l| l.trim().strip_prefix("memory: "))
        .and_then(|m| m.trim_end_matches("Mi").parse::<u64>().ok())
        .expect("a memory limit in Mi in deployment.yaml");
    assert!(
        worst < limit,
        "check-config's worst case {worst} MiB does not fit the {limit}Mi limit"
    );
    println!("k8s: worst-case memory {worst} MiB within the {limit}Mi limit");
    println!(
        "k8s: {} variables accepted: {:?}",
        env.len(),
        env.keys().collect::<Vec<_>>()
    );
}

#[test]
fn systemd_environment_example_is_accepted_by_check_config() {
    let rel = "deploy/systemd/log-processor.env.example";
    let vars = env_file(rel);
    for k in ["LP_DATABASE_URL", "LP_ELASTICSEARCH_URL"] {
        let v = &vars[k];
        assert!(
            v.contains("CHANGE_ME"),
            "{rel}: {k} must carry a CHANGE_ME placeholder, not a password"
        );
    }
    // Read by the binary's own --config reader, with nothing else in the environment...
    let effective = check_config(
        &BTreeMap::new(),
        &["--config", repo(rel).to_str().unwrap()],
        rel,
    );
    assert_options(&vars, &effective, "config file", rel);
    // ...and as systemd passes it: as environment variables.
    let effective = check_config(&vars, &[], rel);
    assert_options(&vars, &effective, "environment", rel);
    // The unit's own Environment= lines.
    let unit = unit_file("deploy/systemd/log-processor.service");
    let lp_env: BTreeMap<String, String> = unit
        .get("Service.Environment")
        .into_iter()
        .flatten()
        .filter_map(|e| e.split_once('='))
        .filter(|(k, _)| k.starts_with("LP_"))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if !lp_env.is_empty() {
        let mut all = vars.clone();
        all.extend(lp_env.clone());
        let effective = check_config(&all, &[], "the unit's Environment=");
        assert_options(&lp_env, &effective, "environment", "log-processor.service");
    }
}

#[test]
fn a_misspelt_variable_would_be_caught() {
    // The check above relies on `run --help` listing every variable: make sure it would fail.
    let help = help_text();
    assert!(help.contains("[env: LP_SHUTDOWN_DEADLINE_MS="));
    assert!(!help.contains("[env: LP_SHUTDOWN_DEADLINE="));
}

// ---------------------------------------------------------------------------------------------
// (b) the shutdown deadline plus the margin fits in each supervisor's grace period.

#[test]
fn shutdown_deadline_fits_in_the_grace_periods() {
    let m = Manifests::load();
    let env = m.env_with_dummy_secrets();
    let grace_k8s = m.grace_period_ms();
    let deadline = num(&env["LP_SHUTDOWN_DEADLINE_MS"]);
    let margin = env
        .get("LP_SHUTDOWN_MARGIN_MS")
        .map_or(MIN_MARGIN_MS, |v| num(v))
        .max(MIN_MARGIN_MS);
    assert!(
        deadline + margin <= grace_k8s,
        "k8s: LP_SHUTDOWN_DEADLINE_MS {deadline} + {margin} > terminationGracePeriodSeconds {grace_k8s} ms"
    );
    // The daemon validates against LP_GRACE_PERIOD_MS: it must not promise more than the pod has.
    let declared = num(&env["LP_GRACE_PERIOD_MS"]);
    assert!(
        declared <= grace_k8s,
        "k8s: LP_GRACE_PERIOD_MS {declared} > terminationGracePeriodSeconds {grace_k8s} ms"
    );
    assert!(
        !m.deployment
            .has_prefix(&format!("{CONTAINER}.lifecycle.preStop")),
        "a preStop hook would use up part of the grace period before SIGTERM"
    );
    println!(
        "k8s: deadline {deadline} ms + margin {margin} ms <= grace {grace_k8s} ms (LP_GRACE_PERIOD_MS {declared})"
    );

    let unit = unit_file("deploy/systemd/log-processor.service");
    let vars = env_file("deploy/systemd/log-processor.env.example");
    let stop_ms = seconds(unit_value(&unit, "Service.TimeoutStopSec")) * 1000;
    let deadline = vars
        .get("LP_SHUTDOWN_DEADLINE_MS")
        .map_or(25_000, |v| num(v));
    let margin = vars
        .get("LP_SHUTDOWN_MARGIN_MS")
        .map_or(MIN_MARGIN_MS, |v| num(v))
        .max(MIN_MARGIN_MS);
    let declared = vars.get("LP_GRACE_PERIOD_MS").map_or(30_000, |v| num(v));
    assert!(
        deadline + margin <= stop_ms,
        "systemd: deadline {deadline} + {margin} > TimeoutStopSec {stop_ms} ms"
    );
    assert!(
        declared <= stop_ms,
        "systemd: LP_GRACE_PERIOD_MS {declared} > TimeoutStopSec {stop_ms} ms"
    );
    assert!(
        deadline + margin <= declared,
        "systemd: deadline {deadline} + {margin} > LP_GRACE_PERIOD_MS {declared}"
    );
    println!(
        "systemd: deadline {deadline} ms + margin {margin} ms <= TimeoutStopSec {stop_ms} ms (LP_GRACE_PERIOD_MS {declared})"
    );
}

// ---------------------------------------------------------------------------------------------
// (c) probes: the manifest's paths answer on the manifest's port; SIGTERM during start-up exits 0.

#[test]
fn probes_answer_where_the_manifests_look_and_sigterm_exits_zero() {
    let m = Manifests::load();
    let d = &m.deployment;
    let effective = check_config(&m.env_with_dummy_secrets(), &[], "the k8s environment");
    let port = effective_http_port(&effective);

    // Ports: container, probes, service, Prometheus annotations all name the daemon's port.
    let mut named = BTreeMap::new();
    for i in 0..d.len_of(&format!("{CONTAINER}.ports")) {
        let p = format!("{CONTAINER}.ports[{i}]");
        named.insert(
            d.get(&format!("{p}.name")).unwrap_or("").to_string(),
            num(d.must(&format!("{p}.containerPort"))),
        );
    }
    assert!(
        named.values().any(|&p| p == port as u64),
        "containerPort {named:?} vs LP_HTTP_ADDR port {port}"
    );
    let resolve = |v: &str| -> u64 {
        v.parse().unwrap_or_else(|_| {
            *named
                .get(v)
                .unwrap_or_else(|| panic!("no container port named {v}"))
        })
    };
    let mut probes = Vec::new();
    for (probe, want) in [("readinessProbe", 503u16), ("livenessProbe", 200u16)] {
        let path = d
            .must(&format!("{CONTAINER}.{probe}.httpGet.path"))
            .to_string();
        let pport = resolve(d.must(&format!("{CONTAINER}.{probe}.httpGet.port")));
        assert_eq!(pport, port as u64, "{probe} port");
        probes.push((probe, path, want));
    }
    assert_eq!(probes[0].1, "/readyz");
    assert_eq!(probes[1].1, "/healthz");
    let svc = Yaml::load("k8s/service.yaml");
    assert_eq!(
        resolve(svc.must("spec.ports[0].targetPort")),
        port as u64,
        "service targetPort"
    );
    assert_eq!(
        num(svc.must("metadata.annotations.prometheus.io/port")),
        port as u64
    );
    assert_eq!(
        svc.must("metadata.annotations.prometheus.io/path"),
        "/metrics"
    );
    assert_eq!(
        num(d.must("spec.template.metadata.annotations.prometheus.io/port")),
        port as u64
    );
    assert_eq!(
        d.must("spec.selector.matchLabels.app.kubernetes.io/name"),
        svc.must("spec.selector.app.kubernetes.io/name"),
        "service selects the deployment's pods"
    );

    // The daemon itself, with the manifests' environment and stores that cannot be reached.
    let local = free_port();
    let dir = TempDir::new("notify");
    let sock_path = dir.0.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut env = startup_env(&m, local);
    env.insert("NOTIFY_SOCKET".into(), sock_path.to_str().unwrap().into());
    let mut daemon = Daemon::start(lp(&["run"], &env));
    daemon.wait_for_line("http listening", Duration::from_secs(15));
    // In the start-up retry loop (PostgreSQL unreachable), HTTP is served.
    daemon.wait_for_line(
        "postgresql migration failed, retrying",
        Duration::from_secs(15),
    );
    for (probe, path, want) in &probes {
        let got = http_status(local, path);
        assert_eq!(
            got,
            Some(*want),
            "{probe} GET {path}; stderr:\n{}",
            daemon.log()
        );
        println!("{probe}: GET {path} -> {want}");
    }
    assert_eq!(http_status(local, "/metrics"), Some(200), "GET /metrics");

    let sent = Instant::now();
    kill("TERM", daemon.child.id());
    let code = daemon.wait(Duration::from_secs(5));
    let took = sent.elapsed();
    let log = daemon.log();
    assert_eq!(
        code, 0,
        "exit code after SIGTERM during start-up; stderr:\n{log}"
    );
    let phases = timeline(&log);
    println!(
        "SIGTERM to exit: {} ms, timeline {phases:?}",
        took.as_millis()
    );
    assert!(
        phases.iter().any(|p| p.0.starts_with("exit")),
        "JSON timeline:\n{log}"
    );
    assert!(log.contains("shutdown: exit"), "{log}");
    note_startup_signal_race(&log);

    // systemd readiness protocol: STOPPING=1 at the signal; no READY=1 without a group join.
    let mut states = Vec::new();
    let mut buf = [0u8; 256];
    while let Ok(n) = sock.recv(&mut buf) {
        states.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    println!("NOTIFY_SOCKET received {states:?}");
    if !states.iter().any(|s| s == "STOPPING=1") {
        // Same race as above: the process may exit before the signal task notifies.
        println!("NOTE: no STOPPING=1 before the exit during start-up");
    }
    assert!(
        !states.iter().any(|s| s.contains("READY=1")),
        "READY=1 before joining: {states:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// (d) the Dockerfile.

struct Instruction {
    stage: usize,
    op: String,
    args: String,
}

fn dockerfile() -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut stage = 0;
    let mut pending = String::new();
    for line in read("Dockerfile").lines() {
        let t = line.trim();
        if pending.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if t.starts_with('#') {
            continue; // comment inside a continued instruction
        }
        if let Some(cont) = t.strip_suffix('\\') {
            pending.push_str(cont);
            pending.push(' ');
            continue;
        }
        pending.push_str(t);
        let full = std::mem::take(&mut pending);
        let (op, args) = full.split_once(char::is_whitespace).unwrap_or((&full, ""));
        let op = op.to_uppercase();
        if op == "FROM" {
            stage += 1;
        }
        out.push(Instruction {
            stage,
            op,
            args: args.trim().to_string(),
        });
    }
    out
}

#[test]
fn dockerfile_runs_the_daemon_as_pid_1_non_root_with_sigterm() {
    let ins = dockerfile();
    let last = ins.iter().map(|i| i.stage).max().unwrap();
    assert!(last >= 2, "multi-stage build");
    let in_final = |op: &str| -> Vec<&str> {
        ins.iter()
            .filter(|i| i.stage == last && i.op == op)
            .map(|i| i.args.as_str())
            .collect()
    };
    let one = |op: &str| -> String {
        let v = in_final(op);
        assert_eq!(v.len(), 1, "exactly one {op} in the final stage: {v:?}");
        v[0].to_string()
    };
    let froms: Vec<&str> = ins
        .iter()
        .filter(|i| i.op == "FROM")
        .map(|i| i.args.as_str())
        .collect();
    assert!(
        froms[0].starts_with("rust:1.95-bookworm"),
        "builder: {}",
        froms[0]
    );
    assert!(
        froms[last - 1].starts_with("debian:bookworm-slim"),
        "runtime: {}",
        froms[last - 1]
    );
    // The builder's toolchain satisfies Cargo.toml's rust-version.
    let cargo = read("Cargo.toml");
    let msrv = cargo
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"');
    let minor = |v: &str| -> u64 { num(v.split('.').nth(1).unwrap()) };
    let image_ver = froms[0]
        .trim_start_matches("rust:")
        .split('-')
        .next()
        .unwrap();
    assert!(
        minor(image_ver) >= minor(msrv),
        "rust image {image_ver} < rust-version {msrv}"
    );

    // Exec form: the daemon is PID 1 and receives SIGTERM itself (no /bin/sh -c in between).
    let entry: Vec<String> = serde_json::from_str(&one("ENTRYPOINT"))
        .unwrap_or_else(|e| panic!("ENTRYPOINT must be exec form (JSON array): {e}"));
    assert_eq!(entry, ["/usr/local/bin/log-processor"]);
    let cmd: Vec<String> = serde_json::from_str(&one("CMD")).expect("CMD in exec form");
    assert_eq!(cmd, ["run"]);
    assert_eq!(one("STOPSIGNAL"), "SIGTERM");

    let user = one("USER");
    let uid = user.split(':').next().unwrap();
    assert!(uid != "root" && uid != "0", "USER {user} is root");
    let uid: u64 = uid
        .parse()
        .expect("numeric USER, so runAsNonRoot can verify it");
    let m = Manifests::load();
    let d = &m.deployment;
    assert_eq!(
        num(d.must(&format!("{CONTAINER}.securityContext.runAsUser"))),
        uid,
        "k8s runAsUser = image USER"
    );
    assert_eq!(
        num(d.must("spec.template.spec.securityContext.runAsUser")),
        uid
    );

    let effective = check_config(&m.env_with_dummy_secrets(), &[], "the k8s environment");
    let port = effective_http_port(&effective);
    let exposed: Vec<u64> = one("EXPOSE")
        .split_whitespace()
        .map(|p| num(p.trim_end_matches("/tcp")))
        .collect();
    assert_eq!(exposed, [port as u64], "EXPOSE vs LP_HTTP_ADDR");
    // The default (no configuration at all, as `docker run` without env) serves the same port.
    let bare = check_config(&BTreeMap::new(), &[], "no configuration");
    assert_eq!(effective_http_port(&bare), port);

    // The binary is built with the lock file and copied to the entrypoint's path.
    let runs: Vec<&str> = ins
        .iter()
        .filter(|i| i.op == "RUN")
        .map(|i| i.args.as_str())
        .collect();
    let builds: Vec<&&str> = runs.iter().filter(|r| r.contains("cargo build")).collect();
    assert!(
        builds.len() >= 2,
        "a dependency layer and the real build: {builds:?}"
    );
    for b in &builds {
        for flag in ["--release", "--locked", "--bin log-processor"] {
            assert!(b.contains(flag), "{flag} in {b}");
        }
    }
    assert!(
        in_final("COPY")
            .iter()
            .any(|c| c.starts_with("--from=") && c.ends_with(" /usr/local/bin/log-processor")),
        "binary copied from the builder to the entrypoint path"
    );

    // Every COPY source exists and is not excluded by .dockerignore; the noise is excluded.
    let ignore: Vec<String> = read(".dockerignore")
        .lines()
        .map(|l| {
            l.trim()
                .trim_start_matches('/')
                .trim_end_matches('/')
                .to_string()
        })
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for must in ["target", ".git", ".infra", "bench/work"] {
        assert!(
            ignore.iter().any(|i| i == must),
            ".dockerignore lacks {must}"
        );
    }
    let mut copied = BTreeSet::new();
    for c in ins
        .iter()
        .filter(|i| i.op == "COPY" && !i.args.starts_with("--from"))
    {
        let parts: Vec<&str> = c.args.split_whitespace().collect();
        for src in &parts[..parts.len() - 1] {
            assert!(repo(src).exists(), "COPY {src}: not in the repository");
            let top = src.split('/').next().unwrap();
            let reincluded = ignore.iter().any(|i| i.strip_prefix('!') == Some(src));
            assert!(
                reincluded || !ignore.iter().any(|i| i == src || i == top),
                "COPY {src} is excluded by .dockerignore"
            );
            copied.insert(src.to_string());
        }
    }
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        "src",
        "migrations",
        "scripts/system-deps.sh",
    ] {
        assert!(
            copied.contains(needed),
            "the build needs {needed} (migrations are embedded)"
        );
    }
}

/// The runtime stage installs the Debian packages of every shared library the binary links
/// (found with ldd and dpkg on this Debian machine; libc6 is in every image).
#[test]
fn runtime_image_packages_cover_the_linked_libraries() {
    let (code, out, err) = run_bounded(
        {
            let mut c = Command::new("ldd");
            c.arg(BIN);
            c
        },
        Duration::from_secs(10),
    );
    assert_eq!(code, 0, "ldd: {err}");
    let installed: String = dockerfile()
        .into_iter()
        .rfind(|i| i.op == "RUN" && i.args.contains("apt-get install"))
        .map(|i| i.args)
        .unwrap();
    let mut packages = BTreeSet::new();
    for line in out.lines() {
        let Some(path) = line
            .split("=>")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
        else {
            continue; // vdso, the dynamic loader (libc6)
        };
        assert_ne!(path, "not", "unresolved library: {line}");
        let (c, o, _) = run_bounded(
            {
                let mut c = Command::new("dpkg");
                c.args(["-S", path]);
                c
            },
            Duration::from_secs(10),
        );
        if c != 0 {
            let real = std::fs::canonicalize(path).unwrap();
            let (c2, o2, e2) = run_bounded(
                {
                    let mut c = Command::new("dpkg");
                    c.arg("-S").arg(&real);
                    c
                },
                Duration::from_secs(10),
            );
            assert_eq!(c2, 0, "no package owns {path}: {e2}");
            packages.insert(o2.split(':').next().unwrap().to_string());
        } else {
            packages.insert(o.split(':').next().unwrap().to_string());
        }
    }
    println!("linked libraries come from: {packages:?}");
    for p in &packages {
        if p == "libc6" {
            continue;
        }
        assert!(
            installed.split_whitespace().any(|w| w == p),
            "the runtime stage does not install {p} (needed by `ldd log-processor`): {installed}"
        );
    }
    for forbidden in ["libssl3", "libcurl4"] {
        if !packages.contains(forbidden) {
            assert!(
                !installed.split_whitespace().any(|w| w == forbidden),
                "{forbidden} installed but not linked"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (e) the systemd unit.

#[test]
fn systemd_unit_has_the_required_keys() {
    let rel = "deploy/systemd/log-processor.service";
    let unit = unit_file(rel);
    let v = |k: &str| unit_value(&unit, k).to_string();
    assert_eq!(v("Service.Type"), "notify");
    assert_eq!(
        v("Service.NotifyAccess"),
        "main",
        "the daemon itself sends READY=1/STOPPING=1"
    );
    assert_eq!(v("Service.ExecStart"), "/usr/local/bin/log-processor run");
    assert_eq!(
        v("Service.EnvironmentFile").trim_start_matches('-'),
        "/etc/log-processor/log-processor.env"
    );
    assert_eq!(v("Service.KillSignal"), "SIGTERM");
    assert!(
        ["mixed", "process"].contains(&v("Service.KillMode").as_str()),
        "KillMode"
    );
    assert_eq!(v("Service.Restart"), "on-failure");
    assert!(unit.contains_key("Service.RestartSec"));
    assert!(
        unit.get("Service.DynamicUser")
            .is_some_and(|x| x.last().unwrap() == "yes")
            || unit.contains_key("Service.User"),
        "DynamicUser=yes or User="
    );
    for (k, want) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
    ] {
        assert_eq!(v(&format!("Service.{k}")), want, "{k}");
    }
    assert!(
        unit.get("Service.RestartPreventExitStatus")
            .is_some_and(|x| x.iter().any(|s| s.split_whitespace().any(|c| c == "2"))),
        "exit 2 (bad configuration) is not restarted"
    );
    if let Some(af) = unit.get("Service.RestrictAddressFamilies") {
        assert!(
            af.iter().any(|a| a.contains("AF_UNIX")),
            "AF_UNIX is needed for NOTIFY_SOCKET"
        );
    }
    assert_eq!(v("Install.WantedBy"), "multi-user.target");
}

/// `systemd-analyze verify` (and the offline security score) on a copy of the unit whose
/// ExecStart is the built binary. Needs no running systemd, only the tool (scripts/system-deps.sh).
#[test]
fn systemd_analyze_verifies_the_unit() {
    let out = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .expect("systemd-analyze (Debian package systemd, installed by scripts/system-deps.sh)");
    println!(
        "{}",
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
    );
    let dir = TempDir::new("unit");
    let unit_path = dir.0.join("log-processor.service");
    let text: String = read("deploy/systemd/log-processor.service")
        .lines()
        .map(|l| {
            if l.starts_with("ExecStart=") {
                format!("ExecStart={BIN} run")
            } else if l.starts_with("EnvironmentFile=") {
                format!(
                    "EnvironmentFile={}",
                    repo("deploy/systemd/log-processor.env.example").display()
                )
            } else {
                l.to_string()
            }
        })
        .map(|l| l + "\n")
        .collect();
    std::fs::write(&unit_path, text).unwrap();

    let mut verify = Command::new("systemd-analyze");
    verify.args(["verify", "--man=no"]).arg(&unit_path);
    let (code, out, err) = run_bounded(verify, Duration::from_secs(60));
    println!("systemd-analyze verify: exit {code}\n{out}{err}");
    assert_eq!(code, 0, "systemd-analyze verify failed:\n{out}{err}");
    // Unknown keys and unparsable values are only warnings: none may name our unit.
    let warnings: Vec<&str> = err
        .lines()
        .chain(out.lines())
        .filter(|l| l.contains("log-processor"))
        .collect();
    assert!(
        warnings.is_empty(),
        "systemd-analyze verify warnings:\n{}",
        warnings.join("\n")
    );

    // Exposure score (0 best, 10 worst): stay in systemd's "OK" band (< 2.0).
    let mut sec = Command::new("systemd-analyze");
    sec.args(["security", "--offline=yes", "--threshold=20", "--no-pager"])
        .arg(&unit_path);
    let (code, out, err) = run_bounded(sec, Duration::from_secs(60));
    assert!(
        !err.contains("unrecognized option"),
        "systemd-analyze security --offline needs systemd 252 or later:\n{err}"
    );
    let level = out
        .lines()
        .chain(err.lines())
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level in:\n{out}{err}"));
    println!("systemd-analyze security: {level}");
    assert_eq!(code, 0, "exposure above 2.0:\n{out}{err}");
}

// ---------------------------------------------------------------------------------------------
// (f) like the container: PID 1 of its own PID namespace, non-root, SIGTERM from outside.

#[test]
fn as_pid_1_of_its_own_pid_namespace_and_non_root_sigterm_exits_cleanly() {
    let probe = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "`unshare --pid --fork --mount-proc` does not work here (needs root or CAP_SYS_ADMIN): {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("unshare (util-linux) not available: {e}"),
    }
    // The image's user (numeric, as in the Dockerfile and the pod securityContext).
    let uid = dockerfile()
        .iter()
        .rev()
        .find(|i| i.op == "USER")
        .map(|i| i.args.split(':').next().unwrap().to_string())
        .unwrap();
    // A copy of the binary that this user can execute (like /usr/local/bin in the image).
    let dir = TempDir::new("pid1");
    let bin = dir.0.join("log-processor");
    std::fs::copy(BIN, &bin).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    let m = Manifests::load();
    let port = free_port();
    let env = startup_env(&m, port);
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc", "setpriv"])
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .args(["--clear-groups", "--inh-caps=-all", "--"])
        .arg(&bin)
        .arg("run")
        .current_dir("/")
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .envs(&env);
    let mut d = Daemon::start(cmd);

    // From outside, the daemon is unshare's only child.
    let start = Instant::now();
    let inner: u32 = loop {
        let pid = d.child.id();
        let kids =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        if let Some(k) = kids.split_whitespace().next() {
            let k: u32 = k.parse().unwrap();
            let comm = std::fs::read_to_string(format!("/proc/{k}/comm")).unwrap_or_default();
            if comm.trim() == "log-processor" {
                break k;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no log-processor under unshare; stderr:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    d.inner = Some(inner);
    d.wait_for_line("http listening", Duration::from_secs(15));
    d.wait_for_line(
        "postgresql migration failed, retrying",
        Duration::from_secs(15),
    );

    let status = std::fs::read_to_string(format!("/proc/{inner}/status")).unwrap();
    let field = |name: &str| -> Vec<String> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} in /proc/{inner}/status"))
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    let nspid = field("NSpid:");
    assert_eq!(
        nspid.last().map(String::as_str),
        Some("1"),
        "PID 1 inside its namespace: {nspid:?}"
    );
    assert!(
        field("Uid:").iter().all(|u| *u == uid),
        "runs as uid {uid}: {:?}",
        field("Uid:")
    );
    assert_eq!(
        field("CapEff:"),
        ["0000000000000000"],
        "no effective capabilities"
    );
    assert_eq!(
        http_status(port, "/healthz"),
        Some(200),
        "stderr:\n{}",
        d.log()
    );
    assert_eq!(
        http_status(port, "/readyz"),
        Some(503),
        "stderr:\n{}",
        d.log()
    );
    println!("pid {inner} is PID 1 {nspid:?} as uid {uid}, probes answer");

    // What `docker stop` / the kubelet do: SIGTERM to PID 1 of the container.
    let sent = Instant::now();
    kill("TERM", inner);
    let code = d.wait(Duration::from_secs(5));
    let took = sent.elapsed();
    d.inner = None;
    let log = d.log();
    assert_eq!(code, 0, "exit code of PID 1 after SIGTERM; stderr:\n{log}");
    assert!(log.contains("shutdown: exit"), "stderr:\n{log}");
    note_startup_signal_race(&log);
    println!(
        "SIGTERM to exit as PID 1: {} ms, timeline {:?}",
        took.as_millis(),
        timeline(&log)
    );
}

// ---------------------------------------------------------------------------------------------
// Secrets, kustomize and KEDA.

/// No password is committed: URLs with credentials carry CHANGE_ME, and k8s/ holds no Secret.
#[test]
fn no_secret_values_are_committed() {
    let mut files = vec![
        "Dockerfile".to_string(),
        "deploy/systemd/log-processor.service".into(),
        "deploy/systemd/log-processor.env.example".into(),
        "deploy/k8s-secured/kustomization.yaml".into(),
        "deploy/k8s-secured/deployment-secret-files.yaml".into(),
    ];
    for e in std::fs::read_dir(repo("k8s")).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        files.push(format!("k8s/{name}"));
    }
    for f in &files {
        let text = read(f);
        if f.starts_with("k8s/") && (f.ends_with(".yaml") || f.ends_with(".yml")) {
            // Read as lines, not with `Yaml`: the alert rules use block scalars (the strict
            // decoding of every manifest is `kustomization_lists_the_manifests_and_builds`).
            let keys: Vec<&str> = text.lines().map(str::trim_start).collect();
            assert!(
                !keys
                    .iter()
                    .any(|l| l.strip_prefix("kind:").map(str::trim) == Some("Secret")),
                "{f}: create the Secret with kubectl instead"
            );
            assert!(
                !keys
                    .iter()
                    .any(|l| l.starts_with("stringData:") || l.starts_with("LP_DATABASE_URL:")),
                "{f}"
            );
        }
        for (i, _) in text.match_indices("://") {
            let rest = &text[i + 3..];
            let authority = &rest[..rest.find(['/', ' ', '"', '\n', ',']).unwrap_or(rest.len())];
            if let Some((_, password)) = authority
                .rsplit_once('@')
                .and_then(|(u, _)| u.split_once(':'))
            {
                assert_eq!(
                    password, "CHANGE_ME",
                    "{f}: a password in a URL: {authority}"
                );
            }
        }
        for word in ["password=", "PASSWORD=", "token:", "apiKey:"] {
            assert!(!text.contains(word), "{f} contains {word}");
        }
    }
}

#[test]
fn kustomization_lists_the_manifests_and_builds() {
    let k = Yaml::load("k8s/kustomization.yaml");
    let resources: Vec<&str> = (0..k.len_of("resources"))
        .map(|i| k.must(&format!("resources[{i}]")))
        .collect();
    for r in [
        "configmap.yaml",
        "deployment.yaml",
        "service.yaml",
        "pdb.yaml",
    ] {
        assert!(resources.contains(&r), "kustomization.yaml lacks {r}");
    }
    assert!(
        !resources.contains(&"keda-scaledobject.yaml"),
        "KEDA is opt-in"
    );
    for r in &resources {
        assert!(repo(&format!("k8s/{r}")).exists(), "k8s/{r} missing");
    }
    let pdb = Yaml::load("k8s/pdb.yaml");
    assert_eq!(pdb.must("kind"), "PodDisruptionBudget");
    assert_eq!(pdb.must("spec.maxUnavailable"), "1");
    let d = Yaml::load("k8s/deployment.yaml");
    assert_eq!(
        pdb.must("spec.selector.matchLabels.app.kubernetes.io/name"),
        d.must("spec.template.metadata.labels.app.kubernetes.io/name")
    );
    // Container hardening and resources.
    let sc = format!("{CONTAINER}.securityContext");
    for (k, want) in [
        ("runAsNonRoot", "true"),
        ("readOnlyRootFilesystem", "true"),
        ("allowPrivilegeEscalation", "false"),
        ("capabilities.drop[0]", "ALL"),
    ] {
        assert_eq!(d.must(&format!("{sc}.{k}")), want, "securityContext.{k}");
    }
    for r in [
        "requests.cpu",
        "requests.memory",
        "limits.cpu",
        "limits.memory",
    ] {
        assert!(
            d.get(&format!("{CONTAINER}.resources.{r}")).is_some(),
            "resources.{r}"
        );
    }

    // Rendered by kustomize (scripts/go-tools.sh), then every object decoded strictly into its
    // Go API type; the opt-in KEDA and Prometheus Operator objects too.
    let out = kustomize_build(&repo("k8s"));
    for kind in ["ConfigMap", "Deployment", "Service", "PodDisruptionBudget"] {
        assert!(
            out.contains(&format!("kind: {kind}\n")),
            "kustomize output lacks {kind}"
        );
    }
    assert!(!out.contains("kind: ScaledObject"));
    assert!(!out.contains("kind: PrometheusRule"));
    println!("kustomize build k8s: {} lines", out.lines().count());
    let (code, report) = manifestcheck(&out, &[]);
    println!("{report}");
    assert_eq!(code, 0, "manifestcheck on `kustomize build k8s`:\n{report}");
    assert!(report.contains("4 objects checked, 0 failures"), "{report}");
    let optional = [
        repo("k8s/keda-scaledobject.yaml"),
        repo("k8s/prometheus-rules.yaml"),
    ];
    let (code, report) = manifestcheck("", &optional);
    println!("{report}");
    assert_eq!(code, 0, "manifestcheck on the opt-in manifests:\n{report}");
    assert!(report.contains("2 objects checked, 0 failures"), "{report}");

    // The overlay that reads every secret from the mounted Secret instead.
    let out = kustomize_build(&repo("deploy/k8s-secured"));
    assert!(
        !out.contains("secretKeyRef"),
        "secrets only as files:\n{out}"
    );
    for needed in [
        "LP_DATABASE_URL_FILE",
        "secretName: log-processor-credentials",
    ] {
        assert!(out.contains(needed), "deploy/k8s-secured lacks {needed}");
    }
    let (code, report) = manifestcheck(&out, &[]);
    println!("{report}");
    assert_eq!(
        code, 0,
        "manifestcheck on `kustomize build deploy/k8s-secured`:\n{report}"
    );
    assert!(report.contains("4 objects checked, 0 failures"), "{report}");
}

/// The Go tools folder: scripts/go-tools.sh builds what is missing (never skipped).
fn go_tools() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let mut c = Command::new("bash");
        c.arg(repo("scripts/go-tools.sh"));
        let (code, out, err) = run_bounded(c, Duration::from_secs(1800));
        assert_eq!(code, 0, "scripts/go-tools.sh failed:\n{err}");
        PathBuf::from(out.trim())
    })
    .clone()
}

fn kustomize_build(dir: &Path) -> String {
    let mut c = Command::new(go_tools().join("kustomize"));
    c.arg("build").arg(dir);
    let (code, out, err) = run_bounded(c, Duration::from_secs(60));
    assert_eq!(code, 0, "kustomize build {}: {err}", dir.display());
    out
}

/// `manifestcheck` over `stdin` (when not empty) and `files`: (exit code, report).
fn manifestcheck(stdin: &str, files: &[PathBuf]) -> (i32, String) {
    let mut c = Command::new(go_tools().join("manifestcheck"));
    if !stdin.is_empty() {
        c.arg("-");
    }
    c.args(files)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("manifestcheck");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn a_misspelt_manifest_field_fails_validation() {
    // A copy of k8s/ with one field misspelt in a built-in kind, which kustomize renders as
    // it is and the API server would drop without strict decoding.
    let dir = TempDir::new("k8s-misspelt");
    for entry in std::fs::read_dir(repo("k8s")).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.0.join(p.file_name().unwrap())).unwrap();
    }
    let misspell = |file: &str, from: &str, to: &str| {
        let path = dir.0.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{file} has no `{from}`");
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
        path
    };
    misspell(
        "deployment.yaml",
        "terminationGracePeriodSeconds:",
        "terminationGracePeriodSecond:",
    );
    let rendered = kustomize_build(&dir.0);
    assert!(rendered.contains("terminationGracePeriodSecond:"));
    let (code, report) = manifestcheck(&rendered, &[]);
    println!("{report}");
    assert_eq!(code, 1, "a misspelt Deployment field passed:\n{report}");
    assert!(
        report.contains("unknown field \"spec.template.spec.terminationGracePeriodSecond\""),
        "{report}"
    );

    // The custom resources: KEDA's ScaledObject and the Prometheus Operator's PrometheusRule.
    let keda = misspell(
        "keda-scaledobject.yaml",
        "maxReplicaCount:",
        "maxReplicasCount:",
    );
    let rules = misspell("prometheus-rules.yaml", "annotations:", "anotations:");
    let (code, report) = manifestcheck("", &[keda, rules]);
    println!("{report}");
    assert_eq!(code, 1, "misspelt custom resources passed:\n{report}");
    assert!(
        report.contains("unknown field \"spec.maxReplicasCount\""),
        "{report}"
    );
    assert!(report.contains("anotations"), "{report}");
    assert!(report.contains("2 objects checked, 2 failures"), "{report}");
}

#[test]
fn prometheus_rules_pass_promtool_check_and_test() {
    let tools = go_tools();
    let dir = TempDir::new("promtool");
    // promtool reads plain rule files: the PrometheusRule's spec is one.
    let mut c = Command::new(tools.join("promql-names"));
    c.arg("rules").arg(repo("k8s/prometheus-rules.yaml"));
    let (code, spec, err) = run_bounded(c, Duration::from_secs(30));
    assert_eq!(code, 0, "promql-names rules: {err}");
    let rules = dir.0.join("rules.yml");
    std::fs::write(&rules, &spec).unwrap();
    let tests = dir.0.join("rules.test.yaml");
    std::fs::copy(repo("tests/promtool/rules.test.yaml"), &tests).unwrap();

    let mut c = Command::new(tools.join("promtool"));
    c.args(["check", "rules"]).arg(&rules);
    let (code, out, err) = run_bounded(c, Duration::from_secs(60));
    println!("promtool check rules: {out}{err}");
    assert_eq!(code, 0, "promtool check rules:\n{out}{err}");
    assert!(out.contains("SUCCESS: 7 rules found"), "{out}{err}");

    let mut c = Command::new(tools.join("promtool"));
    c.args(["test", "rules"]).arg(&tests);
    let (code, out, err) = run_bounded(c, Duration::from_secs(120));
    println!("promtool test rules: {out}{err}");
    assert_eq!(code, 0, "promtool test rules:\n{out}{err}");
    assert!(out.contains("SUCCESS"), "{out}{err}");
}

#[test]
fn keda_scaled_object_matches_the_consumer_settings() {
    let m = Manifests::load();
    let env = m.env_with_dummy_secrets();
    let k = Yaml::load("k8s/keda-scaledobject.yaml");
    assert_eq!(k.must("kind"), "ScaledObject");
    assert_eq!(
        k.must("spec.scaleTargetRef.name"),
        m.deployment.must("metadata.name")
    );
    let t = "spec.triggers[0]";
    assert_eq!(k.must(&format!("{t}.type")), "kafka");
    assert_eq!(
        k.must(&format!("{t}.metadata.consumerGroup")),
        env["LP_GROUP_ID"]
    );
    assert_eq!(
        k.must(&format!("{t}.metadata.bootstrapServers")),
        env["LP_KAFKA_BROKERS"]
    );
    let topics: Vec<&str> = env["LP_TOPICS"].split(',').collect();
    assert!(
        topics.contains(&k.must(&format!("{t}.metadata.topic"))),
        "topic in LP_TOPICS"
    );
    let partitions = num(k.must("metadata.annotations.log-processor/topic-partitions"));
    let max = num(k.must("spec.maxReplicaCount"));
    assert!(
        max <= partitions,
        "maxReplicaCount {max} > {partitions} partitions: idle consumers"
    );
    assert!(num(k.must("spec.minReplicaCount")) >= 1);
    let replicas = num(m.deployment.must("spec.replicas"));
    assert!(
        replicas <= partitions,
        "deployment replicas {replicas} > {partitions} partitions"
    );
}

// ---------------------------------------------------------------------------------------------
// The Helm chart (deploy/helm/log-processor): linted, rendered with the default and the
// secured-cluster values, every object decoded strictly, the grace period derived right.

const CHART: &str = "deploy/helm/log-processor";

fn helm(args: &[&str]) -> String {
    let mut c = Command::new(go_tools().join("helm"));
    c.args(args).env(
        "HELM_CACHE_HOME",
        std::env::temp_dir().join("lp-helm-cache"),
    );
    let (code, out, err) = run_bounded(c, Duration::from_secs(120));
    assert_eq!(code, 0, "helm {args:?}:\n{out}{err}");
    out
}

#[test]
fn helm_chart_lints_and_renders_objects_that_decode_strictly() {
    let chart = repo(CHART);
    let chart = chart.to_str().unwrap();
    let secured = repo(&format!("{CHART}/values-secured.yaml"));
    let secured = secured.to_str().unwrap();
    println!("{}", helm(&["lint", chart]));
    println!("{}", helm(&["lint", chart, "-f", secured]));
    let cases = [
        ("default values", vec![]),
        ("secured values", vec!["-f", secured]),
        ("KEDA", vec!["--set", "keda.enabled=true"]),
    ];
    for (what, extra) in cases {
        let mut args = vec!["template", "lp", chart];
        args.extend(extra);
        let out = helm(&args);
        let (code, report) = manifestcheck(&out, &[]);
        println!("helm template ({what}): {report}");
        assert_eq!(
            code, 0,
            "manifestcheck on helm template ({what}):\n{report}"
        );
        if what == "KEDA" {
            assert!(
                out.contains("kind: ScaledObject") && !out.contains("replicas:"),
                "{out}"
            );
        }
    }
}

/// The LP_* environment a rendered chart gives the container: the ConfigMap's data and the
/// Deployment's `env` (a variable from a Secret gets its dummy value).
fn rendered_env(out: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for doc in out.split("\n---") {
        let lines: Vec<&str> = doc.lines().collect();
        if doc.contains("\nkind: ConfigMap") {
            for l in &lines {
                if let Some((k, v)) = l.strip_prefix("  ").and_then(|l| l.split_once(": "))
                    && k.starts_with("LP_")
                {
                    env.insert(k.to_string(), v.trim_matches('"').to_string());
                }
            }
        }
        if doc.contains("\nkind: Deployment") {
            for (i, l) in lines.iter().enumerate() {
                let Some(name) = l.trim().strip_prefix("- name: LP_") else {
                    continue;
                };
                let name = format!("LP_{name}");
                let next = lines.get(i + 1).map_or("", |l| l.trim());
                let value = match next.strip_prefix("value: ") {
                    Some(v) => v.trim_matches('"').to_string(),
                    None => dummy_secret(&name),
                };
                env.insert(name, value);
            }
        }
    }
    env
}

#[test]
fn helm_grace_period_always_fits_the_deadline_and_its_margin() {
    let chart = repo(CHART);
    let chart = chart.to_str().unwrap();
    let cases = [
        (25_000, 2_000, 3),
        (1_000, 2_000, 0),
        (59_999, 2_001, 0),
        (10_000, 2_999, 1),
        (300_000, 5_000, 10),
    ];
    for (deadline, margin, slack) in cases {
        let sets = format!(
            "shutdown.deadlineMs={deadline},shutdown.marginMs={margin},shutdown.slackSeconds={slack}"
        );
        let out = helm(&["template", "lp", chart, "--set", &sets]);
        let grace: u64 = out
            .lines()
            .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds: "))
            .expect("terminationGracePeriodSeconds")
            .parse()
            .unwrap();
        let env = rendered_env(&out);
        assert_eq!(
            num(&env["LP_GRACE_PERIOD_MS"]),
            grace * 1000,
            "{sets}: LP_GRACE_PERIOD_MS is the pod's grace period"
        );
        assert!(
            deadline + margin.max(MIN_MARGIN_MS) <= grace * 1000,
            "{sets}: deadline + margin > grace {grace} s"
        );
        // The daemon's own rule decides: it starts with these settings.
        check_config(&env, &[], &format!("the chart rendered with {sets}"));
        println!("helm: {sets} -> terminationGracePeriodSeconds {grace}, check-config accepts it");
    }
    // A margin the daemon would refuse is refused by the chart, naming the value.
    let mut c = Command::new(go_tools().join("helm"));
    c.args(["template", "lp", chart, "--set", "shutdown.marginMs=500"]);
    let (code, _, err) = run_bounded(c, Duration::from_secs(60));
    assert_ne!(code, 0);
    assert!(
        err.contains("shutdown.marginMs must be at least 2000"),
        "{err}"
    );
}

#[test]
fn helm_chart_alerts_are_the_prometheus_rules_of_k8s() {
    // One set of alerts: the chart's copy is the `spec` of k8s/prometheus-rules.yaml.
    let k8s = read("k8s/prometheus-rules.yaml");
    let spec: Vec<&str> = k8s
        .lines()
        .skip_while(|l| *l != "spec:")
        .skip(1)
        .map(|l| l.strip_prefix("  ").unwrap_or(l))
        .collect();
    let chart = read(&format!("{CHART}/files/rules-spec.yaml"));
    assert_eq!(
        chart.lines().collect::<Vec<_>>(),
        spec,
        "{CHART}/files/rules-spec.yaml differs from the spec of k8s/prometheus-rules.yaml"
    );
}

// ---------------------------------------------------------------------------------------------
// (f) the image itself, built and run under podman.

/// The Dockerfile's runtime stage, built under podman around this test's binary and run
/// against the services (scripts/image-check.sh): non-root, PID 1, read-only root file system,
/// `/healthz` and `/readyz` answer, and `podman stop` drains it to exit code 0 in the deadline.
/// The script installs podman and mmdebstrap when missing; it fails, never skips, when it
/// cannot run them.
#[test]
fn the_image_runs_as_pid_1_non_root_read_only_and_drains_on_podman_stop() {
    let mut c = Command::new("bash");
    c.arg(repo("scripts/image-check.sh"))
        .env("LP_IMAGE_BINARY", BIN)
        .stdin(Stdio::null());
    let (code, out, err) = run_bounded(c, Duration::from_secs(900));
    assert_eq!(code, 0, "scripts/image-check.sh failed:\n{err}{out}");
    let summary = out
        .lines()
        .find(|l| l.starts_with("image-check: ok "))
        .unwrap_or_else(|| panic!("no summary line:\n{err}{out}"));
    println!("{err}{summary}");
}
