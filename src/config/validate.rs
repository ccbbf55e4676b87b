//! `Settings::validate`: the checks across fields that clap's parsing cannot make, each
//! failure naming its field, so bad configuration stops start-up with a clear error.

use std::time::Duration;

use super::mask::mask_url;
use super::{ConfigError, Settings, invalid};
use crate::mapping::valid_index_pattern;

impl Settings {
    /// Cross-field validation; the first problem found names its field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.topic_selection()?;
        self.lifecycle()?;
        // librdkafka takes up to an hour; below a second the whole cluster's metadata would
        // be read several times a second.
        if !(1_000..=3_600_000).contains(&self.topic_refresh().as_millis()) {
            return Err(invalid(
                "LP_TOPIC_REFRESH_MS (--topic-refresh-ms)",
                "must be between 1000 and 3600000",
            ));
        }
        // Below 100 ms the store would spend its time refreshing; above an hour a log would
        // stay unsearchable longer than anyone watching it waits.
        if !(100..=3_600_000).contains(&self.es_refresh_ms.0.as_millis()) {
            return Err(invalid(
                "LP_ES_REFRESH_MS (--es-refresh-ms)",
                "must be between 100 and 3600000",
            ));
        }
        if self.group_id.trim().is_empty() {
            return Err(invalid("LP_GROUP_ID (--group-id)", "must not be empty"));
        }
        if self.batch_max_records == 0 {
            return Err(invalid(
                "LP_BATCH_MAX_RECORDS (--batch-max-records)",
                "must be at least 1",
            ));
        }
        if self.batch_max_bytes < 1024 {
            return Err(invalid(
                "LP_BATCH_MAX_BYTES (--batch-max-bytes)",
                "must be at least 1024",
            ));
        }
        let copies = crate::model::RawRecord::COPIES;
        if self.memory_budget_mb * 1024 * 1024 < 2 * copies * self.batch_max_bytes {
            return Err(invalid(
                "LP_MEMORY_BUDGET_MB (--memory-budget-mb)",
                format!(
                    "{} MiB must hold at least two batches of LP_BATCH_MAX_BYTES ({}) with the \
                     {copies} copies of each record counted",
                    self.memory_budget_mb, self.batch_max_bytes
                ),
            ));
        }
        if self.kafka_fetch_max_bytes < self.max_record_bytes.max(1024 * 1024) {
            return Err(invalid(
                "LP_KAFKA_FETCH_MAX_BYTES (--kafka-fetch-max-bytes)",
                format!(
                    "must be at least 1 MiB and LP_MAX_RECORD_BYTES ({}), so every record the \
                     daemon would store can be fetched",
                    self.max_record_bytes
                ),
            ));
        }
        if !(1..=64).contains(&self.workers) {
            return Err(invalid(
                "LP_WORKERS (--workers)",
                "must be between 1 and 64",
            ));
        }
        if self.worker_queue == 0 {
            return Err(invalid(
                "LP_WORKER_QUEUE (--worker-queue)",
                "must be at least 1",
            ));
        }
        if !(1..=16).contains(&self.worker_in_flight) {
            return Err(invalid(
                "LP_WORKER_IN_FLIGHT (--worker-in-flight)",
                "must be between 1 and 16",
            ));
        }
        if self.session_timeout_ms.0 > self.max_poll_interval_ms.0 {
            return Err(invalid(
                "LP_SESSION_TIMEOUT_MS (--session-timeout-ms)",
                format!(
                    "{} must not exceed LP_MAX_POLL_INTERVAL_MS ({})",
                    ms(self.session_timeout_ms.0),
                    ms(self.max_poll_interval_ms.0)
                ),
            ));
        }
        if self.revoke_drain_timeout() >= self.session_timeout_ms.0 {
            return Err(invalid(
                "LP_REVOKE_DRAIN_TIMEOUT_MS (--revoke-drain-timeout-ms)",
                format!(
                    "{} must be below LP_SESSION_TIMEOUT_MS ({})",
                    ms(self.revoke_drain_timeout()),
                    ms(self.session_timeout_ms.0)
                ),
            ));
        }
        // A rebalance may keep the consumer thread from polling for a revocation's drain plus
        // an assignment's reads (stored and committed offsets, 5 s each; end offsets, 10 s).
        let longest_rebalance = self.revoke_drain_timeout() + Duration::from_secs(20);
        if self.liveness_timeout() <= longest_rebalance {
            return Err(invalid(
                "LP_LIVENESS_TIMEOUT_MS (--liveness-timeout-ms)",
                format!(
                    "{} must exceed the longest rebalance, LP_REVOKE_DRAIN_TIMEOUT_MS + 20000 ({})",
                    self.liveness_timeout().as_millis(),
                    longest_rebalance.as_millis()
                ),
            ));
        }
        // A zero here would spin a loop or make every request time out at once.
        for (field, value) in [
            (
                "LP_COMMIT_INTERVAL_MS (--commit-interval-ms)",
                self.commit_interval_ms.0,
            ),
            (
                "LP_BATCH_LINGER_MS (--batch-linger-ms)",
                self.batch_linger_ms.0,
            ),
            ("LP_ES_TIMEOUT_MS (--es-timeout-ms)", self.es_timeout_ms.0),
            (
                "LP_PG_STATEMENT_TIMEOUT_MS (--pg-statement-timeout-ms)",
                self.pg_statement_timeout_ms.0,
            ),
            (
                "LP_PG_CONNECT_TIMEOUT_MS (--pg-connect-timeout-ms)",
                self.pg_connect_timeout_ms.0,
            ),
            (
                "LP_SESSION_TIMEOUT_MS (--session-timeout-ms)",
                self.session_timeout_ms.0,
            ),
        ] {
            if value.is_zero() {
                return Err(invalid(field, "must be at least 1"));
            }
        }
        if let Some(stall) = self
            .group_stall_timeout_ms
            .map(|m| m.0)
            .filter(|s| *s < 2 * self.session_timeout_ms.0)
        {
            return Err(invalid(
                "LP_GROUP_STALL_TIMEOUT_MS (--group-stall-timeout-ms)",
                format!(
                    "{} must be at least twice LP_SESSION_TIMEOUT_MS ({})",
                    ms(stall),
                    ms(self.session_timeout_ms.0)
                ),
            ));
        }
        if self.shutdown_margin_ms.0 < Duration::from_secs(2) {
            return Err(invalid(
                "LP_SHUTDOWN_MARGIN_MS (--shutdown-margin-ms)",
                "must be at least 2000",
            ));
        }
        if self.shutdown_deadline_ms.0.is_zero() {
            return Err(invalid(
                "LP_SHUTDOWN_DEADLINE_MS (--shutdown-deadline-ms)",
                "must be above 0",
            ));
        }
        if self.shutdown_deadline_ms.0 + self.shutdown_margin_ms.0 > self.grace_period_ms.0 {
            return Err(invalid(
                "LP_SHUTDOWN_DEADLINE_MS (--shutdown-deadline-ms)",
                format!(
                    "{} ms plus the {} ms margin does not fit in the {} ms grace period (LP_GRACE_PERIOD_MS)",
                    ms(self.shutdown_deadline_ms.0),
                    ms(self.shutdown_margin_ms.0),
                    ms(self.grace_period_ms.0)
                ),
            ));
        }
        if self.parked_retry_ms.0.is_zero() {
            return Err(invalid(
                "LP_PARKED_RETRY_MS (--parked-retry-ms)",
                "must be above 0",
            ));
        }
        if self.retry_initial_ms.0.is_zero() || self.retry_initial_ms.0 > self.retry_max_ms.0 {
            return Err(invalid(
                "LP_RETRY_INITIAL_MS (--retry-initial-ms)",
                "must be above 0 and at most LP_RETRY_MAX_MS",
            ));
        }
        if self.es_bulk_max_bytes < self.max_record_bytes + 4096 {
            return Err(invalid(
                "LP_ES_BULK_MAX_BYTES (--es-bulk-max-bytes)",
                format!(
                    "must exceed LP_MAX_RECORD_BYTES ({}) by at least 4096 so any accepted record fits",
                    self.max_record_bytes
                ),
            ));
        }
        if !valid_index_pattern(&self.es_index) {
            return Err(invalid(
                "LP_ES_INDEX (--es-index)",
                "must be a lowercase index name with valid strftime directives (e.g. logs-%Y.%m.%d)",
            ));
        }
        if self.pg_schema.is_empty()
            || !self
                .pg_schema
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(invalid(
                "LP_PG_SCHEMA (--pg-schema)",
                "must be letters, digits and underscores",
            ));
        }
        if !(self.database_url.starts_with("postgres://")
            || self.database_url.starts_with("postgresql://"))
        {
            return Err(invalid(
                "LP_DATABASE_URL (--database-url)",
                format!("not a postgres:// URL: {}", mask_url(&self.database_url)),
            ));
        }
        if !(self.elasticsearch_url.starts_with("http://")
            || self.elasticsearch_url.starts_with("https://"))
        {
            return Err(invalid(
                "LP_ELASTICSEARCH_URL (--elasticsearch-url)",
                format!(
                    "not an http(s):// URL: {}",
                    mask_url(&self.elasticsearch_url)
                ),
            ));
        }
        self.dead_letter_key()?;
        self.mapping()?;
        self.security.validate(&self.elasticsearch_url)?;
        if !self.redact_hash.is_empty() && self.redact_key.as_deref().unwrap_or("").is_empty() {
            return Err(invalid(
                "LP_REDACT_KEY (--redact-key)",
                "required when LP_REDACT_HASH names fields",
            ));
        }
        Ok(())
    }
}

/// A duration in the milliseconds its setting is given in, for messages.
fn ms(d: Duration) -> u128 {
    d.as_millis()
}
