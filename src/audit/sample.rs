//! The daemon's continuous check, cheap enough to leave on: every `LP_AUDIT_INTERVAL_MS`, the
//! last `LP_AUDIT_SAMPLE` offsets below each partition's watermark (the most recently stored)
//! are compared across both stores by the audit's own rules, without reading Kafka, and what
//! is seen twice a moment apart counts in `log_processor_divergence_total{kind}`, once for as
//! long as it stays in the sample.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Kind, read, rules};
use crate::metrics::Metrics;
use crate::model::TopicPartition;
use crate::sink::elastic::ElasticSink;
use crate::sink::postgres::PgSink;

/// How long a divergence must last to count: longer than a batch takes between its documents
/// and its transaction, and than the search store's refresh.
const RECHECK: Duration = Duration::from_secs(3);

pub struct Sampler {
    pub pg: PgSink,
    pub es: ElasticSink,
    pub metrics: Arc<Metrics>,
    /// Every partition this group has a watermark of is sampled, under whatever name it is
    /// stored (an adopted incarnation's too).
    pub group_id: String,
    pub interval: Duration,
    pub size: i64,
}

impl Sampler {
    pub async fn run(self, stop: CancellationToken) {
        for kind in Kind::ALL {
            self.metrics.divergences_found(kind.as_str(), 0);
        }
        let mut counted = HashMap::new();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.interval) => {}
            }
            if let Err(e) = self.round(&mut counted).await {
                tracing::warn!(error = %e, "sampled audit round failed; trying again next round");
            }
        }
    }

    /// One check of every partition. `counted` holds what the last round confirmed per
    /// partition: a divergence that stays is counted once, not once a round.
    async fn round(
        &self,
        counted: &mut HashMap<TopicPartition, HashSet<rules::Finding>>,
    ) -> Result<(), crate::sink::SinkError> {
        let watermarks = self.pg.watermarks(&self.group_id, &[]).await?;
        for (tp, watermark) in watermarks {
            let (from, to) = ((watermark - self.size).max(0), watermark);
            let stored = read::stored(&self.pg, &self.es, &tp, from, to).await?;
            let first = rules::check(&read::range(&self.es, &tp, from, to, None, &stored));
            self.metrics.audited.fetch_add((to - from) as u64, Relaxed);
            if first.is_empty() {
                counted.remove(&tp);
                continue;
            }
            tokio::time::sleep(RECHECK).await;
            // Documents written meanwhile are searchable only after a refresh, whatever the
            // index's refresh interval.
            self.es.refresh().await?;
            let stored = read::stored(&self.pg, &self.es, &tp, from, to).await?;
            let again = rules::check(&read::range(&self.es, &tp, from, to, None, &stored));
            let found: HashSet<rules::Finding> =
                rules::confirmed(&first, &again).into_iter().collect();
            let before = counted
                .insert(tp.clone(), found.clone())
                .unwrap_or_default();
            let new: Vec<rules::Finding> = found.difference(&before).cloned().collect();
            for (kind, n) in super::run::by_kind(&new) {
                self.metrics.divergences_found(kind.as_str(), n);
                tracing::warn!(
                    partition = %tp,
                    kind = kind.as_str(),
                    count = n,
                    "divergence between the stores (run `log-processor audit`)"
                );
            }
        }
        Ok(())
    }
}
