//! The index template that maps the recognised fields (and, in data-stream mode, makes the
//! indices data streams).
//!
//! Its priority (`LP_ES_TEMPLATE_PRIORITY`, default 501) sits above Elasticsearch's built-in
//! templates (`logs-*-*`, `metrics-*-*`, ... at 100) and the Fleet-managed ones (up to 200):
//! Elasticsearch refuses a template whose patterns overlap another's at the same priority,
//! and the higher one wins at index creation. Its name has no `@`, which Elasticsearch
//! reserves for its own.

use elasticsearch::http::Method;
use serde_json::json;

use super::classify::request_ok;
use crate::sink::SinkError;

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
        let mut body = json!({
            "index_patterns": [format!("{prefix}*")],
            "priority": self.settings.template_priority,
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
        if self.settings.data_stream {
            body["data_stream"] = json!({});
        }
        let (status, text) = self
            .request(
                Method::Put,
                &format!("/_index_template/{name}"),
                Some(body.to_string().into()),
            )
            .await?;
        let mut message = format!("template {name}: HTTP {status}: {}", truncate(&text, 500));
        if text.contains("have the same priority") {
            message.push_str(" (choose another LP_ES_TEMPLATE_PRIORITY)");
        }
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
}
