//! Order within a partition while several of its batches are written at once.
//!
//! A worker writes up to `LP_WORKER_IN_FLIGHT` batches at once, so a partition's next batch is
//! sent to the search store while the one before it commits in PostgreSQL. Two rules keep that
//! as safe as one batch at a time:
//!
//! - **Search store in order**: a batch indexes only once the batch before it (same partition,
//!   same worker) has indexed. The first batch of an assignment learns which documents an
//!   earlier owner left (`replayed`); the batches after it must see that answer.
//! - **PostgreSQL in order**: a batch commits only once the batch before it is durable. If that
//!   one was given up and this one continues its run, this one is given up too, so nothing
//!   after a hole becomes durable. (PostgreSQL's compare-and-set on the watermark would refuse
//!   it anyway; this gives it up without a round trip and without the "went back in time"
//!   alarm.)
//!
//! Each write holds a [`Link`]: what the previous write of its partition has reached, and a
//! sender telling the next write what this one has reached. A write dropped mid-way (revoked,
//! aborted) drops its sender, which the next one reads as not durable.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

use crate::model::{Batch, Position, TopicPartition};

/// How far a write has come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Not indexed yet.
    Writing,
    /// Its documents are in the search store (or refused); PostgreSQL comes next.
    Indexed,
    /// Committed in both stores.
    Durable,
    /// Ended without becoming durable (given up, revoked, dropped).
    NotDurable,
}

/// What a write may do next, given what the previous write of its partition has reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    Wait,
    Go,
    /// The previous batch of the same run will never be durable: give this one up.
    GiveUp,
}

/// Whether a write may send its documents. `continues`: as for [`may_commit`]; a batch after
/// a hole in its run sends nothing (no document without a row to follow it).
pub fn may_index(prev: Stage, continues: bool) -> Gate {
    match prev {
        Stage::Writing => Gate::Wait,
        Stage::Indexed | Stage::Durable => Gate::Go,
        Stage::NotDurable if continues => Gate::GiveUp,
        Stage::NotDurable => Gate::Go,
    }
}

/// Whether a write may commit. `continues`: the batch starts where the previous one ended, in
/// the same assignment (otherwise the previous one belongs to a run that is over).
pub fn may_commit(prev: Stage, continues: bool) -> Gate {
    match prev {
        Stage::Writing | Stage::Indexed => Gate::Wait,
        Stage::Durable => Gate::Go,
        Stage::NotDurable if continues => Gate::GiveUp,
        Stage::NotDurable => Gate::Go,
    }
}

/// The previous write of a partition, as the next one sees it.
#[derive(Clone)]
struct Previous {
    stage: watch::Receiver<Stage>,
    next_offset: i64,
    assignment: u64,
}

/// The latest write of each partition at one worker (and its lanes).
#[derive(Default)]
pub struct Chains(Mutex<HashMap<TopicPartition, Previous>>);

impl Chains {
    /// Links a write of `batch` after the latest write of its partition.
    pub fn link(&self, batch: &Batch) -> Link {
        let (me, stage) = watch::channel(Stage::Writing);
        let mine = Previous {
            stage,
            next_offset: batch.next_offset,
            assignment: batch.assignment,
        };
        let prev = (self.0.lock().expect("chains lock")).insert(batch.tp.clone(), mine);
        let continues = prev.as_ref().is_some_and(|p| {
            p.assignment == batch.assignment && batch.start == Position::After(p.next_offset)
        });
        Link {
            prev: prev.map(|p| p.stage),
            continues,
            me,
        }
    }
}

impl Chains {
    /// Whether `batch` continues a run whose latest batch here will never be durable (given
    /// up, revoked, behind): it is given up without being tried.
    pub fn after_hole(&self, batch: &Batch) -> bool {
        let chains = self.0.lock().expect("chains lock");
        chains.get(&batch.tp).is_some_and(|p| {
            p.assignment == batch.assignment
                && batch.start == Position::After(p.next_offset)
                && *p.stage.borrow() == Stage::NotDurable
        })
    }
}

/// One write's place in its partition's order.
pub struct Link {
    prev: Option<watch::Receiver<Stage>>,
    continues: bool,
    me: watch::Sender<Stage>,
}

impl Link {
    /// Returns once this write may send its documents: `Err` when it must be given up instead.
    pub async fn indexing_turn(&mut self) -> Result<(), &'static str> {
        let continues = self.continues;
        let prev = self.wait(|s| may_index(s, continues) != Gate::Wait).await;
        gate(may_index(prev, continues))
    }

    /// Returns once this write may commit: `Err` when it must be given up instead.
    pub async fn commit_turn(&mut self) -> Result<(), &'static str> {
        let continues = self.continues;
        let prev = self.wait(|s| may_commit(s, continues) != Gate::Wait).await;
        gate(may_commit(prev, continues))
    }

    /// The previous write's stage once `ready` holds for it (not durable if it was dropped).
    async fn wait(&mut self, ready: impl Fn(Stage) -> bool) -> Stage {
        let Some(prev) = self.prev.as_mut() else {
            return Stage::Durable; // first of its partition here: nothing to wait for
        };
        match prev.wait_for(|s| ready(*s)).await {
            Ok(stage) => *stage,
            Err(_dropped) => Stage::NotDurable,
        }
    }

    pub fn reached(&self, stage: Stage) {
        self.me.send_replace(stage);
    }
}

fn gate(g: Gate) -> Result<(), &'static str> {
    match g {
        Gate::GiveUp => Err("an earlier batch of this partition was given up"),
        Gate::Go | Gate::Wait => Ok(()),
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Whatever did not say durable by now never will be.
        self.me.send_if_modified(|s| {
            let open = !matches!(*s, Stage::Durable | Stage::NotDurable);
            if open {
                *s = Stage::NotDurable;
            }
            open
        });
    }
}

#[cfg(test)]
mod tests;
