//! Lanes: a held partition's batches, written apart from the worker's queue.
//!
//! A batch waiting for a store that refuses it (a read-only index, a constraint, an outage)
//! would keep every later batch in the worker's queue waiting, other partitions' included. So
//! the moment a write reports that it is held, the worker moves it, still running, into a lane
//! for its partition; the partition's later batches follow it there in order, and the worker
//! goes on with its queue. A lane whose batches are all done is closed at the partition's next
//! batch, which the worker then writes itself again. The consumer caps the batches a partition
//! has at its worker (`Core::dispatch`), so a held lane never collects more than a few.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};
use std::time::Instant;

use tokio::sync::Notify;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::{Books, Outcome, WorkerContext};
use crate::model::{Batch, TopicPartition};

/// A batch's write under way, movable into a lane.
pub(super) type Write = Pin<Box<dyn Future<Output = (Batch, Outcome)> + Send>>;

/// Starts writing `batch` (counted in `Batch::writing` from now on). `held` is notified when
/// the write starts waiting for a store.
pub(super) fn write_owned(ctx: Arc<WorkerContext>, batch: Batch, held: Arc<Notify>) -> Write {
    batch.writing.fetch_add(1, Relaxed);
    Box::pin(async move {
        let (first, next) = (batch.first_offset(), batch.next_offset);
        let span = tracing::info_span!("batch", partition = %batch.tp, first, next, records = batch.records.len());
        let outcome = super::write::process(&ctx, &batch, &held)
            .instrument(span)
            .await;
        (batch, outcome)
    })
}

struct Lane {
    tx: UnboundedSender<Batch>,
    /// Batches given to the lane and not finished yet. Only the worker adds to it, so zero
    /// means the lane is idle and stays so.
    pending: Arc<AtomicUsize>,
    /// Ends when `tx` is dropped, with the lane's given-up runs (`Worker::given_up`).
    task: JoinHandle<HashMap<TopicPartition, i64>>,
}

/// The open lanes of one worker, by partition.
#[derive(Default)]
pub(super) struct Lanes(HashMap<TopicPartition, Lane>);

impl Lanes {
    /// Gives `batch` to its partition's lane, or returns it for the worker to write: when its
    /// partition has no lane, or an idle one (closed now, its books taken back).
    pub(super) async fn route(&mut self, batch: Batch, books: &mut Books) -> Option<Batch> {
        self.reap_dead();
        let Some(lane) = self.0.get(&batch.tp) else {
            return Some(batch);
        };
        if lane.pending.load(Acquire) > 0 {
            lane.pending.fetch_add(1, AcqRel);
            // Open lanes never drop their receiver (a dead one is reaped above).
            let _ = lane.tx.send(batch);
            return None;
        }
        let lane = self.0.remove(&batch.tp).expect("looked up above");
        drop(lane.tx);
        books.given_up.extend(joined(lane.task.await));
        Some(batch)
    }

    /// Moves a held write into a new lane for its partition, with the partition's books.
    pub(super) fn open(
        &mut self,
        tp: TopicPartition,
        write: Write,
        started: Instant,
        ctx: &Arc<WorkerContext>,
        books: &mut Books,
    ) {
        let (tx, rx) = unbounded_channel();
        let pending = Arc::new(AtomicUsize::new(1));
        let lane_books = Books {
            acks: books.acks.clone(),
            given_up: books.given_up.remove_entry(&tp).into_iter().collect(),
            estimate: books.estimate,
        };
        let task = tokio::spawn(
            run(
                Arc::clone(ctx),
                lane_books,
                write,
                started,
                rx,
                Arc::clone(&pending),
            )
            .instrument(tracing::Span::current()),
        );
        self.0.insert(tp, Lane { tx, pending, task });
    }

    /// At the worker's end: every lane finishes what it has, and its books come back.
    pub(super) async fn close(&mut self, books: &mut Books) {
        for (_, lane) in self.0.drain() {
            drop(lane.tx);
            books.given_up.extend(joined(lane.task.await));
        }
    }

    /// A lane ends only when the worker closes it; one that ended by itself panicked, and the
    /// panic goes on in the worker, which the application notices (`app::exit_if_ends_early`).
    fn reap_dead(&mut self) {
        if let Some(tp) = self
            .0
            .iter()
            .find_map(|(tp, l)| l.task.is_finished().then(|| tp.clone()))
            && let Some(lane) = self.0.remove(&tp)
        {
            let result = futures_util::FutureExt::now_or_never(lane.task);
            joined(result.expect("finished"));
        }
    }
}

/// The lane's books, or its panic resumed.
fn joined(
    result: Result<HashMap<TopicPartition, i64>, tokio::task::JoinError>,
) -> HashMap<TopicPartition, i64> {
    match result {
        Ok(given_up) => given_up,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => HashMap::new(),
    }
}

/// A lane: the held write, then the partition's batches in order until the worker closes it.
async fn run(
    ctx: Arc<WorkerContext>,
    mut books: Books,
    first: Write,
    started: Instant,
    mut rx: UnboundedReceiver<Batch>,
    pending: Arc<AtomicUsize>,
) -> HashMap<TopicPartition, i64> {
    let (batch, outcome) = first.await;
    books.finish(&ctx, &batch, started, outcome, true);
    pending.fetch_sub(1, AcqRel);
    while let Some(batch) = rx.recv().await {
        let started = Instant::now();
        match books.skip(&batch, &ctx, started) {
            Some(why) => books.finish(&ctx, &batch, started, Outcome::GivenUp(why), false),
            None => {
                let (batch, outcome) =
                    write_owned(Arc::clone(&ctx), batch, Arc::new(Notify::new())).await;
                books.finish(&ctx, &batch, started, outcome, true);
            }
        }
        pending.fetch_sub(1, AcqRel);
    }
    books.given_up
}
