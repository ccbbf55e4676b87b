//! Typed configuration: every option is a flag and an `LP_*` environment variable, with
//! cross-field validation at start-up so a bad setting stops the daemon before it joins a group.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};

mod env_file;
mod kafka_options;
mod mask;
mod millis;
mod pg_url;
mod secret;
mod secret_files;
pub mod security;
mod summary;
mod validate;
mod view;

pub use mask::{mask_url, scrub_urls};
pub use millis::Millis;
pub use view::{CheckConfigArgs, Source, Sources, View};

pub use env_file::{apply_config_file, read_env_file};
pub use kafka_options::KafkaOption;
pub use security::{KafkaProtocol, PgSslMode, Secret, Security};

/// Settings of the daemon (`run`), also used by `migrate` and `check-config`.
#[derive(Args, Clone, Debug)]
pub struct Settings {
    /// Kafka bootstrap servers, comma separated.
    #[arg(long, env = "LP_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
    /// Topics to consume, comma separated. An entry starting with `^` is a POSIX extended
    /// regular expression (librdkafka's convention): every topic it matches is consumed,
    /// including topics created later (see LP_TOPIC_REFRESH_MS); internal topics (`__...`)
    /// never match.
    #[arg(long, env = "LP_TOPICS", value_delimiter = ',', default_value = "logs")]
    pub topics: Vec<String>,
    /// How often the consumer reads the cluster's topic list (librdkafka's
    /// `topic.metadata.refresh.interval.ms`): a new topic matching a pattern of LP_TOPICS, or a
    /// new partition, is consumed after at most this long plus a rebalance. Default: 10000 when
    /// LP_TOPICS has a pattern, else librdkafka's 300000.
    #[arg(long, env = "LP_TOPIC_REFRESH_MS", value_name = "MS")]
    pub topic_refresh_ms: Option<Millis>,
    /// Consumer group id; also keys the PostgreSQL offsets table.
    #[arg(long, env = "LP_GROUP_ID", default_value = "log-processor")]
    pub group_id: String,
    /// Kafka session timeout: how long the group waits for a silent member.
    #[arg(
        long,
        env = "LP_SESSION_TIMEOUT_MS",
        default_value = "30000",
        value_name = "MS"
    )]
    pub session_timeout_ms: Millis,
    /// Kafka max.poll.interval.ms; the consumer keeps polling while paused, so this is a safety net.
    #[arg(
        long,
        env = "LP_MAX_POLL_INTERVAL_MS",
        default_value = "300000",
        value_name = "MS"
    )]
    pub max_poll_interval_ms: Millis,
    /// Upper bound of records prefetched by librdkafka, in KiB (bounds memory under backlog).
    #[arg(long, env = "LP_KAFKA_QUEUE_KBYTES", default_value_t = 16_384)]
    pub kafka_queue_kbytes: u64,
    /// Largest fetch response from Kafka, in bytes (librdkafka's `fetch.max.bytes`; its
    /// `receive.message.max.bytes` is this plus 64 KiB). Also the largest record the daemon can
    /// read: a record above it is never handed over, and the partition is reported as stalled
    /// at its offset. Part of the memory bound; at least LP_MAX_RECORD_BYTES.
    #[arg(long, env = "LP_KAFKA_FETCH_MAX_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub kafka_fetch_max_bytes: usize,

    /// A batch is handed to a worker when it holds this many records...
    #[arg(long, env = "LP_BATCH_MAX_RECORDS", default_value_t = 1000)]
    pub batch_max_records: usize,
    /// ...or this many bytes...
    #[arg(long, env = "LP_BATCH_MAX_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub batch_max_bytes: usize,
    /// ...or when its first record has waited this long. Short, so a quiet topic's records are
    /// searchable soon; a backlog fills batches by count long before it (README, "Freshness").
    #[arg(
        long,
        env = "LP_BATCH_LINGER_MS",
        default_value = "100",
        value_name = "MS"
    )]
    pub batch_linger_ms: Millis,
    /// One bound on the records held in batches across all partitions (open, waiting for a
    /// worker, queued, being written), in MiB, each record counted with the copies it has while
    /// written (four times its bytes). When reached, fetching stops for every partition.
    /// `check-config` prints the resulting worst-case memory.
    #[arg(long, env = "LP_MEMORY_BUDGET_MB", default_value_t = 128)]
    pub memory_budget_mb: usize,
    /// Number of worker tasks writing batches.
    #[arg(long, env = "LP_WORKERS", default_value_t = 4)]
    pub workers: usize,
    /// Batches queued per worker; more of a partition wait in the consumer, within its share of
    /// the memory budget (docs/ARCHITECTURE.md, "Backpressure and memory").
    #[arg(long, env = "LP_WORKER_QUEUE", default_value_t = 2)]
    pub worker_queue: usize,
    /// Batches each worker writes at once: a partition's next batch goes to the search store
    /// while the one before it commits in PostgreSQL, whose commits stay in offset order.
    /// 1 writes one batch at a time.
    #[arg(long, env = "LP_WORKER_IN_FLIGHT", default_value_t = 2)]
    pub worker_in_flight: usize,
    /// How often durable offsets are committed to Kafka.
    #[arg(
        long,
        env = "LP_COMMIT_INTERVAL_MS",
        default_value = "1000",
        value_name = "MS"
    )]
    pub commit_interval_ms: Millis,
    /// On revocation, how long batches already being written for revoked partitions may
    /// finish before they are given up. Must stay below the session timeout; defaults to the
    /// smaller of 10 s and half the session timeout.
    #[arg(long, env = "LP_REVOKE_DRAIN_TIMEOUT_MS", value_name = "MS")]
    pub revoke_drain_timeout_ms: Option<Millis>,
    /// When the consumer's group membership has not been steady this long (it lost its
    /// partitions and is not getting them back), the consumer is replaced by a new one.
    /// At least twice the session timeout; defaults to the larger of 120 s and four session
    /// timeouts.
    #[arg(long, env = "LP_GROUP_STALL_TIMEOUT_MS", value_name = "MS")]
    pub group_stall_timeout_ms: Option<Millis>,
    /// Where a partition with no watermark stored in PostgreSQL starts: `earliest` reads what
    /// Kafka still holds (nothing is skipped, also after a restore from before the partition's
    /// first batch); `committed` trusts the group's committed offset in Kafka.
    #[arg(long, env = "LP_START_WITHOUT_WATERMARK", value_enum, default_value_t = StartWithoutWatermark::Earliest)]
    pub start_without_watermark: StartWithoutWatermark,

    /// PostgreSQL URL, e.g. postgres://user:password@host:5432/db (the password is never logged).
    #[arg(
        long,
        env = "LP_DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://logproc@127.0.0.1:5432/logproc"
    )]
    pub database_url: String,
    /// PostgreSQL schema holding the tables (created if missing).
    #[arg(long, env = "LP_PG_SCHEMA", default_value = "public")]
    pub pg_schema: String,
    /// PostgreSQL pool size; defaults to workers x LP_WORKER_IN_FLIGHT + 2 (a connection for
    /// every batch that can be committing at once, and two for the rest).
    #[arg(long, env = "LP_PG_POOL_SIZE")]
    pub pg_pool_size: Option<u32>,
    /// Bound on connecting to PostgreSQL and on taking a pooled connection.
    #[arg(
        long,
        env = "LP_PG_CONNECT_TIMEOUT_MS",
        default_value = "5000",
        value_name = "MS"
    )]
    pub pg_connect_timeout_ms: Millis,
    /// What start-up does with the schema: `auto` migrates unless it is already at this
    /// version (then a role with only SELECT/INSERT/UPDATE on the tables can run the daemon),
    /// `off` only checks it.
    #[arg(long, env = "LP_MIGRATE", value_enum, default_value_t = MigrateMode::Auto)]
    pub migrate: MigrateMode,
    /// Server-side statement timeout for the daemon's statements. A batch's whole transaction
    /// is bounded client side by this plus the connect timeout (then retried on a new connection).
    #[arg(
        long,
        env = "LP_PG_STATEMENT_TIMEOUT_MS",
        default_value = "30000",
        value_name = "MS"
    )]
    pub pg_statement_timeout_ms: Millis,

    /// Elasticsearch (or OpenSearch) URL; credentials in it are never logged.
    #[arg(
        long,
        env = "LP_ELASTICSEARCH_URL",
        hide_env_values = true,
        default_value = "http://127.0.0.1:9200"
    )]
    pub elasticsearch_url: String,
    /// Index name pattern, strftime-style on the record's own timestamp.
    #[arg(long, env = "LP_ES_INDEX", default_value = "logs-%Y.%m.%d")]
    pub es_index: String,
    /// A mapping file (TOML): operators' own tables with typed columns and their index
    /// patterns, and routes of topics to them (README, "Your own tables and indices"). Without
    /// one, every record goes to `log_records` and `LP_ES_INDEX`.
    #[arg(long, env = "LP_MAPPING_FILE", value_name = "PATH")]
    pub mapping_file: Option<std::path::PathBuf>,
    /// Write to data streams: the index template declares `data_stream`, every document is
    /// sent with `op_type: create` (a replay's 409 means "already there").
    #[arg(long, env = "LP_ES_DATA_STREAM", default_value_t = false, action = clap::ArgAction::Set)]
    pub es_data_stream: bool,
    /// Index lifecycle for every index pattern, installed as an ILM (Elasticsearch) or ISM
    /// (OpenSearch) policy: `rollover=SIZE/AGE` (data-stream mode only), `warm=AGE`,
    /// `delete=AGE`, e.g. `warm=7d,delete=30d`. Unset: no policy.
    #[arg(long, env = "LP_ES_LIFECYCLE")]
    pub es_lifecycle: Option<String>,
    /// Priority of the index template; above the built-in `logs-*-*` (100) and the
    /// Fleet-managed ones (up to 200), so overlapping patterns cannot be refused.
    #[arg(long, env = "LP_ES_TEMPLATE_PRIORITY", default_value_t = 501)]
    pub es_template_priority: u32,
    /// `index.refresh_interval` in the index template: how soon a written document becomes
    /// searchable. Shorter shows logs sooner and costs the store more refreshes and merges
    /// (README, "Freshness"); it applies to indices created after the template is installed.
    #[arg(
        long,
        env = "LP_ES_REFRESH_MS",
        default_value = "250",
        value_name = "MS"
    )]
    pub es_refresh_ms: Millis,
    /// Largest `_bulk` request body.
    #[arg(long, env = "LP_ES_BULK_MAX_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub es_bulk_max_bytes: usize,
    /// Bound on one Elasticsearch request.
    #[arg(
        long,
        env = "LP_ES_TIMEOUT_MS",
        default_value = "30000",
        value_name = "MS"
    )]
    pub es_timeout_ms: Millis,
    /// First retry delay for transient store errors (doubles up to the max, with jitter).
    #[arg(
        long,
        env = "LP_RETRY_INITIAL_MS",
        default_value = "100",
        value_name = "MS"
    )]
    pub retry_initial_ms: Millis,
    /// Largest retry delay.
    #[arg(
        long,
        env = "LP_RETRY_MAX_MS",
        default_value = "5000",
        value_name = "MS"
    )]
    pub retry_max_ms: Millis,
    /// How often parked records (refused by their destination index) are offered to it again.
    #[arg(
        long,
        env = "LP_PARKED_RETRY_MS",
        default_value = "5000",
        value_name = "MS"
    )]
    pub parked_retry_ms: Millis,
    /// How often the daemon checks a sample of recently stored offsets of each partition
    /// across both stores (`log_processor_divergence_total`); 0 turns the check off.
    #[arg(
        long,
        env = "LP_AUDIT_INTERVAL_MS",
        default_value = "60000",
        value_name = "MS"
    )]
    pub audit_interval_ms: Millis,
    /// Offsets per partition that check reads: the last ones below the watermark.
    #[arg(long, env = "LP_AUDIT_SAMPLE", default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=5000))]
    pub audit_sample: i64,

    /// Records larger than this are dead-lettered instead of stored.
    #[arg(long, env = "LP_MAX_RECORD_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_record_bytes: usize,
    /// Top-level fields removed before either store, comma separated.
    #[arg(long, env = "LP_REDACT_DROP", value_delimiter = ',')]
    pub redact_drop: Vec<String>,
    /// Top-level fields replaced by a keyed hash (HMAC-SHA256) before either store.
    #[arg(long, env = "LP_REDACT_HASH", value_delimiter = ',')]
    pub redact_hash: Vec<String>,
    /// Key for the redaction hash (secret: never printed).
    #[arg(long, env = "LP_REDACT_KEY", hide_env_values = true)]
    pub redact_key: Option<String>,
    /// With redaction on, dead letters keep their raw bytes only encrypted (AES-256-GCM) under
    /// this key, 64 hex digits (secret: never printed). Without it, a dead letter keeps its
    /// JSON object redacted, and nothing of a payload that is not a JSON object.
    #[arg(long, env = "LP_DEAD_LETTER_KEY", hide_env_values = true)]
    pub dead_letter_key: Option<String>,

    /// Time from the first SIGTERM/SIGINT to exit, covering drain, commit and group leave.
    #[arg(
        long,
        env = "LP_SHUTDOWN_DEADLINE_MS",
        default_value = "25000",
        value_name = "MS"
    )]
    pub shutdown_deadline_ms: Millis,
    /// The grace period the supervisor allows before SIGKILL (Kubernetes
    /// terminationGracePeriodSeconds, systemd TimeoutStopSec).
    #[arg(
        long,
        env = "LP_GRACE_PERIOD_MS",
        default_value = "30000",
        value_name = "MS"
    )]
    pub grace_period_ms: Millis,
    /// Minimum headroom between the deadline and the grace period (at least 2000).
    #[arg(
        long,
        env = "LP_SHUTDOWN_MARGIN_MS",
        default_value = "2000",
        value_name = "MS"
    )]
    pub shutdown_margin_ms: Millis,

    /// `/healthz` fails (and systemd's watchdog is no longer pinged) when the Kafka consumer
    /// thread has not gone round its loop for this long. Defaults to the larger of 60 s and two
    /// session timeouts; must exceed the revoke drain timeout plus 20 s (a rebalance's reads).
    #[arg(long, env = "LP_LIVENESS_TIMEOUT_MS", value_name = "MS")]
    pub liveness_timeout_ms: Option<Millis>,
    /// Address serving /metrics, /healthz and /readyz.
    #[arg(long, env = "LP_HTTP_ADDR", default_value = "0.0.0.0:9898")]
    pub http_addr: SocketAddr,
    /// Log format.
    #[arg(long, env = "LP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// TLS, SASL and credentials of the three connections.
    #[command(flatten)]
    pub security: Security,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// `LP_START_WITHOUT_WATERMARK`: where a partition with no stored watermark starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StartWithoutWatermark {
    /// The log's start: everything Kafka still holds.
    Earliest,
    /// The group's committed offset in Kafka, when it has one.
    Committed,
}

/// `LP_MIGRATE`: what start-up does with the schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MigrateMode {
    /// Apply the migrations unless the schema already has every table and column this
    /// version uses (then it is left alone, so a least-privilege role can run the daemon).
    Auto,
    /// Only check the schema; refuse to start if it is not at this version.
    Off,
}

/// A setting that cannot work, naming the field as the operator spells it.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {field}: {message}")]
pub struct ConfigError {
    pub field: &'static str,
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field,
        message: message.into(),
    }
}

impl Settings {
    /// The mapping both stores are derived from: `LP_MAPPING_FILE`'s, else the built-in one.
    pub fn mapping(&self) -> Result<crate::mapping::Mapping, ConfigError> {
        use crate::mapping::Mapping;
        match &self.mapping_file {
            None => Ok(Mapping::builtin(&self.es_index)),
            Some(path) => Mapping::load(path, &self.es_index).map_err(|e| {
                invalid(
                    "LP_MAPPING_FILE (--mapping-file)",
                    format!("{}: {}", e.field, e.message),
                )
            }),
        }
    }

    /// `LP_TOPICS` checked (`crate::topics`): exact names and patterns.
    /// `LP_ES_LIFECYCLE` read and checked against the index mode.
    pub fn lifecycle(&self) -> Result<Option<crate::lifecycle::Lifecycle>, ConfigError> {
        let Some(spec) = &self.es_lifecycle else {
            return Ok(None);
        };
        let field = "LP_ES_LIFECYCLE (--es-lifecycle)";
        let lifecycle = crate::lifecycle::parse(spec).map_err(|e| invalid(field, e))?;
        crate::lifecycle::check(&lifecycle, self.es_data_stream)
            .map_err(|e| invalid(field, e.to_string()))?;
        Ok(Some(lifecycle))
    }

    pub fn topic_selection(&self) -> Result<crate::topics::TopicSelection, ConfigError> {
        crate::topics::TopicSelection::parse(&self.topics)
            .map_err(|e| invalid("LP_TOPICS (--topics)", e))
    }
    /// `LP_TOPIC_REFRESH_MS`, by default 10 s with a pattern in LP_TOPICS (new topics are
    /// expected), else librdkafka's own 300 s.
    pub fn topic_refresh(&self) -> Duration {
        let patterns = self
            .topics
            .iter()
            .any(|t| crate::topics::is_pattern(t.trim()));
        let default = Duration::from_secs(if patterns { 10 } else { 300 });
        self.topic_refresh_ms.map_or(default, |m| m.0)
    }
    pub fn pg_pool_size(&self) -> u32 {
        let writing = self.workers * self.worker_in_flight.max(1);
        self.pg_pool_size.unwrap_or(writing as u32 + 2)
    }
    /// librdkafka's `receive.message.max.bytes`: a fetch response of LP_KAFKA_FETCH_MAX_BYTES
    /// plus room for the protocol's framing of many partitions (librdkafka wants 512 at least).
    pub fn kafka_receive_max_bytes(&self) -> usize {
        self.kafka_fetch_max_bytes + 64 * 1024
    }
    /// What the daemon may hold at most, in MiB, for sizing a container's memory limit: a base,
    /// librdkafka's prefetch queue and one fetch response beyond it, the batch budget (every
    /// copy of a record counted), and the one record that may cross the budget (the check
    /// follows it), with all its copies: the largest record a fetch can hand over.
    pub fn worst_case_memory_mib(&self) -> usize {
        const MIB: usize = 1024 * 1024;
        let receive = self.kafka_receive_max_bytes().div_ceil(MIB);
        64 + self.kafka_queue_kbytes as usize / 1024
            + receive
            + self.memory_budget_mb
            + crate::model::RawRecord::COPIES * receive
    }
    /// The dead-letter key (`LP_DEAD_LETTER_KEY` or its file), parsed: the one place it is.
    pub fn dead_letter_key(&self) -> Result<Option<[u8; 32]>, ConfigError> {
        let key = self
            .dead_letter_key
            .as_deref()
            .map(crate::dead_letter::parse_key);
        key.transpose()
            .map_err(|e| invalid("LP_DEAD_LETTER_KEY (--dead-letter-key)", e.to_string()))
    }
    /// `LP_LIVENESS_TIMEOUT_MS`, by default the larger of 60 s and two session timeouts.
    pub fn liveness_timeout(&self) -> Duration {
        let default = Duration::from_secs(60).max(2 * self.session_timeout_ms.0);
        self.liveness_timeout_ms.map_or(default, |m| m.0)
    }
    /// `LP_REVOKE_DRAIN_TIMEOUT_MS`, by default the smaller of 10 s and half a session timeout.
    pub fn revoke_drain_timeout(&self) -> Duration {
        let default = Duration::from_secs(10).min(self.session_timeout_ms.0 / 2);
        self.revoke_drain_timeout_ms.map_or(default, |m| m.0)
    }
    /// `LP_GROUP_STALL_TIMEOUT_MS`, by default the larger of 120 s and four session timeouts.
    pub fn group_stall_timeout(&self) -> Duration {
        let default = Duration::from_secs(120).max(4 * self.session_timeout_ms.0);
        self.group_stall_timeout_ms.map_or(default, |m| m.0)
    }
}

#[cfg(test)]
mod tests;
