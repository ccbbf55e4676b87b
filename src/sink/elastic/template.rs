//! The index template that maps the recognised fields, and the server's version.

use elasticsearch::http::Method;
use serde_json::{Value, json};

use crate::sink::SinkError;
use crate::sink::retry::request_ok;

use super::{ElasticSink, STORE, truncate};

impl ElasticSink {
    fn template_prefix(&self) -> &str {
        let p = &self.settings.index_pattern;
        &p[..p.find('%').unwrap_or(p.len())]
    }

    /// Creates (or updates) the index template that maps the recognised fields.
    pub async fn ensure_template(&self) -> Result<(), SinkError> {
        let prefix = self.template_prefix();
        let name = format!("log-processor-{}", prefix.trim_end_matches(['-', '.', '_']));
        let body = json!({
            "index_patterns": [format!("{prefix}*")],
            "priority": 100,
            "template": {
                "settings": { "index.mapping.total_fields.limit": 2000 },
                "mappings": {
                    "properties": {
                        "@timestamp": { "type": "date" },
                        "level": { "type": "keyword" },
                        "service": { "type": "keyword" },
                        "message": { "type": "text" },
                        "fields": { "type": "object" },
                        "kafka": { "properties": {
                            "topic": { "type": "keyword" },
                            "partition": { "type": "integer" },
                            "offset": { "type": "long" },
                            "key": { "type": "keyword", "index": false }
                        } }
                    }
                }
            }
        });
        let (status, text) = self
            .request(
                Method::Put,
                &format!("/_index_template/{name}"),
                Some(body.to_string().into_bytes()),
            )
            .await?;
        let message = format!("template: HTTP {status}: {}", truncate(&text, 500));
        match status {
            _ if request_ok(status) => Ok(()),
            429 | 500..=599 => Err(SinkError::Transient {
                store: STORE,
                message,
            }),
            _ => Err(SinkError::Permanent {
                store: STORE,
                message,
            }),
        }
    }

    /// The server's version string (`GET /`), for start-up logs.
    pub async fn version(&self) -> Result<String, SinkError> {
        let (status, text) = self.request(Method::Get, "/", None).await?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        match (status, v["version"]["number"].as_str()) {
            (200, Some(n)) => Ok(format!(
                "{} {n}",
                v["version"]["distribution"]
                    .as_str()
                    .unwrap_or("elasticsearch")
            )),
            _ => Err(SinkError::Transient {
                store: STORE,
                message: format!("GET /: HTTP {status}"),
            }),
        }
    }
}
