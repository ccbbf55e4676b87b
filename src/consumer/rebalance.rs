//! Rebalances: the rdkafka rebalance callback turned into typed events, where an assigned
//! partition starts, and what a revocation waits for.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::topic_partition_list::Offset;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaRespErr;

use crate::model::TopicPartition;

use super::Kafka;
use super::client::Bridge;
use super::rules::Phase;
use super::start::{Start, end_offset, start_offset};
use super::state::{partitions_of, pause, tpl_at, tpl_of};

impl Bridge {
    /// Handles a rebalance on the consumer thread, inside librdkafka's callback (which must
    /// assign or unassign before it returns).
    pub(super) fn handle(&self, consumer: &Kafka, event: Rebalance) {
        self.metrics.rebalances.fetch_add(1, Relaxed);
        self.watch().progress(Instant::now());
        match event {
            Rebalance::Assign { partitions } => self.on_assign(consumer, &partitions),
            Rebalance::Revoke { partitions, lost } => self.on_revoke(consumer, &partitions, lost),
        }
    }

    fn on_assign(&self, consumer: &Kafka, tps: &[TopicPartition]) {
        let mut start = Vec::with_capacity(tps.len());
        // Partitions started at a known offset (committed to Kafka even if nothing follows),
        // and partitions that must not be read.
        let mut started = Vec::new();
        let mut held = Vec::new();
        // Which incarnation of each topic this is, before anything is read of it, and each
        // partition as its records are stored (see `Batch::stored`).
        let (stored_as, identity_held) = self.assign_identities(consumer, tps);
        if !tps.is_empty() {
            let (blocked, readable): (Vec<&TopicPartition>, Vec<&TopicPartition>) = tps
                .iter()
                .partition(|tp| identity_held.contains_key(&*tp.topic));
            for tp in blocked {
                held.push((tp.clone(), identity_held[&*tp.topic].clone()));
                start.push((tp.clone(), Offset::Invalid));
            }
            let readable: Vec<TopicPartition> = readable.into_iter().cloned().collect();
            // Bounds the end-offset checks below as a whole, not per partition.
            let checks_until = Instant::now() + Duration::from_secs(10);
            let Some(stored) = self.stored_offsets(&readable, &stored_as) else {
                // Starting anywhere else could skip records or swallow a recreated topic: hold
                // them, and rejoin the group to be assigned again (and read again) shortly.
                self.assign_held(
                    consumer,
                    tps,
                    "start offsets unknown: PostgreSQL's watermarks could not be read",
                );
                return;
            };
            let committed = self.committed_offsets(consumer, &readable);
            for tp in &readable {
                let kafka = committed.as_ref().map(|c| c.get(tp).copied());
                let policy = self.settings.start_without_watermark;
                let offset = match start_offset(stored.get(tp).copied(), kafka, policy) {
                    Start::Rewound { stored, committed } => {
                        tracing::warn!(partition = %tp, stored, committed, "Kafka's committed offset is ahead of PostgreSQL's watermark: the database went back in time (a restore, a failover to a lagging replica); reading [stored, committed) again");
                        self.metrics.rewinds.fetch_add(1, Relaxed);
                        self.start_stored(
                            consumer,
                            tp,
                            stored,
                            checks_until,
                            &mut held,
                            &mut started,
                        )
                    }
                    Start::Stored(pg) => {
                        self.start_stored(consumer, tp, pg, checks_until, &mut held, &mut started)
                    }
                    Start::Committed(k) => {
                        let end = (Instant::now() < checks_until)
                            .then(|| end_offset(consumer, tp))
                            .flatten();
                        if end.is_some_and(|end| end < k) {
                            // No watermark stored (cleared by the operator) and Kafka's offset
                            // lies past the end: the topic was recreated. Read it from its start.
                            tracing::warn!(partition = %tp, committed = k, "Kafka's committed offset is past the end of the partition; reading it from the beginning");
                            Offset::Beginning
                        } else {
                            started.push((tp.clone(), k));
                            Offset::Offset(k)
                        }
                    }
                    Start::Beginning { ignored: Some(k) } => {
                        tracing::warn!(partition = %tp, committed = k, "no watermark stored for this partition, but the group has a committed offset in Kafka: the database lacks its progress (a new schema, or a restore from before its first batch); reading it from the log's start (LP_START_WITHOUT_WATERMARK=earliest)");
                        self.metrics.rewinds.fetch_add(1, Relaxed);
                        Offset::Beginning
                    }
                    Start::Beginning { ignored: None } => Offset::Beginning,
                    Start::AskKafka => Offset::Invalid,
                };
                start.push((tp.clone(), offset));
            }
            tracing::info!(partitions = ?readable.iter().map(ToString::to_string).collect::<Vec<_>>(), postgres = ?stored.values().collect::<Vec<_>>(), "partitions assigned");
        }
        let start = tpl_at(start.iter().map(|(tp, o)| (tp, *o)));
        let result = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_assign(&start),
            _ => consumer.assign(&start),
        };
        let mut st = self.lock();
        if let Err(e) = result {
            tracing::error!(error = %e, "assign failed");
            let why = format!("assign failed: {e}");
            for tp in tps {
                st.core.own(tp.clone(), stored_as[tp].clone());
                st.core.hold(tp.clone(), why.clone());
            }
            st.core.rejoin(why, Instant::now());
            drop(st);
            return;
        }
        for tp in tps {
            st.core.own(tp.clone(), stored_as[tp].clone());
        }
        // librdkafka keeps a partition's pause across unassign and assign: one this consumer
        // paused before it was revoked would come back paused while the core, which forgot it,
        // counts it as fetching, and no record of it would ever be read again. Every partition
        // starts resumed; the core pauses again those it wants paused (`apply_pause` below).
        if let Err(e) = consumer.resume(&tpl_of(tps)) {
            tracing::warn!(error = %e, "resume of assigned partitions failed");
        }
        for (tp, offset) in started {
            st.core.start_at(&tp, offset);
        }
        for (tp, reason) in held {
            tracing::error!(partition = %tp, "{reason}");
            st.core.hold(tp, reason);
        }
        if st.core.phase() == Phase::Closing {
            pause(consumer, tps);
        } else {
            st.apply_pause(consumer);
        }
        drop(st);
        self.metrics.set_joined();
    }

    fn on_revoke(&self, consumer: &Kafka, tps: &[TopicPartition], lost: bool) {
        let began = Instant::now();
        crate::failpoint::hit_blocking("in_revoke");
        let mut st = self.lock();
        st.core.begin_revoke(tps); // batches not started yet are given up at once
        if !lost && st.core.phase() == Phase::Running {
            // Let the writes under way for these partitions finish, within a bound below the
            // session timeout (and before the shutdown abort, if one is coming).
            let mut until = Instant::now() + self.settings.revoke_drain_timeout;
            if let Some(at) = self.shutdown.abort_at() {
                until = until.min(at);
            }
            while st.core.writing(tps) && Instant::now() < until {
                st.wait_ack(Duration::from_millis(20));
            }
            // A worker acknowledges a batch before it stops counting it as written.
            st.drain_acks();
        }
        st.core.cancel_writes(tps); // whatever is still running for them is given up
        if !lost {
            // Still owned during the callback: the last moment these partitions may be
            // committed. Sent without waiting, so the callback stays bounded; if it is lost,
            // the next owner still starts at PostgreSQL's watermark.
            st.commit(consumer, true, &self.metrics);
        }
        st.core.forget(tps);
        drop(st);
        if lost && crate::failpoint::skips("lost_unassign") {
            return;
        }
        let result = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_unassign(&tpl_of(tps)),
            _ => consumer.unassign(),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "unassign failed");
        }
        tracing::info!(partitions = ?tps.iter().map(ToString::to_string).collect::<Vec<_>>(), lost, took_ms = began.elapsed().as_millis() as u64, "partitions revoked");
    }

    /// A partition started at PostgreSQL's watermark `pg`, unless the topic's end lies below it
    /// (the topic was deleted and recreated): then it is held.
    fn start_stored(
        &self,
        consumer: &Kafka,
        tp: &TopicPartition,
        pg: i64,
        checks_until: Instant,
        held: &mut Vec<(TopicPartition, String)>,
        started: &mut Vec<(TopicPartition, i64)>,
    ) -> Offset {
        let end = (Instant::now() < checks_until)
            .then(|| end_offset(consumer, tp))
            .flatten();
        if let Some(end) = end.filter(|&end| end < pg) {
            held.push((tp.clone(), format!(
                "topic end offset {end} is below the stored watermark {pg}: was the topic \
                 deleted and recreated? Move away or delete this partition's rows in log_records, dead_letters and consumer_offsets (they hold the old topic's records under the same offsets), then restart"
            )));
        } else {
            started.push((tp.clone(), pg));
        }
        Offset::Offset(pg)
    }

    /// Assigns `tps` but holds them (paused, unread), and asks the loop to rejoin the group.
    fn assign_held(&self, consumer: &Kafka, tps: &[TopicPartition], why: &str) {
        let tpl = tpl_of(tps);
        let result = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_assign(&tpl),
            _ => consumer.assign(&tpl),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "assign failed");
        }
        let mut st = self.lock();
        for tp in tps {
            st.core.own(tp.clone(), tp.clone());
            st.core.hold(tp.clone(), why.to_string());
        }
        st.core.rejoin(why.to_string(), Instant::now());
        st.apply_pause(consumer);
    }

    /// PostgreSQL's stored next offsets of Kafka partitions `tps`, read under their stored
    /// names (`stored_as`), or `None` when they could not be read within 5 s.
    pub(super) fn stored_offsets(
        &self,
        tps: &[TopicPartition],
        stored_as: &HashMap<TopicPartition, TopicPartition>,
    ) -> Option<HashMap<TopicPartition, i64>> {
        let kafka: HashMap<&TopicPartition, &TopicPartition> =
            tps.iter().map(|tp| (&stored_as[tp], tp)).collect();
        let stored: Vec<TopicPartition> = kafka.keys().map(|tp| (*tp).clone()).collect();
        match self.within(Duration::from_secs(5), self.offsets.load(&stored)) {
            Ok(m) => Some(
                m.into_iter()
                    .filter_map(|(tp, o)| kafka.get(&tp).map(|k| ((*k).clone(), o)))
                    .collect(),
            ),
            Err(e) => {
                tracing::error!(error = %e, "could not read the stored offsets");
                None
            }
        }
    }

    /// Kafka's committed offsets; `None` when they could not be read.
    pub(super) fn committed_offsets(
        &self,
        consumer: &Kafka,
        tps: &[TopicPartition],
    ) -> Option<HashMap<TopicPartition, i64>> {
        match consumer.committed_offsets(tpl_of(tps), Duration::from_secs(5)) {
            Ok(list) => Some(
                list.elements()
                    .iter()
                    .filter_map(|e| match e.offset() {
                        Offset::Offset(o) => {
                            Some((TopicPartition::new(e.topic(), e.partition()), o))
                        }
                        _ => None,
                    })
                    .collect(),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "could not read committed offsets");
                None
            }
        }
    }
}

/// A rebalance as the consumer handles it, turned from librdkafka's callback into a value.
#[derive(Debug)]
pub(super) enum Rebalance {
    Assign {
        partitions: Vec<TopicPartition>,
    },
    /// `lost`: the partitions were taken away (session timeout), so nothing may be committed
    /// for them any more.
    Revoke {
        partitions: Vec<TopicPartition>,
        lost: bool,
    },
}

impl ConsumerContext for Bridge {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        if self.retired.load(Relaxed) {
            // Being closed after a replacement: the state belongs to the successor.
            if let Err(e) = consumer.unassign() {
                tracing::debug!(error = %e, "unassign of a replaced consumer failed");
            }
            return;
        }
        let event = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => Rebalance::Assign {
                partitions: partitions_of(tpl),
            },
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => Rebalance::Revoke {
                partitions: partitions_of(tpl),
                lost: consumer.assignment_lost(),
            },
            other => {
                tracing::error!(error = ?other, "rebalance error; giving up the assignment");
                let owned = self.lock().core.owned();
                Rebalance::Revoke {
                    partitions: owned,
                    lost: true,
                }
            }
        };
        self.handle(consumer, event);
    }
}
