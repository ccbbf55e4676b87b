//! Lanes: a held partition's batches, written apart from the worker's queue.
//!
//! A batch waiting for a store that refuses it (a read-only index, a constraint, an outage)
//! would keep every later batch in the worker's queue waiting, other partitions' included. So
//! the moment a write reports that it is held, the worker moves it, still running, into a lane
//! for its partition; the partition's later batches follow it there in order, and the worker
//! goes on with its queue. The partition's other writes under way at the worker follow it into
//! the lane, still running. A lane whose batches are all done is closed at the partition's next
//! batch, which the worker then writes itself again. The consumer caps the batches a partition
//! has at its worker (`Core::dispatch`), so a held lane never collects more than a few.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};
use std::time::Instant;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::Notify;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::order::Link;
use super::{Books, Outcome, WorkerContext};
use crate::model::{Batch, TopicPartition};

/// A batch's write under way, movable into a lane.
pub(super) type Write = Pin<Box<dyn Future<Output = (Batch, Outcome)> + Send>>;

/// Starts writing `batch` (counted in `Batch::writing` from now on). `held` is notified when
/// the write starts waiting for a store; `link` orders it within its partition.
pub(super) fn write_owned(
    ctx: Arc<WorkerContext>,
    batch: Batch,
    held: Arc<Notify>,
    link: Link,
) -> Write {
    batch.writing.fetch_add(1, Relaxed);
    Box::pin(async move {
        let (first, next) = (batch.first_offset(), batch.next_offset);
        let span = tracing::info_span!("batch", partition = %batch.tp, first, next, records = batch.records.len());
        let outcome = super::write::process(&ctx, &batch, &held, link)
            .instrument(span)
            .await;
        (batch, outcome)
    })
}

/// What a lane is given: a batch to write, or a write under way.
enum Item {
    Batch(Batch),
    Running(Write, Instant),
}

struct Lane {
    tx: UnboundedSender<Item>,
    /// Batches given to the lane and not finished yet. Only the worker adds to it, so zero
    /// means the lane is idle and stays so.
    pending: Arc<AtomicUsize>,
    /// Ends when `tx` is dropped.
    task: JoinHandle<()>,
}

/// The open lanes of one worker, by partition.
#[derive(Default)]
pub(super) struct Lanes {
    open: HashMap<TopicPartition, Lane>,
}

impl Lanes {
    /// Gives `batch` to its partition's lane, or returns it for the worker to write: when its
    /// partition has no lane, or an idle one (closed now).
    pub(super) async fn route(&mut self, batch: Batch) -> Option<Batch> {
        self.reap_dead();
        let Some(lane) = self.open.get(&batch.tp) else {
            return Some(batch);
        };
        if lane.pending.load(Acquire) > 0 {
            lane.pending.fetch_add(1, AcqRel);
            send(lane, &batch.tp.clone(), Item::Batch(batch));
            return None;
        }
        let lane = self.open.remove(&batch.tp).expect("looked up above");
        drop(lane.tx);
        joined(lane.task.await);
        Some(batch)
    }

    /// Moves a held write into its partition's lane (opened now unless the partition has one);
    /// true when it opened one.
    pub(super) fn take(
        &mut self,
        tp: TopicPartition,
        write: Write,
        started: Instant,
        ctx: &Arc<WorkerContext>,
        books: &mut Books,
    ) -> bool {
        self.reap_dead();
        if let Some(lane) = self.open.get(&tp) {
            lane.pending.fetch_add(1, AcqRel);
            send(lane, &tp, Item::Running(write, started));
            return false;
        }
        let (tx, rx) = unbounded_channel();
        let pending = Arc::new(AtomicUsize::new(1));
        let _ = tx.send(Item::Running(write, started));
        let lane_books = Books {
            acks: books.acks.clone(),
            chains: Arc::clone(&books.chains),
            estimate: books.estimate,
        };
        let task = tokio::spawn(
            run(Arc::clone(ctx), lane_books, rx, Arc::clone(&pending))
                .instrument(tracing::Span::current()),
        );
        self.open.insert(tp, Lane { tx, pending, task });
        true
    }

    /// At the worker's end: every lane finishes what it has.
    pub(super) async fn close(&mut self) {
        for (_, lane) in self.open.drain() {
            drop(lane.tx);
            joined(lane.task.await);
        }
    }

    /// A lane ends only when the worker closes it; one that ended by itself panicked, and the
    /// panic goes on in the worker, which the application notices (`app::exit_if_ends_early`).
    fn reap_dead(&mut self) {
        if let Some(tp) = self
            .open
            .iter()
            .find_map(|(tp, l)| l.task.is_finished().then(|| tp.clone()))
            && let Some(lane) = self.open.remove(&tp)
        {
            let result = futures_util::FutureExt::now_or_never(lane.task);
            joined(result.expect("finished"));
        }
    }
}

/// Gives `item` to an open lane. A lane ends only when the worker closes it, so one that
/// cannot take it has panicked (after `reap_dead` looked): the worker ends too, which the
/// application notices (`app::exit_if_ends_early`), rather than drop a batch unacknowledged.
fn send(lane: &Lane, tp: &TopicPartition, item: Item) {
    if lane.tx.send(item).is_err() {
        panic!("the lane of {tp} ended while open (it panicked)");
    }
}

/// A lane's end: its panic, if any, resumed in the worker.
fn joined(result: Result<(), tokio::task::JoinError>) {
    if let Err(e) = result
        && e.is_panic()
    {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// A lane: writes under way run to their end together; batches wait for them, then go one
/// at a time, in order, until the worker closes the lane.
async fn run(
    ctx: Arc<WorkerContext>,
    mut books: Books,
    mut rx: UnboundedReceiver<Item>,
    pending: Arc<AtomicUsize>,
) {
    let mut running = FuturesUnordered::new();
    let mut waiting = VecDeque::new();
    let mut open = true;
    loop {
        if running.is_empty() {
            if let Some(batch) = waiting.pop_front() {
                let started = Instant::now();
                if let Some(why) = books.skip(&batch, &ctx, started) {
                    drop(books.chains.link(&batch)); // the batches after it follow a hole
                    books.finish(&ctx, &batch, started, Outcome::GivenUp(why), false);
                    pending.fetch_sub(1, AcqRel);
                } else {
                    let link = books.chains.link(&batch);
                    let write = write_owned(Arc::clone(&ctx), batch, Arc::new(Notify::new()), link);
                    running.push(timed(write, started));
                }
                continue;
            }
            if !open {
                break;
            }
        }
        tokio::select! {
            Some(((batch, outcome), started)) = running.next(), if !running.is_empty() => {
                books.finish(&ctx, &batch, started, outcome, true);
                pending.fetch_sub(1, AcqRel);
            }
            item = rx.recv(), if open => match item {
                Some(Item::Batch(batch)) => waiting.push_back(batch),
                Some(Item::Running(write, started)) => running.push(timed(write, started)),
                None => open = false,
            },
        }
    }
}

async fn timed(write: Write, started: Instant) -> ((Batch, Outcome), Instant) {
    (write.await, started)
}
