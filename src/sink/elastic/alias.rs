//! An alias moved to other indices in one `_aliases` request (`log-processor reindex`'s
//! cut-over): the store applies its actions atomically, so a reader of the alias sees either
//! the old indices or the new ones, never neither nor both.

use elasticsearch::http::Method;
use serde_json::{Value, json};

use super::classify::setup_answer;
use super::{ElasticSink, STORE, truncate};
use crate::sink::SinkError;

/// What a cut-over did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CutOver {
    /// The alias now names `to` (and no other index); it named `from` before.
    Switched { from: Vec<String>, to: Vec<String> },
    /// No index of the target exists (nothing was written): the alias was left as it was,
    /// since pointing it at nothing would leave its readers without documents.
    NoTarget,
}

impl ElasticSink {
    /// Points `alias` at every existing index of this sink's patterns, removing it from every
    /// other index, in one request.
    pub async fn switch_alias(&self, alias: &str) -> Result<CutOver, SinkError> {
        let to = self.indices_of(&self.index_wildcard()).await?;
        if to.is_empty() {
            return Ok(CutOver::NoTarget);
        }
        let (status, text) = self
            .request(Method::Get, &format!("/_alias/{alias}"), None)
            .await?;
        let from: Vec<String> = match status {
            404 => Vec::new(),
            _ => {
                setup_answer(
                    status,
                    format!("alias {alias}: HTTP {status}: {}", truncate(&text, 300)),
                )?;
                let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                v.as_object()
                    .map(|o| o.keys().cloned().collect())
                    .unwrap_or_default()
            }
        };
        let body = actions(alias, &from, &to);
        let (status, text) = self
            .request(Method::Post, "/_aliases", Some(body.to_string().into()))
            .await?;
        setup_answer(
            status,
            format!("_aliases {alias}: HTTP {status}: {}", truncate(&text, 500)),
        )?;
        Ok(CutOver::Switched { from, to })
    }

    /// The concrete indices a comma-separated list of wildcards names (none: empty).
    async fn indices_of(&self, wildcards: &str) -> Result<Vec<String>, SinkError> {
        let path = format!("/_cat/indices/{wildcards}?format=json&h=index&expand_wildcards=open");
        let (status, text) = self.request(Method::Get, &path, None).await?;
        if status == 404 {
            return Ok(Vec::new());
        }
        setup_answer(
            status,
            format!(
                "indices {wildcards}: HTTP {status}: {}",
                truncate(&text, 300)
            ),
        )?;
        let v: Vec<Value> = serde_json::from_str(&text).map_err(|e| SinkError::Transient {
            store: STORE,
            message: format!("indices {wildcards}: unreadable answer: {e}"),
        })?;
        let mut names: Vec<String> = v
            .iter()
            .filter_map(|i| i["index"].as_str().map(str::to_owned))
            .collect();
        names.sort();
        Ok(names)
    }
}

/// The `_aliases` body: the alias removed from each old index that is not a new one, and added
/// to the new ones, in one list of actions.
fn actions(alias: &str, from: &[String], to: &[String]) -> Value {
    let mut actions: Vec<Value> = from
        .iter()
        .filter(|i| !to.contains(i))
        .map(|i| json!({ "remove": { "index": i, "alias": alias } }))
        .collect();
    actions.push(json!({ "add": { "indices": to, "alias": alias } }));
    json!({ "actions": actions })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_request_removes_the_old_indices_and_adds_the_new() {
        let from = vec!["logs-2026.12.01".to_string(), "new-1".to_string()];
        let to = vec!["new-1".to_string(), "new-2".to_string()];
        assert_eq!(
            actions("logs", &from, &to),
            json!({ "actions": [
                { "remove": { "index": "logs-2026.12.01", "alias": "logs" } },
                { "add": { "indices": ["new-1", "new-2"], "alias": "logs" } }
            ] })
        );
        assert_eq!(
            actions("logs", &[], &to)["actions"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }
}
