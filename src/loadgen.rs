//! `log-processor loadgen`: produces realistic JSON log records (and, on request, a share of
//! malformed ones) to a topic, creating it if needed. Used by the demo, the tests and the
//! benchmarks, so every record's content can be regenerated from its sequence number.

use std::time::{Duration, Instant};

use clap::Args;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::ToBytes;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};

#[derive(Args, Clone, Debug)]
pub struct LoadgenArgs {
    #[arg(long, env = "LP_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
    #[arg(long, default_value = "logs")]
    pub topic: String,
    /// Records to produce.
    #[arg(long, default_value_t = 10_000)]
    pub count: u64,
    /// Records per second (0: as fast as the broker takes them).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Share of malformed records, 0.0 to 1.0.
    #[arg(long, default_value_t = 0.0)]
    pub malformed_ratio: f64,
    /// Partitions of the topic when it has to be created.
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    /// First sequence number (to append to a topic without repeating content).
    #[arg(long, default_value_t = 0)]
    pub start_seq: u64,
    /// Size of each well-formed record in bytes (0: the natural 350-450). Smaller ones keep only
    /// the recognised fields and `seq`; larger ones carry a `pad` field.
    #[arg(long, default_value_t = 0)]
    pub record_bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("{failed} of {count} records were not delivered")]
    Undelivered { failed: u64, count: u64 },
}

/// Creates a topic (a no-op when it exists) whose records may be up to `max_message_bytes`.
pub async fn create_topic(
    brokers: &str,
    topic: &str,
    partitions: i32,
    max_message_bytes: usize,
) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let bytes = max_message_bytes.to_string();
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1))
        .set("max.message.bytes", &bytes);
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(30)))
        .request_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics([&new], &opts).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(KafkaError::AdminOp(code))
                    .inspect_err(|_| tracing::error!(topic = name, "create topic failed"));
            }
        }
    }
    Ok(())
}

const LEVELS: [&str; 5] = ["debug", "info", "info", "warn", "error"];
const SERVICES: [&str; 6] = [
    "checkout",
    "payments",
    "search",
    "auth",
    "inventory",
    "gateway",
];
const STATUSES: [u16; 5] = [200, 200, 201, 404, 500];
const REGIONS: [&str; 3] = ["eu-west-1", "us-east-1", "ap-south-1"];
const PATHS: [&str; 5] = [
    "/api/v1/orders",
    "/api/v1/cart",
    "/login",
    "/api/v2/search",
    "/healthz",
];

/// A cheap deterministic mix of a sequence number, so content is reproducible.
fn mix(seq: u64, salt: u64) -> u64 {
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 31;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 29)
}

/// A well-formed log record (about 350-450 bytes).
pub fn record(seq: u64) -> Vec<u8> {
    let r = |salt| mix(seq, salt);
    let ms = 1_764_000_000_000i64 + (seq as i64) * 7;
    let ts = chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let level = LEVELS[(r(1) % 5) as usize];
    let service = SERVICES[(r(2) % 6) as usize];
    let path = PATHS[(r(3) % 5) as usize];
    serde_json::json!({
        "timestamp": ts,
        "level": level,
        "service": service,
        "message": format!("{} {} handled request {} for user u-{} in {} ms", service, level, seq, r(4) % 100_000, r(5) % 2000),
        "seq": seq,
        "host": format!("{service}-{}.prod.internal", r(6) % 16),
        "trace_id": format!("{:016x}{:016x}", r(7), r(8)),
        "span_id": format!("{:016x}", r(9)),
        "http": { "method": if r(10) % 3 == 0 { "POST" } else { "GET" }, "path": path, "status": STATUSES[(r(11) % 5) as usize], "duration_ms": r(12) % 2000 },
        "region": REGIONS[(r(13) % 3) as usize],
    })
    .to_string()
    .into_bytes()
}

/// Record `seq` resized to `bytes` (never below the size of its recognised fields).
pub fn sized_record(seq: u64, bytes: usize) -> Vec<u8> {
    let full = record(seq);
    if bytes == 0 {
        return full;
    }
    let mut v: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&full).expect("loadgen records are JSON objects");
    if bytes < full.len() {
        v.retain(|k, _| {
            matches!(
                k.as_str(),
                "timestamp" | "level" | "service" | "message" | "seq"
            )
        });
    }
    let base = serde_json::to_vec(&v)
        .expect("serialising JSON to memory cannot fail")
        .len();
    let overhead = r#","pad":"""#.len();
    v.insert(
        "pad".into(),
        "x".repeat(bytes.saturating_sub(base + overhead)).into(),
    );
    serde_json::to_vec(&v).expect("serialising JSON to memory cannot fail")
}

/// A malformed record of one of several kinds, chosen by the sequence number.
pub fn malformed(seq: u64) -> Vec<u8> {
    match mix(seq, 99) % 6 {
        0 => b"{\"level\":\"info\",\"message\":\"\xff\xfe broken utf-8\"}".to_vec(),
        1 => format!("[\"not\", \"an\", \"object\", {seq}]").into_bytes(),
        2 => format!("{{\"seq\": {seq}, \"message\": \"truncated").into_bytes(),
        3 => format!("{{\"seq\":{seq},\"message\":\"nul \\u0000 inside\"}}").into_bytes(),
        4 => format!("{{\"seq\":{seq},\"timestamp\":\"not a time\"}}").into_bytes(),
        _ => Vec::new(),
    }
}

/// Whether record `seq` is malformed under `ratio` (deterministic).
pub fn is_malformed(seq: u64, ratio: f64) -> bool {
    ratio > 0.0 && (mix(seq, 7) % 1_000_000) < (ratio * 1_000_000.0) as u64
}

/// Record `seq` as produced under `ratio`: its payload and whether it is malformed.
pub fn payload(seq: u64, ratio: f64) -> (Vec<u8>, bool) {
    sized_payload(seq, ratio, 0)
}

/// As [`payload`], well-formed records resized by [`sized_record`].
pub fn sized_payload(seq: u64, ratio: f64, bytes: usize) -> (Vec<u8>, bool) {
    let bad = is_malformed(seq, ratio);
    let p = if bad {
        malformed(seq)
    } else {
        sized_record(seq, bytes)
    };
    (p, bad)
}

/// The least a rate-limited producer sleeps (see `produce`).
const PACE_STEP: Duration = Duration::from_millis(1);

/// Queues one record, polling while the producer's queue is full.
pub fn send<K: ToBytes + ?Sized, P: ToBytes + ?Sized, C: ProducerContext>(
    producer: &BaseProducer<C>,
    mut rec: BaseRecord<'_, K, P, C::DeliveryOpaque>,
) -> Result<(), KafkaError> {
    loop {
        match producer.send(rec) {
            Ok(()) => {
                producer.poll(Duration::ZERO);
                return Ok(());
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                rec = back;
                producer.poll(Duration::from_millis(10));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Produces the records and waits until every one is acknowledged by the broker.
pub async fn run(args: LoadgenArgs) -> Result<(), LoadgenError> {
    create_topic(
        &args.kafka_brokers,
        &args.topic,
        args.partitions,
        8 * 1024 * 1024,
    )
    .await?;
    tokio::task::spawn_blocking(move || produce(&args))
        .await
        .expect("producer thread panicked")
}

fn produce(args: &LoadgenArgs) -> Result<(), LoadgenError> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.kafka_brokers)
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .set("message.max.bytes", "8388608")
        .set("queue.buffering.max.kbytes", "262144")
        .set("enable.idempotence", "true")
        .create()?;
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut malformed_count = 0u64;
    for i in 0..args.count {
        let seq = args.start_seq + i;
        let (payload, bad) = sized_payload(seq, args.malformed_ratio, args.record_bytes);
        malformed_count += u64::from(bad);
        let key = format!("k{}", seq % 1000);
        send(
            &producer,
            BaseRecord::to(&args.topic).payload(&payload).key(&key),
        )?;
        if args.rate > 0 {
            // Paced in steps of at least a millisecond (the resolution of Kafka's CreateTime):
            // a sleep per record would be thousands of wake-ups a second, CPU taken from the
            // systems a benchmark measures.
            let due = started + Duration::from_secs_f64((i + 1) as f64 / args.rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now())
                && wait >= PACE_STEP
            {
                std::thread::sleep(wait);
            }
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            eprintln!(
                "loadgen: {}/{} records, {:.0} records/s",
                i + 1,
                args.count,
                (i + 1) as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    producer.flush(Duration::from_secs(60))?;
    let failed = producer.in_flight_count() as u64;
    if failed > 0 {
        return Err(LoadgenError::Undelivered {
            failed,
            count: args.count,
        });
    }
    println!(
        "loadgen: produced={} malformed={} topic={} seconds={:.1}",
        args.count,
        malformed_count,
        args.topic,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode;
    use crate::model::RawRecord;
    use crate::redact::Redactor;

    #[test]
    fn records_decode_and_malformed_ones_do_not() {
        let raw = |p: Vec<u8>| RawRecord {
            offset: 0,
            key: None,
            payload: Some(p),
            kafka_timestamp_ms: None,
        };
        for seq in 0..200 {
            let good = record(seq);
            assert!((300..=520).contains(&good.len()), "{} bytes", good.len());
            assert!(decode(&raw(good), 1 << 20, &Redactor::default()).is_ok());
            assert!(decode(&raw(malformed(seq)), 1 << 20, &Redactor::default()).is_err());
            for bytes in [200, 2048, 20_480] {
                let sized = sized_record(seq, bytes);
                assert!(
                    sized.len().abs_diff(bytes) <= 2,
                    "{} for {bytes}",
                    sized.len()
                );
                assert!(decode(&raw(sized), 1 << 20, &Redactor::default()).is_ok());
            }
        }
        let share = (0..100_000).filter(|&s| is_malformed(s, 0.01)).count();
        assert!((800..1200).contains(&share), "{share}");
    }
}
