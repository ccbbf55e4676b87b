//! Releasing parked records: records whose destination index refused them while the store
//! took others wait in `parked_records` (written in their batch's transaction, so the
//! partition moved on). Every `LP_PARKED_RETRY_MS` each is offered to its destination again;
//! once taken, its row goes into `log_records` and it leaves `parked_records` in one
//! transaction.
//!
//! Order and crashes: the document first, then that transaction. A kill in between leaves the
//! record parked with its document indexed; the next round indexes it again under the same id
//! and writes the row, so nothing is lost or doubled. A record refused for its own content at
//! release becomes a dead letter; one whose row PostgreSQL refuses has its document removed
//! first, then becomes a dead letter too, so no document stays without its row.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::model::{Parked, RejectStage, StoredRecord, TopicPartition};
use crate::sink::SinkError;
use crate::sink::elastic::{ElasticSink, ItemFate};
use crate::sink::postgres::{PgSink, Released};

/// Parked records offered again per round.
const ROUND: i64 = 500;

/// The release loop's parts.
pub struct Parking {
    pub pg: PgSink,
    pub es: ElasticSink,
    pub metrics: Arc<Metrics>,
    pub interval: Duration,
}

/// What one round did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Round {
    pub released: u64,
    pub dead_lettered: u64,
    pub still_parked: u64,
}

impl Parking {
    /// Runs rounds until `stop`; a store that fails a round is tried again next round.
    pub async fn run(self, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = stop.cancelled() => return,
            }
            match self.round(&stop).await {
                Ok(r) if r.released + r.dead_lettered > 0 => {
                    tracing::info!(
                        released = r.released,
                        dead_lettered = r.dead_lettered,
                        still_parked = r.still_parked,
                        "parked records released"
                    );
                }
                Ok(_) => {}
                Err(SinkError::Cancelled) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "releasing parked records failed; next round in {} ms", self.interval.as_millis())
                }
            }
            match self.pg.parked_summary().await {
                Ok(summary) => {
                    let now = chrono::Utc::now();
                    let records = summary.iter().map(|s| s.records).sum();
                    let oldest = summary.iter().map(|s| s.since).min();
                    let age =
                        oldest.map_or(0.0, |t| (now - t).num_milliseconds().max(0) as f64 / 1e3);
                    self.metrics.set_parked(records, age);
                }
                Err(e) => tracing::warn!(error = %e, "reading parked records failed"),
            }
        }
    }

    /// Offers the parked records tried least recently to their destinations once.
    pub async fn round(&self, stop: &CancellationToken) -> Result<Round, SinkError> {
        let mut by_partition: BTreeMap<TopicPartition, Vec<Parked>> = BTreeMap::new();
        for (tp, parked) in self.pg.parked_due(ROUND).await? {
            by_partition.entry(tp).or_default().push(parked);
        }
        let mut round = Round::default();
        for (tp, parked) in by_partition {
            let records: Vec<StoredRecord> = parked.iter().map(|p| p.record.clone()).collect();
            let destinations: Vec<String> = parked.iter().map(|p| p.destination.clone()).collect();
            let fates = self
                .es
                .index_once(&tp, &records, &destinations, stop)
                .await?;
            let mut taken = Vec::new();
            let mut rejected = Vec::new();
            let mut again = Vec::new();
            for (r, fate) in records.into_iter().zip(fates) {
                match fate {
                    ItemFate::Stored => taken.push(r),
                    ItemFate::Rejected(why) => rejected.push((r.offset, why)),
                    ItemFate::Destination(why) | ItemFate::Again(why) => {
                        again.push((r.offset, why))
                    }
                }
            }
            // Documents indexed, rows not written, records still parked.
            crate::failpoint::hit("after_release_index").await;
            round.released += self.release(&tp, &taken, stop).await?;
            if !rejected.is_empty() {
                self.pg.parked_tried(&tp, &rejected).await?;
                let offsets: Vec<i64> = rejected.iter().map(|r| r.0).collect();
                round.dead_lettered += self
                    .pg
                    .parked_to_dead_letters(&tp, &offsets, RejectStage::Index, "")
                    .await?;
                self.metrics
                    .dead_lettered_at(RejectStage::Index, offsets.len() as u64);
            }
            if !again.is_empty() {
                round.still_parked += again.len() as u64;
                self.pg.parked_tried(&tp, &again).await?;
            }
        }
        self.metrics.released.fetch_add(round.released, Relaxed);
        Ok(round)
    }

    /// Rows for records whose documents were taken; one by one if PostgreSQL refuses a row.
    async fn release(
        &self,
        tp: &TopicPartition,
        taken: &[StoredRecord],
        stop: &CancellationToken,
    ) -> Result<u64, SinkError> {
        if taken.is_empty() || self.pg.release(tp, taken).await? == Released::Done {
            return Ok(taken.len() as u64);
        }
        let mut released = 0;
        for r in taken {
            match self.pg.release(tp, std::slice::from_ref(r)).await? {
                Released::Done => released += 1,
                Released::RowRefused(why) => {
                    // The document goes first: then no kill leaves it without its row.
                    self.es.delete(tp, &[r], stop, |_| {}).await?;
                    self.pg
                        .parked_to_dead_letters(
                            tp,
                            &[r.offset],
                            RejectStage::Store,
                            &format!("postgresql refused the row at release: {why}; parked for: "),
                        )
                        .await?;
                    self.metrics.dead_lettered_at(RejectStage::Store, 1);
                }
            }
        }
        Ok(released)
    }
}
