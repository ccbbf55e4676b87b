//! The consumer's part of the shutdown sequence; see docs/ARCHITECTURE.md.

use std::time::{Duration, Instant};

use std::sync::Arc;

use rdkafka::consumer::Consumer;

use super::state::pause;
use super::{ConsumerReport, Kafka};

/// The consumer's part of the shutdown sequence; see docs/ARCHITECTURE.md.
pub(super) fn close(consumer: Kafka) -> ConsumerReport {
    // Shared with the final commit's side thread (see `State::commit_final`).
    let consumer = Arc::new(consumer);
    let bridge = consumer.context();
    let shutdown = bridge.shutdown.clone();
    {
        let mut st = bridge.lock();
        st.closing = true;
        let all: Vec<_> = st.assigned.keys().cloned().collect();
        pause(&consumer, &all);
        // What was read is handed out as final batches; workers decide, against the deadline,
        // whether each can still finish. Nothing new is fetched.
        for tp in st.batcher.partitions() {
            if let Some(records) = st.batcher.take(&tp) {
                st.enqueue(tp, records);
            }
        }
    }
    shutdown.phase("fetching stopped");

    // Feed the final batches, close the queues, and wait for the last worker to exit.
    let mut abort_seen: Option<Instant> = None;
    loop {
        bridge.metrics.consumer_beat();
        {
            let mut st = bridge.lock();
            st.drain_acks(&bridge.metrics);
            if shutdown.abort.is_cancelled() {
                st.pending.clear();
            }
            st.dispatch();
            if st.pending.is_empty() {
                st.workers.clear(); // closes the queues: workers exit once they are empty
            }
            if st.workers_gone {
                break;
            }
        }
        if shutdown.abort.is_cancelled() {
            let seen = *abort_seen.get_or_insert_with(Instant::now);
            if seen.elapsed() > Duration::from_secs(1) {
                tracing::warn!(
                    "workers did not stop within 1 s of the abort; committing the durable watermark anyway"
                );
                break;
            }
        }
        // Keep serving the group (heartbeats, rebalances) while waiting; partitions are paused
        // and anything still prefetched is not consumed.
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(20)) {
            drop(m);
        }
    }

    let report = {
        let mut st = bridge.lock();
        let timeout = shutdown
            .hard_deadline()
            .map(|d| d.saturating_duration_since(Instant::now()));
        st.commit_final(&consumer, timeout, &bridge.metrics);
        st.abandoned()
    };
    shutdown.phase("offsets committed");
    for (tp, from, to) in &report.abandoned {
        tracing::warn!(partition = %tp, from, to, "abandoned offsets [from, to): not committed, a restart reads them again");
    }
    consumer.unsubscribe();
    if Arc::strong_count(&consumer) > 1 {
        // The final commit's thread still holds it: it closes when that commit returns.
        tracing::warn!("the consumer leaves the group once its unanswered commit returns");
    }
    drop(consumer); // closes the consumer: leaves the group so partitions move at once
    shutdown.phase("group left");
    report
}
