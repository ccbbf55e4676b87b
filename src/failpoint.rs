//! Named pause points for the chaos tests, compiled in only with the `failpoints` feature.
//!
//! `LP_FAILPOINTS=name=probability,...` makes the daemon, at a named point, log
//! `failpoint reached name=...` and stop there (sleep) with that probability, so a test can
//! SIGKILL it inside exactly that window. A few points instead skip a step (`skips`), to
//! put a dependency in a state that is otherwise rare: `lost_unassign` withholds the unassign
//! librdkafka waits for after a lost assignment, leaving its group handler stuck;
//! `lost_async_commit` drops a periodic commit of moved watermarks as a broker refusal would,
//! unseen; `worker_panic` makes a worker panic at its next batch; `consumer_wedge` stops the
//! consumer thread in its loop. Without the feature every call is an empty inline function: release binaries carry
//! none of this.

/// The points, in the order a batch meets them. Two more are met only by a batch with rows
/// PostgreSQL refuses: `refused_documents_removed` (their documents removed, the transaction
/// rolled back, not yet written again) and `after_refused_commit` (committed, where their
/// documents used to be removed); `tests/record_faults.rs` kills at both. `log-processor
/// reindex` meets `reindex_before_commit` (a batch indexed, its rows and position not yet
/// committed); `tests/reindex.rs` kills there.
pub const POINTS: [&str; 5] = [
    "after_es_bulk",       // documents indexed, PostgreSQL transaction not started
    "in_pg_transaction",   // rows inserted, transaction open, not committed
    "after_pg_commit",     // batch durable, not yet acknowledged to the consumer
    "before_kafka_commit", // watermark moved, Kafka commit not sent
    "in_revoke",           // partitions being revoked, not yet committed and unassigned
];

#[cfg(feature = "failpoints")]
mod imp {
    use std::collections::HashMap;
    use std::hash::{BuildHasher, RandomState};
    use std::sync::OnceLock;
    use std::time::Duration;

    fn table() -> &'static HashMap<String, f64> {
        static T: OnceLock<HashMap<String, f64>> = OnceLock::new();
        T.get_or_init(|| {
            std::env::var("LP_FAILPOINTS")
                .unwrap_or_default()
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .filter_map(|(k, v)| Some((k.trim().to_string(), v.trim().parse().ok()?)))
                .collect()
        })
    }

    fn fires(name: &str) -> bool {
        let Some(p) = table().get(name) else {
            return false;
        };
        let roll = RandomState::new().hash_one(name) % 1_000_000;
        (roll as f64) < p * 1_000_000.0
    }

    pub async fn hit(name: &str) {
        if fires(name) {
            tracing::warn!(name, "failpoint reached");
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    }

    pub fn hit_blocking(name: &str) {
        if fires(name) {
            tracing::warn!(name, "failpoint reached");
            std::thread::sleep(Duration::from_secs(3600));
        }
    }

    pub fn skips(name: &str) -> bool {
        let fired = fires(name);
        if fired {
            tracing::warn!(name, "failpoint reached; step skipped");
        }
        fired
    }
}

#[cfg(not(feature = "failpoints"))]
mod imp {
    #[inline(always)]
    pub async fn hit(_: &str) {}
    #[inline(always)]
    pub fn hit_blocking(_: &str) {}
    #[inline(always)]
    pub fn skips(_: &str) -> bool {
        false
    }
}

pub use imp::{hit, hit_blocking, skips};
