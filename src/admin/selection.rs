//! The topics of `LP_TOPICS` an operator command works on. Exact names are taken as given.
//! Patterns (`crate::topics`) are matched against what the command reads: commands that read
//! Kafka (`status`, `audit`, `topics list`, `topics adopt`) match them against the cluster's
//! topics now (`topics list` adds the names PostgreSQL stores, to show identities of topics
//! deleted since); commands that read PostgreSQL only (`dead-letters list`, `replay`) match
//! them against the names PostgreSQL stores records under.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};

use super::AdminError;
use crate::config::Settings;
use crate::sink::postgres::PgSink;

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// The topics the list selects in Kafka, read with `client` (blocking). Without a pattern,
/// the list as given: no metadata is read, and a missing topic is reported where it is used.
pub fn in_kafka(client: &BaseConsumer, settings: &Settings) -> Result<Vec<String>, AdminError> {
    let selection = settings.topic_selection()?;
    if !selection.has_patterns() {
        return Ok(selection.exact());
    }
    Ok(selection.resolve(&kafka_names(client)?))
}

/// Every topic's name in the cluster's metadata.
pub fn kafka_names(client: &BaseConsumer) -> Result<Vec<String>, AdminError> {
    let metadata = client
        .fetch_metadata(None, METADATA_TIMEOUT)
        .map_err(|e| AdminError::Kafka(format!("metadata of the cluster's topics: {e}")))?;
    Ok(metadata
        .topics()
        .iter()
        .map(|t| t.name().to_string())
        .collect())
}

/// The stored names the list selects in PostgreSQL (for commands that read nothing else).
pub async fn in_postgres(settings: &Settings, pg: &PgSink) -> Result<Vec<String>, AdminError> {
    let selection = settings.topic_selection()?;
    if !selection.has_patterns() {
        return Ok(selection.exact());
    }
    Ok(selection.resolve(&pg.stored_topic_names().await?))
}
