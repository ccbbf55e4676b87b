//! How long Kafka keeps the subscribed topics' records (`retention.ms`, `segment.ms` from each
//! topic's configuration, through the admin client): the window in which a record can be
//! replayed, which `LP_ES_LIFECYCLE`'s delete age must outlast (`crate::lifecycle`).

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::config::Settings;
use crate::lifecycle::TopicRetention;
use crate::sink::SinkError;

const TIMEOUT: Duration = Duration::from_secs(10);

/// The retention of every topic `LP_TOPICS` selects now (patterns matched against the
/// cluster's metadata; a topic created later is checked at the next start), read with a
/// client of `config` (`stores::kafka_reader`).
pub async fn of_subscribed(
    settings: &Settings,
    config: ClientConfig,
) -> Result<Vec<TopicRetention>, String> {
    let selection = settings.topic_selection().map_err(|e| e.to_string())?;
    let topics = if selection.has_patterns() {
        let reader: BaseConsumer = config.create().map_err(|e| e.to_string())?;
        let names = tokio::task::spawn_blocking(move || {
            let metadata = reader.fetch_metadata(None, TIMEOUT)?;
            let names = metadata.topics().iter().map(|t| t.name().to_string());
            Ok::<_, rdkafka::error::KafkaError>(names.collect::<Vec<_>>())
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("metadata of the cluster's topics: {e}"))?;
        selection.resolve(&names)
    } else {
        selection.exact()
    };
    let admin: AdminClient<DefaultClientContext> = config.create().map_err(|e| e.to_string())?;
    let resources: Vec<_> = topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
    let options = AdminOptions::new().request_timeout(Some(TIMEOUT));
    let answers = (admin.describe_configs(&resources, &options).await)
        .map_err(|e| format!("topic configuration: {e}"))?;
    let mut out = Vec::new();
    for (topic, answer) in topics.iter().zip(answers) {
        let resource = answer.map_err(|e| format!("configuration of topic {topic}: {e}"))?;
        let millis = |key: &str| -> Result<i64, String> {
            let value = resource.get(key).and_then(|e| e.value.clone());
            let value = value.ok_or_else(|| format!("topic {topic}: no {key}"))?;
            value
                .parse()
                .map_err(|_| format!("topic {topic}: {key}={value}"))
        };
        let (retention, segment) = (millis("retention.ms")?, millis("segment.ms")?);
        out.push(TopicRetention {
            topic: topic.clone(),
            retention: u64::try_from(retention).ok().map(Duration::from_millis),
            segment: Duration::from_millis(segment.max(0) as u64),
        });
    }
    Ok(out)
}

/// Refuses a lifecycle whose delete age a replay could outlast: a record stays replayable as
/// long as Kafka holds it (`crate::lifecycle::covers_replays`).
pub async fn check(
    settings: &Settings,
    config: ClientConfig,
    lifecycle: &crate::lifecycle::Lifecycle,
) -> Result<(), SinkError> {
    use crate::lifecycle::{ReplayWindow, covers_replays, too_short};
    let permanent = |message: String| SinkError::Permanent {
        store: "kafka",
        message,
    };
    let topics = of_subscribed(settings, config)
        .await
        .map_err(|e| SinkError::Transient {
            store: "kafka",
            message: e,
        })?;
    match covers_replays(lifecycle.delete_after, &topics) {
        ReplayWindow::Covered => {
            tracing::info!(
                delete_after_s = lifecycle.delete_after.as_secs(),
                topics = topics.len(),
                "lifecycle delete age outlasts every topic's replay window"
            );
            Ok(())
        }
        ReplayWindow::TooShort { topic } => {
            Err(permanent(too_short(lifecycle.delete_after, &topic)))
        }
    }
}
