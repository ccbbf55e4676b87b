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

mod bulk;
mod encode;
mod stream;
mod template;
mod version;

pub use bulk::Rejection;
pub use version::{Product, StoreInfo};

use std::time::Duration;

use elasticsearch::Elasticsearch;
use elasticsearch::auth::Credentials;
use elasticsearch::http::headers::{CONTENT_TYPE, HeaderMap, HeaderValue};
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::http::{Method, Url};

use super::SinkError;
use super::retry::Backoff;
use crate::config::{mask_url, scrub_urls};
use crate::model::StoredRecord;

const STORE: &str = "elasticsearch";

/// Settings of [`ElasticSink`].
#[derive(Clone, Debug)]
pub struct EsSettings {
    pub url: String,
    pub index_pattern: String,
    pub bulk_max_bytes: usize,
    /// Data-stream mode: `create` actions and a `data_stream` template.
    pub data_stream: bool,
    pub template_priority: u32,
    pub timeout: Duration,
    pub backoff: Backoff,
}

pub struct ElasticSink {
    client: Elasticsearch,
    settings: EsSettings,
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
        if let Some(c) = credentials {
            builder = builder.auth(c);
        }
        let transport = builder
            .build()
            .map_err(|e| bad(format!("cannot build client: {e}")))?;
        Ok(Self {
            client: Elasticsearch::new(transport),
            settings,
        })
    }

    /// The index a record goes to, from its own timestamp.
    pub fn index_name(&self, record: &StoredRecord) -> String {
        record
            .entry
            .timestamp
            .format(&self.settings.index_pattern)
            .to_string()
    }

    pub(super) async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
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
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Option<String>, String), SinkError> {
        let mut headers = HeaderMap::new();
        if path == "/_bulk" {
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
                message: scrub_urls(&e.to_string()),
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
