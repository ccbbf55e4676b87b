//! A worker: takes batches from its queue and makes each one durable in both stores.
//!
//! Per batch: decode (bad records become dead letters), index into Elasticsearch (idempotent
//! ids; refused documents become dead letters), then one PostgreSQL transaction with rows, dead
//! letters and the partition's next offset. Only then is the batch acknowledged to the consumer.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::Receiver;
use tracing::Instrument;

use crate::decode::decode;
use crate::metrics::Metrics;
use crate::model::{Ack, Batch, DeadLetter, RejectStage, StoredRecord};
use crate::redact::Redactor;
use crate::shutdown::Shutdown;
use crate::sink::SinkError;
use crate::sink::elastic::ElasticSink;
use crate::sink::postgres::{BatchWrite, PgSink};
use crate::sink::retry::{Backoff, retry};

/// What every worker shares.
pub struct WorkerContext {
    pub group_id: String,
    pub pg: PgSink,
    pub es: ElasticSink,
    pub redactor: Redactor,
    pub max_record_bytes: usize,
    pub backoff: Backoff,
    pub metrics: Arc<Metrics>,
    pub shutdown: Shutdown,
}

/// One worker task.
pub struct Worker {
    pub id: usize,
    /// This worker's bounded queue; the consumer holds the sender and closing it ends the loop.
    pub queue: Receiver<Batch>,
    /// Acks to the consumer thread. Dropped when the worker exits, which is how the consumer
    /// learns that every worker is done.
    pub acks: std::sync::mpsc::Sender<Ack>,
    pub ctx: Arc<WorkerContext>,
}

enum Outcome {
    Durable,
    GivenUp(&'static str),
}

impl Worker {
    pub async fn run(mut self) {
        let span = tracing::info_span!("worker", id = self.id);
        async move {
            let shutdown = self.ctx.shutdown.clone();
            // Slowest recent batch, to judge whether a queued batch can still finish in time.
            let mut estimate = Duration::ZERO;
            loop {
                let batch = tokio::select! {
                    b = self.queue.recv() => match b { Some(b) => b, None => break },
                    _ = shutdown.abort.cancelled() => break,
                };
                let (first, next) = (batch.first_offset(), batch.next_offset);
                let started = Instant::now();
                let outcome = if batch.revoked.is_cancelled() {
                    Outcome::GivenUp("partition revoked")
                } else if shutdown.abort_at().is_some_and(|at| started + estimate > at) {
                    Outcome::GivenUp("cannot finish before the shutdown deadline")
                } else {
                    let span = tracing::info_span!("batch", partition = %batch.tp, first, next, records = batch.records.len());
                    self.process(&batch).instrument(span).await
                };
                let durable = matches!(outcome, Outcome::Durable);
                match outcome {
                    Outcome::Durable => {
                        let took = started.elapsed();
                        estimate = took.max(estimate.mul_f64(0.9));
                        self.ctx.metrics.batch_latency.observe(took);
                    }
                    Outcome::GivenUp(why) => tracing::info!(partition = %batch.tp, first, next, why, "batch given up, offsets not committed"),
                }
                // The consumer may be gone already during shutdown; nothing to do then.
                let _ = self.acks.send(Ack { tp: batch.tp.clone(), first_offset: first, next_offset: next, durable });
            }
            shutdown.phase(&format!("worker {} drained", self.id));
        }
        .instrument(span)
        .await
    }

    async fn process(&self, batch: &Batch) -> Outcome {
        // A revoked partition or an abort drops the write mid-flight: dropping the future rolls
        // the PostgreSQL transaction back, so nothing is half-committed.
        tokio::select! {
            result = self.write(batch) => match result {
                Ok(()) => Outcome::Durable,
                Err(SinkError::Cancelled) => Outcome::GivenUp("partition revoked"),
                Err(e) => {
                    tracing::error!(error = %e, "batch failed permanently; offsets not committed");
                    Outcome::GivenUp("permanent store error")
                }
            },
            _ = batch.revoked.cancelled() => Outcome::GivenUp("partition revoked"),
            _ = self.ctx.shutdown.abort.cancelled() => Outcome::GivenUp("shutdown deadline or second signal"),
        }
    }

    async fn write(&self, batch: &Batch) -> Result<(), SinkError> {
        let ctx = &*self.ctx;
        let cancel = &batch.revoked;
        let mut records = Vec::with_capacity(batch.records.len());
        let mut dead = Vec::new();
        for raw in &batch.records {
            match decode(raw, ctx.max_record_bytes, &ctx.redactor) {
                Ok(entry) => records.push(StoredRecord {
                    offset: raw.offset,
                    key: raw.key.clone(),
                    kafka_timestamp_ms: raw.kafka_timestamp_ms,
                    entry,
                }),
                Err(reason) => dead.push(DeadLetter::new(raw, RejectStage::Decode, reason)),
            }
        }

        let t = Instant::now();
        let rejected = ctx
            .es
            .index(&batch.tp, &records, cancel, || {
                ctx.metrics.retries_es.fetch_add(1, Relaxed);
            })
            .await?;
        ctx.metrics.es_latency.observe(t.elapsed());
        crate::failpoint::hit("after_es_bulk").await;
        if !rejected.is_empty() {
            let by_offset: std::collections::HashMap<i64, &str> = rejected
                .iter()
                .map(|r| (records[r.index].offset, r.reason.as_str()))
                .collect();
            for raw in &batch.records {
                if let Some(reason) = by_offset.get(&raw.offset) {
                    dead.push(DeadLetter::new(raw, RejectStage::Index, *reason));
                }
            }
            records.retain(|r| !by_offset.contains_key(&r.offset));
        }

        let t = Instant::now();
        let write = BatchWrite {
            group_id: &ctx.group_id,
            tp: &batch.tp,
            records: &records,
            dead_letters: &dead,
            next_offset: batch.next_offset,
        };
        retry(
            "postgresql batch",
            ctx.backoff,
            cancel,
            || {
                ctx.metrics.retries_pg.fetch_add(1, Relaxed);
            },
            || ctx.pg.write_batch(&write),
        )
        .await?;
        ctx.metrics.pg_latency.observe(t.elapsed());
        crate::failpoint::hit("after_pg_commit").await;
        ctx.metrics.stored.fetch_add(records.len() as u64, Relaxed);
        ctx.metrics
            .dead_lettered
            .fetch_add(dead.len() as u64, Relaxed);
        ctx.metrics.batches.fetch_add(1, Relaxed);
        if !dead.is_empty() {
            tracing::debug!(dead_letters = dead.len(), "batch had dead letters");
        }
        Ok(())
    }
}
