//! Connection security: TLS and SASL for Kafka, TLS for PostgreSQL, HTTPS and credentials for
//! the search store. Checked at start-up (a missing certificate or an unsupported mechanism
//! stops the daemon naming the field) and summarised, masked, by `check-config`.

use std::path::{Path, PathBuf};

use clap::{ArgAction, Args, ValueEnum};

pub use super::secret::Secret;
use super::{ConfigError, invalid, kafka_options::KafkaOption};

/// `LP_KAFKA_SECURITY_PROTOCOL`, librdkafka's `security.protocol`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum KafkaProtocol {
    #[default]
    #[value(name = "PLAINTEXT")]
    Plaintext,
    #[value(name = "SSL")]
    Ssl,
    #[value(name = "SASL_PLAINTEXT")]
    SaslPlaintext,
    #[value(name = "SASL_SSL")]
    SaslSsl,
}

impl KafkaProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plaintext => "PLAINTEXT",
            Self::Ssl => "SSL",
            Self::SaslPlaintext => "SASL_PLAINTEXT",
            Self::SaslSsl => "SASL_SSL",
        }
    }
    fn tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }
    fn sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

/// SASL mechanisms this build of librdkafka has (it is built with OpenSSL, without Cyrus SASL,
/// so GSSAPI is missing).
const SASL_MECHANISMS: [&str; 4] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"];

/// `LP_PG_SSLMODE`: overrides `sslmode` of the URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PgSslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// Security settings of the three connections (flattened into [`super::Settings`]).
#[derive(Args, Clone, Debug, Default)]
pub struct Security {
    /// Kafka security protocol: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.
    #[arg(long, env = "LP_KAFKA_SECURITY_PROTOCOL", value_enum, ignore_case = true, default_value_t = KafkaProtocol::Plaintext)]
    pub kafka_security_protocol: KafkaProtocol,
    /// SASL mechanism: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER (its settings then
    /// go through LP_KAFKA_OPTION_*).
    #[arg(long, env = "LP_KAFKA_SASL_MECHANISM")]
    pub kafka_sasl_mechanism: Option<String>,
    /// SASL user name.
    #[arg(long, env = "LP_KAFKA_SASL_USERNAME")]
    pub kafka_sasl_username: Option<String>,
    /// SASL password (secret: never printed).
    #[arg(long, env = "LP_KAFKA_SASL_PASSWORD", hide_env_values = true)]
    pub kafka_sasl_password: Option<Secret>,
    /// File holding the SASL password.
    #[arg(long, env = "LP_KAFKA_SASL_PASSWORD_FILE")]
    pub kafka_sasl_password_file: Option<PathBuf>,
    /// PEM file of the CA certificates that sign the brokers' certificates (default: the
    /// system's trust store).
    #[arg(long, env = "LP_KAFKA_SSL_CA_FILE")]
    pub kafka_ssl_ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS.
    #[arg(long, env = "LP_KAFKA_SSL_CERT_FILE")]
    pub kafka_ssl_cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[arg(long, env = "LP_KAFKA_SSL_KEY_FILE")]
    pub kafka_ssl_key_file: Option<PathBuf>,
    /// Password of an encrypted client key (secret: never printed).
    #[arg(long, env = "LP_KAFKA_SSL_KEY_PASSWORD", hide_env_values = true)]
    pub kafka_ssl_key_password: Option<Secret>,
    /// File holding the client key's password.
    #[arg(long, env = "LP_KAFKA_SSL_KEY_PASSWORD_FILE")]
    pub kafka_ssl_key_password_file: Option<PathBuf>,
    /// Check that a broker's certificate names the host it was reached by.
    #[arg(long, env = "LP_KAFKA_SSL_VERIFY_HOSTNAME", default_value_t = true, action = ArgAction::Set)]
    pub kafka_ssl_verify_hostname: bool,
    /// Any other librdkafka property, KEY=VALUE, repeatable; also LP_KAFKA_OPTION_<KEY> with
    /// the dots written as underscores. Properties the daemon sets itself are refused.
    #[arg(long = "kafka-option", value_name = "KEY=VALUE")]
    pub kafka_option: Vec<String>,

    /// File holding LP_DATABASE_URL.
    #[arg(long, env = "LP_DATABASE_URL_FILE")]
    pub database_url_file: Option<PathBuf>,
    /// PostgreSQL sslmode: disable, allow, prefer, require, verify-ca or verify-full
    /// (overrides the URL's `sslmode`; the default is the URL's, else prefer).
    #[arg(long, env = "LP_PG_SSLMODE", value_enum)]
    pub pg_sslmode: Option<PgSslMode>,
    /// PEM file of the CA certificates that sign PostgreSQL's certificate (overrides `sslrootcert`).
    #[arg(long, env = "LP_PG_SSLROOTCERT")]
    pub pg_sslrootcert: Option<PathBuf>,
    /// PEM client certificate for PostgreSQL (overrides `sslcert`).
    #[arg(long, env = "LP_PG_SSLCERT")]
    pub pg_sslcert: Option<PathBuf>,
    /// PEM private key of the PostgreSQL client certificate (overrides `sslkey`).
    #[arg(long, env = "LP_PG_SSLKEY")]
    pub pg_sslkey: Option<PathBuf>,

    /// File holding LP_ELASTICSEARCH_URL.
    #[arg(long, env = "LP_ELASTICSEARCH_URL_FILE")]
    pub elasticsearch_url_file: Option<PathBuf>,
    /// PEM file of the CA certificates that sign the search store's certificate (added to the
    /// system's trust store).
    #[arg(long, env = "LP_ES_CA_FILE")]
    pub es_ca_file: Option<PathBuf>,
    /// Accept any certificate from the search store (no verification at all; logged as a
    /// warning at start-up). For diagnosis only.
    #[arg(long, env = "LP_ES_INSECURE_SKIP_VERIFY", default_value_t = false, action = ArgAction::Set)]
    pub es_insecure_skip_verify: bool,
    /// Basic-auth user for the search store (instead of user:password in the URL).
    #[arg(long, env = "LP_ES_USERNAME")]
    pub es_username: Option<String>,
    /// Basic-auth password (secret: never printed).
    #[arg(long, env = "LP_ES_PASSWORD", hide_env_values = true)]
    pub es_password: Option<Secret>,
    /// File holding LP_ES_PASSWORD.
    #[arg(long, env = "LP_ES_PASSWORD_FILE")]
    pub es_password_file: Option<PathBuf>,
    /// API key: the `encoded` value Elasticsearch returns, or ID:KEY (secret: never printed).
    #[arg(long, env = "LP_ES_API_KEY", hide_env_values = true)]
    pub es_api_key: Option<Secret>,
    /// File holding LP_ES_API_KEY.
    #[arg(long, env = "LP_ES_API_KEY_FILE")]
    pub es_api_key_file: Option<PathBuf>,
    /// PEM client certificate for the search store (mutual TLS).
    #[arg(long, env = "LP_ES_CLIENT_CERT_FILE")]
    pub es_client_cert_file: Option<PathBuf>,
    /// PEM private key of that client certificate.
    #[arg(long, env = "LP_ES_CLIENT_KEY_FILE")]
    pub es_client_key_file: Option<PathBuf>,

    /// File holding LP_REDACT_KEY.
    #[arg(long, env = "LP_REDACT_KEY_FILE")]
    pub redact_key_file: Option<PathBuf>,
    /// File holding LP_DEAD_LETTER_KEY.
    #[arg(long, env = "LP_DEAD_LETTER_KEY_FILE")]
    pub dead_letter_key_file: Option<PathBuf>,
}

/// A certificate or key file must be readable PEM now, not at the first connection.
fn check_pem(field: &'static str, path: &Path) -> Result<(), ConfigError> {
    let bytes = std::fs::read(path)
        .map_err(|e| invalid(field, format!("cannot read {}: {e}", path.display())))?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(invalid(
            field,
            format!("{} is not a PEM file", path.display()),
        ));
    }
    Ok(())
}

impl Security {
    pub fn validate(&self, es_url: &str) -> Result<(), ConfigError> {
        let kafka_files = [
            (
                "LP_KAFKA_SSL_CA_FILE (--kafka-ssl-ca-file)",
                &self.kafka_ssl_ca_file,
            ),
            (
                "LP_KAFKA_SSL_CERT_FILE (--kafka-ssl-cert-file)",
                &self.kafka_ssl_cert_file,
            ),
            (
                "LP_KAFKA_SSL_KEY_FILE (--kafka-ssl-key-file)",
                &self.kafka_ssl_key_file,
            ),
        ];
        let protocol = self.kafka_security_protocol;
        for (field, path) in kafka_files {
            if let Some(path) = path {
                if !protocol.tls() {
                    return Err(invalid(
                        field,
                        format!(
                            "set, but LP_KAFKA_SECURITY_PROTOCOL is {}",
                            protocol.as_str()
                        ),
                    ));
                }
                check_pem(field, path)?;
            }
        }
        if self.kafka_ssl_cert_file.is_some() != self.kafka_ssl_key_file.is_some() {
            return Err(invalid(
                "LP_KAFKA_SSL_KEY_FILE (--kafka-ssl-key-file)",
                "a client certificate needs both LP_KAFKA_SSL_CERT_FILE and LP_KAFKA_SSL_KEY_FILE",
            ));
        }
        const MECH: &str = "LP_KAFKA_SASL_MECHANISM (--kafka-sasl-mechanism)";
        match (protocol.sasl(), self.sasl_mechanism()) {
            (true, None) => {
                return Err(invalid(
                    MECH,
                    format!(
                        "required with {} (one of {})",
                        protocol.as_str(),
                        SASL_MECHANISMS.join(", ")
                    ),
                ));
            }
            (false, Some(_)) => {
                return Err(invalid(
                    MECH,
                    format!(
                        "set, but LP_KAFKA_SECURITY_PROTOCOL is {}",
                        protocol.as_str()
                    ),
                ));
            }
            (true, Some(m)) if !SASL_MECHANISMS.contains(&m.as_str()) => {
                return Err(invalid(
                    MECH,
                    format!(
                        "{m} is not supported by this build (supported: {})",
                        SASL_MECHANISMS.join(", ")
                    ),
                ));
            }
            (true, Some(m)) if m != "OAUTHBEARER" => {
                if self.kafka_sasl_username.as_deref().unwrap_or("").is_empty() {
                    return Err(invalid(
                        "LP_KAFKA_SASL_USERNAME (--kafka-sasl-username)",
                        format!("required with SASL mechanism {m}"),
                    ));
                }
                if self.kafka_sasl_password.is_none() {
                    return Err(invalid(
                        "LP_KAFKA_SASL_PASSWORD (--kafka-sasl-password)",
                        format!(
                            "required with SASL mechanism {m} (or LP_KAFKA_SASL_PASSWORD_FILE)"
                        ),
                    ));
                }
            }
            _ => {}
        }
        self.kafka_options()?;

        for (field, path) in [
            ("LP_PG_SSLROOTCERT (--pg-sslrootcert)", &self.pg_sslrootcert),
            ("LP_PG_SSLCERT (--pg-sslcert)", &self.pg_sslcert),
            ("LP_PG_SSLKEY (--pg-sslkey)", &self.pg_sslkey),
        ] {
            if let Some(path) = path {
                check_pem(field, path)?;
            }
        }

        let https = es_url.starts_with("https://");
        for (field, path) in [
            ("LP_ES_CA_FILE (--es-ca-file)", &self.es_ca_file),
            (
                "LP_ES_CLIENT_CERT_FILE (--es-client-cert-file)",
                &self.es_client_cert_file,
            ),
            (
                "LP_ES_CLIENT_KEY_FILE (--es-client-key-file)",
                &self.es_client_key_file,
            ),
        ] {
            if let Some(path) = path {
                if !https {
                    return Err(invalid(
                        field,
                        "set, but LP_ELASTICSEARCH_URL is not https://",
                    ));
                }
                check_pem(field, path)?;
            }
        }
        if self.es_client_cert_file.is_some() != self.es_client_key_file.is_some() {
            return Err(invalid(
                "LP_ES_CLIENT_KEY_FILE (--es-client-key-file)",
                "a client certificate needs both LP_ES_CLIENT_CERT_FILE and LP_ES_CLIENT_KEY_FILE",
            ));
        }
        if self.es_insecure_skip_verify && self.es_ca_file.is_some() {
            return Err(invalid(
                "LP_ES_INSECURE_SKIP_VERIFY (--es-insecure-skip-verify)",
                "contradicts LP_ES_CA_FILE: verify against the CA, or skip verification",
            ));
        }
        if self.es_api_key.is_some() && (self.es_username.is_some() || self.es_password.is_some()) {
            return Err(invalid(
                "LP_ES_API_KEY (--es-api-key)",
                "set together with LP_ES_USERNAME/LP_ES_PASSWORD: choose one way to authenticate",
            ));
        }
        if self.es_password.is_some() && self.es_username.is_none() {
            return Err(invalid(
                "LP_ES_USERNAME (--es-username)",
                "required with LP_ES_PASSWORD",
            ));
        }
        Ok(())
    }

    /// The SASL mechanism, upper-cased.
    pub fn sasl_mechanism(&self) -> Option<String> {
        self.kafka_sasl_mechanism
            .as_deref()
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(str::to_ascii_uppercase)
    }

    /// Pass-through options from `--kafka-option` and `LP_KAFKA_OPTION_*` (flags win).
    pub fn kafka_options(&self) -> Result<Vec<KafkaOption>, ConfigError> {
        super::kafka_options::collect(&self.kafka_option, std::env::vars())
    }

    /// librdkafka properties for the security settings, then the pass-through options.
    pub fn kafka_properties(&self) -> Result<Vec<(String, String)>, ConfigError> {
        let mut props = vec![(
            "security.protocol".to_string(),
            self.kafka_security_protocol.as_str().to_string(),
        )];
        let mut set = |k: &str, v: &str| props.push((k.to_string(), v.to_string()));
        if let Some(m) = self.sasl_mechanism() {
            set("sasl.mechanism", &m);
        }
        if let Some(u) = &self.kafka_sasl_username {
            set("sasl.username", u);
        }
        if let Some(p) = &self.kafka_sasl_password {
            set("sasl.password", p.expose());
        }
        if self.kafka_security_protocol.tls() {
            let path = |p: &PathBuf| p.display().to_string();
            if let Some(p) = &self.kafka_ssl_ca_file {
                set("ssl.ca.location", &path(p));
            }
            if let Some(p) = &self.kafka_ssl_cert_file {
                set("ssl.certificate.location", &path(p));
            }
            if let Some(p) = &self.kafka_ssl_key_file {
                set("ssl.key.location", &path(p));
            }
            if let Some(p) = &self.kafka_ssl_key_password {
                set("ssl.key.password", p.expose());
            }
            let algorithm = if self.kafka_ssl_verify_hostname {
                "https"
            } else {
                "none"
            };
            set("ssl.endpoint.identification.algorithm", algorithm);
        }
        for o in self.kafka_options()? {
            props.push((o.key, o.value));
        }
        Ok(props)
    }
}

#[cfg(test)]
#[path = "security_tests.rs"]
mod tests;
