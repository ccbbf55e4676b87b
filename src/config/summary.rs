//! `check-config`'s view of each connection's effective security, secrets masked.

use std::fmt::Write;
use std::path::PathBuf;

use super::Settings;
use super::security::Security;

/// A URL query parameter's value (`sslmode`, `sslrootcert`, ...), if present.
pub(crate) fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

fn path(p: &Option<PathBuf>) -> String {
    path_or(p, "-")
}

fn path_or(p: &Option<PathBuf>, none: &str) -> String {
    p.as_ref()
        .map_or_else(|| none.to_string(), |p| p.display().to_string())
}

fn secret_state<T>(value: &Option<T>, file: &Option<PathBuf>) -> String {
    match (value, file) {
        (_, Some(f)) => format!("**** (from {})", f.display()),
        (Some(_), None) => "****".to_string(),
        (None, None) => "-".to_string(),
    }
}

impl Settings {
    /// One line per connection: what protects it, with every secret masked.
    pub fn security_summary(&self) -> String {
        let s: &Security = &self.security;
        let mut out = String::new();
        let protocol = s.kafka_security_protocol.as_str();
        let _ = write!(out, "kafka: security.protocol={protocol}");
        if let Some(m) = s.sasl_mechanism() {
            let _ = write!(
                out,
                " sasl.mechanism={m} sasl.username={} sasl.password={}",
                s.kafka_sasl_username.as_deref().unwrap_or("-"),
                secret_state(&s.kafka_sasl_password, &s.kafka_sasl_password_file)
            );
        }
        if protocol.contains("SSL") {
            let _ = write!(
                out,
                " ssl.ca={} ssl.cert={} ssl.key={} ssl.key.password={} verify_hostname={}",
                path_or(&s.kafka_ssl_ca_file, "system trust store"),
                path(&s.kafka_ssl_cert_file),
                path(&s.kafka_ssl_key_file),
                secret_state(&s.kafka_ssl_key_password, &s.kafka_ssl_key_password_file),
                s.kafka_ssl_verify_hostname
            );
        }
        match s.kafka_options() {
            Ok(opts) if !opts.is_empty() => {
                let shown: Vec<String> = opts
                    .iter()
                    .map(|o| {
                        let v = if o.is_secret() {
                            "****"
                        } else {
                            o.value.as_str()
                        };
                        format!("{}={v}", o.key)
                    })
                    .collect();
                let _ = write!(out, " options=[{}]", shown.join(", "));
            }
            _ => {}
        }

        let url = &self.database_url;
        let sslmode = s
            .pg_sslmode
            .map(|m| format!("{m:?}"))
            .or_else(|| query_param(url, "sslmode"))
            .unwrap_or_else(|| "prefer (default)".into());
        let from_url = |p: &Option<PathBuf>, name| {
            p.as_ref()
                .map(|p| p.display().to_string())
                .or_else(|| query_param(url, name))
                .unwrap_or_else(|| "-".into())
        };
        let _ = write!(
            out,
            "\npostgresql: sslmode={} sslrootcert={} sslcert={} sslkey={} url={}{}",
            sslmode
                .to_ascii_lowercase()
                .replace("verifyca", "verify-ca")
                .replace("verifyfull", "verify-full"),
            from_url(&s.pg_sslrootcert, "sslrootcert"),
            from_url(&s.pg_sslcert, "sslcert"),
            from_url(&s.pg_sslkey, "sslkey"),
            super::mask_url(url),
            s.database_url_file
                .as_ref()
                .map(|f| format!(" (from {})", f.display()))
                .unwrap_or_default()
        );

        let es = &self.elasticsearch_url;
        let tls = if !es.starts_with("https://") {
            "none (http)".to_string()
        } else if s.es_insecure_skip_verify {
            "DISABLED: any certificate accepted (LP_ES_INSECURE_SKIP_VERIFY)".to_string()
        } else {
            format!(
                "verified against {} and the system trust store, hostname checked",
                path_or(&s.es_ca_file, "no extra CA")
            )
        };
        let auth = if s.es_api_key.is_some() {
            format!(
                "api-key {}",
                secret_state(&s.es_api_key, &s.es_api_key_file)
            )
        } else if let Some(u) = &s.es_username {
            format!(
                "basic user={u} password={}",
                secret_state(&s.es_password, &s.es_password_file)
            )
        } else if super::mask_url(es) != *es {
            "basic (credentials in the URL)".to_string()
        } else {
            "none".to_string()
        };
        let _ = write!(
            out,
            "\nsearch store: url={} tls={tls} auth={auth} client_cert={}",
            super::mask_url(es),
            path(&s.es_client_cert_file)
        );
        out
    }
}
