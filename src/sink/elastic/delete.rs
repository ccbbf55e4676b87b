//! Removing the documents of records whose rows PostgreSQL refused after they were indexed,
//! so that no document exists without its row (in data-stream mode through `stream.rs`).

use bytes::Bytes;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::ElasticSink;
use crate::model::{StoredRecord, TopicPartition, document_id};
use crate::sink::SinkError;
use crate::sink::retry::Attempts;

impl ElasticSink {
    /// Deletes the documents of records that ended up as dead letters after they were indexed
    /// (PostgreSQL refused their rows), so no document exists without its row. A missing
    /// document counts as deleted; anything else is retried until done or `cancel` fires.
    pub async fn delete(
        &self,
        tp: &TopicPartition,
        records: &[&StoredRecord],
        cancel: &CancellationToken,
        on_retry: impl FnMut(&str),
    ) -> Result<(), SinkError> {
        if self.settings.data_stream {
            return self.delete_in_streams(tp, records, cancel, on_retry).await;
        }
        let mut body = Vec::new();
        for r in records {
            let action = json!({ "delete": { "_index": self.index_name(r), "_id": document_id(tp, r.offset) } });
            serde_json::to_writer(&mut body, &action)
                .expect("serialising JSON to memory cannot fail");
            body.push(b'\n');
        }
        let body = Bytes::from(body);
        let mut attempts = Attempts::new("deleting documents", self.settings.backoff, cancel);
        let attempt = || async {
            let answer = self.bulk(body.clone()).await?;
            Ok(answer.delete_failure(records.len(), "delete"))
        };
        attempts.until_done(on_retry, attempt).await
    }
}
