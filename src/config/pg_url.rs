//! PostgreSQL's TLS settings (`LP_PG_SSLMODE`, ...) applied to the connection URL, where the
//! driver reads them; a setting overrides the URL's own parameter.

use super::Settings;

impl Settings {
    /// `LP_DATABASE_URL` with the `LP_PG_SSL*` settings appended as query parameters (the
    /// driver takes the last value of a repeated parameter).
    pub fn pg_url_with_tls(&self) -> String {
        let sec = &self.security;
        let mut params: Vec<(&str, String)> = Vec::new();
        if let Some(mode) = sec.pg_sslmode {
            let mode = match mode {
                super::PgSslMode::Disable => "disable",
                super::PgSslMode::Allow => "allow",
                super::PgSslMode::Prefer => "prefer",
                super::PgSslMode::Require => "require",
                super::PgSslMode::VerifyCa => "verify-ca",
                super::PgSslMode::VerifyFull => "verify-full",
            };
            params.push(("sslmode", mode.to_string()));
        }
        for (name, path) in [
            ("sslrootcert", &sec.pg_sslrootcert),
            ("sslcert", &sec.pg_sslcert),
            ("sslkey", &sec.pg_sslkey),
        ] {
            if let Some(p) = path {
                params.push((name, p.display().to_string()));
            }
        }
        let mut url = self.database_url.clone();
        for (name, value) in params {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(name);
            url.push('=');
            url.push_str(&encode(&value));
        }
        url
    }
}

/// Percent-encodes what a query value cannot hold as is.
fn encode(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
