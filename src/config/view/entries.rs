//! Every setting as `check-config` lists it: grouped by section, each as its variable, its
//! effective value (secrets masked) and where the value came from. Listed by hand so the
//! sections read in an operator's order; a unit test checks that no option is missing.

use std::path::PathBuf;

use clap::ValueEnum;

use super::super::{Millis, Settings, kafka_options::KafkaOption, mask_url};
use super::sources::{Source, Sources};

/// One setting's line.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Entry {
    pub section: &'static str,
    #[serde(skip)]
    pub name: String,
    pub value: String,
    pub source: Source,
}

/// What stands for a secret's value.
const MASK: &str = "****";

fn ms(m: &Millis) -> String {
    m.0.as_millis().to_string()
}

fn path(p: &Option<PathBuf>) -> Option<String> {
    p.as_ref().map(|p| p.display().to_string())
}

fn list(v: &[String]) -> Option<String> {
    (!v.is_empty()).then(|| v.join(","))
}

/// The name the option's variable takes for this value (`verify-full`, `SASL_SSL`).
fn name_of<T: ValueEnum>(v: &T) -> String {
    v.to_possible_value()
        .map_or_else(String::new, |p| p.get_name().to_string())
}

struct Table<'a> {
    sources: &'a Sources,
    section: &'static str,
    out: Vec<Entry>,
}

impl Table<'_> {
    fn push(&mut self, name: impl Into<String>, value: String, source: Source) {
        // One line per setting, whatever a value holds.
        let value = value.replace('\n', "\\n");
        let (section, name) = (self.section, name.into());
        self.out.push(Entry {
            section,
            name,
            value,
            source,
        });
    }

    /// A setting shown as it is.
    fn plain(&mut self, name: &'static str, value: impl Into<Option<String>>) {
        let value: Option<String> = value.into();
        let source = self.sources.of(name, value.is_some());
        self.push(name, value.unwrap_or_default(), source);
    }

    /// A setting whose default is computed from others: the effective value either way.
    fn derived(&mut self, name: &'static str, given: bool, effective: String) {
        let source = match self.sources.of(name, given) {
            Source::Unset | Source::Default if !given => Source::Derived,
            s => s,
        };
        self.push(name, effective, source);
    }

    /// A secret: only whether it is set, and from where.
    fn secret(&mut self, name: &'static str, set: bool, file: &Option<PathBuf>) {
        match (set, file) {
            (_, Some(_)) => self.push(name, MASK.into(), Source::SecretFile),
            (true, None) => self.plain(name, Some(MASK.to_string())),
            (false, None) => self.plain(name, None),
        }
    }

    /// A URL that may carry a password: shown with the password masked.
    fn url(&mut self, name: &'static str, url: &str, file: &Option<PathBuf>) {
        match file {
            Some(_) => self.push(name, mask_url(url), Source::SecretFile),
            None => self.plain(name, Some(mask_url(url))),
        }
    }
}

/// The settings' lines, section by section.
pub fn entries(s: &Settings, sources: &Sources) -> Vec<Entry> {
    let sec = &s.security;
    let mut t = Table {
        sources,
        section: "kafka",
        out: Vec::new(),
    };
    t.plain("LP_KAFKA_BROKERS", s.kafka_brokers.clone());
    t.plain("LP_TOPICS", list(&s.topics));
    t.plain("LP_GROUP_ID", s.group_id.clone());
    let refresh = s.topic_refresh().as_millis().to_string();
    t.derived("LP_TOPIC_REFRESH_MS", s.topic_refresh_ms.is_some(), refresh);
    t.plain("LP_SESSION_TIMEOUT_MS", ms(&s.session_timeout_ms));
    t.plain("LP_MAX_POLL_INTERVAL_MS", ms(&s.max_poll_interval_ms));
    t.plain("LP_KAFKA_QUEUE_KBYTES", s.kafka_queue_kbytes.to_string());
    t.plain(
        "LP_KAFKA_FETCH_MAX_BYTES",
        s.kafka_fetch_max_bytes.to_string(),
    );
    t.plain("LP_COMMIT_INTERVAL_MS", ms(&s.commit_interval_ms));
    let drain = s.revoke_drain_timeout().as_millis().to_string();
    t.derived(
        "LP_REVOKE_DRAIN_TIMEOUT_MS",
        s.revoke_drain_timeout_ms.is_some(),
        drain,
    );
    let stall = s.group_stall_timeout().as_millis().to_string();
    t.derived(
        "LP_GROUP_STALL_TIMEOUT_MS",
        s.group_stall_timeout_ms.is_some(),
        stall,
    );
    t.plain(
        "LP_START_WITHOUT_WATERMARK",
        name_of(&s.start_without_watermark),
    );

    t.section = "kafka security";
    t.plain(
        "LP_KAFKA_SECURITY_PROTOCOL",
        name_of(&sec.kafka_security_protocol),
    );
    t.plain("LP_KAFKA_SASL_MECHANISM", sec.kafka_sasl_mechanism.clone());
    t.plain("LP_KAFKA_SASL_USERNAME", sec.kafka_sasl_username.clone());
    let (pw, pw_file) = (
        sec.kafka_sasl_password.is_some(),
        &sec.kafka_sasl_password_file,
    );
    t.secret("LP_KAFKA_SASL_PASSWORD", pw, pw_file);
    t.plain("LP_KAFKA_SASL_PASSWORD_FILE", path(pw_file));
    t.plain("LP_KAFKA_SSL_CA_FILE", path(&sec.kafka_ssl_ca_file));
    t.plain("LP_KAFKA_SSL_CERT_FILE", path(&sec.kafka_ssl_cert_file));
    t.plain("LP_KAFKA_SSL_KEY_FILE", path(&sec.kafka_ssl_key_file));
    let (kp, kp_file) = (
        sec.kafka_ssl_key_password.is_some(),
        &sec.kafka_ssl_key_password_file,
    );
    t.secret("LP_KAFKA_SSL_KEY_PASSWORD", kp, kp_file);
    t.plain("LP_KAFKA_SSL_KEY_PASSWORD_FILE", path(kp_file));
    let verify = sec.kafka_ssl_verify_hostname.to_string();
    t.plain("LP_KAFKA_SSL_VERIFY_HOSTNAME", verify);
    // A bad option fails validation before anything is shown; nothing to list then.
    for o in sec.kafka_options().unwrap_or_default() {
        kafka_option(&mut t, &o, &sec.kafka_option);
    }

    t.section = "batching and memory";
    t.plain("LP_BATCH_MAX_RECORDS", s.batch_max_records.to_string());
    t.plain("LP_BATCH_MAX_BYTES", s.batch_max_bytes.to_string());
    t.plain("LP_BATCH_LINGER_MS", ms(&s.batch_linger_ms));
    t.plain("LP_MEMORY_BUDGET_MB", s.memory_budget_mb.to_string());
    t.plain("LP_WORKERS", s.workers.to_string());
    t.plain("LP_WORKER_QUEUE", s.worker_queue.to_string());
    t.plain("LP_WORKER_IN_FLIGHT", s.worker_in_flight.to_string());
    t.plain("LP_MAX_RECORD_BYTES", s.max_record_bytes.to_string());

    t.section = "postgresql";
    t.url("LP_DATABASE_URL", &s.database_url, &sec.database_url_file);
    t.plain("LP_DATABASE_URL_FILE", path(&sec.database_url_file));
    t.plain("LP_PG_SCHEMA", s.pg_schema.clone());
    let pool = s.pg_pool_size().to_string();
    t.derived("LP_PG_POOL_SIZE", s.pg_pool_size.is_some(), pool);
    t.plain("LP_PG_CONNECT_TIMEOUT_MS", ms(&s.pg_connect_timeout_ms));
    t.plain("LP_PG_STATEMENT_TIMEOUT_MS", ms(&s.pg_statement_timeout_ms));
    t.plain("LP_MIGRATE", name_of(&s.migrate));
    t.plain("LP_PG_SSLMODE", sec.pg_sslmode.as_ref().map(name_of));
    t.plain("LP_PG_SSLROOTCERT", path(&sec.pg_sslrootcert));
    t.plain("LP_PG_SSLCERT", path(&sec.pg_sslcert));
    t.plain("LP_PG_SSLKEY", path(&sec.pg_sslkey));

    t.section = "search store";
    t.url(
        "LP_ELASTICSEARCH_URL",
        &s.elasticsearch_url,
        &sec.elasticsearch_url_file,
    );
    t.plain(
        "LP_ELASTICSEARCH_URL_FILE",
        path(&sec.elasticsearch_url_file),
    );
    t.plain("LP_ES_INDEX", s.es_index.clone());
    t.plain("LP_MAPPING_FILE", path(&s.mapping_file));
    t.plain("LP_ES_DATA_STREAM", s.es_data_stream.to_string());
    t.plain("LP_ES_LIFECYCLE", s.es_lifecycle.clone());
    t.plain(
        "LP_ES_TEMPLATE_PRIORITY",
        s.es_template_priority.to_string(),
    );
    t.plain("LP_ES_REFRESH_MS", ms(&s.es_refresh_ms));
    t.plain("LP_ES_BULK_MAX_BYTES", s.es_bulk_max_bytes.to_string());
    t.plain("LP_ES_TIMEOUT_MS", ms(&s.es_timeout_ms));
    t.plain("LP_ES_CA_FILE", path(&sec.es_ca_file));
    let skip = sec.es_insecure_skip_verify.to_string();
    t.plain("LP_ES_INSECURE_SKIP_VERIFY", skip);
    t.plain("LP_ES_USERNAME", sec.es_username.clone());
    let (pw, pw_file) = (sec.es_password.is_some(), &sec.es_password_file);
    t.secret("LP_ES_PASSWORD", pw, pw_file);
    t.plain("LP_ES_PASSWORD_FILE", path(pw_file));
    let (key, key_file) = (sec.es_api_key.is_some(), &sec.es_api_key_file);
    t.secret("LP_ES_API_KEY", key, key_file);
    t.plain("LP_ES_API_KEY_FILE", path(key_file));
    t.plain("LP_ES_CLIENT_CERT_FILE", path(&sec.es_client_cert_file));
    t.plain("LP_ES_CLIENT_KEY_FILE", path(&sec.es_client_key_file));

    t.section = "retries and checks";
    t.plain("LP_RETRY_INITIAL_MS", ms(&s.retry_initial_ms));
    t.plain("LP_RETRY_MAX_MS", ms(&s.retry_max_ms));
    t.plain("LP_PARKED_RETRY_MS", ms(&s.parked_retry_ms));
    t.plain("LP_AUDIT_INTERVAL_MS", ms(&s.audit_interval_ms));
    t.plain("LP_AUDIT_SAMPLE", s.audit_sample.to_string());

    t.section = "redaction";
    t.plain("LP_REDACT_DROP", list(&s.redact_drop));
    t.plain("LP_REDACT_HASH", list(&s.redact_hash));
    let (key, key_file) = (s.redact_key.is_some(), &sec.redact_key_file);
    t.secret("LP_REDACT_KEY", key, key_file);
    t.plain("LP_REDACT_KEY_FILE", path(key_file));
    let (key, key_file) = (s.dead_letter_key.is_some(), &sec.dead_letter_key_file);
    t.secret("LP_DEAD_LETTER_KEY", key, key_file);
    t.plain("LP_DEAD_LETTER_KEY_FILE", path(key_file));

    t.section = "shutdown, health and logs";
    t.plain("LP_SHUTDOWN_DEADLINE_MS", ms(&s.shutdown_deadline_ms));
    t.plain("LP_GRACE_PERIOD_MS", ms(&s.grace_period_ms));
    t.plain("LP_SHUTDOWN_MARGIN_MS", ms(&s.shutdown_margin_ms));
    let live = s.liveness_timeout().as_millis().to_string();
    t.derived(
        "LP_LIVENESS_TIMEOUT_MS",
        s.liveness_timeout_ms.is_some(),
        live,
    );
    t.plain("LP_HTTP_ADDR", s.http_addr.to_string());
    t.plain("LP_LOG_FORMAT", name_of(&s.log_format));
    t.out
}

/// A pass-through librdkafka property, as the variable that would set it.
fn kafka_option(t: &mut Table<'_>, o: &KafkaOption, flags: &[String]) {
    let name = format!(
        "LP_KAFKA_OPTION_{}",
        o.key.to_ascii_uppercase().replace('.', "_")
    );
    let from_flag = flags
        .iter()
        .any(|f| f.split_once('=').is_some_and(|(k, _)| k.trim() == o.key));
    let source = t.sources.of_kafka_option(&name, from_flag);
    let value = match o.is_secret() {
        true => MASK.to_string(),
        false => o.value.clone(),
    };
    t.push(name, value, source);
}
