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
//!
//! A held partition does not hold the worker's other partitions: the moment its batch starts
//! waiting for a store, the write moves to a lane of its own (`lane.rs`), which takes that
//! partition's later batches in order, and the worker goes on with its queue.

mod lane;
mod order;
mod replayed;
mod stores;
#[cfg(test)]
mod stubs;
mod write;

pub use stores::{RowStore, SearchStore};

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::Notify;
use tokio::sync::mpsc::Receiver;
use tracing::Instrument;

use crate::dead_letter::DeadLetterPolicy;
use crate::metrics::Metrics;
use crate::model::{Ack, Batch, TopicPartition};
use crate::redact::Redactor;
use crate::shutdown::Shutdown;
use crate::sink::retry::Backoff;

/// What every worker shares.
pub struct WorkerContext {
    pub group_id: String,
    pub pg: Box<dyn RowStore>,
    pub es: Box<dyn SearchStore>,
    pub redactor: Redactor,
    /// How dead letters keep their bytes (redaction honoured).
    pub dead_letters: DeadLetterPolicy,
    pub max_record_bytes: usize,
    pub backoff: Backoff,
    pub metrics: Arc<Metrics>,
    pub shutdown: Shutdown,
    /// Which table and index each record goes to, and its typed columns.
    pub mapping: Arc<crate::mapping::Mapping>,
    /// Documents earlier owners left above the watermarks (data-stream mode's replays).
    pub replays: replayed::Replays,
}

impl WorkerContext {
    pub fn decoding(&self) -> crate::pipeline::Decoding<'_> {
        crate::pipeline::Decoding {
            max_record_bytes: self.max_record_bytes,
            redactor: &self.redactor,
            mapping: &self.mapping,
        }
    }
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
    /// Batches written at once (`LP_WORKER_IN_FLIGHT`); a partition's stay in order (`order`).
    pub in_flight: usize,
}

enum Outcome {
    Durable,
    GivenUp(&'static str),
    /// PostgreSQL's watermark is behind the batch: given up, the partition to be read again.
    Behind(String),
}

/// A write under way at the worker: it ends with its batch, or when it is held.
type Running = Pin<Box<dyn Future<Output = (Step, Instant, Arc<Notify>)> + Send>>;

enum Step {
    Done(Batch, Outcome),
    /// Waiting for a store: to be moved, still running, into its partition's lane.
    Held(TopicPartition, lane::Write),
}

/// Watches `write` until it ends or `held` is notified (by the write, or by the worker when an
/// earlier batch of its partition was held).
fn watched(write: lane::Write, tp: TopicPartition, held: Arc<Notify>, started: Instant) -> Running {
    Box::pin(async move {
        let mut write = write;
        let step = tokio::select! {
            (batch, outcome) = &mut write => Step::Done(batch, outcome),
            _ = held.notified() => Step::Held(tp, write),
        };
        (step, started, held)
    })
}

impl Worker {
    pub async fn run(self) {
        let span = tracing::info_span!("worker", id = self.id);
        let Worker {
            id,
            mut queue,
            acks,
            ctx,
            in_flight,
        } = self;
        async move {
            let shutdown = ctx.shutdown.clone();
            let chains = Arc::new(order::Chains::default());
            let mut books = Books {
                acks,
                chains: chains.clone(),
                estimate: Duration::ZERO,
            };
            let mut lanes = lane::Lanes::default();
            let mut running = FuturesUnordered::<Running>::new();
            // The hold signal of each running write, by partition.
            let mut holds: Vec<(TopicPartition, Arc<Notify>)> = Vec::new();
            loop {
                tokio::select! {
                    Some((step, started, held)) = running.next(), if !running.is_empty() => {
                        holds.retain(|(_, h)| !Arc::ptr_eq(h, &held));
                        match step {
                            Step::Done(batch, outcome) => books.finish(&ctx, &batch, started, outcome, true),
                            Step::Held(tp, write) => {
                                // Its other batches under way here follow it.
                                for (_, h) in holds.iter().filter(|(t, _)| *t == tp) {
                                    h.notify_one();
                                }
                                if lanes.take(tp.clone(), write, started, &ctx, &mut books) {
                                    tracing::info!(partition = %tp, "partition held: its batches go on in a lane of their own, the worker's other partitions go on");
                                }
                            }
                        }
                    }
                    b = queue.recv(), if running.len() < in_flight.max(1) => {
                        let Some(batch) = b else { break };
                        let Some(batch) = lanes.route(batch).await else {
                            continue; // its partition's lane has it
                        };
                        let started = Instant::now();
                        if let Some(why) = books.skip(&batch, &ctx, started) {
                            drop(chains.link(&batch)); // the batches after it follow a hole
                            books.finish(&ctx, &batch, started, Outcome::GivenUp(why), false);
                            continue;
                        }
                        let (tp, held) = (batch.tp.clone(), Arc::new(Notify::new()));
                        let link = chains.link(&batch);
                        let write = lane::write_owned(ctx.clone(), batch, held.clone(), link);
                        holds.push((tp.clone(), held.clone()));
                        running.push(watched(write, tp, held, started));
                    }
                    _ = shutdown.abort.cancelled() => break,
                }
            }
            // What is under way ends by itself (an abort gives it up at once).
            while let Some((step, started, _)) = running.next().await {
                match step {
                    Step::Done(batch, outcome) => books.finish(&ctx, &batch, started, outcome, true),
                    Step::Held(tp, write) => {
                        lanes.take(tp, write, started, &ctx, &mut books);
                    }
                }
            }
            lanes.close().await;
            shutdown.phase(&format!("worker {id} drained"));
        }
        .instrument(span)
        .await
    }
}

/// What a worker (or a lane) keeps across batches: where to acknowledge, the order of each
/// partition's writes (which runs were given up), how long a batch takes.
struct Books {
    acks: std::sync::mpsc::Sender<Ack>,
    /// Shared by the worker and its lanes.
    chains: Arc<order::Chains>,
    /// Slowest recent batch, to judge whether a queued batch can still finish in time.
    estimate: Duration,
}

impl Books {
    /// Why `batch` is given up without being tried, if it is.
    fn skip(&self, batch: &Batch, ctx: &WorkerContext, now: Instant) -> Option<&'static str> {
        let shutdown = &ctx.shutdown;
        if batch.revoked.is_cancelled() || batch.drain.is_cancelled() {
            Some(if shutdown.started().is_some() {
                "shutting down: not started, the partition's next owner reads it again"
            } else {
                "partition revoked"
            })
        } else if self.chains.after_hole(batch) {
            Some("an earlier batch of this partition was given up")
        } else if shutdown
            .abort_at()
            .is_some_and(|at| now + self.estimate > at)
        {
            Some("cannot finish before the shutdown deadline")
        } else {
            None
        }
    }

    /// Records the outcome and acknowledges the batch. `tried`: it was written (counted in
    /// `Batch::writing` since `write_owned` began).
    fn finish(
        &mut self,
        ctx: &WorkerContext,
        batch: &Batch,
        started: Instant,
        outcome: Outcome,
        tried: bool,
    ) {
        let (first, next) = (batch.first_offset(), batch.next_offset);
        let durable = matches!(outcome, Outcome::Durable);
        let mut reread = None;
        match outcome {
            Outcome::Durable => {
                let took = started.elapsed();
                self.estimate = took.max(self.estimate.mul_f64(0.9));
                ctx.metrics.batch_latency.observe(took);
            }
            Outcome::GivenUp(why) => {
                tracing::info!(partition = %batch.tp, first, next, why, "batch given up, offsets not committed");
            }
            Outcome::Behind(why) => {
                tracing::warn!(partition = %batch.tp, first, next, why, "PostgreSQL holds less of this partition than this batch follows (the database went back in time?): batch given up, the partition is read again from the stored watermark");
                reread = Some(why);
            }
        }
        // The consumer may be gone already during shutdown; nothing to do then.
        let _ = self.acks.send(Ack {
            tp: batch.tp.clone(),
            first_offset: first,
            next_offset: next,
            durable,
            bytes: batch.bytes,
            reread,
            assignment: batch.assignment,
        });
        if tried {
            batch.writing.fetch_sub(1, Relaxed); // after the ack: see `Batch::writing`
        }
    }
}

#[cfg(test)]
mod tests;
