//! The `_bulk` service: per-item results classified (`classify::classify_item`), failed items
//! retried with backoff, a 413 split, refused documents returned for the dead-letter table.

use bytes::Bytes;
use elasticsearch::http::Method;
use tokio_util::sync::CancellationToken;

use super::classify::{ItemAction, classify_item, field_limit};
use crate::model::{StoredRecord, TopicPartition};
use crate::sink::SinkError;
use crate::sink::retry::Attempts;

use super::ElasticSink;
use super::response::{BULK_PATH, Bulk, parse_bulk};

/// A document Elasticsearch refused for good.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// Position of the record in the slice given to [`ElasticSink::index`].
    pub index: usize,
    pub reason: String,
}

/// The documents of one [`ElasticSink::index`] call the store did not take.
#[derive(Debug, Default, PartialEq)]
pub struct Indexed {
    /// Refused for their own content: dead letters.
    pub rejected: Vec<Rejection>,
    /// Refused by their destination index while the store took other documents: parked.
    pub parked: Vec<Rejection>,
}

/// What one bulk pass made of one document.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemFate {
    Stored,
    /// Not taken now, for a reason that is not the document's: try again.
    Again(String),
    /// Refused for its own content.
    Rejected(String),
    /// Refused by its destination index (`ItemAction::Park`).
    Destination(String),
}

impl ElasticSink {
    /// Indexes the records with deterministic ids. A refusal of a document itself (see
    /// `classify::classify_item`) comes back as a rejection, for the dead-letter table; a refusal
    /// by its destination index comes back as parked once the store is seen taking other
    /// documents (in the same request, or in any request sent after the refused one), so
    /// one blocked index never holds the rest. Every other failure, of an item or of the whole
    /// request, is retried (only those items) until the store accepts or `cancel` fires,
    /// `on_retry` reporting the reason each time. A request refused as too large (413) is split.
    pub async fn index(
        &self,
        tp: &TopicPartition,
        records: &[StoredRecord],
        cancel: &CancellationToken,
        mut on_retry: impl FnMut(&str),
    ) -> Result<Indexed, SinkError> {
        let lines = self.encode(tp, records, None);
        let mut pending: Vec<usize> = (0..records.len()).collect();
        let mut out = Indexed::default();
        // When each document was first refused by its destination (the clock's reading).
        let mut refused_at: std::collections::HashMap<usize, u64> = Default::default();
        let mut max_bytes = self.settings.bulk_max_bytes;
        let mut attempts = Attempts::new("bulk items", self.settings.backoff, cancel);
        while !pending.is_empty() {
            let fates = self
                .pass(&lines, records, &pending, &mut max_bytes, cancel)
                .await?;
            let mut again = Vec::new();
            let mut why = String::new();
            for (i, fate, sent) in fates {
                match fate {
                    ItemFate::Stored => {}
                    ItemFate::Rejected(reason) => out.rejected.push(Rejection { index: i, reason }),
                    ItemFate::Destination(reason) => {
                        // The refusal is dated by its request: documents taken from that same
                        // request, or from any sent later, show the store itself accepts.
                        let since = *refused_at.entry(i).or_insert(sent);
                        match self.accepts.taken_since(since) {
                            true => out.parked.push(Rejection { index: i, reason }),
                            false => {
                                why = reason;
                                again.push(i);
                            }
                        }
                    }
                    ItemFate::Again(reason) => {
                        why = reason;
                        again.push(i);
                    }
                }
            }
            pending = again;
            if !pending.is_empty() {
                on_retry(&why);
                let why = format!("{} of them: {why}", pending.len());
                attempts.failed(&why).await?;
            }
        }
        out.rejected.sort_by_key(|r| r.index);
        out.parked.sort_by_key(|r| r.index);
        Ok(out)
    }

    /// One bulk pass over records going to the given destinations (parked records released,
    /// perhaps re-routed): what became of each, in order, without retrying anything.
    pub async fn index_once(
        &self,
        tp: &TopicPartition,
        records: &[StoredRecord],
        destinations: &[String],
        cancel: &CancellationToken,
    ) -> Result<Vec<ItemFate>, SinkError> {
        let lines = self.encode(tp, records, Some(destinations));
        let mut fates: Vec<Option<ItemFate>> = vec![None; records.len()];
        let mut todo: Vec<usize> = (0..records.len()).collect();
        let mut max_bytes = self.settings.bulk_max_bytes;
        // Only a 413 sends documents again here: the request was split, each half goes once
        // more (the size strictly falls, down to one document, which is then rejected).
        while !todo.is_empty() {
            let before = max_bytes;
            let results = self
                .pass(&lines, records, &todo, &mut max_bytes, cancel)
                .await?;
            let split = max_bytes < before;
            todo.clear();
            for (i, fate, _) in results {
                match fate {
                    ItemFate::Again(_) if split => todo.push(i),
                    fate => fates[i] = Some(fate),
                }
            }
        }
        Ok(fates
            .into_iter()
            .map(|f| f.expect("every document has a fate"))
            .collect())
    }

    /// Sends the pending documents once, in requests of at most `max_bytes` (halved on a 413):
    /// each document's fate, with the clock's reading when its request was sent.
    async fn pass(
        &self,
        lines: &super::encode::Encoded,
        records: &[StoredRecord],
        pending: &[usize],
        max_bytes: &mut usize,
        cancel: &CancellationToken,
    ) -> Result<Vec<(usize, ItemFate, u64)>, SinkError> {
        let mut fates = Vec::with_capacity(pending.len());
        for chunk in chunks(pending, |i| lines.len_of(i), *max_bytes) {
            let body = lines.body(&chunk);
            let size = body.len();
            let sent = self.accepts.now();
            let outcome = tokio::select! {
                r = self.bulk(body) => r,
                _ = cancel.cancelled() => return Err(SinkError::Cancelled),
            };
            match outcome {
                Ok(Bulk::Items(items)) if items.len() == chunk.len() => {
                    let mut took = false;
                    for (&i, item) in chunk.iter().zip(items) {
                        let action =
                            classify_item(item.status, item.error_type.as_deref(), &item.reason);
                        let fate = match action {
                            ItemAction::Done => {
                                took = true;
                                ItemFate::Stored
                            }
                            ItemAction::Retry => {
                                ItemFate::Again(format!("HTTP {} {}", item.status, item.reason))
                            }
                            ItemAction::Reject => ItemFate::Rejected(item.reason),
                            // A document with more fields than the limit alone fits no index.
                            ItemAction::Park
                                if field_limit(&item.reason).is_some_and(|n| {
                                    super::encode::mapped_fields(&records[i]) >= n
                                }) =>
                            {
                                ItemFate::Rejected(item.reason)
                            }
                            ItemAction::Park => ItemFate::Destination(item.reason),
                        };
                        fates.push((i, fate, sent));
                    }
                    if took {
                        self.accepts.took(sent);
                    }
                }
                Ok(Bulk::Items(items)) => {
                    let why = format!(
                        "bulk response has {} items for {} sent",
                        items.len(),
                        chunk.len()
                    );
                    fates.extend(
                        chunk
                            .iter()
                            .map(|&i| (i, ItemFate::Again(why.clone()), sent)),
                    );
                }
                Ok(Bulk::TooLarge) if chunk.len() == 1 => {
                    // One document alone is over the store's request limit: no split can
                    // help, and it is refused the same way every time. Its own fault.
                    fates.push((chunk[0], ItemFate::Rejected(too_large(size)), sent));
                }
                Ok(Bulk::TooLarge) => {
                    *max_bytes = (size / 2).max(1);
                    let why = format!("request of {size} bytes too large (413); splitting");
                    fates.extend(
                        chunk
                            .iter()
                            .map(|&i| (i, ItemFate::Again(why.clone()), sent)),
                    );
                }
                Err(e) => {
                    let why = e.to_string();
                    fates.extend(
                        chunk
                            .iter()
                            .map(|&i| (i, ItemFate::Again(why.clone()), sent)),
                    );
                }
            }
        }
        Ok(fates)
    }

    /// One `_bulk` call: per-item results, or the error of the whole request.
    /// `Bytes`, not `Vec<u8>`: the client sends it as it is, where it copies a `Vec` into a
    /// buffer of its own, and a retry's clone costs nothing (a giant record's body is not held
    /// twice or thrice; see the memory budget's copies in `consumer::budget`).
    pub(super) async fn bulk(&self, body: Bytes) -> Result<Bulk, SinkError> {
        let (status, text) = self.request(Method::Post, BULK_PATH, Some(body)).await?;
        parse_bulk(status, &text)
    }
}

/// Why a document alone was refused as too large.
fn too_large(request_bytes: usize) -> String {
    format!(
        "request_too_large: the document's bulk request of {request_bytes} bytes exceeds the \
         search store's http.max_content_length (HTTP 413)"
    )
}

/// Splits items into bulk bodies no larger than `max_bytes` (an item above it goes alone; the
/// configuration guarantees accepted records fit).
fn chunks(pending: &[usize], len: impl Fn(usize) -> usize, max_bytes: usize) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut size = 0;
    for &i in pending {
        let len = len(i);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Fields, LogEntry};

    /// A focused stand-in for a store with a small `http.max_content_length`: a body over
    /// `limit` bytes gets 413, any other every item stored. Returns its URL.
    async fn store_with_limit(limit: usize) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                let (head_end, length) = loop {
                    let n = conn.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break (0, 0);
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..i]).to_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        break (i + 4, length);
                    }
                };
                while buf.len() < head_end + length {
                    let n = conn.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = &buf[head_end.min(buf.len())..];
                let (status, text) = if length > limit {
                    ("413 Request Entity Too Large", String::new())
                } else {
                    let items = body
                        .split(|&b| b == b'\n')
                        .filter(|l| !l.is_empty())
                        .count()
                        / 2;
                    let item = r#"{"index":{"status":201}}"#;
                    (
                        "200 OK",
                        format!(r#"{{"items":[{}]}}"#, vec![item; items].join(",")),
                    )
                };
                let answer = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                    text.len()
                );
                let _ = conn.write_all(answer.as_bytes()).await;
            }
        });
        url
    }

    #[tokio::test]
    async fn a_document_alone_over_the_request_limit_is_rejected_not_resent_forever() {
        let url = store_with_limit(2_000).await;
        let sink = crate::sink::elastic::test_sink(&url, false);
        let record = |offset, message: String| StoredRecord {
            offset,
            key: None,
            kafka_timestamp_ms: None,
            entry: LogEntry {
                timestamp: "2026-11-30T10:00:00Z".parse().unwrap(),
                level: None,
                service: None,
                message: Some(message),
                fields: Fields::from_map(&serde_json::Map::new()),
            },
            route: 0,
            typed: Vec::new(),
        };
        let records = vec![
            record(0, "small".into()),
            record(1, "x".repeat(5_000)),
            record(2, "small too".into()),
        ];
        let tp = TopicPartition::new("logs", 0);
        let cancel = CancellationToken::new();
        let index = sink.index(&tp, &records, &cancel, |_| {});
        let rejected = tokio::time::timeout(std::time::Duration::from_secs(10), index)
            .await
            .expect("the oversized document is resent forever")
            .unwrap()
            .rejected;
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].index, 1);
        assert!(
            rejected[0].reason.contains("http.max_content_length"),
            "{}",
            rejected[0].reason
        );
    }

    #[test]
    fn chunks_respect_the_byte_bound() {
        let lines: Vec<Vec<u8>> = [40, 40, 40, 100, 10, 10]
            .iter()
            .map(|&n| vec![b'x'; n])
            .collect();
        let pending: Vec<usize> = (0..lines.len()).collect();
        let c = chunks(&pending, |i| lines[i].len(), 100);
        assert_eq!(c, vec![vec![0, 1], vec![2], vec![3], vec![4, 5]]);
        for chunk in &c {
            let size: usize = chunk.iter().map(|&i| lines[i].len()).sum();
            assert!(size <= 100);
        }
    }
}
