//! Removing the documents of records whose rows PostgreSQL refused after they were indexed,
//! so that no document exists without its row (in data-stream mode through `stream.rs`).

use tokio_util::sync::CancellationToken;

use super::ElasticSink;
use crate::model::{StoredRecord, TopicPartition, document_id};
use crate::sink::SinkError;

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
        let docs: Vec<(String, String)> = (records.iter())
            .map(|r| (self.index_name(r), document_id(tp, r.offset)))
            .collect();
        self.delete_found(&docs, cancel, on_retry).await
    }
}
