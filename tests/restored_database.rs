//! PostgreSQL restored from a backup under the daemon's feet: Kafka's committed offsets and the
//! search store are ahead of the database. Every partition must be read again from the last
//! position PostgreSQL proves durable, a partition restored to before its first batch (no
//! watermark at all) from the log's start, and nothing may be skipped.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restored_to_an_earlier_snapshot_is_refilled_from_kafka() {
    let s = Scenario::new("restored", 3).await;
    s.produce(0, 6_000, 0.01);
    let mut d = Daemon::start(&s.env());
    s.wait_all_stored(Duration::from_secs(120)).await;
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
    // watermark); partition 1 as after its first 500 offsets; partition 2 as it was.
    let pool = s.pg().await;
    for sql in [
        "DELETE FROM {s}.log_records WHERE kafka_partition = 0",
        "DELETE FROM {s}.dead_letters WHERE kafka_partition = 0",
        "DELETE FROM {s}.consumer_offsets WHERE kafka_partition = 0",
        "DELETE FROM {s}.log_records WHERE kafka_partition = 1 AND kafka_offset >= 500",
        "DELETE FROM {s}.dead_letters WHERE kafka_partition = 1 AND kafka_offset >= 500",
        "UPDATE {s}.consumer_offsets SET next_offset = 500 WHERE kafka_partition = 1",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql.replace("{s}", &s.schema)))
            .execute(&pool)
            .await
            .unwrap();
    }
    // The fault: Kafka's committed offsets, and the documents, are ahead of the database.
    let (rows, dead) = s.pg_counts().await;
    assert!(
        rows + dead < 6_000 - 2_000,
        "the restore removed partition 0 and most of partition 1: {rows} + {dead}"
    );
    assert_eq!(
        s.committed(),
        ends,
        "Kafka still says everything was processed"
    );
    let watermarks = s.pg_watermarks().await;
    assert_eq!(watermarks.get(&0), None);
    assert_eq!(watermarks.get(&1), Some(&500));

    // More records arrive; the daemon comes back on the restored database.
    s.produce(6_000, 1_500, 0.01);
    let mut d = Daemon::start(&s.env());
    s.wait_all_stored(Duration::from_secs(120)).await;
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
    s.verify().await.assert_exact("after the restore");
    s.cleanup().await;
}

/// The same under a running daemon: one partition's last 1,000 rows removed and its watermark
/// moved back by 1,000 (a failover to a replica that lagged). Nothing may keep the partition
/// held for good: it is read again from the watermark the database now has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watermark_that_moves_back_under_the_running_daemon_is_read_again() {
    let s = Scenario::new("restored_live", 2).await;
    s.produce(0, 6_000, 0.01);
    let mut d = Daemon::start(&s.env());
    s.wait_all_stored(Duration::from_secs(120)).await;
    let w = s.pg_watermarks().await[&0];
    assert!(w > 1_000);

    // The failover, while the daemon runs and before the next records arrive.
    let pool = s.pg().await;
    for sql in [
        format!(
            "DELETE FROM {}.log_records WHERE kafka_partition = 0 AND kafka_offset >= {}",
            s.schema,
            w - 1_000
        ),
        format!(
            "DELETE FROM {}.dead_letters WHERE kafka_partition = 0 AND kafka_offset >= {}",
            s.schema,
            w - 1_000
        ),
        format!(
            "UPDATE {}.consumer_offsets SET next_offset = {} WHERE kafka_partition = 0",
            s.schema,
            w - 1_000
        ),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .unwrap();
    }
    assert_eq!(s.pg_watermarks().await[&0], w - 1_000, "the fault");
    s.produce(6_000, 2_000, 0.01);
    s.wait_all_stored(Duration::from_secs(90)).await;
    assert!(
        d.has_line("PostgreSQL is behind this partition's batches"),
        "the watermark behind the batches was not noticed:\n{}",
        d.tail(30)
    );
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(30)), 0, "log:\n{}", d.tail(30));
    s.verify()
        .await
        .assert_exact("watermark moved back under the daemon");
    s.cleanup().await;
}
