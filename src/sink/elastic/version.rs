//! Which store answers, and its version, read at start-up.
//!
//! `GET /` is the usual source, but not a reliable one: Elasticsearch's minimal distribution
//! has no root endpoint (405), and a proxy may block it. The node info API
//! (`GET /_nodes/_local`) is the fallback. The product comes from the `X-Elastic-Product`
//! header, which Elasticsearch sends on every response and OpenSearch never does, or from
//! `version.distribution` (`opensearch`) in `GET /`.

use std::fmt;

use elasticsearch::http::Method;
use serde_json::Value;

use crate::sink::SinkError;

use super::{ElasticSink, STORE};

/// The search store's product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Product {
    Elasticsearch,
    OpenSearch,
}

/// What answered at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreInfo {
    pub product: Product,
    /// As reported, e.g. `9.2.0`.
    pub version: String,
    pub major: u32,
}

impl fmt::Display for StoreInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = match self.product {
            Product::Elasticsearch => "elasticsearch",
            Product::OpenSearch => "opensearch",
        };
        write!(f, "{p} {}", self.version)
    }
}

impl StoreInfo {
    /// Refuses stores without the features the sink relies on: composable index templates
    /// (Elasticsearch 7.8+; every OpenSearch) and data streams (Elasticsearch 7.9+).
    pub fn check_supported(&self) -> Result<(), String> {
        let minor: u32 = self
            .version
            .split('.')
            .nth(1)
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        match self.product {
            Product::Elasticsearch if (self.major, minor) < (7, 9) => Err(format!(
                "{self} is not supported: composable index templates and data streams need Elasticsearch 7.9 or newer"
            )),
            _ => Ok(()),
        }
    }

    /// [`Self::check_supported`] as the sink's error, for start-up.
    pub fn require_supported(&self) -> Result<(), SinkError> {
        self.check_supported()
            .map_err(|message| SinkError::Permanent {
                store: STORE,
                message,
            })
    }
}

/// The store from a `GET /` answer: `version.number`, and `version.distribution` on OpenSearch.
fn from_root(product_header: Option<&str>, body: &Value) -> Option<StoreInfo> {
    let number = body["version"]["number"].as_str()?;
    let product = match (product_header, body["version"]["distribution"].as_str()) {
        (_, Some("opensearch")) => Product::OpenSearch,
        (Some(_), _) => Product::Elasticsearch,
        // Elasticsearch before 7.14 sent no header: its root answer has the tagline.
        (None, _) if body["tagline"] == "You Know, for Search" => Product::Elasticsearch,
        _ => return None,
    };
    info(product, number)
}

/// The store from a `GET /_nodes/_local` answer (one node's `version`).
fn from_nodes(product_header: Option<&str>, body: &Value) -> Option<StoreInfo> {
    let node = body["nodes"].as_object()?.values().next()?;
    let number = node["version"].as_str()?;
    let major: u32 = number.split('.').next()?.parse().ok()?;
    let product = match (product_header, node["distribution"].as_str()) {
        (_, Some("opensearch")) => Product::OpenSearch,
        (Some(_), _) => Product::Elasticsearch,
        // No header: OpenSearch (1.x to 3.x so far) or Elasticsearch before 7.14.
        (None, _) if major >= 7 => Product::Elasticsearch,
        (None, _) => Product::OpenSearch,
    };
    info(product, number)
}

fn info(product: Product, number: &str) -> Option<StoreInfo> {
    let major = number.split('.').next()?.parse().ok()?;
    Some(StoreInfo {
        product,
        version: number.to_string(),
        major,
    })
}

impl ElasticSink {
    /// Which store answers and its version. An unreachable or unrecognisable store is a
    /// transient error (it may be starting); a reachable store that refuses us is permanent
    /// only through the caller's checks.
    pub async fn detect(&self) -> Result<StoreInfo, SinkError> {
        let (status, header, text) = self.request_with_product(Method::Get, "/", None).await?;
        let root: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status == 200
            && let Some(i) = from_root(header.as_deref(), &root)
        {
            return Ok(i);
        }
        let (status2, header2, text2) = self
            .request_with_product(Method::Get, "/_nodes/_local", None)
            .await?;
        let nodes: Value = serde_json::from_str(&text2).unwrap_or(Value::Null);
        match (
            status2,
            from_nodes(header2.as_deref().or(header.as_deref()), &nodes),
        ) {
            (200, Some(i)) => Ok(i),
            _ => Err(SinkError::Transient {
                store: STORE,
                message: format!(
                    "cannot tell the store's product and version: GET / answered HTTP {status}, GET /_nodes/_local HTTP {status2}"
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_both_products_from_root_and_node_info() {
        let os = json!({"version": {"distribution": "opensearch", "number": "3.6.0"}});
        assert_eq!(
            from_root(None, &os).unwrap().to_string(),
            "opensearch 3.6.0"
        );
        let es = json!({"version": {"number": "8.19.21"}, "tagline": "You Know, for Search"});
        let i = from_root(Some("Elasticsearch"), &es).unwrap();
        assert_eq!((i.product, i.major), (Product::Elasticsearch, 8));
        assert_eq!(
            from_root(None, &es).unwrap().product,
            Product::Elasticsearch
        );
        // Something else answering on the port is not taken for a store.
        assert!(from_root(None, &json!({"version": {"number": "1.0"}})).is_none());

        let nodes = json!({"nodes": {"abc": {"version": "9.2.0"}}});
        let i = from_nodes(Some("Elasticsearch"), &nodes).unwrap();
        assert_eq!(i.to_string(), "elasticsearch 9.2.0");
        let no_header = json!({"nodes": {"abc": {"version": "2.19.6"}}});
        assert_eq!(
            from_nodes(None, &no_header).unwrap().product,
            Product::OpenSearch
        );
        let os_nodes =
            json!({"nodes": {"abc": {"version": "2.19.6", "distribution": "opensearch"}}});
        assert_eq!(
            from_nodes(None, &os_nodes).unwrap().product,
            Product::OpenSearch
        );
    }

    #[test]
    fn old_elasticsearch_is_refused() {
        let old = info(Product::Elasticsearch, "7.8.1").unwrap();
        assert!(old.check_supported().unwrap_err().contains("7.9"));
        for ok in [
            info(Product::Elasticsearch, "7.17.0"),
            info(Product::Elasticsearch, "9.2.0"),
            info(Product::OpenSearch, "1.3.0"),
        ] {
            ok.unwrap().check_supported().unwrap();
        }
    }
}
