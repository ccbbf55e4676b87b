//! Kafka offset commits: only durable watermarks, only of partitions owned at that moment.
//!
//! Every commit is bounded. librdkafka's synchronous commit waits for the coordinator without
//! limit, so the running daemon and a revocation commit asynchronously, and the final commit
//! at shutdown runs synchronously on a side thread that is waited for only until the deadline.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::topic_partition_list::Offset;

use super::Kafka;
use super::state::State;
use super::state::tpl_at;
use crate::metrics::Metrics;

/// Bound on the final commit when no shutdown deadline applies.
const FINAL_COMMIT_BOUND: Duration = Duration::from_secs(5);

impl State {
    /// Sends the watermarks of owned partitions without waiting: those that moved, or with
    /// `all` every durable one.
    ///
    /// `all` is how a failed asynchronous commit gets repaired: librdkafka reports the result
    /// of a manual asynchronous commit to nobody (it only logs it), so a watermark whose commit
    /// failed counts as committed until the next `all` commit sends it again.
    pub(super) fn commit(&mut self, consumer: &Kafka, all: bool, metrics: &Metrics) {
        let moved = self.core.to_commit(all);
        if moved.is_empty() {
            return;
        }
        crate::failpoint::hit_blocking("before_kafka_commit");
        if !all && crate::failpoint::skips("lost_async_commit") {
            // As if librdkafka had sent it and the broker refused it, unseen by us.
            self.core.committed(moved);
            return;
        }
        let tpl = tpl_at(moved.iter().map(|(tp, o)| (tp, Offset::Offset(*o))));
        match consumer.commit(&tpl, CommitMode::Async) {
            Ok(()) => {
                metrics.commits.fetch_add(1, Relaxed);
                self.core.committed(moved);
            }
            Err(e) => {
                metrics.commit_errors.fetch_add(1, Relaxed);
                tracing::warn!(error = %e, "offset commit failed; it is retried at the next interval");
            }
        }
    }

    /// The final commit of every durable watermark, waited for at most `timeout` (the time
    /// left before the shutdown deadline). A commit that does not answer in time is left
    /// behind on its thread: PostgreSQL's watermark stands in for it at the next start.
    pub(super) fn commit_final(
        &mut self,
        consumer: &Arc<Kafka>,
        timeout: Option<Duration>,
        metrics: &Metrics,
    ) {
        let moved = self.core.to_commit(true);
        let bound = timeout.unwrap_or(FINAL_COMMIT_BOUND);
        if moved.is_empty() {
            return;
        }
        if bound.is_zero() {
            tracing::warn!(
                "no time left for the final offset commit; PostgreSQL's watermark stands in for it"
            );
            return;
        }
        crate::failpoint::hit_blocking("before_kafka_commit");
        let (tx, rx) = std::sync::mpsc::channel();
        let (consumer, offsets) = (Arc::clone(consumer), moved.clone());
        let sent = std::thread::Builder::new()
            .name("kafka-commit".into())
            .spawn(move || {
                let tpl = tpl_at(offsets.iter().map(|(tp, o)| (tp, Offset::Offset(*o))));
                let _ = tx.send(consumer.commit(&tpl, CommitMode::Sync));
            });
        if let Err(e) = sent {
            tracing::error!(error = %e, "could not start the final commit");
            return;
        }
        match rx.recv_timeout(bound) {
            Ok(Ok(())) => {
                metrics.commits.fetch_add(1, Relaxed);
                self.core.committed(moved);
            }
            Ok(Err(e)) => {
                metrics.commit_errors.fetch_add(1, Relaxed);
                tracing::warn!(error = %e, "final offset commit failed; PostgreSQL's watermark stands in for it");
            }
            Err(_) => {
                metrics.commit_errors.fetch_add(1, Relaxed);
                tracing::warn!(
                    waited_ms = bound.as_millis() as u64,
                    "final offset commit unanswered; leaving without it (PostgreSQL's watermark stands in for it)"
                );
            }
        }
    }
}
