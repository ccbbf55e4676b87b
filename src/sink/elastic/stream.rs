//! Data-stream mode's one difference after indexing: a data stream refuses `delete` actions by
//! id, so documents are deleted in their backing indices, found by a search on their ids.

use std::collections::BTreeMap;

use elasticsearch::http::Method;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::classify::request_ok;
use crate::model::{StoredRecord, TopicPartition, document_id};
use crate::sink::SinkError;
use crate::sink::retry::Attempts;

use super::{ElasticSink, truncate};

impl ElasticSink {
    /// [`ElasticSink::delete`] for data streams, per stream. A missing
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
            let mut attempts = Attempts::new("deleting documents", self.settings.backoff, cancel);
            (attempts.until_done(&mut on_retry, || self.delete_by_ids(&stream, &ids))).await?;
        }
        Ok(())
    }

    /// One attempt: `None` when done, else why not. The documents' backing indices come from
    /// a search on their ids (after a refresh, so just-written ones are found); the deletes go
    /// there by id. `_delete_by_query` would be shorter, but Elasticsearch's minimal
    /// distribution lacks it (it lives in the `reindex` module).
    async fn delete_by_ids(
        &self,
        stream: &str,
        ids: &[String],
    ) -> Result<Option<String>, SinkError> {
        let (status, text) = self
            .request(Method::Post, &format!("/{stream}/_refresh"), None)
            .await?;
        if status == 404 {
            return Ok(None); // no such stream: nothing to delete
        }
        if !request_ok(status) {
            return Ok(Some(format!(
                "refresh {stream}: HTTP {status}: {}",
                truncate(&text, 300)
            )));
        }
        let query =
            json!({ "size": ids.len(), "_source": false, "query": { "ids": { "values": ids } } });
        let (status, text) = self
            .request(
                Method::Post,
                &format!("/{stream}/_search"),
                Some(query.to_string().into()),
            )
            .await?;
        if !request_ok(status) {
            return Ok(Some(format!(
                "search {stream}: HTTP {status}: {}",
                truncate(&text, 300)
            )));
        }
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let Some(hits) = v["hits"]["hits"].as_array() else {
            return Ok(Some(format!(
                "search {stream}: no hits in {}",
                truncate(&text, 300)
            )));
        };
        if hits.is_empty() {
            return Ok(None);
        }
        let mut body = Vec::new();
        for h in hits {
            let action = json!({ "delete": { "_index": h["_index"], "_id": h["_id"] } });
            serde_json::to_writer(&mut body, &action)
                .expect("serialising JSON to memory cannot fail");
            body.push(b'\n');
        }
        let answer = self.bulk(body.into()).await?;
        Ok(answer.delete_failure(hits.len(), &format!("delete in {stream}")))
    }
}
