//! The two stores as a worker writes to them: two small traits, so a worker's steps run
//! against stores in memory in a unit test (`write/tests.rs`). The daemon's are `PgSink` and
//! `ElasticSink`.

use std::future::Future;
use std::pin::Pin;

use tokio_util::sync::CancellationToken;

use crate::model::{StoredRecord, TopicPartition};
use crate::sink::SinkError;
use crate::sink::elastic::{ElasticSink, Indexed};
use crate::sink::postgres::{BatchWrite, PgSink, Written};

/// A store call's future.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, SinkError>> + Send + 'a>>;

/// What `on_retry` of a store call is told: why the store is retried.
pub type OnRetry<'a> = &'a (dyn Fn(&str) + Sync);

/// The search store.
pub trait SearchStore: Send + Sync + 'static {
    /// Indexes `records` under deterministic ids, retrying what is not a record's fault until
    /// it is taken or `cancel` fires (see `ElasticSink::index`).
    fn index<'a>(
        &'a self,
        tp: &'a TopicPartition,
        records: &'a [StoredRecord],
        cancel: &'a CancellationToken,
        on_retry: OnRetry<'a>,
    ) -> StoreFuture<'a, Indexed>;
    /// Deletes the documents of `records` (see `ElasticSink::delete`).
    fn delete<'a>(
        &'a self,
        tp: &'a TopicPartition,
        records: &'a [&'a StoredRecord],
        cancel: &'a CancellationToken,
        on_retry: OnRetry<'a>,
    ) -> StoreFuture<'a, ()>;
    /// The index a record's document goes to.
    fn index_name(&self, record: &StoredRecord) -> String;
    /// The offsets of `tp` from `from` on that have a document already, where a replay could
    /// not find it by writing (see `ElasticSink::indexed_from`).
    fn indexed_from<'a>(
        &'a self,
        tp: &'a TopicPartition,
        from: i64,
        cancel: &'a CancellationToken,
        on_retry: OnRetry<'a>,
    ) -> StoreFuture<'a, Vec<i64>>;
}

/// PostgreSQL.
pub trait RowStore: Send + Sync + 'static {
    /// One batch in one transaction (see `PgSink::write_batch`).
    fn write_batch<'a>(&'a self, batch: &'a BatchWrite<'a>) -> StoreFuture<'a, Written>;
}

impl SearchStore for ElasticSink {
    fn index<'a>(
        &'a self,
        tp: &'a TopicPartition,
        records: &'a [StoredRecord],
        cancel: &'a CancellationToken,
        on_retry: OnRetry<'a>,
    ) -> StoreFuture<'a, Indexed> {
        Box::pin(ElasticSink::index(self, tp, records, cancel, on_retry))
    }

    fn delete<'a>(
        &'a self,
        tp: &'a TopicPartition,
        records: &'a [&'a StoredRecord],
        cancel: &'a CancellationToken,
        on_retry: OnRetry<'a>,
    ) -> StoreFuture<'a, ()> {
        Box::pin(ElasticSink::delete(self, tp, records, cancel, on_retry))
    }

    fn index_name(&self, record: &StoredRecord) -> String {
        ElasticSink::index_name(self, record)
    }

    fn indexed_from<'a>(
        &'a self,
        tp: &'a TopicPartition,
        from: i64,
        cancel: &'a CancellationToken,
        on_retry: OnRetry<'a>,
    ) -> StoreFuture<'a, Vec<i64>> {
        Box::pin(ElasticSink::indexed_from(self, tp, from, cancel, on_retry))
    }
}

impl RowStore for PgSink {
    fn write_batch<'a>(&'a self, batch: &'a BatchWrite<'a>) -> StoreFuture<'a, Written> {
        Box::pin(PgSink::write_batch(self, batch))
    }
}
