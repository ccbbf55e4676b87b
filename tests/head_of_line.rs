//! A held partition does not hold the other partitions of its worker: with one worker, a
//! partition whose rows PostgreSQL refuses (a constraint of the store: held and retried, never
//! dead-lettered) waits alone, while the other partition is stored as fast as ever.

mod common;

use std::time::{Duration, Instant};

use common::*;

async fn rows_of(s: &Scenario, partition: i32) -> i64 {
    let pool = s.pg().await;
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {}.log_records WHERE kafka_partition = $1",
        s.schema
    )))
    .bind(partition)
    .fetch_one(&pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_partition_does_not_hold_the_others_on_its_worker() {
    let s = Scenario::new("head_of_line", 2).await;
    let env = with(
        &s.env(),
        &[
            ("LP_WORKERS", "1".into()),
            ("LP_BATCH_MAX_RECORDS", "200".into()),
        ],
    );
    let mut d = Daemon::start(&env);
    d.wait_for_line("partitions assigned", Duration::from_secs(60));
    s.sql(&format!(
        "ALTER TABLE {}.log_records ADD CONSTRAINT lp_hold_p0 CHECK (kafka_partition <> 0) NOT VALID",
        s.schema
    ))
    .await;

    s.produce(0, 6_000, 0.0);
    let ends = s.end_offsets();
    assert!(
        ends[&0] > 0 && ends[&1] > 0,
        "both partitions have records: {ends:?}"
    );
    let started = Instant::now();
    while rows_of(&s, 1).await < ends[&1] {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "partition 1 waited behind the held partition 0: {} of {} rows after 60 s\n{}",
            rows_of(&s, 1).await,
            ends[&1],
            d.tail(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let healthy = started.elapsed();
    // The fault happened: partition 0 is held, nothing of it stored or dead-lettered.
    let (_, metrics) = http("GET", &format!("http://{}/metrics", d.http_addr()), None).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("log_processor_partition_stalled{")
                && l.contains("partition=\"0\"")
                && l.ends_with(" 1")),
        "partition 0 is not held:\n{metrics}"
    );
    assert_eq!(rows_of(&s, 0).await, 0);
    assert_eq!(
        s.pg_counts().await.1,
        0,
        "a store's refusal makes no dead letter"
    );

    // Lifted: partition 0 follows, and everything is exactly once where it belongs.
    s.sql(&format!(
        "ALTER TABLE {}.log_records DROP CONSTRAINT lp_hold_p0",
        s.schema
    ))
    .await;
    let lifted = Instant::now();
    s.wait_all_stored(Duration::from_secs(60)).await;
    let released = lifted.elapsed();
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(30)), 0, "{}", d.tail(20));
    s.verify()
        .await
        .assert_exact("held partition beside a healthy one");
    println!(
        "head of line: partition 1 ({} records) stored in {healthy:?} while partition 0 ({} records) was held on the same worker; partition 0 stored {released:?} after the constraint was dropped",
        ends[&1], ends[&0]
    );
    s.cleanup().await;
}
