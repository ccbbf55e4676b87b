//! How each store is configured from `Settings`: one place, used by the daemon (`app`) and by
//! the operator commands (`admin`, `audit`), so both reach the stores with the same URL, TLS and
//! credentials.

use crate::config::{ConfigError, Settings};
use crate::sink::SinkError;
use crate::sink::elastic::{ElasticSink, EsAuth, EsSettings, EsTls};
use crate::sink::postgres::{PgSettings, PgSink};
use crate::sink::retry::Backoff;

/// A Kafka client's settings for a command that reads metadata, the group's committed
/// offsets or a partition by assignment (it never subscribes nor commits): the daemon's
/// brokers, group and TLS/SASL properties.
pub fn kafka_reader(
    s: &Settings,
    client_id: &str,
) -> Result<rdkafka::config::ClientConfig, ConfigError> {
    let mut config = rdkafka::config::ClientConfig::new();
    config
        .set("bootstrap.servers", &s.kafka_brokers)
        .set("group.id", &s.group_id)
        .set("enable.auto.commit", "false")
        .set("client.id", client_id);
    for (key, value) in s.security.kafka_properties()? {
        config.set(key, value);
    }
    Ok(config)
}

pub fn backoff(s: &Settings) -> Backoff {
    Backoff {
        initial: s.retry_initial_ms.0,
        max: s.retry_max_ms.0,
    }
}

/// The mapping both stores are built with (`LP_MAPPING_FILE`, checked at start-up). The
/// daemon reads it once and gives the same one to every store (`*_with`), so a file edited
/// while it starts cannot give its stores two different mappings.
pub fn mapping(s: &Settings) -> Result<std::sync::Arc<crate::mapping::Mapping>, SinkError> {
    let mapping = s.mapping().map_err(|e| SinkError::Permanent {
        store: "configuration",
        message: e.to_string(),
    })?;
    Ok(std::sync::Arc::new(mapping))
}

/// The PostgreSQL store with `pool_size` connections.
pub fn postgres(s: &Settings, pool_size: u32) -> Result<PgSink, SinkError> {
    postgres_with(s, pool_size, mapping(s)?)
}

pub fn postgres_with(
    s: &Settings,
    pool_size: u32,
    mapping: std::sync::Arc<crate::mapping::Mapping>,
) -> Result<PgSink, SinkError> {
    PgSink::new(&PgSettings {
        mapping,
        url: s.pg_url_with_tls(),
        schema: s.pg_schema.clone(),
        pool_size,
        connect_timeout: s.pg_connect_timeout_ms.0,
        statement_timeout: s.pg_statement_timeout_ms.0,
    })
}

pub fn elasticsearch(s: &Settings) -> Result<ElasticSink, SinkError> {
    elasticsearch_with(s, mapping(s)?)
}

pub fn elasticsearch_with(
    s: &Settings,
    mapping: std::sync::Arc<crate::mapping::Mapping>,
) -> Result<ElasticSink, SinkError> {
    ElasticSink::new(EsSettings {
        url: s.elasticsearch_url.clone(),
        mapping,
        bulk_max_bytes: s.es_bulk_max_bytes,
        data_stream: s.es_data_stream,
        template_priority: s.es_template_priority,
        refresh_interval: s.es_refresh_ms.0,
        lifecycle: s.lifecycle().map_err(|e| SinkError::Permanent {
            store: "configuration",
            message: e.to_string(),
        })?,
        timeout: s.es_timeout_ms.0,
        backoff: backoff(s),
        tls: es_tls(s),
        auth: es_auth(s),
    })
}

fn es_tls(s: &Settings) -> EsTls {
    let sec = &s.security;
    EsTls {
        ca_file: sec.es_ca_file.clone(),
        skip_verify: sec.es_insecure_skip_verify,
        client_cert: sec
            .es_client_cert_file
            .clone()
            .zip(sec.es_client_key_file.clone()),
    }
}

fn es_auth(s: &Settings) -> EsAuth {
    let sec = &s.security;
    match (&sec.es_api_key, &sec.es_username) {
        (Some(key), _) => EsAuth::ApiKey(key.clone()),
        (None, Some(user)) => EsAuth::Basic(
            user.clone(),
            sec.es_password
                .clone()
                .unwrap_or_else(|| String::new().into()),
        ),
        (None, None) => EsAuth::FromUrl,
    }
}
