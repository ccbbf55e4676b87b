//! A worker: takes batches from its queue and makes each one durable in both stores.
//!
//! Per batch: decode (bad records become dead letters), index into Elasticsearch (idempotent
//! ids; documents refused for their own content become dead letters), then one PostgreSQL
//! transaction with rows, dead letters and the partition's next offset. Only then is the batch
//! acknowledged to the consumer.
//!
//! Any refusal that is not a record's own fault (privileges, a missing table, a constraint on
//! the bookkeeping tables, a read-only index, a timeout) holds the batch, and with it the
//! partition: retried with backoff until the store accepts, or until the partition is revoked
//! or shutdown aborts. A batch is never given up for a store error, and once a batch of a
//! partition is given up, the later batches of that assignment are given up too, so nothing
//! after a hole becomes durable.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::Receiver;
use tracing::Instrument;

use crate::dead_letter::DeadLetterPolicy;
use crate::decode::decode;
use crate::metrics::Metrics;
use crate::model::{Ack, Batch, Position, RawRecord, RejectStage, StoredRecord, TopicPartition};
use crate::redact::Redactor;
use crate::shutdown::Shutdown;
use crate::sink::SinkError;
use crate::sink::elastic::ElasticSink;
use crate::sink::postgres::{BatchWrite, PgSink};
use crate::sink::retry::Backoff;

/// What every worker shares.
pub struct WorkerContext {
    pub group_id: String,
    pub pg: PgSink,
    pub es: ElasticSink,
    pub redactor: Redactor,
    /// How dead letters keep their bytes (redaction honoured).
    pub dead_letters: DeadLetterPolicy,
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
    /// Per partition, the end of the last batch this worker gave up: a later batch of the same
    /// run (one starting right after a batch that ended there or later) is given up too. A
    /// batch of a new assignment starts afresh.
    pub given_up: HashMap<TopicPartition, i64>,
}

enum Outcome {
    Durable,
    GivenUp(&'static str),
    /// PostgreSQL's watermark is behind the batch: given up, the partition to be read again.
    Behind(String),
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
                let skip = if batch.revoked.is_cancelled() || batch.drain.is_cancelled() {
                    Some(if shutdown.started().is_some() {
                        "shutting down: not started, the partition's next owner reads it again"
                    } else {
                        "partition revoked"
                    })
                } else if self.given_up.get(&batch.tp).is_some_and(
                    |&hole_end| matches!(batch.start, Position::After(s) if s >= hole_end),
                ) {
                    Some("an earlier batch of this partition was given up")
                } else if shutdown.abort_at().is_some_and(|at| started + estimate > at) {
                    Some("cannot finish before the shutdown deadline")
                } else {
                    None
                };
                let outcome = match skip {
                    Some(why) => Outcome::GivenUp(why),
                    None => {
                        batch.writing.fetch_add(1, Relaxed);
                        let span = tracing::info_span!("batch", partition = %batch.tp, first, next, records = batch.records.len());
                        self.process(&batch).instrument(span).await
                    }
                };
                let durable = matches!(outcome, Outcome::Durable);
                let mut reread = None;
                match outcome {
                    Outcome::Durable => {
                        let took = started.elapsed();
                        estimate = took.max(estimate.mul_f64(0.9));
                        self.ctx.metrics.batch_latency.observe(took);
                        self.given_up.remove(&batch.tp);
                    }
                    Outcome::GivenUp(why) => {
                        tracing::info!(partition = %batch.tp, first, next, why, "batch given up, offsets not committed");
                        self.given_up.insert(batch.tp.clone(), next);
                    }
                    Outcome::Behind(why) => {
                        tracing::warn!(partition = %batch.tp, first, next, why, "PostgreSQL holds less of this partition than this batch follows (the database went back in time?): batch given up, the partition is read again from the stored watermark");
                        self.given_up.insert(batch.tp.clone(), next);
                        reread = Some(why);
                    }
                }
                // The consumer may be gone already during shutdown; nothing to do then.
                let _ = self.acks.send(Ack { tp: batch.tp.clone(), first_offset: first, next_offset: next, durable, bytes: batch.bytes, reread });
                if skip.is_none() {
                    batch.writing.fetch_sub(1, Relaxed); // after the ack: see `Batch::writing`
                }
            }
            shutdown.phase(&format!("worker {} drained", self.id));
        }
        .instrument(span)
        .await
    }

    async fn process(&self, batch: &Batch) -> Outcome {
        if crate::failpoint::skips("worker_panic") {
            panic!("failpoint worker_panic");
        }
        // A revoked partition or an abort drops the write mid-flight: dropping the future rolls
        // the PostgreSQL transaction back, so nothing is half-committed.
        tokio::select! {
            result = self.write(batch) => match result {
                Ok(()) => Outcome::Durable,
                Err(SinkError::Behind { message, .. }) => Outcome::Behind(message),
                Err(_cancelled) => Outcome::GivenUp("partition revoked"),
            },
            _ = batch.revoked.cancelled() => Outcome::GivenUp("partition revoked"),
            _ = self.ctx.shutdown.abort.cancelled() => Outcome::GivenUp("shutdown deadline or second signal"),
        }
    }

    /// Makes the batch durable; returns only when it is, or with `Cancelled`.
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
                Err(reason) => dead.push(ctx.dead_letters.make(raw, RejectStage::Decode, reason)),
            }
        }

        // Whether this batch marked its partition held; only then does it clear the mark (the
        // consumer holds partitions too, for reasons of its own).
        let held = std::sync::atomic::AtomicBool::new(false);
        let hold = |why: &str| {
            held.store(true, Relaxed);
            ctx.metrics.set_stalled(&batch.tp, why);
        };
        let t = Instant::now();
        let rejected = ctx
            .es
            .index(&batch.stored, &records, cancel, |why| {
                ctx.metrics.retries_es.fetch_add(1, Relaxed);
                hold(&format!("elasticsearch: {why}"));
            })
            .await?;
        ctx.metrics.es_latency.observe(t.elapsed());
        crate::failpoint::hit("after_es_bulk").await;
        if !rejected.is_empty() {
            let mut refused = std::collections::HashSet::new();
            for r in rejected {
                let offset = records[r.index].offset;
                refused.insert(offset);
                dead.push(ctx.dead_letters.make(
                    raw_at(batch, offset),
                    RejectStage::Index,
                    r.reason,
                ));
            }
            records.retain(|r| !refused.contains(&r.offset));
        }

        let t = Instant::now();
        let make_dead = |offset: i64, reason: String| {
            ctx.dead_letters
                .make(raw_at(batch, offset), RejectStage::Store, reason)
        };
        // Offsets whose documents are removed already: the transaction commits only once every
        // `store` dead letter of the batch is among them (see `postgres::write_tx`).
        let mut removed: Vec<i64> = Vec::new();
        let mut attempt = 0;
        let written = loop {
            let write = BatchWrite {
                group_id: &ctx.group_id,
                tp: &batch.stored,
                records: &records,
                dead_letters: &dead,
                start: batch.start,
                first_offset: batch.covered_from(),
                next_offset: batch.next_offset,
                gaps: &batch.gaps,
                dead_letter: &make_dead,
                documents_removed: &removed,
            };
            match ctx.pg.write_batch(&write).await {
                Ok(written) if written.committed => break written,
                Ok(written) => {
                    // Rolled back: their documents go first, then the batch is written again.
                    let gone: Vec<&StoredRecord> = records
                        .iter()
                        .filter(|r| written.store_dead_letters.binary_search(&r.offset).is_ok())
                        .collect();
                    ctx.es
                        .delete(&batch.stored, &gone, cancel, |why| {
                            ctx.metrics.retries_es.fetch_add(1, Relaxed);
                            hold(&format!("elasticsearch: {why}"));
                        })
                        .await?;
                    crate::failpoint::hit("refused_documents_removed").await;
                    // All of them: one this run did not index (not in `records`) has no document
                    // of this run to remove.
                    removed.extend(&written.store_dead_letters);
                    removed.sort_unstable();
                    removed.dedup();
                }
                Err(SinkError::Cancelled) => return Err(SinkError::Cancelled),
                Err(e @ SinkError::Behind { .. }) => return Err(e),
                Err(e) if ctx.shutdown.started().is_some() => {
                    // No retry once shutdown began: waiting out a refusing store would only
                    // run into the deadline. The batch stays uncommitted for the next owner.
                    tracing::warn!(error = %e, "postgresql batch failed during shutdown; given up, not retried");
                    return Err(SinkError::Cancelled);
                }
                Err(e) => {
                    attempt += 1;
                    ctx.metrics.retries_pg.fetch_add(1, Relaxed);
                    hold(&e.to_string());
                    let delay = ctx.backoff.delay(attempt);
                    tracing::warn!(attempt, delay_ms = delay.as_millis() as u64, error = %e, "postgresql batch failed, retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = cancel.cancelled() => return Err(SinkError::Cancelled),
                    }
                }
            }
        };
        ctx.metrics.pg_latency.observe(t.elapsed());
        if !written.store_dead_letters.is_empty() {
            // Where the removal of their documents used to be (a kill here left them without
            // their rows): now they are gone before the commit.
            crate::failpoint::hit("after_refused_commit").await;
        }
        // A row PostgreSQL refused before the removal and took after it (its column types
        // changed in between): its document goes back, so no row is left without it either.
        let back: Vec<StoredRecord> = records
            .iter()
            .filter(|r| removed.binary_search(&r.offset).is_ok())
            .filter(|r| written.store_dead_letters.binary_search(&r.offset).is_err())
            .cloned()
            .collect();
        if !back.is_empty() {
            // It was taken before; a refusal now changes nothing the row could follow.
            let _refused = ctx
                .es
                .index(&batch.stored, &back, cancel, |why| {
                    ctx.metrics.retries_es.fetch_add(1, Relaxed);
                    hold(&format!("elasticsearch: {why}"));
                })
                .await?;
        }
        if held.load(Relaxed) {
            ctx.metrics.clear_stalled(&batch.tp);
        }
        crate::failpoint::hit("after_pg_commit").await;
        let refused = written.store_dead_letters.len();
        ctx.metrics
            .stored
            .fetch_add(records.len().saturating_sub(refused) as u64, Relaxed);
        for d in &dead {
            ctx.metrics.dead_lettered_at(d.stage, 1);
        }
        ctx.metrics
            .dead_lettered_at(RejectStage::Store, refused as u64);
        ctx.metrics.batches.fetch_add(1, Relaxed);
        if written.already_durable {
            tracing::debug!("batch was already durable (a replay)");
        }
        Ok(())
    }
}

/// The raw record at `offset` (batches are in offset order).
fn raw_at(batch: &Batch, offset: i64) -> &RawRecord {
    let i = batch
        .records
        .binary_search_by_key(&offset, |r| r.offset)
        .expect("an offset taken from this batch");
    &batch.records[i]
}
