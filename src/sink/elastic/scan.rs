//! What `audit` reads of the search store: the documents of a range of one partition's
//! offsets wherever they are among the daemon's indices, and the removal of given documents.

use bytes::Bytes;
use elasticsearch::http::Method;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::classify::request_ok;
use super::{ElasticSink, STORE, truncate};
use crate::model::{StoredRecord, TopicPartition};
use crate::sink::SinkError;
use crate::sink::retry::Attempts;

/// Documents one search returns at most (the stores' default `max_result_window`).
const PAGE: usize = 10_000;

/// A document found: where, and what it says.
#[derive(Clone, Debug)]
pub struct Found {
    pub index: String,
    pub id: String,
    pub offset: i64,
    pub source: Value,
}

impl ElasticSink {
    /// Every index the daemon may write to, as a list of wildcards: each index pattern of the
    /// mapping with its date items (`%Y`, ...) made `*`. A data stream's name matches its
    /// backing indices.
    pub fn index_wildcard(&self) -> String {
        let patterns = self.settings.mapping.index_patterns();
        patterns
            .into_iter()
            .map(crate::mapping::index_wildcard)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The document of a record as the daemon writes it, as JSON.
    pub fn document_of(tp: &TopicPartition, r: &StoredRecord) -> Value {
        serde_json::to_value(super::encode::document(tp, r)).expect("a document serialises")
    }

    /// Whether documents may be in any backing index of their data stream.
    pub fn data_stream(&self) -> bool {
        self.settings.data_stream
    }

    /// The documents of `tp` at offsets `[from, to)` in every index of [`Self::index_wildcard`],
    /// in offset order. More than [`PAGE`] is refused rather than read in part.
    pub async fn documents_in(
        &self,
        tp: &TopicPartition,
        from: i64,
        to: i64,
    ) -> Result<Vec<Found>, SinkError> {
        let query = json!({
            "size": PAGE,
            "track_total_hits": false,
            "sort": [{ "kafka.offset": { "order": "asc", "unmapped_type": "long" } }],
            "query": { "bool": { "filter": [
                { "term": { "kafka.topic": &*tp.topic } },
                { "term": { "kafka.partition": tp.partition } },
                { "range": { "kafka.offset": { "gte": from, "lt": to } } }
            ] } }
        });
        let hits = self.search(&self.index_wildcard(), &query).await?;
        match hits {
            Some(hits) if hits.len() < PAGE => Ok(hits),
            Some(_) => Err(SinkError::Permanent {
                store: STORE,
                message: format!(
                    "{tp} offsets {from}..{to}: {PAGE} documents or more; audit a smaller range"
                ),
            }),
            None => Err(SinkError::Permanent {
                store: STORE,
                message: format!("not allowed to search {}", self.index_wildcard()),
            }),
        }
    }

    /// Documents with these ids in any open index, those outside [`Self::index_wildcard`]
    /// included (a parked record rerouted elsewhere); none when the credentials may not search
    /// every index.
    pub async fn documents_anywhere(&self, ids: &[String]) -> Result<Vec<Found>, SinkError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let query = json!({
            "size": (ids.len() * 4).min(PAGE),
            "track_total_hits": false,
            "query": { "ids": { "values": ids } }
        });
        Ok(self.search("*", &query).await?.unwrap_or_default())
    }

    /// One search of `indices`: its hits, or `None` when it is forbidden (HTTP 403).
    pub(super) async fn search(
        &self,
        indices: &str,
        query: &Value,
    ) -> Result<Option<Vec<Found>>, SinkError> {
        let path = format!(
            "/{indices}/_search?ignore_unavailable=true&allow_no_indices=true&filter_path=hits.hits._index,hits.hits._id,hits.hits._source",
        );
        let (status, text) = self
            .request(Method::Post, &path, Some(query.to_string().into()))
            .await?;
        if status == 403 {
            return Ok(None);
        }
        if !request_ok(status) {
            return Err(SinkError::Transient {
                store: STORE,
                message: format!("_search: HTTP {status}: {}", truncate(&text, 300)),
            });
        }
        let answer: Value = serde_json::from_str(&text).map_err(|e| SinkError::Transient {
            store: STORE,
            message: format!("_search: unreadable answer: {e}"),
        })?;
        let hits = answer["hits"]["hits"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let found = hits.into_iter().filter_map(|mut h| {
            let offset = h["_source"]["kafka"]["offset"].as_i64()?;
            Some(Found {
                index: h["_index"].as_str()?.to_string(),
                id: h["_id"].as_str()?.to_string(),
                offset,
                source: h["_source"].take(),
            })
        });
        Ok(Some(found.collect()))
    }

    /// Makes what was written visible to searches: an audit reads what the stores hold now.
    pub async fn refresh(&self) -> Result<(), SinkError> {
        let path = format!(
            "/{}/_refresh?ignore_unavailable=true&allow_no_indices=true",
            self.index_wildcard()
        );
        let (status, text) = self.request(Method::Post, &path, None).await?;
        match request_ok(status) {
            true => Ok(()),
            false => Err(SinkError::Transient {
                store: STORE,
                message: format!("_refresh: HTTP {status}: {}", truncate(&text, 300)),
            }),
        }
    }

    /// Deletes the given documents (index, id); one already gone counts as deleted.
    pub async fn delete_found(
        &self,
        docs: &[(String, String)],
        cancel: &CancellationToken,
        on_retry: impl FnMut(&str),
    ) -> Result<(), SinkError> {
        if docs.is_empty() {
            return Ok(());
        }
        let mut body = Vec::new();
        for (index, id) in docs {
            let action = json!({ "delete": { "_index": index, "_id": id } });
            serde_json::to_writer(&mut body, &action).expect("JSON to memory");
            body.push(b'\n');
        }
        let body = Bytes::from(body);
        let mut attempts = Attempts::new("deleting documents", self.settings.backoff, cancel);
        let attempt = || async {
            let answer = self.bulk(body.clone()).await?;
            Ok(answer.delete_failure(docs.len(), "delete"))
        };
        attempts.until_done(on_retry, attempt).await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_wildcard_covers_every_dated_index() {
        let sink = super::super::test_sink("http://127.0.0.1:9", false);
        assert_eq!(sink.index_wildcard(), "logs-*.*.*");
    }
}
