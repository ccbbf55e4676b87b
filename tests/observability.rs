//! The Grafana dashboard (deploy/grafana/log-processor.json) and the alert rules
//! (k8s/prometheus-rules.yaml) against what the real daemon exports. The daemon runs against the
//! real services under load until every family has series, including the per-partition lag and
//! a held partition (the search index write-blocked); then `promql-names` (tools/promql, built
//! by scripts/go-tools.sh) parses every expression with Prometheus' own PromQL parser and fails
//! on any metric or label the scrape lacks. The same check must fail on misspelt copies.
//!
//! With `LP_OBS_SCRAPES` set to a folder, every scrape of the run is kept there as
//! `<unix ms>.prom`: scripts/dashboard-screenshot.sh renders docs/dashboard.png from them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;

/// The tools folder from scripts/go-tools.sh (which builds what is missing; never skipped).
fn go_tools() -> PathBuf {
    let out = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/go-tools.sh"))
        .output()
        .expect("bash scripts/go-tools.sh");
    assert!(
        out.status.success(),
        "scripts/go-tools.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// `promql-names check SCRAPE DASHBOARD RULES`: (exit code, output).
fn check(tools: &Path, scrape: &Path, dashboard: &Path, rules: &Path) -> (i32, String) {
    let out = Command::new(tools.join("promql-names"))
        .arg("check")
        .args([scrape, dashboard, rules])
        .output()
        .expect("promql-names");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Scrapes /metrics every `every` until stopped; keeps the last one, and each one in
/// `LP_OBS_SCRAPES` when set.
fn start_scraper(addr: String, every: Duration) -> (Arc<Mutex<String>>, Arc<Mutex<bool>>) {
    let last = Arc::new(Mutex::new(String::new()));
    let stop = Arc::new(Mutex::new(false));
    let keep = std::env::var("LP_OBS_SCRAPES").ok().map(PathBuf::from);
    if let Some(dir) = &keep {
        std::fs::create_dir_all(dir).expect("LP_OBS_SCRAPES folder");
    }
    let (l, s) = (last.clone(), stop.clone());
    tokio::spawn(async move {
        while !*s.lock().unwrap() {
            let (status, body) = http("GET", &format!("http://{addr}/metrics"), None).await;
            if status == 200 {
                if let Some(dir) = &keep {
                    let ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
                    let _ = std::fs::write(dir.join(format!("{}.prom", ms.as_millis())), &body);
                }
                *l.lock().unwrap() = body;
            }
            tokio::time::sleep(every).await;
        }
    });
    (last, stop)
}

async fn block_index_writes(s: &Scenario, on: bool) {
    let url = format!("{}/{}-*/_settings", elasticsearch_url(), s.index);
    let body = serde_json::json!({ "index.blocks.write": on }).to_string();
    let (status, text) = http("PUT", &url, Some(body)).await;
    assert_eq!(status, 200, "index.blocks.write={on}: {text}");
}

/// Produces `per_second` records (1 in 50 malformed) each second for `secs` seconds from `seq`.
async fn load(s: &Scenario, seq: &mut u64, per_second: u64, secs: u64) {
    for _ in 0..secs {
        let tick = Instant::now();
        s.produce(*seq, per_second, 0.02);
        *seq += per_second;
        tokio::time::sleep(Duration::from_secs(1).saturating_sub(tick.elapsed())).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_rules_name_only_what_the_daemon_exports() {
    let tools = go_tools();
    let s = Scenario::new("obs", 2).await;
    let mut d = Daemon::start(&s.env());
    d.wait_for_line("partitions assigned", Duration::from_secs(90));
    let (last, stop) = start_scraper(d.http_addr(), Duration::from_secs(1));

    let mut seq = 0;
    load(&s, &mut seq, 200, 20).await;
    s.wait_all_stored(Duration::from_secs(60)).await;

    // A write-blocked index holds every partition; records keep coming, so lag builds up.
    block_index_writes(&s, true).await;
    let held_since = Instant::now();
    let has = |scrape: &str, prefix: &str| {
        scrape
            .lines()
            .any(|l| l.starts_with(prefix) && l.contains(&format!("topic=\"{}\"", s.topic)))
    };
    while held_since.elapsed() < Duration::from_secs(60) {
        load(&s, &mut seq, 100, 2).await;
        let scrape = last.lock().unwrap().clone();
        if has(&scrape, "log_processor_partition_stalled{")
            && has(&scrape, "log_processor_consumer_lag{")
        {
            break;
        }
    }
    // Hold a little longer so a scrape series shows the stall (kept for the screenshot).
    load(&s, &mut seq, 100, 10).await;
    let scrape = last.lock().unwrap().clone();
    for family in [
        "log_processor_partition_stalled{",
        "log_processor_consumer_lag{",
    ] {
        assert!(
            has(&scrape, family),
            "no {family}..}} series of the topic after {:?} of a write-blocked index:\n{scrape}",
            held_since.elapsed()
        );
    }
    let dir = std::env::temp_dir().join(unique("obs-check"));
    std::fs::create_dir_all(&dir).unwrap();
    let scrape_path = dir.join("metrics.prom");
    std::fs::write(&scrape_path, &scrape).unwrap();

    let (dashboard, rules) = (
        repo("deploy/grafana/log-processor.json"),
        repo("k8s/prometheus-rules.yaml"),
    );
    let (code, out) = check(&tools, &scrape_path, &dashboard, &rules);
    println!("{out}");
    assert_eq!(code, 0, "promql-names check:\n{out}");
    assert!(out.contains(" 0 problems"), "{out}");

    // The check is not vacuous: a misspelt metric, a misspelt label and a label the metric
    // does not carry each fail it.
    let bad_dash = dir.join("dashboard.json");
    let text = std::fs::read_to_string(&dashboard).unwrap();
    let misspelt = text
        .replace("log_processor_retries_total", "log_processor_retry_total")
        .replace("by (le, store)", "by (le, stores)");
    assert_ne!(misspelt, text);
    std::fs::write(&bad_dash, misspelt).unwrap();
    let bad_rules = dir.join("rules.yaml");
    let text = std::fs::read_to_string(&rules).unwrap();
    let wrong_label = text.replace(
        "max by (topic, partition, reason) (log_processor_partition_stalled)",
        "max by (topic, partition, reason) (log_processor_consumer_lag)",
    );
    assert_ne!(wrong_label, text);
    std::fs::write(&bad_rules, wrong_label).unwrap();
    let (code, out) = check(&tools, &scrape_path, &bad_dash, &bad_rules);
    println!("misspelt copies:\n{out}");
    assert_eq!(
        code, 1,
        "promql-names must fail on the misspelt copies:\n{out}"
    );
    for needle in [
        "metric \"log_processor_retry_total\" is not exported",
        "label \"stores\" is on none of",
        "label \"reason\" is on none of [log_processor_consumer_lag]",
    ] {
        assert!(out.contains(needle), "expected `{needle}` in:\n{out}");
    }

    // Released, the daemon stores everything and exits cleanly.
    block_index_writes(&s, false).await;
    load(&s, &mut seq, 200, 10).await;
    s.wait_all_stored(Duration::from_secs(90)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    *stop.lock().unwrap() = true;
    d.signal("TERM");
    assert_eq!(
        d.wait(Duration::from_secs(40)),
        0,
        "exit code after SIGTERM"
    );
    let _ = std::fs::remove_dir_all(&dir);
    s.cleanup().await;
}
