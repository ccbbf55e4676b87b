//! `..._FILE` settings: a secret read from a file (a Kubernetes Secret mounted as a volume, a
//! systemd credential) instead of the environment, where `ps e` and crash dumps would show it.

use super::secret::read_secret;
use super::{ConfigError, Settings, invalid};

impl Settings {
    /// Reads every `..._FILE` setting into its value. Setting both a value in the environment
    /// and its file is refused, so the operator knows which one is used.
    pub fn load_secret_files(&mut self) -> Result<(), ConfigError> {
        let sec = &mut self.security;
        if let Some(path) = &sec.database_url_file {
            conflict(
                "LP_DATABASE_URL",
                "LP_DATABASE_URL_FILE (--database-url-file)",
            )?;
            self.database_url = read_secret("LP_DATABASE_URL_FILE (--database-url-file)", path)?;
        }
        if let Some(path) = &sec.elasticsearch_url_file {
            const F: &str = "LP_ELASTICSEARCH_URL_FILE (--elasticsearch-url-file)";
            conflict("LP_ELASTICSEARCH_URL", F)?;
            self.elasticsearch_url = read_secret(F, path)?;
        }
        if let Some(path) = &sec.redact_key_file {
            const F: &str = "LP_REDACT_KEY_FILE (--redact-key-file)";
            conflict("LP_REDACT_KEY", F)?;
            self.redact_key = Some(read_secret(F, path)?);
        }
        if let Some(path) = &sec.dead_letter_key_file {
            const F: &str = "LP_DEAD_LETTER_KEY_FILE (--dead-letter-key-file)";
            conflict("LP_DEAD_LETTER_KEY", F)?;
            self.dead_letter_key = Some(read_secret(F, path)?);
        }
        if let Some(path) = &sec.kafka_sasl_password_file {
            const F: &str = "LP_KAFKA_SASL_PASSWORD_FILE (--kafka-sasl-password-file)";
            conflict("LP_KAFKA_SASL_PASSWORD", F)?;
            sec.kafka_sasl_password = Some(read_secret(F, path)?.into());
        }
        if let Some(path) = &sec.kafka_ssl_key_password_file {
            const F: &str = "LP_KAFKA_SSL_KEY_PASSWORD_FILE (--kafka-ssl-key-password-file)";
            conflict("LP_KAFKA_SSL_KEY_PASSWORD", F)?;
            sec.kafka_ssl_key_password = Some(read_secret(F, path)?.into());
        }
        if let Some(path) = &sec.es_password_file {
            const F: &str = "LP_ES_PASSWORD_FILE (--es-password-file)";
            conflict("LP_ES_PASSWORD", F)?;
            sec.es_password = Some(read_secret(F, path)?.into());
        }
        if let Some(path) = &sec.es_api_key_file {
            const F: &str = "LP_ES_API_KEY_FILE (--es-api-key-file)";
            conflict("LP_ES_API_KEY", F)?;
            sec.es_api_key = Some(read_secret(F, path)?.into());
        }
        Ok(())
    }
}

fn conflict(var: &str, field: &'static str) -> Result<(), ConfigError> {
    match std::env::var_os(var) {
        Some(_) => Err(invalid(
            field,
            format!("{var} is set too: set the value or its file, not both"),
        )),
        None => Ok(()),
    }
}
