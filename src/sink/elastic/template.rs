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

use super::classify::setup_answer;
use crate::mapping::template_prefix;
use crate::sink::SinkError;

use super::{ElasticSink, Product, StoreInfo, truncate};
use crate::lifecycle::POLICY_NAME;

impl ElasticSink {
    /// Creates (or updates) one index template per index pattern of the mapping, mapping the
    /// recognised fields and the typed columns of the tables routed there.
    /// With `LP_ES_LIFECYCLE` on Elasticsearch, the template names the ILM policy
    /// (`ensure_lifecycle` installs it first: Elasticsearch refuses the setting of a store
    /// without ILM). OpenSearch's ISM policy attaches itself (`ism_template`).
    pub async fn ensure_template(&self, store: &StoreInfo) -> Result<(), SinkError> {
        let ilm = self.settings.lifecycle.is_some() && store.product == Product::Elasticsearch;
        for pattern in self.settings.mapping.index_patterns() {
            self.ensure_template_of(pattern, ilm).await?;
        }
        Ok(())
    }

    async fn ensure_template_of(&self, pattern: &str, ilm: bool) -> Result<(), SinkError> {
        let prefix = template_prefix(pattern);
        let name = format!("log-processor-{}", prefix.trim_end_matches(['-', '.', '_']));
        let mut fields = json!({ "type": "object" });
        for (field, column) in self.settings.mapping.document_fields(pattern) {
            let steps: Vec<&str> = field.split('.').skip(1).collect();
            let mut at = &mut fields;
            for step in steps {
                at = &mut at["properties"][step];
            }
            *at = match column.search {
                "none" => json!({ "type": "object", "enabled": false }),
                "date" | "date_nanos" => {
                    json!({ "type": column.search, "format": "strict_date_optional_time" })
                }
                other => json!({ "type": other }),
            };
        }
        let mut body = json!({
            "index_patterns": [format!("{prefix}*")],
            "priority": self.settings.template_priority + self.overlapped(prefix),
            "template": {
                "settings": {
                    "index.mapping.total_fields.limit": 2000,
                    "index.refresh_interval":
                        format!("{}ms", self.settings.refresh_interval.as_millis()),
                },
                "mappings": {
                    "properties": {
                        "@timestamp": { "type": "date" },
                        "level": { "type": "keyword" },
                        "service": { "type": "keyword" },
                        "message": { "type": "text" },
                        "fields": fields,
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
        if ilm {
            body["template"]["settings"]["index.lifecycle.name"] = json!(POLICY_NAME);
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
        setup_answer(status, message)
    }
}

impl ElasticSink {
    /// How many other patterns' prefixes this one extends: a template above each of theirs,
    /// since the more specific pattern must win where two overlap (`logs-*` and
    /// `logs-http-*`), and the stores refuse overlapping templates of one priority. Without a
    /// mapping file: 0, the priority as set.
    fn overlapped(&self, prefix: &str) -> u32 {
        let patterns = self.settings.mapping.index_patterns();
        let prefixes = patterns.into_iter().map(template_prefix);
        prefixes
            .filter(|p| *p != prefix && prefix.starts_with(p))
            .count() as u32
    }
}
