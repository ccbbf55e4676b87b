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
        // Only writes under way are finished. What was read but is not being written yet (open
        // batches, batches waiting for a worker or queued in one) is given up, uncommitted:
        // the partition's next owner reads it again. Writing it here would make the exit, and
        // so the handoff, wait for work the next owner does anyway (with 48 partitions, one
        // final batch each took seconds).
        let all = st.core.begin_close();
        pause(&consumer, &all);
    }
    shutdown.phase("fetching stopped");

    // Close the queues, and wait for the last worker to exit.
    let mut abort_seen: Option<Instant> = None;
    loop {
        bridge.metrics.consumer_beat();
        {
            let mut st = bridge.lock();
            st.drain_acks();
            if shutdown.abort.is_cancelled() {
                st.core.drop_pending();
            }
            st.dispatch();
            if !st.core.has_pending() {
                st.close_queues();
            }
            if st.workers_gone() {
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
        ConsumerReport {
            abandoned: st.core.abandoned(),
        }
    };
    shutdown.phase("offsets committed");
    for (tp, from, to) in &report.abandoned {
        tracing::warn!(partition = %tp, from, to, "abandoned offsets [from, to): not committed, a restart reads them again");
    }
    leave(consumer, &shutdown);
    report
}

/// How long closing the consumer may wait for the broker to answer its LeaveGroup.
///
/// A broker answers one connection's requests in order, so a LeaveGroup sent while this
/// member's JoinGroup is held (a rebalance waiting for the other members to rejoin) is answered
/// only once that join completes. Members of a log-processor group notice a rebalance within
/// one heartbeat (`client::HEARTBEAT_INTERVAL_MAX`), so a held join normally ends well inside
/// this bound; librdkafka itself would wait up to 5 s (its LeaveGroup timeout) for nothing.
const LEAVE_TIMEOUT: Duration = Duration::from_millis(1000);

/// Unsubscribes and closes the consumer (unassign, LeaveGroup, destroy) on a side thread,
/// waited for at most `LEAVE_TIMEOUT` and never past the hard deadline. Offsets are committed
/// by then: what is left to lose by not waiting is only a prompt rebalance of the others, and
/// the log says so.
fn leave(consumer: Arc<Kafka>, shutdown: &crate::shutdown::Shutdown) {
    let bound = shutdown
        .hard_deadline()
        .map_or(LEAVE_TIMEOUT, |d| {
            d.saturating_duration_since(Instant::now())
        })
        .min(LEAVE_TIMEOUT);
    let (done, left) = std::sync::mpsc::sync_channel::<()>(1);
    let closer = std::thread::Builder::new()
        .name("kafka-leave".into())
        .spawn(move || {
            // The final commit's thread holds the consumer until its commit returns (a moment
            // after it answered, or never if the broker does not answer): close it after that.
            let mut consumer = consumer;
            let consumer = loop {
                match Arc::try_unwrap(consumer) {
                    Ok(only) => break only,
                    Err(shared) => consumer = shared,
                }
                std::thread::sleep(Duration::from_millis(2));
            };
            // Both wait for the group handler: unsubscribing sends the LeaveGroup.
            consumer.unsubscribe();
            drop(consumer); // closes the consumer: leaves the group so partitions move at once
            let _ = done.send(());
        });
    if let Err(e) = closer {
        tracing::error!(error = %e, "could not start the thread that closes the consumer");
        return;
    }
    match left.recv_timeout(bound) {
        Ok(()) => shutdown.phase("group left"),
        Err(_) => {
            tracing::warn!(
                waited_ms = bound.as_millis() as u64,
                "the consumer did not leave the group in time (the broker holds a group join of \
                 this member for a rebalance, or the final commit is unanswered); exiting \
                 without waiting: the broker removes this member after LP_SESSION_TIMEOUT_MS"
            );
            shutdown.phase("group leave abandoned");
        }
    }
}
