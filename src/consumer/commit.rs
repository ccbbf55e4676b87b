//! Kafka offset commits: only durable watermarks, only of partitions owned at that moment.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::topic_partition_list::Offset;

use crate::metrics::Metrics;

use super::state::tpl_at;
use super::{Kafka, State};

impl State {
    /// Commits the watermarks of owned partitions: those that moved, or with `all` every
    /// durable one. `timeout` bounds a synchronous commit.
    ///
    /// `all` is how a failed asynchronous commit gets repaired: librdkafka reports the result
    /// of a manual asynchronous commit to nobody (it only logs it), so a watermark whose commit
    /// failed counts as committed until the next `all` commit sends it again.
    pub(super) fn commit(
        &mut self,
        consumer: &Kafka,
        mode: CommitMode,
        all: bool,
        timeout: Option<Duration>,
        metrics: &Metrics,
    ) {
        let moved: Vec<_> = if all {
            self.watermarks.durable_all()
        } else {
            self.watermarks.to_commit().into_iter().collect()
        }
        .into_iter()
        .filter(|(tp, _)| self.assigned.contains_key(tp))
        .collect();
        if moved.is_empty() {
            return;
        }
        let tpl = tpl_at(moved.iter().map(|(tp, o)| (tp, Offset::Offset(*o))));
        if timeout.is_some_and(|t| t.is_zero()) {
            tracing::warn!(
                "no time left for the final offset commit; PostgreSQL's watermark stands in for it"
            );
            return;
        }
        crate::failpoint::hit_blocking("before_kafka_commit");
        if !all && crate::failpoint::skips("lost_async_commit") {
            // As if librdkafka had sent it and the broker refused it, unseen by us.
            for (tp, offset) in moved {
                self.watermarks.get_mut(&tp).mark_committed(offset);
            }
            return;
        }
        match consumer.commit(&tpl, mode) {
            Ok(()) => {
                metrics.commits.fetch_add(1, Relaxed);
                for (tp, offset) in moved {
                    self.watermarks.get_mut(&tp).mark_committed(offset);
                }
            }
            Err(e) => {
                metrics.commit_errors.fetch_add(1, Relaxed);
                tracing::warn!(error = %e, "offset commit failed; it is retried at the next interval");
            }
        }
    }
}
