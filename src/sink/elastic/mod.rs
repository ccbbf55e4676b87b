//! Elasticsearch (and OpenSearch, which speaks the same 7.x REST API): `_bulk` with
//! deterministic ids, per-item results, retries for 429/5xx only.

//!
//! One concern a file: `version` (which store and version answers), `template` (the index
//! template), `bulk` (the `_bulk` service with its per-item retries), `encode` (documents and
//! bulk lines).
//!
//! Compatibility: requests are plain `application/json` (`application/x-ndjson` for `_bulk`),
//! without Elasticsearch's `compatible-with` media types, which OpenSearch refuses; only APIs
//! and parameters both stores share are used (composable index templates, `_bulk`,
//! `_refresh`, `_search`).

mod accepts;
mod alias;
mod bulk;
pub mod classify;
mod delete;
mod encode;
mod lifecycle;
mod replayed;
mod response;
mod scan;
mod stream;
mod template;
mod version;

pub use alias::CutOver;
pub use bulk::{Indexed, ItemFate, Rejection};
pub use scan::Found;
pub use version::{Product, StoreInfo};

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use elasticsearch::auth::ClientCertificate;
use elasticsearch::cert::{Certificate, CertificateValidation};
use elasticsearch::http::headers::AUTHORIZATION;

use elasticsearch::Elasticsearch;
use elasticsearch::auth::Credentials;
use elasticsearch::http::headers::{CONTENT_TYPE, HeaderMap, HeaderValue};
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::http::{Method, Url};

use super::SinkError;
use super::retry::Backoff;
use crate::config::{Secret, mask_url, scrub_urls};
use crate::mapping::Mapping;
use crate::model::StoredRecord;

const STORE: &str = "elasticsearch";

/// Settings of [`ElasticSink`].
#[derive(Clone, Debug)]
pub struct EsSettings {
    pub url: String,
    /// Where each record goes (its route's index pattern) and the typed fields of each
    /// pattern's template.
    pub mapping: std::sync::Arc<Mapping>,
    pub bulk_max_bytes: usize,
    /// Data-stream mode: `create` actions and a `data_stream` template.
    pub data_stream: bool,
    pub template_priority: u32,
    /// `LP_ES_REFRESH_MS`: the template's `index.refresh_interval`.
    pub refresh_interval: Duration,
    /// `LP_ES_LIFECYCLE`: a policy installed at start-up and attached to the indices.
    pub lifecycle: Option<crate::lifecycle::Lifecycle>,
    pub timeout: Duration,
    pub backoff: Backoff,
    pub tls: EsTls,
    pub auth: EsAuth,
}

/// How the search store's certificate is checked, and the client's own certificate.
#[derive(Clone, Debug, Default)]
pub struct EsTls {
    /// Extra trusted CAs (PEM), besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate: for diagnosis only, warned about at start-up.
    pub skip_verify: bool,
    /// Client certificate and key (PEM) for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// How requests authenticate.
#[derive(Clone, Debug)]
pub enum EsAuth {
    /// `user:password@` in the URL, or nothing.
    FromUrl,
    Basic(String, Secret),
    /// The `encoded` form Elasticsearch returns, or `id:key`.
    ApiKey(Secret),
}

pub struct ElasticSink {
    client: Elasticsearch,
    settings: EsSettings,
    /// Each route's index pattern parsed once, not once per record.
    index_items: Vec<Vec<chrono::format::Item<'static>>>,
    /// Whether the store takes documents at all (tells one index's refusal from the store's).
    accepts: accepts::Accepts,
}

impl ElasticSink {
    pub fn new(settings: EsSettings) -> Result<Self, SinkError> {
        let bad = |m: String| SinkError::Permanent {
            store: STORE,
            message: m,
        };
        let mut url = Url::parse(&settings.url)
            .map_err(|e| bad(format!("bad URL {}: {e}", mask_url(&settings.url))))?;
        let credentials = (!url.username().is_empty()).then(|| {
            let user = url.username().to_string();
            let password = url.password().unwrap_or_default().to_string();
            Credentials::Basic(user, password)
        });
        let _ = url.set_username("");
        let _ = url.set_password(None);
        let mut builder = TransportBuilder::new(SingleNodeConnectionPool::new(url))
            .timeout(settings.timeout)
            .enable_meta_header(false);
        // The transport takes one `Credentials`: a client certificate goes there, and basic
        // auth or an API key then travel as the Authorization header.
        let authorization = match &settings.auth {
            EsAuth::FromUrl => credentials.map(|c| match c {
                Credentials::Basic(u, p) => basic_header(&u, &p),
                _ => unreachable!("only basic credentials come from the URL"),
            }),
            EsAuth::Basic(u, p) => Some(basic_header(u, p.expose())),
            EsAuth::ApiKey(key) => Some(api_key_header(key.expose())),
        };
        if let Some(value) = authorization {
            let mut value = HeaderValue::from_str(&value)
                .map_err(|_| bad("credentials hold characters a header cannot carry".into()))?;
            value.set_sensitive(true);
            builder = builder.header(AUTHORIZATION, value);
        }
        let tls = &settings.tls;
        if let Some((cert, key)) = &tls.client_cert {
            let mut pem = read(cert, "LP_ES_CLIENT_CERT_FILE").map_err(bad)?;
            pem.push(b'\n');
            pem.extend(read(key, "LP_ES_CLIENT_KEY_FILE").map_err(bad)?);
            builder = builder.auth(Credentials::Certificate(ClientCertificate::Pem(pem)));
        }
        if tls.skip_verify {
            tracing::warn!(
                "LP_ES_INSECURE_SKIP_VERIFY=true: the search store's certificate is NOT verified; \
                 anyone on the path can read and alter what is sent"
            );
            builder = builder.cert_validation(CertificateValidation::None);
        } else if let Some(ca) = &tls.ca_file {
            let pem = read(ca, "LP_ES_CA_FILE").map_err(bad)?;
            let chain = Certificate::from_pem(&pem)
                .map_err(|e| bad(format!("LP_ES_CA_FILE {}: {e}", ca.display())))?;
            builder = builder.cert_validation(CertificateValidation::Full(chain));
        }
        let transport = builder
            .build()
            .map_err(|e| bad(format!("cannot build client: {e}")))?;
        let index_items = (settings.mapping.routes().iter())
            .map(|r| {
                chrono::format::StrftimeItems::new(&r.index)
                    .parse_to_owned()
                    .map_err(|e| bad(format!("index pattern {:?}: {e}", r.index)))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            client: Elasticsearch::new(transport),
            settings,
            index_items,
            accepts: Default::default(),
        })
    }

    /// The index a record goes to: its route's pattern, from its own timestamp.
    pub fn index_name(&self, record: &StoredRecord) -> String {
        record
            .entry
            .timestamp
            .format_with_items(self.index_items[record.route].iter())
            .to_string()
    }

    pub fn mapping(&self) -> &Mapping {
        &self.settings.mapping
    }

    pub(super) async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<(u16, String), SinkError> {
        self.request_with_product(method, path, body)
            .await
            .map(|(status, _, text)| (status, text))
    }

    /// A request, with the `X-Elastic-Product` header of the answer (Elasticsearch 7.14+ sends
    /// it on every response; OpenSearch never does).
    pub(super) async fn request_with_product(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<(u16, Option<String>, String), SinkError> {
        let mut headers = HeaderMap::new();
        if path.starts_with("/_bulk") {
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            );
        }
        let response = self
            .client
            .send(
                method,
                path,
                headers,
                Option::<&()>::None,
                body,
                Some(self.settings.timeout),
            )
            .await
            .map_err(|e| SinkError::Transient {
                store: STORE,
                message: scrub_urls(&with_causes(&e)),
            })?;
        let status = response.status_code().as_u16();
        let product = response
            .headers()
            .get("x-elastic-product")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = response.text().await.map_err(|e| SinkError::Transient {
            store: STORE,
            message: scrub_urls(&e.to_string()),
        })?;
        Ok((status, product, text))
    }
}

/// An error and its causes: a TLS refusal (unknown issuer, wrong name, expired) is only in the
/// source chain of "error sending request".
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

fn basic_header(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

/// `id:key` is encoded here; the `encoded` form is sent as given.
fn api_key_header(key: &str) -> String {
    match key.split_once(':') {
        Some(_) => format!(
            "ApiKey {}",
            base64::engine::general_purpose::STANDARD.encode(key)
        ),
        None => format!("ApiKey {key}"),
    }
}

fn read(path: &std::path::Path, field: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{field} {}: {e}", path.display()))
}

pub(super) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// A sink with test settings against `url` (fast backoff, 1 MiB requests).
#[cfg(test)]
pub(super) fn test_sink(url: &str, data_stream: bool) -> ElasticSink {
    ElasticSink::new(EsSettings {
        url: url.into(),
        mapping: std::sync::Arc::new(Mapping::builtin("logs-%Y.%m.%d")),
        bulk_max_bytes: 1 << 20,
        data_stream,
        template_priority: 501,
        refresh_interval: Duration::from_secs(1),
        lifecycle: None,
        timeout: Duration::from_secs(1),
        backoff: Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(2),
        },
        tls: EsTls::default(),
        auth: EsAuth::FromUrl,
    })
    .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_key_is_sent_as_elasticsearch_expects() {
        // `id:key` is base64-encoded; the `encoded` value Elasticsearch returns is sent as is.
        assert_eq!(
            api_key_header("VuaCfGcBCdbkQm-e5aOx:ui2lp2axTNmsyakw9tvNnw"),
            "ApiKey VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw=="
        );
        assert_eq!(
            api_key_header("VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw=="),
            "ApiKey VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw=="
        );
        assert_eq!(basic_header("elastic", "pw"), "Basic ZWxhc3RpYzpwdw==");
    }

    #[test]
    fn unreadable_tls_files_fail_naming_the_setting() {
        let settings = |tls: EsTls| EsSettings {
            url: "https://127.0.0.1:9200".into(),
            mapping: std::sync::Arc::new(Mapping::builtin("logs-%Y")),
            bulk_max_bytes: 1 << 20,
            data_stream: false,
            template_priority: 501,
            refresh_interval: Duration::from_secs(1),
            lifecycle: None,
            timeout: Duration::from_secs(1),
            backoff: Backoff {
                initial: Duration::from_millis(1),
                max: Duration::from_millis(2),
            },
            tls,
            auth: EsAuth::ApiKey("k".to_string().into()),
        };
        let err = |tls| match ElasticSink::new(settings(tls)) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted"),
        };
        let e = err(EsTls {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..EsTls::default()
        });
        assert!(e.contains("LP_ES_CA_FILE"), "{e}");
        let e = err(EsTls {
            client_cert: Some(("/nonexistent/c.pem".into(), "/nonexistent/k.pem".into())),
            ..EsTls::default()
        });
        assert!(e.contains("LP_ES_CLIENT_CERT_FILE"), "{e}");
    }
}
