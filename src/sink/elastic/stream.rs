//! Data-stream mode's one difference after indexing: a data stream refuses `delete` actions by
//! id (they would need the backing index), so documents are deleted by query on the stream.

use std::collections::BTreeMap;

use elasticsearch::http::Method;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::model::{StoredRecord, TopicPartition, document_id};
use crate::sink::SinkError;
use crate::sink::retry::request_ok;

use super::{ElasticSink, truncate};

impl ElasticSink {
    /// [`ElasticSink::delete`] for data streams: per stream, a refresh (so just-written
    /// documents are visible to the query) and a `_delete_by_query` on their ids. A missing
    /// document counts as deleted; anything else is retried until done or `cancel` fires.
    pub(super) async fn delete_in_streams(
        &self,
        tp: &TopicPartition,
        records: &[&StoredRecord],
        cancel: &CancellationToken,
        mut on_retry: impl FnMut(&str),
    ) -> Result<(), SinkError> {
        let mut by_stream: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in records {
            by_stream
                .entry(self.index_name(r))
                .or_default()
                .push(document_id(tp, r.offset));
        }
        for (stream, ids) in by_stream {
            let mut attempt = 0;
            loop {
                let outcome = tokio::select! {
                    r = self.delete_by_ids(&stream, &ids) => r,
                    _ = cancel.cancelled() => return Err(SinkError::Cancelled),
                };
                let why = match outcome {
                    Ok(None) => break,
                    Ok(Some(why)) => why,
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
        Ok(())
    }

    /// One attempt: `None` when done, else why not.
    async fn delete_by_ids(
        &self,
        stream: &str,
        ids: &[String],
    ) -> Result<Option<String>, SinkError> {
        let (status, text) = self
            .request(Method::Post, &format!("/{stream}/_refresh"), None)
            .await?;
        if !request_ok(status) && status != 404 {
            return Ok(Some(format!(
                "refresh {stream}: HTTP {status}: {}",
                truncate(&text, 300)
            )));
        }
        let body = json!({ "query": { "ids": { "values": ids } } });
        let (status, text) = self
            .request(
                Method::Post,
                &format!("/{stream}/_delete_by_query?conflicts=proceed&refresh=true"),
                Some(body.to_string().into_bytes()),
            )
            .await?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let failures = v["failures"].as_array().map_or(0, Vec::len);
        Ok(match status {
            404 => None, // no such stream: nothing to delete
            _ if request_ok(status) && failures == 0 => None,
            _ => Some(format!(
                "delete_by_query {stream}: HTTP {status}: {}",
                truncate(&text, 300)
            )),
        })
    }
}
