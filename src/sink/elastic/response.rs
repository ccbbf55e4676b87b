//! A `_bulk` answer read item by item: the status, error type and reason of each, and the
//! failure-store marker of Elasticsearch 8.15+.

use serde_json::Value;

use super::classify::request_ok;
use super::{STORE, truncate};
use crate::sink::SinkError;

/// `_bulk` asked to answer only what `parse_bulk` reads: the per-item status, error and
/// failure-store marker, not the index, id, version and shard counts of every item.
pub(super) const BULK_PATH: &str =
    "/_bulk?filter_path=items.*.status,items.*.error,items.*.failure_store";

#[derive(serde::Deserialize)]
struct BulkResponse {
    #[serde(default)]
    items: Vec<ItemOp>,
}

/// An item is an object with one key, the action it answers.
#[derive(serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum ItemOp {
    Index(ItemResult),
    Create(ItemResult),
    Delete(ItemResult),
    Update(ItemResult),
}

#[derive(serde::Deserialize)]
struct ItemResult {
    status: Option<u16>,
    /// Present only on a failed item, so successful ones cost no allocation.
    #[serde(default)]
    error: Option<Value>,
    #[serde(default)]
    failure_store: Option<String>,
}

/// Reads a `_bulk` answer. A successful item carries only its status (see `BULK_PATH`), so
/// an answer without errors is read without building a JSON tree or a string per item.
pub(super) fn parse_bulk(status: u16, text: &str) -> Result<Bulk, SinkError> {
    if status == 413 {
        return Ok(Bulk::TooLarge);
    }
    if !request_ok(status) {
        // The whole request failed; even a 4xx here says nothing about single documents.
        return Err(SinkError::Transient {
            store: STORE,
            message: format!("_bulk: HTTP {status}: {}", truncate(text, 300)),
        });
    }
    let response: BulkResponse = serde_json::from_str(text).map_err(|e| SinkError::Transient {
        store: STORE,
        message: format!("_bulk: unreadable response: {e}"),
    })?;
    // Items are read even when `errors` is false: a non-2xx item without an error is retried.
    let items = response.items.into_iter().map(|op| {
        let (ItemOp::Index(r) | ItemOp::Create(r) | ItemOp::Delete(r) | ItemOp::Update(r)) = op;
        let status = r.status.unwrap_or(500);
        // Elasticsearch 8.15+ may divert a refused document into a data stream's failure
        // store and answer 2xx: the document is not in the stream.
        if r.failure_store.as_deref() == Some("used") {
            return Item {
                status: 400,
                error_type: Some("failure_store_used".into()),
                reason: format!("diverted to the failure store (HTTP {status})"),
            };
        }
        match r.error {
            Some(e) => {
                let reason = match (e["type"].as_str(), e["reason"].as_str()) {
                    (Some(t), Some(r)) => format!("{t}: {r}"),
                    _ => e.to_string(),
                };
                Item {
                    status,
                    error_type: e["type"].as_str().map(str::to_owned),
                    reason: truncate(&reason, 2000),
                }
            }
            None => Item {
                status,
                error_type: None,
                reason: String::new(),
            },
        }
    });
    Ok(Bulk::Items(items.collect()))
}

/// The answer to one `_bulk` request.
pub(super) enum Bulk {
    Items(Vec<Item>),
    /// 413: the body exceeds the store's `http.max_content_length`.
    TooLarge,
}

impl Bulk {
    /// For a request of `sent` deletes (`what` names it in the reason): `None` when each was
    /// done, a missing document counting as deleted; else why not.
    pub(super) fn delete_failure(self, sent: usize, what: &str) -> Option<String> {
        match self {
            Bulk::Items(items) if items.len() == sent => (items.iter())
                .find(|i| !matches!(i.status, 200..=299 | 404))
                .map(|i| format!("{what}: HTTP {} {}", i.status, i.reason)),
            _ => Some(format!("{what}: unexpected bulk response")),
        }
    }
}

/// One bulk item's result.
pub(super) struct Item {
    pub(super) status: u16,
    pub(super) error_type: Option<String>,
    pub(super) reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_answers_are_read_item_by_item() {
        let text = r#"{"items":[{"index":{"status":201}},{"create":{"status":409,"error":{"type":"version_conflict_engine_exception","reason":"exists"}}},{"index":{"status":400,"error":{"type":"mapper_parsing_exception","reason":"failed to parse field [n]"}}},{"index":{"status":429,"error":"too many"}},{"create":{"status":201,"failure_store":"used"}},{"delete":{"status":404}},{"index":{}}]}"#;
        let Ok(Bulk::Items(items)) = parse_bulk(200, text) else {
            panic!("not read");
        };
        let seen: Vec<(u16, Option<&str>, &str)> = items
            .iter()
            .map(|i| (i.status, i.error_type.as_deref(), i.reason.as_str()))
            .collect();
        assert_eq!(
            seen,
            vec![
                (201, None, ""),
                (
                    409,
                    Some("version_conflict_engine_exception"),
                    "version_conflict_engine_exception: exists"
                ),
                (
                    400,
                    Some("mapper_parsing_exception"),
                    "mapper_parsing_exception: failed to parse field [n]"
                ),
                (429, None, "\"too many\""),
                (
                    400,
                    Some("failure_store_used"),
                    "diverted to the failure store (HTTP 201)"
                ),
                (404, None, ""),
                (500, None, ""),
            ]
        );
        assert!(matches!(parse_bulk(413, ""), Ok(Bulk::TooLarge)));
        assert!(matches!(
            parse_bulk(503, "busy"),
            Err(SinkError::Transient { .. })
        ));
        assert!(matches!(
            parse_bulk(200, "<html>"),
            Err(SinkError::Transient { .. })
        ));
        assert!(matches!(parse_bulk(200, "{}"), Ok(Bulk::Items(i)) if i.is_empty()));
    }
}
