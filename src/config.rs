//! Typed configuration: every option is a flag and an `LP_*` environment variable, with
//! cross-field validation at start-up so a bad setting stops the daemon before it joins a group.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use clap::{Args, ValueEnum};

mod kafka_options;
mod mask;
mod pg_url;
mod secret_files;
pub mod security;
mod summary;
mod validate;

pub use mask::{mask_url, scrub_urls};
pub use validate::valid_index_name;

pub use kafka_options::KafkaOption;
pub use security::{KafkaProtocol, PgSslMode, Secret, Security};

/// Settings of the daemon (`run`), also used by `migrate` and `check-config`.
#[derive(Args, Clone, Debug)]
pub struct Settings {
    /// Kafka bootstrap servers, comma separated.
    #[arg(long, env = "LP_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
    /// Topics to consume, comma separated.
    #[arg(long, env = "LP_TOPICS", value_delimiter = ',', default_value = "logs")]
    pub topics: Vec<String>,
    /// Consumer group id; also keys the PostgreSQL offsets table.
    #[arg(long, env = "LP_GROUP_ID", default_value = "log-processor")]
    pub group_id: String,
    /// Kafka session timeout: how long the group waits for a silent member.
    #[arg(long, env = "LP_SESSION_TIMEOUT_MS", default_value_t = 30_000)]
    pub session_timeout_ms: u64,
    /// Kafka max.poll.interval.ms; the consumer keeps polling while paused, so this is a safety net.
    #[arg(long, env = "LP_MAX_POLL_INTERVAL_MS", default_value_t = 300_000)]
    pub max_poll_interval_ms: u64,
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
    /// ...or when its first record has waited this long.
    #[arg(long, env = "LP_BATCH_LINGER_MS", default_value_t = 200)]
    pub batch_linger_ms: u64,
    /// One bound on the records held in batches across all partitions (open, waiting for a
    /// worker, queued, being written), in MiB, each record counted with the copies it has while
    /// written (four times its bytes). When reached, fetching stops for every partition.
    /// `check-config` prints the resulting worst-case memory.
    #[arg(long, env = "LP_MEMORY_BUDGET_MB", default_value_t = 128)]
    pub memory_budget_mb: usize,
    /// Number of worker tasks writing batches.
    #[arg(long, env = "LP_WORKERS", default_value_t = 4)]
    pub workers: usize,
    /// Batches queued per worker before the consumer pauses the worker's partitions.
    #[arg(long, env = "LP_WORKER_QUEUE", default_value_t = 2)]
    pub worker_queue: usize,
    /// How often durable offsets are committed to Kafka.
    #[arg(long, env = "LP_COMMIT_INTERVAL_MS", default_value_t = 1000)]
    pub commit_interval_ms: u64,
    /// On revocation, how long batches already being written for revoked partitions may
    /// finish before they are given up. Must stay below the session timeout; defaults to the
    /// smaller of 10 s and half the session timeout.
    #[arg(long, env = "LP_REVOKE_DRAIN_TIMEOUT_MS")]
    pub revoke_drain_timeout_ms: Option<u64>,
    /// When the consumer's group membership has not been steady this long (it lost its
    /// partitions and is not getting them back), the consumer is replaced by a new one.
    /// At least twice the session timeout; defaults to the larger of 120 s and four session
    /// timeouts.
    #[arg(long, env = "LP_GROUP_STALL_TIMEOUT_MS")]
    pub group_stall_timeout_ms: Option<u64>,
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
    /// PostgreSQL pool size; defaults to workers + 2.
    #[arg(long, env = "LP_PG_POOL_SIZE")]
    pub pg_pool_size: Option<u32>,
    /// Bound on connecting to PostgreSQL and on taking a pooled connection.
    #[arg(long, env = "LP_PG_CONNECT_TIMEOUT_MS", default_value_t = 5000)]
    pub pg_connect_timeout_ms: u64,
    /// What start-up does with the schema: `auto` migrates unless it is already at this
    /// version (then a role with only SELECT/INSERT/UPDATE on the tables can run the daemon),
    /// `off` only checks it.
    #[arg(long, env = "LP_MIGRATE", value_enum, default_value_t = MigrateMode::Auto)]
    pub migrate: MigrateMode,
    /// Server-side statement timeout for the daemon's statements. A batch's whole transaction
    /// is bounded client side by this plus the connect timeout (then retried on a new connection).
    #[arg(long, env = "LP_PG_STATEMENT_TIMEOUT_MS", default_value_t = 30_000)]
    pub pg_statement_timeout_ms: u64,

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
    /// Write to data streams: the index template declares `data_stream`, every document is
    /// sent with `op_type: create` (a replay's 409 means "already there").
    #[arg(long, env = "LP_ES_DATA_STREAM", default_value_t = false, action = clap::ArgAction::Set)]
    pub es_data_stream: bool,
    /// Priority of the index template; above the built-in `logs-*-*` (100) and the
    /// Fleet-managed ones (up to 200), so overlapping patterns cannot be refused.
    #[arg(long, env = "LP_ES_TEMPLATE_PRIORITY", default_value_t = 501)]
    pub es_template_priority: u32,
    /// Largest `_bulk` request body.
    #[arg(long, env = "LP_ES_BULK_MAX_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub es_bulk_max_bytes: usize,
    /// Bound on one Elasticsearch request.
    #[arg(long, env = "LP_ES_TIMEOUT_MS", default_value_t = 30_000)]
    pub es_timeout_ms: u64,
    /// First retry delay for transient store errors (doubles up to the max, with jitter).
    #[arg(long, env = "LP_RETRY_INITIAL_MS", default_value_t = 100)]
    pub retry_initial_ms: u64,
    /// Largest retry delay.
    #[arg(long, env = "LP_RETRY_MAX_MS", default_value_t = 5000)]
    pub retry_max_ms: u64,
    /// How often parked records (refused by their destination index) are offered to it again.
    #[arg(long, env = "LP_PARKED_RETRY_MS", default_value_t = 5000)]
    pub parked_retry_ms: u64,

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
    #[arg(long, env = "LP_SHUTDOWN_DEADLINE_MS", default_value_t = 25_000)]
    pub shutdown_deadline_ms: u64,
    /// The grace period the supervisor allows before SIGKILL (Kubernetes
    /// terminationGracePeriodSeconds, systemd TimeoutStopSec).
    #[arg(long, env = "LP_GRACE_PERIOD_MS", default_value_t = 30_000)]
    pub grace_period_ms: u64,
    /// Minimum headroom between the deadline and the grace period (at least 2000).
    #[arg(long, env = "LP_SHUTDOWN_MARGIN_MS", default_value_t = 2000)]
    pub shutdown_margin_ms: u64,

    /// `/healthz` fails (and systemd's watchdog is no longer pinged) when the Kafka consumer
    /// thread has not gone round its loop for this long. Defaults to the larger of 60 s and two
    /// session timeouts; must exceed the revoke drain timeout plus 20 s (a rebalance's reads).
    #[arg(long, env = "LP_LIVENESS_TIMEOUT_MS")]
    pub liveness_timeout_ms: Option<u64>,
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
    pub fn topics(&self) -> Vec<String> {
        self.topics
            .iter()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect()
    }
    pub fn pg_pool_size(&self) -> u32 {
        self.pg_pool_size.unwrap_or(self.workers as u32 + 2)
    }
    pub fn shutdown_deadline(&self) -> Duration {
        Duration::from_millis(self.shutdown_deadline_ms)
    }
    pub fn batch_linger(&self) -> Duration {
        Duration::from_millis(self.batch_linger_ms)
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
    pub fn liveness_timeout(&self) -> Duration {
        let default = 60_000.max(2 * self.session_timeout_ms);
        Duration::from_millis(self.liveness_timeout_ms.unwrap_or(default))
    }
    pub fn revoke_drain_timeout(&self) -> Duration {
        let default = 10_000.min(self.session_timeout_ms / 2);
        Duration::from_millis(self.revoke_drain_timeout_ms.unwrap_or(default))
    }
    pub fn group_stall_timeout(&self) -> Duration {
        let default = 120_000.max(4 * self.session_timeout_ms);
        Duration::from_millis(self.group_stall_timeout_ms.unwrap_or(default))
    }
}

/// `check-config` output: the effective settings with every secret masked.
impl fmt::Display for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = self.clone();
        s.database_url = mask_url(&s.database_url);
        s.elasticsearch_url = mask_url(&s.elasticsearch_url);
        s.redact_key = s.redact_key.map(|_| "****".into());
        s.dead_letter_key = s.dead_letter_key.map(|_| "****".into());
        s.security.kafka_option = (s.security.kafka_option.iter())
            .map(|o| kafka_options::shown_flag(o))
            .collect();
        s.group_stall_timeout_ms = Some(self.group_stall_timeout().as_millis() as u64);
        s.revoke_drain_timeout_ms = Some(self.revoke_drain_timeout().as_millis() as u64);
        s.liveness_timeout_ms = Some(self.liveness_timeout().as_millis() as u64);
        writeln!(f, "{s:#?}")?;
        writeln!(f, "{}", self.security_summary())?;
        write!(
            f,
            "worst-case memory: {} MiB (a 64 MiB base, the Kafka prefetch of LP_KAFKA_QUEUE_KBYTES \
             and one fetch response of LP_KAFKA_FETCH_MAX_BYTES, LP_MEMORY_BUDGET_MB of batches \
             with every copy of a record counted, and one record of the largest fetchable size \
             crossing the budget with its {} copies)",
            self.worst_case_memory_mib(),
            crate::model::RawRecord::COPIES
        )
    }
}

/// Reads `KEY=VALUE` lines from a config file with `dotenvy`: blank lines and `#` comments
/// skipped, `export` allowed, values in single quotes taken literally, in double quotes with
/// `\\`, `\"`, `\n` escapes and `${VAR}` substitution, as `.env` files and systemd's
/// EnvironmentFile are written. An error names the line but never shows it: it may hold a secret.
pub fn read_env_file(path: &Path) -> Result<Vec<(String, String)>, ConfigError> {
    let field = "LP_CONFIG (--config)";
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(field, format!("cannot read {}: {e}", path.display())))?;
    let iter = dotenvy::from_read_iter(text.as_bytes());
    iter.map(|item| {
        item.map_err(|e| match e {
            dotenvy::Error::LineParse(line, at) => {
                let n = text
                    .find(line.as_str())
                    .map_or(0, |i| text[..i].lines().count() + 1);
                let key = line
                    .split_once('=')
                    .map(|(k, _)| format!(" (setting {})", k.trim()))
                    .unwrap_or_default();
                invalid(
                    field,
                    format!(
                        "{}:{n}: cannot parse this line at character {at}{key}: expected KEY=VALUE, \
                         with quotes closed",
                        path.display()
                    ),
                )
            }
            other => invalid(field, format!("{}: {other}", path.display())),
        })
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        s: Settings,
    }

    fn parse(args: &[&str]) -> Settings {
        T::try_parse_from(std::iter::once("t").chain(args.iter().copied()))
            .unwrap()
            .s
    }

    #[test]
    fn defaults_are_valid() {
        parse(&[]).validate().unwrap();
    }

    #[test]
    fn passwords_never_survive_masking() {
        for (url, secret) in [
            ("postgres://u:s3cr/t?x#y@db:5432/logs", "s3cr"),
            (
                "postgres://u@db/logs?sslmode=require&password=hunter2",
                "hunter2",
            ),
            ("https://u:pw@es:9200", "pw@"),
            ("postgres://db/logs?SSLPASSWORD=keypass", "keypass"),
        ] {
            let masked = mask_url(url);
            assert!(!masked.contains(secret), "{url} -> {masked}");
        }
        assert_eq!(mask_url("http://es:9200/x"), "http://es:9200/x");
    }

    #[test]
    fn scrub_masks_every_url_in_a_text() {
        assert_eq!(
            scrub_urls("error sending to http://u:pw@h:9200/_bulk: refused"),
            "error sending to http://u:****@h:9200/_bulk: refused"
        );
        assert_eq!(
            scrub_urls("bad URL postgres://a:secret@db/x and more"),
            "bad URL postgres://a:****@db/x and more"
        );
    }

    #[test]
    fn deadline_must_fit_in_grace_period_with_margin() {
        let err = parse(&["--shutdown-deadline-ms", "29000"])
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("LP_SHUTDOWN_DEADLINE_MS"), "{err}");
        parse(&["--shutdown-deadline-ms", "28000"])
            .validate()
            .unwrap();
        let err = parse(&["--shutdown-margin-ms", "1000"])
            .validate()
            .unwrap_err();
        assert_eq!(err.field, "LP_SHUTDOWN_MARGIN_MS (--shutdown-margin-ms)");
    }

    #[test]
    fn zero_is_refused_where_it_would_spin_or_time_out_at_once() {
        for (flag, field) in [
            ("--commit-interval-ms", "LP_COMMIT_INTERVAL_MS"),
            ("--batch-linger-ms", "LP_BATCH_LINGER_MS"),
            ("--es-timeout-ms", "LP_ES_TIMEOUT_MS"),
            ("--pg-statement-timeout-ms", "LP_PG_STATEMENT_TIMEOUT_MS"),
        ] {
            let err = parse(&[flag, "0"]).validate().unwrap_err();
            assert!(err.field.starts_with(field), "{flag}: {err}");
        }
    }

    #[test]
    fn revoke_drain_default_follows_a_lowered_session_timeout() {
        let s = parse(&["--session-timeout-ms", "6000"]);
        s.validate().unwrap();
        assert_eq!(s.revoke_drain_timeout(), Duration::from_millis(3000));
        assert_eq!(parse(&[]).revoke_drain_timeout(), Duration::from_secs(10));
    }

    #[test]
    fn the_memory_settings_name_their_field_and_enter_the_worst_case() {
        let err = parse(&["--kafka-fetch-max-bytes", "1048576"])
            .validate()
            .unwrap_err();
        assert!(err.field.starts_with("LP_KAFKA_FETCH_MAX_BYTES"), "{err:?}");
        // Two 4 MiB batches with four copies each need 32 MiB.
        let err = parse(&["--memory-budget-mb", "31"]).validate().unwrap_err();
        assert!(err.field.starts_with("LP_MEMORY_BUDGET_MB"), "{err:?}");
        parse(&["--memory-budget-mb", "32"]).validate().unwrap();
        // 64 + 16 (queue) + 17 (a 16 MiB fetch and framing) + 128 + 4 x 17.
        assert_eq!(parse(&[]).worst_case_memory_mib(), 293);
        let bigger = parse(&["--kafka-fetch-max-bytes", "33554432"]);
        assert_eq!(bigger.worst_case_memory_mib(), 293 + 5 * 16);
    }

    #[test]
    fn revoke_drain_below_session_timeout() {
        let err = parse(&[
            "--session-timeout-ms",
            "6000",
            "--revoke-drain-timeout-ms",
            "6000",
        ])
        .validate()
        .unwrap_err();
        assert!(err.field.starts_with("LP_REVOKE_DRAIN_TIMEOUT_MS"));
    }

    #[test]
    fn group_stall_timeout_follows_the_session_timeout() {
        assert_eq!(parse(&[]).group_stall_timeout(), Duration::from_secs(120));
        let long = parse(&[
            "--session-timeout-ms",
            "45000",
            "--max-poll-interval-ms",
            "300000",
        ]);
        assert_eq!(long.group_stall_timeout(), Duration::from_secs(180));
        long.validate().unwrap();
        let err = parse(&[
            "--session-timeout-ms",
            "6000",
            "--revoke-drain-timeout-ms",
            "3000",
            "--group-stall-timeout-ms",
            "11999",
        ])
        .validate()
        .unwrap_err();
        assert!(err.field.starts_with("LP_GROUP_STALL_TIMEOUT_MS"), "{err}");
    }

    #[test]
    fn bad_fields_are_named() {
        for (args, field) in [
            (vec!["--batch-max-records", "0"], "LP_BATCH_MAX_RECORDS"),
            (vec!["--workers", "0"], "LP_WORKERS"),
            (vec!["--topics", ""], "LP_TOPICS"),
            (vec!["--database-url", "mysql://a:b@c/d"], "LP_DATABASE_URL"),
            (vec!["--es-index", "Logs"], "LP_ES_INDEX"),
            (vec!["--es-index", "logs-%Q"], "LP_ES_INDEX"),
            (vec!["--redact-hash", "email"], "LP_REDACT_KEY"),
            (vec!["--es-bulk-max-bytes", "1000"], "LP_ES_BULK_MAX_BYTES"),
        ] {
            let err = parse(&args).validate().unwrap_err();
            assert!(err.field.starts_with(field), "{args:?}: {err}");
        }
    }

    #[test]
    fn masks_passwords() {
        assert_eq!(
            mask_url("postgres://u:secret@h:5432/db"),
            "postgres://u:****@h:5432/db"
        );
        // An '@' after the host makes the mask hide more than the password, never less.
        assert_eq!(mask_url("http://u:p%40ss@h/x@y"), "http://u:****@y");
        assert_eq!(mask_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(mask_url("http://h:9200"), "http://h:9200");
        let s = parse(&[
            "--database-url",
            "postgres://u:hunter2@h/db",
            "--redact-key",
            "k3y",
        ]);
        let shown = s.to_string();
        assert!(
            !shown.contains("hunter2") && !shown.contains("k3y"),
            "{shown}"
        );
    }

    #[test]
    fn env_file_lines() {
        let dir = std::env::temp_dir().join(format!("lp-env-{}", std::process::id()));
        std::fs::write(&dir, "# c\nLP_WORKERS=3\n\nLP_TOPICS=\"a,b\"\n").unwrap();
        let pairs = read_env_file(&dir).unwrap();
        assert_eq!(
            pairs,
            vec![
                ("LP_WORKERS".into(), "3".into()),
                ("LP_TOPICS".into(), "a,b".into())
            ]
        );
        std::fs::write(&dir, "LP_A=1\noops\n").unwrap();
        let e = read_env_file(&dir).unwrap_err().to_string();
        assert!(e.contains(":2: cannot parse"), "{e}");
        std::fs::remove_file(&dir).ok();
    }

    #[test]
    fn env_file_quoting_and_escapes() {
        let path = std::env::temp_dir().join(format!("lp-env-q-{}", std::process::id()));
        let text = concat!(
            "export LP_A='single $quoted # not a comment'\n",
            "LP_B=\"double \\\"escaped\\\" line\\nbreak\"\n",
            "LP_C=plain # a comment\n",
            "LP_D=\"p@ss=word#1\"\n",
            "LP_E=\"${LP_D}/x\"\n",
            "LP_F=\n",
        );
        std::fs::write(&path, text).unwrap();
        let pairs = read_env_file(&path).unwrap();
        let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("LP_A"), Some("single $quoted # not a comment"));
        assert_eq!(get("LP_B"), Some("double \"escaped\" line\nbreak"));
        assert_eq!(get("LP_C"), Some("plain"));
        assert_eq!(get("LP_D"), Some("p@ss=word#1"));
        assert_eq!(get("LP_E"), Some("p@ss=word#1/x"));
        assert_eq!(get("LP_F"), Some(""));

        // An unclosed quote names the line and the setting, never the value.
        std::fs::write(
            &path,
            "LP_A=1\nLP_DATABASE_URL=\"postgres://u:hunter2@h/db\n",
        )
        .unwrap();
        let e = read_env_file(&path).unwrap_err().to_string();
        assert!(
            e.contains("LP_DATABASE_URL") && !e.contains("hunter2"),
            "{e}"
        );
        std::fs::remove_file(&path).ok();
    }
}
