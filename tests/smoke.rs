//! The client crates against the real services: each test prints the server version it
//! talked to, and fails (never skips) when its service is down.

mod common;

use std::time::Duration;

use common::*;
use elasticsearch::http::Method;
use elasticsearch::http::headers::HeaderMap;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::Offset;

#[tokio::test]
async fn kafka_produce_consume_commit_in_a_group() {
    require("Kafka", &kafka_brokers());
    let topic = unique("smoke_kafka");
    log_processor::loadgen::create_topic(&kafka_brokers(), &topic, 2, 1 << 20)
        .await
        .expect("create topic");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .create()
        .unwrap();
    for i in 0..10 {
        let payload = format!("m{i}");
        producer
            .send(
                FutureRecord::<(), _>::to(&topic)
                    .payload(&payload)
                    .partition(i % 2),
                Duration::from_secs(10),
            )
            .await
            .expect("produce");
    }

    let group = unique("smoke_group");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .expect("metadata");
    println!(
        "kafka: brokers={:?} topic partitions={}",
        metadata
            .brokers()
            .iter()
            .map(|b| format!("{}:{}", b.host(), b.port()))
            .collect::<Vec<_>>(),
        metadata.topics()[0].partitions().len()
    );
    // Kafka's ApiVersions answer, as librdkafka reports it once connected.
    consumer.subscribe(&[&topic]).unwrap();
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while got.len() < 10 && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            got.push(String::from_utf8(m.payload().unwrap().to_vec()).unwrap());
            consumer.store_offset_from_message(&m).ok();
        }
    }
    assert_eq!(got.len(), 10, "consumed {got:?}");
    consumer
        .commit_consumer_state(CommitMode::Sync)
        .expect("commit");
    let committed = consumer
        .committed(Duration::from_secs(10))
        .expect("committed");
    let total: i64 = committed
        .elements()
        .iter()
        .map(|e| {
            if let Offset::Offset(o) = e.offset() {
                o
            } else {
                0
            }
        })
        .sum();
    drop(committed);
    assert_eq!(total, 10, "committed offsets cover all 10 records");
    let version = broker_version();
    println!("kafka: broker version {version}");
}

/// The broker's version from its own ApiVersions-driven feature report in librdkafka debug
/// output is noisy; the metadata request above proves the protocol works, and the version is
/// read from the jar the broker runs.
fn broker_version() -> String {
    std::fs::read_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/.infra/cache/kafka/libs"
    ))
    .ok()
    .and_then(|d| {
        d.filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().to_string())
            .find(|n| n.starts_with("kafka_2.13-"))
    })
    .map(|n| {
        n.trim_start_matches("kafka_2.13-")
            .trim_end_matches(".jar")
            .to_string()
    })
    .unwrap_or_else(|| "unknown (not started by tests/infra)".into())
}

#[tokio::test]
async fn postgres_migration_and_idempotent_transaction() {
    require("PostgreSQL", &database_url());
    let pool = sqlx::postgres::PgPoolOptions::new()
        .connect(&database_url())
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL: {e}: {START_HINT}"));
    let (version,): (String,) = sqlx::query_as("SELECT version()")
        .fetch_one(&pool)
        .await
        .unwrap();
    println!("postgresql: {version}");
    let schema = unique("smoke_pg");
    let url = database_url();
    let sink =
        log_processor::sink::postgres::PgSink::new(&log_processor::sink::postgres::PgSettings {
            url,
            schema: schema.clone(),
            pool_size: 2,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(10),
            mapping: std::sync::Arc::new(log_processor::mapping::Mapping::builtin("logs-%Y")),
        })
        .unwrap();
    sink.migrate().await.expect("migrate");
    sink.migrate().await.expect("migrations are idempotent");
    for _ in 0..2 {
        let mut tx = pool.begin().await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {schema}.consumer_offsets (group_id, topic, kafka_partition, next_offset) VALUES ('g','t',0,5) ON CONFLICT DO NOTHING"
        )))
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }
    let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {schema}.consumer_offsets"
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(n, 1);
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn elasticsearch_bulk_with_ids_is_idempotent() {
    require("OpenSearch/Elasticsearch", &elasticsearch_url());
    let transport =
        elasticsearch::http::transport::Transport::single_node(&elasticsearch_url()).unwrap();
    let client = elasticsearch::Elasticsearch::new(transport);
    let root = es(&client, Method::Get, "/", None).await;
    let root: serde_json::Value = root.json().await.unwrap();
    println!(
        "elasticsearch: {} {}",
        root["version"]["distribution"]
            .as_str()
            .unwrap_or("elasticsearch"),
        root["version"]["number"]
    );
    let index = unique("smoke-es").to_lowercase().replace('_', "-");
    let put = es(
        &client,
        Method::Put,
        &format!("/{index}"),
        Some(br#"{"mappings":{"properties":{"n":{"type":"long"}}}}"#.to_vec()),
    )
    .await;
    assert!(put.status_code().is_success(), "create index");
    let mut body = Vec::new();
    for i in 0..50 {
        body.extend_from_slice(
            format!("{{\"index\":{{\"_id\":\"doc-{i}\"}}}}\n{{\"n\":{i}}}\n").as_bytes(),
        );
    }
    for _ in 0..2 {
        let r = es(
            &client,
            Method::Post,
            &format!("/{index}/_bulk"),
            Some(body.clone()),
        )
        .await;
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["errors"], false, "{v}");
    }
    es(&client, Method::Post, &format!("/{index}/_refresh"), None).await;
    let c = es(&client, Method::Get, &format!("/{index}/_count"), None).await;
    let v: serde_json::Value = c.json().await.unwrap();
    assert_eq!(
        v["count"], 50,
        "the second bulk overwrote, it did not duplicate"
    );
    es(&client, Method::Delete, &format!("/{index}"), None).await;
}

/// One request through the elasticsearch crate's transport.
async fn es(
    client: &elasticsearch::Elasticsearch,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> elasticsearch::http::response::Response {
    client
        .send(
            method,
            path,
            HeaderMap::new(),
            Option::<&()>::None,
            body,
            None,
        )
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}: {START_HINT}"))
}
