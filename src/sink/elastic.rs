//! Elasticsearch (and OpenSearch, which speaks the same 7.x REST API): `_bulk` with
//! deterministic ids, per-item results, retries for 429/5xx only.

use std::time::Duration;

use elasticsearch::Elasticsearch;
use elasticsearch::auth::Credentials;
use elasticsearch::http::headers::{CONTENT_TYPE, HeaderMap, HeaderValue};
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::http::{Method, Url};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::SinkError;
use super::retry::{Backoff, ItemAction, classify_item, request_ok};
use crate::config::{mask_url, scrub_urls};
use crate::model::{StoredRecord, TopicPartition, document_id};

const STORE: &str = "elasticsearch";

/// Settings of [`ElasticSink`].
#[derive(Clone, Debug)]
pub struct EsSettings {
    pub url: String,
    pub index_pattern: String,
    pub bulk_max_bytes: usize,
    pub timeout: Duration,
    pub backoff: Backoff,
}

/// A document Elasticsearch refused for good.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// Position of the record in the slice given to [`ElasticSink::index`].
    pub index: usize,
    pub reason: String,
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

    /// Indexes the records with deterministic ids. Only a refusal of a document itself (see
    /// `retry::classify_item`) is returned, as a rejection for the dead-letter table; every
    /// other failure, of an item or of the whole request, is retried (only those items) until
    /// the store accepts or `cancel` fires, `on_retry` reporting the reason each time. A
    /// request refused as too large (413) is split.
    pub async fn index(
        &self,
        tp: &TopicPartition,
        records: &[StoredRecord],
        cancel: &CancellationToken,
        mut on_retry: impl FnMut(&str),
    ) -> Result<Vec<Rejection>, SinkError> {
        let lines: Vec<Vec<u8>> = records.iter().map(|r| self.bulk_lines(tp, r)).collect();
        let mut pending: Vec<usize> = (0..records.len()).collect();
        let mut rejected = Vec::new();
        let mut max_bytes = self.settings.bulk_max_bytes;
        let mut attempt = 0;
        while !pending.is_empty() {
            let mut again = Vec::new();
            let mut why = String::new();
            for chunk in chunks(&pending, &lines, max_bytes) {
                let body: Vec<u8> = chunk
                    .iter()
                    .flat_map(|&i| lines[i].iter().copied())
                    .collect();
                let size = body.len();
                let outcome = tokio::select! {
                    r = self.bulk(body) => r,
                    _ = cancel.cancelled() => return Err(SinkError::Cancelled),
                };
                match outcome {
                    Ok(Bulk::Items(items)) if items.len() == chunk.len() => {
                        for (&i, item) in chunk.iter().zip(items) {
                            match classify_item(
                                item.status,
                                item.error_type.as_deref(),
                                &item.reason,
                            ) {
                                ItemAction::Done => {}
                                ItemAction::Retry => {
                                    why = format!("HTTP {} {}", item.status, item.reason);
                                    again.push(i);
                                }
                                ItemAction::Reject => rejected.push(Rejection {
                                    index: i,
                                    reason: item.reason,
                                }),
                            }
                        }
                    }
                    Ok(Bulk::Items(items)) => {
                        why = format!(
                            "bulk response has {} items for {} sent",
                            items.len(),
                            chunk.len()
                        );
                        again.extend_from_slice(&chunk);
                    }
                    Ok(Bulk::TooLarge) => {
                        max_bytes = (size / 2).max(1);
                        why = format!("request of {size} bytes too large (413); splitting");
                        again.extend_from_slice(&chunk);
                    }
                    Err(e) => {
                        why = e.to_string();
                        again.extend_from_slice(&chunk);
                    }
                }
            }
            pending = again;
            if !pending.is_empty() {
                attempt += 1;
                on_retry(&why);
                let delay = self.settings.backoff.delay(attempt);
                tracing::warn!(
                    attempt,
                    items = pending.len(),
                    delay_ms = delay.as_millis() as u64,
                    reason = %why,
                    "retrying bulk items"
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = cancel.cancelled() => return Err(SinkError::Cancelled),
                }
            }
        }
        rejected.sort_by_key(|r| r.index);
        Ok(rejected)
    }

    /// Deletes the documents of records that ended up as dead letters after they were indexed
    /// (PostgreSQL refused their rows), so no document exists without its row. A missing
    /// document counts as deleted; anything else is retried until done or `cancel` fires.
    pub async fn delete(
        &self,
        tp: &TopicPartition,
        records: &[&StoredRecord],
        cancel: &CancellationToken,
        mut on_retry: impl FnMut(&str),
    ) -> Result<(), SinkError> {
        let mut body = Vec::new();
        for r in records {
            let action = json!({ "delete": { "_index": self.index_name(r), "_id": document_id(tp, r.offset) } });
            serde_json::to_writer(&mut body, &action)
                .expect("serialising JSON to memory cannot fail");
            body.push(b'\n');
        }
        let mut attempt = 0;
        loop {
            let outcome = tokio::select! {
                r = self.bulk(body.clone()) => r,
                _ = cancel.cancelled() => return Err(SinkError::Cancelled),
            };
            let why = match outcome {
                Ok(Bulk::Items(items)) if items.len() == records.len() => {
                    match items.iter().find(|i| !matches!(i.status, 200..=299 | 404)) {
                        None => return Ok(()),
                        Some(i) => format!("delete: HTTP {} {}", i.status, i.reason),
                    }
                }
                Ok(_) => "delete: unexpected bulk response".to_string(),
                Err(e) => e.to_string(),
            };
            attempt += 1;
            on_retry(&why);
            tokio::select! {
                _ = tokio::time::sleep(self.settings.backoff.delay(attempt)) => {}
                _ = cancel.cancelled() => return Err(SinkError::Cancelled),
            }
        }
    }

    /// The action line and document line of one record.
    fn bulk_lines(&self, tp: &TopicPartition, r: &StoredRecord) -> Vec<u8> {
        let action =
            json!({ "index": { "_index": self.index_name(r), "_id": document_id(tp, r.offset) } });
        let mut out = action.to_string().into_bytes();
        out.push(b'\n');
        serde_json::to_writer(&mut out, &document(tp, r))
            .expect("serialising JSON to memory cannot fail");
        out.push(b'\n');
        out
    }

    /// One `_bulk` call: per-item results, or the error of the whole request.
    async fn bulk(&self, body: Vec<u8>) -> Result<Bulk, SinkError> {
        let (status, text) = self.request(Method::Post, "/_bulk", Some(body)).await?;
        if status == 413 {
            return Ok(Bulk::TooLarge);
        }
        if !request_ok(status) {
            // The whole request failed; even a 4xx here says nothing about single documents.
            return Err(SinkError::Transient {
                store: STORE,
                message: format!("_bulk: HTTP {status}: {}", truncate(&text, 300)),
            });
        }
        let v: Value = serde_json::from_str(&text).map_err(|e| SinkError::Transient {
            store: STORE,
            message: format!("_bulk: unreadable response: {e}"),
        })?;
        let items = v["items"].as_array().map(Vec::as_slice).unwrap_or_default();
        Ok(Bulk::Items(
            items
                .iter()
                .map(|item| {
                    let result = item
                        .as_object()
                        .and_then(|o| o.values().next())
                        .unwrap_or(&Value::Null);
                    let e = &result["error"];
                    let error_type = e["type"].as_str().map(str::to_owned);
                    let reason = match (e["type"].as_str(), e["reason"].as_str()) {
                        (Some(t), Some(r)) => format!("{t}: {r}"),
                        _ => e.to_string(),
                    };
                    Item {
                        status: result["status"].as_u64().unwrap_or(500) as u16,
                        error_type,
                        reason: truncate(&reason, 2000),
                    }
                })
                .collect(),
        ))
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, String), SinkError> {
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
        let text = response.text().await.map_err(|e| SinkError::Transient {
            store: STORE,
            message: scrub_urls(&e.to_string()),
        })?;
        Ok((status, text))
    }
}

/// The answer to one `_bulk` request.
enum Bulk {
    Items(Vec<Item>),
    /// 413: the body exceeds the store's `http.max_content_length`.
    TooLarge,
}

/// One bulk item's result.
struct Item {
    status: u16,
    error_type: Option<String>,
    reason: String,
}

/// The document for a record. PostgreSQL holds the same fields. Borrowed, so serialising a
/// batch copies no field maps.
#[derive(serde::Serialize)]
struct Document<'a> {
    #[serde(rename = "@timestamp")]
    timestamp: String,
    level: &'a Option<String>,
    service: &'a Option<String>,
    message: &'a Option<String>,
    fields: &'a serde_json::Map<String, Value>,
    kafka: KafkaMeta<'a>,
}

#[derive(serde::Serialize)]
struct KafkaMeta<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
}

fn document<'a>(tp: &'a TopicPartition, r: &'a StoredRecord) -> Document<'a> {
    Document {
        timestamp: r
            .entry
            .timestamp
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        level: &r.entry.level,
        service: &r.entry.service,
        message: &r.entry.message,
        fields: &r.entry.fields,
        kafka: KafkaMeta {
            topic: &tp.topic,
            partition: tp.partition,
            offset: r.offset,
        },
    }
}

/// Splits items into bulk bodies no larger than `max_bytes` (an item above it goes alone; the
/// configuration guarantees accepted records fit).
fn chunks(pending: &[usize], lines: &[Vec<u8>], max_bytes: usize) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut size = 0;
    for &i in pending {
        let len = lines[i].len();
        if !current.is_empty() && size + len > max_bytes {
            out.push(std::mem::take(&mut current));
            size = 0;
        }
        current.push(i);
        size += len;
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_respect_the_byte_bound() {
        let lines: Vec<Vec<u8>> = [40, 40, 40, 100, 10, 10]
            .iter()
            .map(|&n| vec![b'x'; n])
            .collect();
        let pending: Vec<usize> = (0..lines.len()).collect();
        let c = chunks(&pending, &lines, 100);
        assert_eq!(c, vec![vec![0, 1], vec![2], vec![3], vec![4, 5]]);
        for chunk in &c {
            let size: usize = chunk.iter().map(|&i| lines[i].len()).sum();
            assert!(size <= 100);
        }
    }
}
