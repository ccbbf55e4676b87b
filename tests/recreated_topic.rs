//! A topic deleted and recreated under the same name: its new offsets lie below PostgreSQL's
//! watermark, so reading them would have `ON CONFLICT DO NOTHING` swallow every new record.
//! The daemon must hold the partition, say why, and store nothing of it.

mod common;

use std::time::Duration;

use common::*;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

async fn delete_topic(topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .create()
        .unwrap();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in admin.delete_topics(&[topic], &opts).await.unwrap() {
        r.unwrap_or_else(|(t, e)| panic!("delete {t}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_topic_is_held_not_swallowed() {
    let s = Scenario::new("recreated", 1).await;
    s.produce(0, 3_000, 0.0);
    let mut d = Daemon::start(&s.env());
    s.wait_all_stored(Duration::from_secs(120)).await;
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(30)), 0);
    let (rows_before, dead_before) = s.pg_counts().await;
    assert_eq!(rows_before + dead_before, 3_000);

    // The same name, new records from offset 0: below the stored watermark of 3,000.
    delete_topic(&s.topic).await;
    let mut recreated = false;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if log_processor::loadgen::create_topic(&kafka_brokers(), &s.topic, 1, 8 << 20)
            .await
            .is_ok()
            && s.try_end_offsets().is_ok_and(|e| e.get(&0) == Some(&0))
        {
            recreated = true;
            break;
        }
    }
    assert!(recreated, "topic {} not recreated empty", s.topic);
    s.produce(10_000, 500, 0.0);
    assert_eq!(
        s.end_offsets().get(&0),
        Some(&500),
        "the fault: end offset below 3,000"
    );

    let mut d = Daemon::start(&s.env());
    d.wait_for_line("recreated", Duration::from_secs(60));
    let addr = d.http_addr();
    let (_, metrics) = http("GET", &format!("http://{addr}/metrics"), None).await;
    let held = metrics
        .lines()
        .find(|l| l.starts_with("log_processor_partition_stalled{") && l.contains(&s.topic))
        .unwrap_or_else(|| panic!("no stalled partition in /metrics:\n{metrics}"));
    assert!(
        held.contains("partition=\"0\"") && held.ends_with(" 1"),
        "{held}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        s.pg_counts().await,
        (rows_before, dead_before),
        "nothing of the recreated topic is stored while it is held"
    );
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(30)), 0);
    println!("recreated topic: held, reason line: {held}");
    s.cleanup().await;
}
