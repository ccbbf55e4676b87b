//! One memory bound under any single record. Records of tens of MiB, one per partition at the
//! same moment so that four workers would write them at once, go through a daemon confined
//! to a memory cgroup whose limit is what `check-config` prints as its worst case: its peak
//! RSS stays within that figure, it is never OOM-killed, and every record is stored (or, above
//! LP_MAX_RECORD_BYTES, dead-lettered with its bytes). A record larger than a fetch may be is
//! reported at its partition and offset instead of a silent fetch loop.
//!
//! Reduced sizes in `make test`; `CHAOS_FULL=1` (`make chaos`) selects the full ones.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::chaos_kit::*;
use common::verify::Expectation;
use common::*;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const MIB: usize = 1024 * 1024;

/// A log line of about `bytes` bytes: a stack-trace-like message of words.
fn giant(tag: &str, bytes: usize) -> Vec<u8> {
    let mut message = String::with_capacity(bytes + 64);
    let mut i = 0u64;
    while message.len() < bytes {
        message.push_str(&format!("at frame {tag}-{i} (module.rs:{}) ", i % 977));
        i += 1;
    }
    serde_json::to_vec(&serde_json::json!({
        "timestamp": chrono::Utc::now().to_rfc3339(),
        "level": "error",
        "service": "giant",
        "message": message,
        "tag": tag,
    }))
    .unwrap()
}

fn small(tag: &str, i: usize) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "timestamp": chrono::Utc::now().to_rfc3339(),
        "level": "info",
        "service": "small",
        "message": format!("small record {tag}-{i}"),
    }))
    .unwrap()
}

/// Sends each `(partition, payload)` and waits for every acknowledgement.
fn produce_to(s: &Scenario, records: &[(i32, Vec<u8>)]) {
    let producer: BaseProducer = producer_config()
        .set("message.max.bytes", (64 * MIB).to_string())
        .set("linger.ms", "0")
        .create()
        .expect("producer");
    for (partition, payload) in records {
        let rec = BaseRecord::<[u8], [u8]>::to(&s.topic)
            .partition(*partition)
            .payload(payload);
        log_processor::loadgen::send(&producer, rec).expect("produce");
    }
    producer.flush(Duration::from_secs(120)).expect("flush");
}

/// `check-config`'s worst-case memory for these settings, in MiB.
fn printed_worst_case(env: &[(String, String)]) -> u64 {
    let out = Command::new(binary())
        .arg("check-config")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("check-config");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "check-config failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .find_map(|l| l.strip_prefix("worst-case memory: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no worst-case memory in check-config's output:\n{text}"))
}

/// A memory cgroup (v1 or v2, whichever this kernel mounts) limited to `limit_mib`. The test
/// fails when it cannot make one: a memory limit not enforced proves nothing.
struct MemoryCgroup {
    dir: PathBuf,
    v2: bool,
}

impl MemoryCgroup {
    fn new(name: &str, limit_mib: u64) -> MemoryCgroup {
        let v1 = PathBuf::from("/sys/fs/cgroup/memory");
        let v2 = PathBuf::from("/sys/fs/cgroup");
        let (dir, v2, limit_file) = if v1.join("cgroup.procs").exists() {
            (v1.join(name), false, "memory.limit_in_bytes")
        } else if std::fs::read_to_string(v2.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"))
        {
            (v2.join(name), true, "memory.max")
        } else {
            panic!(
                "no memory cgroup controller here (neither cgroup v1 memory nor v2 with memory)"
            );
        };
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| {
            panic!(
                "cannot create the cgroup {}: {e} (run as root)",
                dir.display()
            )
        });
        let bytes = (limit_mib * MIB as u64).to_string();
        std::fs::write(dir.join(limit_file), &bytes)
            .unwrap_or_else(|e| panic!("cannot set {limit_file}: {e}"));
        let swap = if v2 {
            "memory.swap.max"
        } else {
            "memory.memsw.limit_in_bytes"
        };
        // Without swap accounting there is no swap to escape to; where there is, forbid it.
        let _ = std::fs::write(dir.join(swap), if v2 { "0" } else { bytes.as_str() });
        MemoryCgroup { dir, v2 }
    }

    fn enter(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("cannot move {pid} into {}: {e}", self.dir.display()));
    }

    /// OOM kills inside the cgroup so far.
    fn oom_kills(&self) -> u64 {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        let text = std::fs::read_to_string(self.dir.join(file)).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The largest anonymous and file-backed resident sizes seen, in MiB, sampled every 50 ms
/// until the process is gone: where a peak comes from (heap, or the mapped binary).
fn sample_rss(pid: u32) -> std::thread::JoinHandle<(u64, u64)> {
    std::thread::spawn(move || {
        let (mut anon, mut file) = (0, 0);
        // A zombie has no memory fields left: the loop ends with the process.
        while let (Some(a), Some(f)) = (
            proc_status_kib(pid, "RssAnon:"),
            proc_status_kib(pid, "RssFile:"),
        ) {
            anon = anon.max(a / 1024);
            file = file.max(f / 1024);
            std::thread::sleep(Duration::from_millis(50));
        }
        (anon, file)
    })
}

fn peak_rss_mib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmHWM:").expect("VmHWM") / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn giant_records_stay_within_the_printed_worst_case_under_a_memory_limit() {
    let s = Scenario::with_record_limit("giant", 4, 64 * MIB).await;
    let max_record = 24 * MIB;
    let env = with(
        &s.env(),
        &[
            ("LP_WORKERS", "4".into()),
            ("LP_MEMORY_BUDGET_MB", "32".into()),
            ("LP_MAX_RECORD_BYTES", max_record.to_string()),
            ("LP_KAFKA_FETCH_MAX_BYTES", (28 * MIB).to_string()),
            ("LP_ES_BULK_MAX_BYTES", (26 * MIB).to_string()),
        ],
    );
    let worst = printed_worst_case(&env);
    // Rounds of four giants, one per partition at the same offsets, between small records;
    // the last round's first giant is over LP_MAX_RECORD_BYTES: a dead letter with its bytes.
    let rounds = sized(2, 6) as usize;
    let mut records = Vec::new();
    for round in 0..rounds {
        for p in 0..4 {
            for i in 0..50 {
                records.push((p, small(&format!("r{round}p{p}"), i)));
            }
        }
        for p in 0..4i32 {
            let size = if round + 1 == rounds && p == 0 {
                max_record + MIB
            } else {
                (12 + 3 * p as usize) * MIB
            };
            records.push((p, giant(&format!("r{round}p{p}"), size)));
        }
    }
    let giant_bytes: usize = records
        .iter()
        .map(|(_, r)| r.len())
        .filter(|&n| n > MIB)
        .sum();
    produce_to(&s, &records);
    println!(
        "giant: {} records, {} of them {} MiB together; worst case printed {worst} MiB",
        records.len(),
        4 * rounds,
        giant_bytes / MIB
    );

    let cgroup = MemoryCgroup::new(&format!("lp-giant-{}", std::process::id()), worst);
    let started = Instant::now();
    let mut d = Daemon::start(&env);
    cgroup.enter(d.pid());
    let sampled = sample_rss(d.pid());
    s.wait_all_stored(Duration::from_secs(300)).await;
    let took = started.elapsed();
    let peak = peak_rss_mib(d.pid());
    let budget_peak = metric(&d, "log_processor_batch_memory_peak_bytes").await / MIB as f64;
    d.signal("TERM");
    let code = d.wait(Duration::from_secs(40));
    let (anon, file) = sampled.join().unwrap();
    println!(
        "giant: largest resident heap {anon} MiB, mapped files {file} MiB (sampled every 50 ms)"
    );
    println!(
        "giant: stored in {:.1} s; peak RSS {peak} MiB of a {worst} MiB worst case (the cgroup's limit); peak of the batch budget {budget_peak:.0} MiB (copies counted); oom kills {}",
        took.as_secs_f64(),
        cgroup.oom_kills()
    );
    assert_eq!(code, 0, "exit code after SIGTERM:\n{}", d.tail(30));
    assert_eq!(
        cgroup.oom_kills(),
        0,
        "the daemon was OOM-killed in its cgroup"
    );
    assert!(
        peak <= worst,
        "peak RSS {peak} MiB above check-config's {worst} MiB"
    );
    assert!(
        budget_peak > 32.0,
        "a giant record crosses the budget (its copies counted): peak {budget_peak:.0} MiB"
    );
    let expect = Expectation {
        max_record_bytes: max_record,
        ..Expectation::default()
    };
    let v = verify_and_report_with(&s, "giant_records", 0, &expect).await;
    assert_eq!(
        v.dead_lettered, 1,
        "only the record over LP_MAX_RECORD_BYTES"
    );
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_larger_than_a_fetch_is_reported_at_its_partition_and_offset() {
    let s = Scenario::with_record_limit("over_fetch", 1, 16 * MIB).await;
    let mut records: Vec<(i32, Vec<u8>)> = (0..50).map(|i| (0, small("before", i))).collect();
    records.push((0, giant("over", 3 * MIB)));
    records.extend((0..50).map(|i| (0, small("after", i))));
    produce_to(&s, &records);
    let limited = with(
        &s.env(),
        &[
            ("LP_KAFKA_FETCH_MAX_BYTES", MIB.to_string()),
            ("LP_MAX_RECORD_BYTES", (512 * 1024).to_string()),
        ],
    );
    let started = Instant::now();
    let mut d = Daemon::start(&limited);
    let needle = "Kafka hands over no record of this partition";
    let seen = d.wait_for_line(needle, Duration::from_secs(90));
    let line = (d.lines.lock().unwrap().iter())
        .find(|(_, l)| l.contains(needle))
        .map(|(_, l)| strip_ansi(l))
        .unwrap();
    println!("over fetch: {line}");
    assert!(
        line.contains(&format!("{}/0", s.topic)) && line.contains("offset=50"),
        "{line}"
    );
    let (status, body) = http("GET", &format!("http://{}/metrics", d.http_addr()), None).await;
    assert_eq!(status, 200);
    let shown = format!(
        "log_processor_fetch_stalled_offset{{topic=\"{}\",partition=\"0\"}} 50",
        s.topic
    );
    assert!(body.contains(&shown), "{shown} missing from /metrics");
    assert_eq!(
        s.pg_counts().await,
        (50, 0),
        "the records before it are stored"
    );
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(40)), 0, "{}", d.tail(20));
    println!(
        "over fetch: reported {:.0} s after the daemon's start",
        seen.duration_since(started).as_secs_f64()
    );

    // The remedy the line names: a larger fetch. The record is then read; it is above
    // LP_MAX_RECORD_BYTES, so it becomes a dead letter with its bytes; the rest is stored.
    let mut d = Daemon::start(&with(
        &limited,
        &[("LP_KAFKA_FETCH_MAX_BYTES", (8 * MIB).to_string())],
    ));
    s.wait_all_stored(Duration::from_secs(90)).await;
    wait_committed_to_end(&s, Duration::from_secs(30)).await;
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(40)), 0, "{}", d.tail(20));
    let expect = Expectation {
        max_record_bytes: 512 * 1024,
        ..Expectation::default()
    };
    let v = verify_and_report_with(&s, "record_over_fetch", 0, &expect).await;
    assert_eq!(v.dead_lettered, 1);
    s.cleanup().await;
}
