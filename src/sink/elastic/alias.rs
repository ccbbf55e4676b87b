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
    /// other index, in one request. The removal names no index (`*`): a change made to the
    /// alias by someone else between the read (for the report) and the request is undone
    /// with the rest, never left beside the new indices.
    pub async fn switch_alias(&self, alias: &str) -> Result<CutOver, SinkError> {
        let to = self.indices_of(&self.index_wildcard()).await?;
        if to.is_empty() {
            return Ok(CutOver::NoTarget);
        }
        // A removal of an alias that does not exist is refused (404) by Elasticsearch: the
        // alias read again and the request sent again when it vanished meanwhile.
        let mut tries = 0;
        loop {
            let from = self.alias_indices(alias).await?;
            let body = actions(alias, !from.is_empty(), &to);
            let (status, text) = self
                .request(Method::Post, "/_aliases", Some(body.to_string().into()))
                .await?;
            tries += 1;
            if status == 404 && !from.is_empty() && tries < 3 {
                continue;
            }
            setup_answer(
                status,
                format!("_aliases {alias}: HTTP {status}: {}", truncate(&text, 500)),
            )?;
            return Ok(CutOver::Switched { from, to });
        }
    }

    /// The indices `alias` names now (none: empty).
    async fn alias_indices(&self, alias: &str) -> Result<Vec<String>, SinkError> {
        let (status, text) = self
            .request(Method::Get, &format!("/_alias/{alias}"), None)
            .await?;
        if status == 404 {
            return Ok(Vec::new());
        }
        setup_answer(
            status,
            format!("alias {alias}: HTTP {status}: {}", truncate(&text, 300)),
        )?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let mut names: Vec<String> = (v.as_object().into_iter())
            .flat_map(|o| o.keys().cloned())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Whether `name` is an existing index (not an alias): such a name cannot become an alias,
    /// so a re-index into it is refused before anything is copied.
    pub async fn is_index(&self, name: &str) -> Result<bool, SinkError> {
        let path = format!("/{name}?filter_path=*.settings.index.provided_name");
        let (status, text) = self.request(Method::Get, &path, None).await?;
        if status == 404 {
            return Ok(false);
        }
        setup_answer(
            status,
            format!("index {name}: HTTP {status}: {}", truncate(&text, 300)),
        )?;
        // An alias answers with the indices it names, an index with itself.
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(v.get(name).is_some())
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

/// The `_aliases` body: the alias removed from every index (when it exists) and added to the
/// new ones, in one list of actions the store applies atomically.
fn actions(alias: &str, exists: bool, to: &[String]) -> Value {
    let mut actions = Vec::new();
    if exists {
        actions.push(json!({ "remove": { "index": "*", "alias": alias } }));
    }
    actions.push(json!({ "add": { "indices": to, "alias": alias } }));
    json!({ "actions": actions })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_request_removes_the_alias_everywhere_and_adds_the_new() {
        let to = vec!["new-1".to_string(), "new-2".to_string()];
        assert_eq!(
            actions("logs", true, &to),
            json!({ "actions": [
                { "remove": { "index": "*", "alias": "logs" } },
                { "add": { "indices": ["new-1", "new-2"], "alias": "logs" } }
            ] })
        );
        assert_eq!(
            actions("logs", false, &to),
            json!({ "actions": [{ "add": { "indices": ["new-1", "new-2"], "alias": "logs" } }] })
        );
    }
}
