//! One batch made durable in both stores: decode (bad records become dead letters), index
//! into the search store (documents refused for their own content become dead letters, those
//! their destination index refuses while the store takes others are parked), then one
//! PostgreSQL transaction with rows, dead letters, parked records, gaps and the partition's
//! next offset.
//! A refusal that is not a record's fault is retried here, holding the batch.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use tokio::sync::Notify;

use super::order::{Link, Stage};
use super::replayed::{Lookup, renumbered, without_documents};
use super::{Outcome, WorkerContext};
use crate::model::{Batch, Parked, RawRecord, RejectStage, StoredRecord};
use crate::pipeline;
use crate::sink::SinkError;
use crate::sink::postgres::BatchWrite;
use crate::sink::retry::Attempts;

/// Writes the batch unless the partition is revoked or shutdown aborts. `held_now` is
/// notified when the batch starts waiting for a store that refuses it; `link` keeps it in
/// order with the other batches of its partition written at the same time (`order`).
pub(super) async fn process(
    ctx: &WorkerContext,
    batch: &Batch,
    held_now: &Notify,
    mut link: Link,
) -> Outcome {
    if crate::failpoint::skips("worker_panic") {
        panic!("failpoint worker_panic");
    }
    // A revoked partition or an abort drops the write mid-flight: dropping the future rolls
    // the PostgreSQL transaction back, so nothing is half-committed.
    tokio::select! {
        result = write(ctx, batch, held_now, &mut link) => match result {
            Ok(()) => {
                link.reached(Stage::Durable);
                Outcome::Durable
            }
            Err(Ended::AfterHole(why)) => Outcome::GivenUp(why),
            Err(Ended::Store(SinkError::Behind { message, .. })) => Outcome::Behind(message),
            Err(Ended::Store(_cancelled)) => Outcome::GivenUp("partition revoked"),
        },
        _ = batch.revoked.cancelled() => Outcome::GivenUp("partition revoked"),
        _ = ctx.shutdown.abort.cancelled() => Outcome::GivenUp("shutdown deadline or second signal"),
    }
}

/// Why a write ended without making its batch durable.
enum Ended {
    /// `Cancelled` or `Behind`: every other store error is retried.
    Store(SinkError),
    /// The batch before it in its run was given up (`order`), or its partition's revocation
    /// began before it sent anything.
    AfterHole(&'static str),
}

impl From<SinkError> for Ended {
    fn from(e: SinkError) -> Self {
        Ended::Store(e)
    }
}

/// Makes the batch durable; returns only when it is, or why not.
async fn write(
    ctx: &WorkerContext,
    batch: &Batch,
    held_now: &Notify,
    link: &mut Link,
) -> Result<(), Ended> {
    let cancel = &batch.revoked;
    let (mut records, undecodable) =
        pipeline::decode_all(&batch.records, &batch.stored.topic, ctx.decoding());
    let mut dead: Vec<_> = (undecodable.into_iter())
        .map(|(raw, reason)| ctx.dead_letters.make(raw, RejectStage::Decode, reason))
        .collect();

    // Whether this batch marked its partition held; only then does it clear the mark (the
    // consumer holds partitions too, for reasons of its own).
    let held = std::sync::atomic::AtomicBool::new(false);
    let hold = |why: &str| {
        held.store(true, Relaxed);
        ctx.metrics.set_stalled(&batch.tp, why);
        // The worker moves this partition aside so its other partitions are not held too.
        held_now.notify_one();
    };
    let search_refused = |why: &str| {
        ctx.metrics.retries_es.fetch_add(1, Relaxed);
        hold(&format!("elasticsearch: {why}"));
    };
    link.indexing_turn().await.map_err(Ended::AfterHole)?;
    if batch.drain.is_cancelled() {
        // Its partition is being revoked and it has not sent anything yet: as for a batch not
        // started, its next owner reads it again.
        return Err(Ended::AfterHole("partition revoked before it was written"));
    }
    let t = Instant::now();
    let indexed = index_new(ctx, batch, &records, &search_refused).await?;
    ctx.metrics.es_latency.observe(t.elapsed());
    crate::failpoint::hit("after_es_bulk").await;
    let refused = pipeline::take_refused(&mut records, indexed);
    for (record, reason) in refused.rejected {
        let raw = raw_at(batch, record.offset);
        dead.push(ctx.dead_letters.make(raw, RejectStage::Index, reason));
    }
    let mut parked = Vec::with_capacity(refused.parked.len());
    for (record, reason) in refused.parked {
        let destination = ctx.es.index_name(&record);
        tracing::warn!(tp = %batch.tp, offset = record.offset, destination, reason = %reason, "record parked: its index refuses it while the store takes others; retried in the background");
        let raw = raw_at(batch, record.offset);
        parked.push(Parked {
            letter: ctx.dead_letters.make(raw, RejectStage::Index, reason),
            record,
            destination,
        });
    }

    link.reached(Stage::Indexed);
    link.commit_turn().await.map_err(Ended::AfterHole)?;
    let t = Instant::now();
    let make_dead = |offset: i64, reason: String| {
        ctx.dead_letters
            .make(raw_at(batch, offset), RejectStage::Store, reason)
    };
    // Offsets whose documents are removed already: the transaction commits only once every
    // `store` dead letter of the batch is among them (see `postgres::batch::write_tx`).
    let mut removed: Vec<i64> = Vec::new();
    let mut attempts = Attempts::new("postgresql batch", ctx.backoff, cancel);
    let written = loop {
        let write = BatchWrite {
            group_id: &ctx.group_id,
            tp: &batch.stored,
            records: &records,
            dead_letters: &dead,
            parked: &parked,
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
                let gone = pipeline::documents_of(&records, &written.store_dead_letters);
                ctx.es
                    .delete(&batch.stored, &gone, cancel, &search_refused)
                    .await?;
                crate::failpoint::hit("refused_documents_removed").await;
                // All of them: one this run did not index (not in `records`) has no document
                // of this run to remove.
                removed.extend(&written.store_dead_letters);
                removed.sort_unstable();
                removed.dedup();
            }
            Err(SinkError::Cancelled) => return Err(SinkError::Cancelled.into()),
            Err(e @ SinkError::Behind { .. }) => return Err(e.into()),
            Err(e) if ctx.shutdown.started().is_some() => {
                // No retry once shutdown began: waiting out a refusing store would only
                // run into the deadline. The batch stays uncommitted for the next owner.
                tracing::warn!(error = %e, "postgresql batch failed during shutdown; given up, not retried");
                return Err(SinkError::Cancelled.into());
            }
            Err(e) => {
                ctx.metrics.retries_pg.fetch_add(1, Relaxed);
                hold(&e.to_string());
                attempts.failed(&e).await?;
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
        let _indexed = ctx
            .es
            .index(&batch.stored, &back, cancel, &search_refused)
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
    let rows = records
        .iter()
        .filter(|r| written.store_dead_letters.binary_search(&r.offset).is_err());
    for (table, n) in count_by_table(&ctx.mapping, rows) {
        ctx.metrics.stored_in(table, n);
    }
    for d in &dead {
        ctx.metrics.dead_lettered_at(d.stage, 1);
    }
    ctx.metrics.parked.fetch_add(parked.len() as u64, Relaxed);
    ctx.metrics
        .dead_lettered_at(RejectStage::Store, refused as u64);
    ctx.metrics.batches.fetch_add(1, Relaxed);
    if written.already_durable {
        tracing::debug!("batch was already durable (a replay)");
    }
    Ok(())
}

/// How many of `rows` each table of the mapping took.
fn count_by_table<'a, 'm>(
    mapping: &'m crate::mapping::Mapping,
    rows: impl Iterator<Item = &'a StoredRecord>,
) -> std::collections::BTreeMap<&'m str, u64> {
    let mut out = std::collections::BTreeMap::new();
    for r in rows {
        *out.entry(mapping.table_of(r.route).name.as_str())
            .or_default() += 1;
    }
    out
}

/// Indexes the records that have no document yet: those an earlier owner indexed (and was
/// stopped before committing) are left where they are, which in data-stream mode may be a
/// backing index the stream has rolled over from (see `replayed`).
async fn index_new(
    ctx: &WorkerContext,
    batch: &Batch,
    records: &[StoredRecord],
    on_retry: &(dyn Fn(&str) + Sync),
) -> Result<crate::sink::elastic::Indexed, SinkError> {
    let cancel = &batch.revoked;
    let present = match ctx.replays.lookup(batch) {
        Lookup::Known(offsets) => offsets,
        Lookup::Ask(from) => {
            let found = (ctx.es.indexed_from(&batch.stored, from, cancel, on_retry)).await?;
            if !found.is_empty() {
                tracing::info!(tp = %batch.tp, from, documents = found.len(), last = found.last(), "documents indexed before the last commit found; not sent again");
            }
            ctx.replays.answered(batch, found)
        }
    };
    if present.is_empty() {
        return ctx.es.index(&batch.stored, records, cancel, on_retry).await;
    }
    let (send, positions) = without_documents(records, &present);
    let indexed = ctx.es.index(&batch.stored, &send, cancel, on_retry).await?;
    Ok(renumbered(indexed, &positions))
}

/// The raw record at `offset` (batches are in offset order).
fn raw_at(batch: &Batch, offset: i64) -> &RawRecord {
    let i = batch
        .records
        .binary_search_by_key(&offset, |r| r.offset)
        .expect("an offset taken from this batch");
    &batch.records[i]
}

#[cfg(test)]
mod tests;
