//! Offsets without a record: every offset below a partition's stored watermark is a row, a
//! dead letter or a recorded gap (`source_gaps`), and a gap says whether records were lost
//! outside the daemon (deleted by retention before they were read) or never existed as records
//! (transaction markers, aborted records). Checked against what Kafka holds.
//!
//! Reduced sizes in `make test`; `CHAOS_FULL=1` (`make chaos`) selects the full ones.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::chaos_kit::sized;
use common::*;
use rdkafka::producer::{BaseProducer, Producer};

/// The gaps stored for the scenario: partition -> [(from, to, cause)].
async fn gaps(s: &Scenario) -> BTreeMap<i32, Vec<(i64, i64, String)>> {
    let pool = s.pg().await;
    let rows: Vec<(i32, i64, i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT kafka_partition, from_offset, to_offset, cause FROM {}.source_gaps ORDER BY 1, 2",
        s.schema
    )))
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut out: BTreeMap<i32, Vec<_>> = BTreeMap::new();
    for (p, from, to, cause) in rows {
        out.entry(p).or_default().push((from, to, cause));
    }
    out
}

/// Every offset below each partition's watermark is exactly one of: a row, a dead letter, an
/// offset inside a recorded gap.
async fn assert_every_offset_accounted(s: &Scenario) {
    let pool = s.pg().await;
    let q = format!(
        "SELECT o.kafka_partition, o.next_offset, \
           (SELECT count(*) FROM {0}.log_records r WHERE r.kafka_partition = o.kafka_partition AND r.kafka_offset < o.next_offset) \
         + (SELECT count(*) FROM {0}.dead_letters d WHERE d.kafka_partition = o.kafka_partition AND d.kafka_offset < o.next_offset) \
         + (SELECT coalesce(sum(least(g.to_offset, o.next_offset) - g.from_offset), 0)::bigint FROM {0}.source_gaps g \
              WHERE g.kafka_partition = o.kafka_partition AND g.from_offset < o.next_offset) \
         FROM {0}.consumer_offsets o WHERE o.group_id = $1",
        s.schema
    );
    let rows: Vec<(i32, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(q))
        .bind(&s.group)
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(!rows.is_empty(), "no watermark stored");
    for (p, next, accounted) in rows {
        assert_eq!(
            accounted, next,
            "partition {p}: {accounted} offsets accounted for below the watermark {next}"
        );
    }
}

/// Waits until PostgreSQL's watermarks reach the end offsets (a count of rows cannot: some
/// offsets hold no record).
async fn wait_watermarks_at_end(s: &Scenario, d: &Daemon, timeout: Duration) {
    let ends = s.end_offsets();
    let start = Instant::now();
    loop {
        let w = s.pg_watermarks().await;
        if ends.iter().all(|(p, e)| w.get(p) == Some(e)) {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "watermarks {w:?} never reached the end offsets {ends:?}; log:\n{}",
            d.tail(30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn metric(d: &Daemon, prefix: &str) -> Option<i64> {
    let (_, text) = http("GET", &format!("http://{}/metrics", d.http_addr()), None).await;
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_deleted_before_they_were_read_are_recorded_as_a_retention_gap() {
    let s = Scenario::new("gap_retention", 2).await;
    let (n_read, n_unread) = (sized(2_000, 20_000), sized(3_000, 30_000));
    let scale = n_read / 2_000;
    s.produce(0, n_read, 0.01);
    let mut d = Daemon::start(&s.env());
    s.wait_all_stored(Duration::from_secs(120 * scale)).await;
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(30)), 0);
    let before = s.pg_watermarks().await;

    // While the daemon is down: more records, then partition 0 trimmed past its watermark
    // (what retention or `kafka-delete-records` does to records nobody read yet).
    s.produce(n_read, n_unread, 0.01);
    let ends = s.end_offsets();
    let w0 = before[&0];
    let cut = w0 + (ends[&0] - w0) / 2;
    assert!(cut > w0 && cut < ends[&0]);
    // What the stores must hold in the end: every record as produced, but the unread ones that
    // are about to be deleted.
    let mut expected = s.read_back(&ends);
    expected.retain(|&(p, o), _| !(p == 0 && (w0..cut).contains(&o)));
    delete_records_below(&s, cut).await;

    let mut d = Daemon::start(&s.env());
    wait_watermarks_at_end(&s, &d, Duration::from_secs(120 * scale)).await;
    assert!(
        d.has_line("offsets deleted from Kafka before they were read"),
        "no WARN line for the loss:\n{}",
        d.tail(30)
    );
    let counted = metric(
        &d,
        "log_processor_source_gap_offsets_total{cause=\"retention\"}",
    )
    .await;
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(30)), 0);

    // Exactly the deleted range, on exactly that partition.
    let g = gaps(&s).await;
    assert_eq!(
        g,
        BTreeMap::from([(0, vec![(w0, cut, "retention".to_string())])]),
        "recorded gaps"
    );
    assert_eq!(
        counted,
        Some(cut - w0),
        "the metric counts the lost offsets"
    );
    assert_every_offset_accounted(&s).await;
    // `status` names the loss.
    let out = std::process::Command::new(binary())
        .arg("status")
        .envs(s.env())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "status failed: {text}");
    assert!(
        text.contains(&format!(
            "{}/0: {} offsets were deleted from Kafka",
            s.topic,
            cut - w0
        )) && text.contains(&format!("lost={}", cut - w0)),
        "status does not show the loss:\n{text}"
    );
    println!("{text}");
    // Everything Kafka still holds is stored, each row and document equal to its record.
    s.verify_against(expected, &Expectation::default())
        .await
        .assert_exact("retention gap");
    println!(
        "source gaps: retention [{w0}, {cut}) on partition 0 recorded, {} offsets counted",
        cut - w0
    );
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_markers_and_aborted_records_are_no_loss_and_commits_reach_the_end() {
    let s = Scenario::new("gap_txn", 1).await;
    let producer: BaseProducer = producer_config()
        .set("transactional.id", format!("tx-{}", s.topic))
        .create()
        .expect("transactional producer");
    producer
        .init_transactions(Duration::from_secs(30))
        .expect("init transactions");
    // Committed, aborted, committed: 3k readable records, k aborted, three markers.
    let k = sized(100, 1_000);
    let mut seq = 0;
    for (n, commit) in [(3 * k / 2, true), (k, false), (3 * k / 2, true)] {
        producer.begin_transaction().unwrap();
        for _ in 0..n {
            send_generated(&producer, &s.topic, seq, 0.0);
            seq += 1;
        }
        producer.flush(Duration::from_secs(30)).unwrap();
        if commit {
            producer
                .commit_transaction(Duration::from_secs(30))
                .unwrap();
        } else {
            producer.abort_transaction(Duration::from_secs(30)).unwrap();
        }
    }
    let end = s.end_offsets()[&0];
    assert_eq!(
        end as u64,
        4 * k + 3,
        "the fault: {} records and three markers in the log",
        4 * k
    );

    let mut d = Daemon::start(&s.env());
    wait_watermarks_at_end(&s, &d, Duration::from_secs(60)).await;
    // Kafka's committed offset reaches the end too (past the last commit marker).
    let start = Instant::now();
    while s.committed().get(&0) != Some(&end) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "committed offset {:?} never reached the end {end}",
            s.committed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let lost = metric(
        &d,
        "log_processor_source_gap_offsets_total{cause=\"retention\"}",
    )
    .await;
    assert!(
        !d.has_line("offsets deleted from Kafka before they were read"),
        "a gap reported as a loss:\n{}",
        d.tail(30)
    );
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(30)), 0);

    assert_eq!(lost, Some(0), "no offset counted as lost");
    let g = gaps(&s).await;
    let all: Vec<_> = g.get(&0).cloned().unwrap_or_default();
    assert!(
        all.iter().all(|(_, _, cause)| cause == "no_record"),
        "{all:?}"
    );
    let gap_offsets: i64 = all.iter().map(|(f, t, _)| t - f).sum();
    assert_eq!(
        gap_offsets as u64,
        k + 3,
        "{k} aborted records and 3 markers: {all:?}"
    );
    assert_every_offset_accounted(&s).await;
    // The committed records, each stored once and equal to Kafka's; no aborted one.
    let v = s.verify().await;
    v.assert_exact("transactional topic");
    assert_eq!(v.records, 3 * k);
    println!("source gaps: transactional topic, no_record gaps {all:?}");
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_deleted_while_the_partition_is_held_are_recorded_as_a_retention_gap() {
    let s = Scenario::new("gap_held", 1).await;
    // `first` stored, then `more` arrive while held, and Kafka trims them up to `cut`.
    let (first, more) = (sized(500, 5_000), sized(5_000, 50_000));
    let cut = (first + 3 * more / 5) as i64;
    s.produce(0, first, 0.0);
    // A small budget keeps the partition's read-ahead (a quarter of it) to a few batches, so
    // that while it is held most of `more` is still only in Kafka when it is trimmed.
    let env = with(
        &s.env(),
        &[
            ("LP_BATCH_MAX_RECORDS", "50".into()),
            ("LP_BATCH_MAX_BYTES", "65536".into()),
            ("LP_MEMORY_BUDGET_MB", "1".into()),
            ("LP_KAFKA_QUEUE_KBYTES", "16".into()),
        ],
    );
    let mut d = Daemon::start(&env);
    s.wait_all_stored(Duration::from_secs(120 * first / 500))
        .await;
    assert_eq!(s.pg_watermarks().await.get(&0), Some(&(first as i64)));

    // PostgreSQL refuses every new row (a constraint of the store: the partition is held,
    // retried, nothing dead-lettered), then Kafka trims records the daemon has not read yet.
    s.sql(&format!(
        "ALTER TABLE {}.log_records ADD CONSTRAINT lp_hold CHECK (kafka_offset < {first}) NOT VALID",
        s.schema
    ))
    .await;
    s.produce(first, more, 0.0);
    let ends = s.end_offsets();
    let all = s.read_back(&ends);
    let held_since = Instant::now();
    loop {
        let (_, text) = http("GET", &format!("http://{}/metrics", d.http_addr()), None).await;
        if text
            .lines()
            .any(|l| l.starts_with("log_processor_partition_stalled{") && l.ends_with(" 1"))
        {
            break;
        }
        assert!(held_since.elapsed() < Duration::from_secs(60), "never held");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        s.pg_watermarks().await.get(&0),
        Some(&(first as i64)),
        "held at {first}"
    );
    delete_records_below(&s, cut).await;
    s.sql(&format!(
        "ALTER TABLE {}.log_records DROP CONSTRAINT lp_hold",
        s.schema
    ))
    .await;
    wait_watermarks_at_end(&s, &d, Duration::from_secs(120 * first / 500)).await;
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(30)), 0);

    // What the daemon had read before the cut is stored; from there to the cut is one
    // retention gap; everything after it is stored.
    let g = gaps(&s).await;
    let recorded = g.get(&0).cloned().unwrap_or_default();
    assert_eq!(recorded.len(), 1, "one gap: {g:?}");
    let (from, to, cause) = recorded[0].clone();
    assert_eq!((to, cause.as_str()), (cut, "retention"), "{g:?}");
    assert!(
        (first as i64..cut).contains(&from),
        "the gap starts past the held watermark: {g:?}"
    );
    assert_every_offset_accounted(&s).await;
    let mut expected = all;
    expected.retain(|&(_, o), _| !(from..cut).contains(&o));
    s.verify_against(expected, &Expectation::default())
        .await
        .assert_exact("records deleted while held");
    println!(
        "source gaps while held: read before the cut [{first}, {from}), retention [{from}, {cut}) recorded"
    );
    s.cleanup().await;
}
