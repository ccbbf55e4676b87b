//! PostgreSQL restored from a backup under the daemon's feet: Kafka's committed offsets and the
//! search store are ahead of the database. Every partition must be read again from the last
//! position PostgreSQL proves durable, a partition restored to before its first batch (no
//! watermark at all) from the log's start, and nothing may be skipped.
//!
//! Reduced sizes in `make test`; `CHAOS_FULL=1` (`make chaos`) selects the full ones.

mod common;

use std::time::Duration;

use common::chaos_kit::{sized, verify_and_report};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restored_to_an_earlier_snapshot_is_refilled_from_kafka() {
    let name = "restored_snapshot";
    let s = Scenario::new("restored", 3).await;
    // `n` records before the snapshot is taken away; partition 1 keeps its first `kept`.
    let (n, kept) = (sized(6_000, 60_000), sized(500, 5_000));
    s.produce(0, n, 0.01);
    let mut d = Daemon::start(&s.env());
    s.wait_all_stored(Duration::from_secs(120 * n / 6_000))
        .await;
    let ends = s.end_offsets();
    let start = std::time::Instant::now();
    while s.committed() != ends {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "commits never reached the end"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(30)), 0);
    s.verify().await.assert_exact("before the restore");

    // The restore: partition 0 as before its first batch (no rows, no dead letters, no
    // watermark); partition 1 as after its first `kept` offsets; partition 2 as it was.
    let pool = s.pg().await;
    for sql in [
        "DELETE FROM {s}.log_records WHERE kafka_partition = 0",
        "DELETE FROM {s}.dead_letters WHERE kafka_partition = 0",
        "DELETE FROM {s}.consumer_offsets WHERE kafka_partition = 0",
        "DELETE FROM {s}.log_records WHERE kafka_partition = 1 AND kafka_offset >= {kept}",
        "DELETE FROM {s}.dead_letters WHERE kafka_partition = 1 AND kafka_offset >= {kept}",
        "UPDATE {s}.consumer_offsets SET next_offset = {kept} WHERE kafka_partition = 1",
    ] {
        let sql = sql
            .replace("{s}", &s.schema)
            .replace("{kept}", &kept.to_string());
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .unwrap();
    }
    // The fault: Kafka's committed offsets, and the documents, are ahead of the database.
    let (rows, dead) = s.pg_counts().await;
    assert!(
        rows + dead < (n - n / 3) as i64,
        "the restore removed partition 0 and most of partition 1: {rows} + {dead}"
    );
    assert_eq!(
        s.committed(),
        ends,
        "Kafka still says everything was processed"
    );
    let watermarks = s.pg_watermarks().await;
    assert_eq!(watermarks.get(&0), None);
    assert_eq!(watermarks.get(&1), Some(&(kept as i64)));

    // More records arrive; the daemon comes back on the restored database.
    s.produce(n, n / 4, 0.01);
    let mut d = Daemon::start(&s.env());
    s.wait_all_stored(Duration::from_secs(120 * n / 6_000))
        .await;
    assert!(
        d.has_line("the database went back in time"),
        "partition 1 was not reported as rewound:\n{}",
        d.tail(30)
    );
    assert!(
        d.has_line("reading it from the log's start"),
        "partition 0 was not read from its start:\n{}",
        d.tail(30)
    );
    let addr = d.http_addr();
    let (_, metrics) = http("GET", &format!("http://{addr}/metrics"), None).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("log_processor_partition_rewinds_total 2")),
        "two partitions read again:\n{metrics}"
    );
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(30)), 0);
    // Every record of Kafka is a row or a dead letter again, and its document matches its row.
    verify_and_report(&s, name, 0).await;
    s.cleanup().await;
}

/// The same under a running daemon: one partition's last rows removed and its watermark
/// moved back as far (a failover to a replica that lagged). Nothing may keep the partition
/// held for good: it is read again from the watermark the database now has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watermark_that_moves_back_under_the_running_daemon_is_read_again() {
    let name = "restored_live";
    let s = Scenario::new("restored_live", 2).await;
    // `n` records, then the last `back` of partition 0 taken away.
    let (n, back) = (sized(6_000, 60_000), sized(1_000, 10_000) as i64);
    s.produce(0, n, 0.01);
    let mut d = Daemon::start(&s.env());
    s.wait_all_stored(Duration::from_secs(120 * n / 6_000))
        .await;
    let w = s.pg_watermarks().await[&0];
    assert!(w > back);

    // The failover, while the daemon runs and before the next records arrive.
    let pool = s.pg().await;
    for sql in [
        format!(
            "DELETE FROM {}.log_records WHERE kafka_partition = 0 AND kafka_offset >= {}",
            s.schema,
            w - back
        ),
        format!(
            "DELETE FROM {}.dead_letters WHERE kafka_partition = 0 AND kafka_offset >= {}",
            s.schema,
            w - back
        ),
        format!(
            "UPDATE {}.consumer_offsets SET next_offset = {} WHERE kafka_partition = 0",
            s.schema,
            w - back
        ),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .unwrap();
    }
    assert_eq!(s.pg_watermarks().await[&0], w - back, "the fault");
    s.produce(n, n / 3, 0.01);
    s.wait_all_stored(Duration::from_secs(90 * n / 6_000)).await;
    assert!(
        d.has_line("PostgreSQL is behind this partition's batches"),
        "the watermark behind the batches was not noticed:\n{}",
        d.tail(30)
    );
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(30)), 0, "log:\n{}", d.tail(30));
    verify_and_report(&s, name, 0).await;
    s.cleanup().await;
}
