//! Data-stream mode's replays: which of a partition's offsets, from where it starts again, have
//! a document already. A data stream takes only `create`, which lands in the stream's current
//! write index: after a rollover, a record indexed by an earlier owner (killed before its
//! PostgreSQL commit) would be created again in the new write index, since the 409 that
//! says "stored" comes only from the index holding it. So the worker asks first, and sends
//! only the records that have no document yet.

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::ElasticSink;
use crate::model::TopicPartition;
use crate::sink::SinkError;
use crate::sink::retry::Attempts;

/// Offsets one search reads at most (below the stores' default `max_result_window`).
const PAGE: usize = 5_000;

impl ElasticSink {
    /// The offsets of `tp` from `from` on that have a document in any index the daemon writes
    /// to, in order. Outside data-stream mode none are looked for: an `index` action
    /// overwrites the document in place, the index name coming from the record itself.
    /// Retried until answered or `cancel` fires.
    pub async fn indexed_from(
        &self,
        tp: &TopicPartition,
        from: i64,
        cancel: &CancellationToken,
        mut on_retry: impl FnMut(&str),
    ) -> Result<Vec<i64>, SinkError> {
        if !self.settings.data_stream {
            return Ok(Vec::new());
        }
        let mut attempts = Attempts::new(
            "looking for replayed documents",
            self.settings.backoff,
            cancel,
        );
        loop {
            let why = match attempts.run(self.indexed_from_once(tp, from)).await? {
                Ok(offsets) => return Ok(offsets),
                Err(e) => e.to_string(),
            };
            on_retry(&why);
            attempts.failed(&why).await?;
        }
    }

    /// One attempt: a refresh (a document an earlier owner just wrote is otherwise not yet
    /// searchable), then pages of offsets in order.
    async fn indexed_from_once(
        &self,
        tp: &TopicPartition,
        from: i64,
    ) -> Result<Vec<i64>, SinkError> {
        self.refresh().await?;
        let mut offsets = Vec::new();
        let mut next = from;
        loop {
            let query = json!({
                "size": PAGE,
                "track_total_hits": false,
                "_source": ["kafka.offset"],
                "sort": [{ "kafka.offset": { "order": "asc", "unmapped_type": "long" } }],
                "query": { "bool": { "filter": [
                    { "term": { "kafka.topic": &*tp.topic } },
                    { "term": { "kafka.partition": tp.partition } },
                    { "range": { "kafka.offset": { "gte": next } } }
                ] } }
            });
            let Some(hits) = self.search(&self.index_wildcard(), &query).await? else {
                // Retried like any refusal: the partition is held until the search is allowed.
                return Err(SinkError::Transient {
                    store: super::STORE,
                    message: format!(
                        "data-stream mode needs to search {} for documents of a replay; HTTP 403",
                        self.index_wildcard()
                    ),
                });
            };
            let full = hits.len() == PAGE;
            offsets.extend(hits.iter().map(|h| h.offset));
            match (full, offsets.last()) {
                (true, Some(last)) => next = last + 1,
                _ => break,
            }
        }
        offsets.dedup();
        Ok(offsets)
    }
}
