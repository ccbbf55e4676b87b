//! `LP_ES_LIFECYCLE` installed as the store's own policy: ILM on Elasticsearch (attached by
//! the index template's `index.lifecycle.name`, see `template.rs`), ISM on OpenSearch
//! (attached by the policy's `ism_template` to indices created under the mapping's
//! patterns). Both are plugins a store may lack (Elasticsearch's and OpenSearch's minimal
//! distributions have neither): then the start-up stops, naming the setting and quoting the
//! store's answer, rather than run without the retention the operator declared.

use elasticsearch::http::Method;
use serde_json::Value;

use super::classify::setup_answer;
use super::{ElasticSink, Product, STORE, StoreInfo, truncate};
use crate::lifecycle::{Lifecycle, POLICY_NAME, ilm_policy, ism_policy};
use crate::mapping::template_prefix;
use crate::sink::SinkError;

/// What installing the policy came to.
#[derive(Debug, PartialEq, Eq)]
pub enum PolicyOutcome {
    /// Written (created or replaced) under [`POLICY_NAME`].
    Installed,
    /// The store has no lifecycle API: its answer.
    Unavailable(String),
}

impl ElasticSink {
    /// Installs the lifecycle policy, if one is declared. A store without the API is a
    /// permanent refusal naming `LP_ES_LIFECYCLE`.
    pub async fn ensure_lifecycle(&self, store: &StoreInfo) -> Result<(), SinkError> {
        let Some(lifecycle) = &self.settings.lifecycle else {
            return Ok(());
        };
        let outcome = match store.product {
            Product::Elasticsearch => self.put_ilm(lifecycle).await?,
            Product::OpenSearch => self.put_ism(lifecycle).await?,
        };
        match outcome {
            PolicyOutcome::Installed => {
                tracing::info!(policy = POLICY_NAME, %store, "index lifecycle policy installed");
                Ok(())
            }
            PolicyOutcome::Unavailable(answer) => {
                let api = match store.product {
                    Product::Elasticsearch => "index lifecycle management (ILM, _ilm)",
                    Product::OpenSearch => {
                        "index state management (ISM, the index-management plugin, _plugins/_ism)"
                    }
                };
                Err(SinkError::Permanent {
                    store: STORE,
                    message: format!(
                        "LP_ES_LIFECYCLE is set but {store} has no {api}: {answer}; install it or unset LP_ES_LIFECYCLE"
                    ),
                })
            }
        }
    }

    async fn put_ilm(&self, lifecycle: &Lifecycle) -> Result<PolicyOutcome, SinkError> {
        let path = format!("/_ilm/policy/{POLICY_NAME}");
        let body = ilm_policy(lifecycle).to_string();
        let (status, text) = self.request(Method::Put, &path, Some(body.into())).await?;
        answer(&format!("PUT {path}"), status, &text)
    }

    /// ISM replaces a policy only with the sequence number it holds (else 409).
    async fn put_ism(&self, lifecycle: &Lifecycle) -> Result<PolicyOutcome, SinkError> {
        let path = format!("/_plugins/_ism/policies/{POLICY_NAME}");
        let (status, text) = self.request(Method::Get, &path, None).await?;
        if let PolicyOutcome::Unavailable(why) = answer(&format!("GET {path}"), status, &text)
            .or_else(|e| {
                if status == 404 {
                    Ok(PolicyOutcome::Installed)
                } else {
                    Err(e)
                }
            })?
        {
            return Ok(PolicyOutcome::Unavailable(why));
        }
        let mut put = path.clone();
        if status == 200 {
            let held: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            if let (Some(seq), Some(term)) =
                (held["_seq_no"].as_i64(), held["_primary_term"].as_i64())
            {
                put = format!("{path}?if_seq_no={seq}&if_primary_term={term}");
            }
        }
        let patterns: Vec<String> = (self.settings.mapping.index_patterns().into_iter())
            .map(|p| format!("{}*", template_prefix(p)))
            .collect();
        let body = ism_policy(lifecycle, &patterns, self.settings.template_priority).to_string();
        let (status, text) = self.request(Method::Put, &put, Some(body.into())).await?;
        answer(&format!("PUT {path}"), status, &text)
    }
}

/// A lifecycle request's answer: done, no such API, or an error (retried if transient).
fn answer(what: &str, status: u16, text: &str) -> Result<PolicyOutcome, SinkError> {
    let message = format!("{what}: HTTP {status}: {}", truncate(text, 500));
    match status {
        // The stores' answer to a path no module serves.
        400 | 404 | 405 if text.contains("no handler found") => {
            Ok(PolicyOutcome::Unavailable(message))
        }
        _ => setup_answer(status, message).map(|()| PolicyOutcome::Installed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_no_module_serves_means_the_api_is_missing() {
        let missing =
            r#"{"error":"no handler found for uri [/_ilm/policy/log-processor] and method [PUT]"}"#;
        assert!(
            matches!(answer("PUT", 400, missing), Ok(PolicyOutcome::Unavailable(m)) if m.contains("no handler found"))
        );
        assert_eq!(answer("PUT", 200, "{}").unwrap(), PolicyOutcome::Installed);
        assert!(matches!(
            answer("PUT", 503, "busy"),
            Err(SinkError::Transient { .. })
        ));
        assert!(matches!(
            answer("PUT", 400, "bad policy"),
            Err(SinkError::Permanent { .. })
        ));
    }
}
