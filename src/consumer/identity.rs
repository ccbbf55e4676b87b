//! Reading what Kafka says a topic is (its cluster's id and the topic's id), and binding the
//! consumer's topics to the names their records are stored under (see `crate::identity`).

use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char};
use std::time::{Duration, Instant};

use rdkafka::bindings as rd;
use rdkafka::client::Client;
use rdkafka::consumer::Consumer;

use crate::identity::{Binding, NO_TOPIC_ID, Resolution, TopicIdentity, conflict_message, resolve};
use crate::model::TopicPartition;

use super::Kafka;
use super::client::Bridge;

/// Bound on each read of the identities (one metadata request, one PostgreSQL query).
const IDENTITY_TIMEOUT: Duration = Duration::from_secs(5);

/// The identity of each of `topics` Kafka knows, keyed by name. Topics Kafka reports no id for
/// (brokers before 2.8) are left out: their identity cannot be checked.
pub fn identities<C: rdkafka::ClientContext>(
    client: &Client<C>,
    topics: &[String],
    timeout: Duration,
) -> Result<HashMap<String, TopicIdentity>, String> {
    let cluster_id = client
        .fetch_cluster_id(timeout)
        .ok_or("the cluster id could not be read")?;
    Ok(topic_ids(client, topics, timeout)?
        .into_iter()
        .filter(|(_, id)| id != NO_TOPIC_ID)
        .map(|(topic, topic_id)| {
            let cluster_id = cluster_id.clone();
            (
                topic,
                TopicIdentity {
                    cluster_id,
                    topic_id,
                },
            )
        })
        .collect())
}

/// Topic ids by name, from librdkafka's DescribeTopics (the safe wrapper has no call for it).
/// Topics that do not exist are left out.
fn topic_ids<C: rdkafka::ClientContext>(
    client: &Client<C>,
    topics: &[String],
    timeout: Duration,
) -> Result<HashMap<String, String>, String> {
    let names: Vec<CString> = topics
        .iter()
        .map(|t| CString::new(t.as_str()).map_err(|_| format!("topic name {t:?}")))
        .collect::<Result<_, _>>()?;
    let mut ptrs: Vec<*const c_char> = names.iter().map(|n| n.as_ptr()).collect();
    let rk = client.native_ptr();
    let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `rk` is the live client's handle; every object created here is destroyed here,
    // and `names` outlives the collection built from its pointers (librdkafka copies them).
    unsafe {
        let collection = rd::rd_kafka_TopicCollection_of_topic_names(ptrs.as_mut_ptr(), ptrs.len());
        let options = rd::rd_kafka_AdminOptions_new(
            rk,
            rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS,
        );
        let mut errstr = [0 as c_char; 256];
        rd::rd_kafka_AdminOptions_set_request_timeout(
            options,
            millis,
            errstr.as_mut_ptr(),
            errstr.len(),
        );
        let queue = rd::rd_kafka_queue_new(rk);
        rd::rd_kafka_DescribeTopics(rk, collection, options, queue);
        // The request times out on its own after `millis`; a little longer here, so its answer
        // (or its timeout) is the event polled.
        let event = rd::rd_kafka_queue_poll(queue, millis.saturating_add(1_000));
        let result = read_result(event);
        if !event.is_null() {
            rd::rd_kafka_event_destroy(event);
        }
        rd::rd_kafka_queue_destroy(queue);
        rd::rd_kafka_AdminOptions_destroy(options);
        rd::rd_kafka_TopicCollection_destroy(collection);
        result
    }
}

/// # Safety
/// `event` is null or a live event of a DescribeTopics request.
unsafe fn read_result(event: *mut rd::rd_kafka_event_t) -> Result<HashMap<String, String>, String> {
    if event.is_null() {
        return Err("DescribeTopics timed out".into());
    }
    unsafe {
        if rd::rd_kafka_event_error(event) != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return Err(text(rd::rd_kafka_event_error_string(event)));
        }
        let result = rd::rd_kafka_event_DescribeTopics_result(event);
        if result.is_null() {
            return Err("not a DescribeTopics result".into());
        }
        let mut n = 0usize;
        let descs = rd::rd_kafka_DescribeTopics_result_topics(result, &mut n);
        let mut ids = HashMap::new();
        for i in 0..n {
            let d = *descs.add(i);
            let err = rd::rd_kafka_TopicDescription_error(d);
            if !err.is_null() {
                let code = rd::rd_kafka_error_code(err);
                if code == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART {
                    continue;
                }
                return Err(text(rd::rd_kafka_error_string(err)));
            }
            let name = text(rd::rd_kafka_TopicDescription_name(d));
            let id = text(rd::rd_kafka_Uuid_base64str(
                rd::rd_kafka_TopicDescription_topic_id(d),
            ));
            ids.insert(name, id);
        }
        Ok(ids)
    }
}

fn text(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: librdkafka returns NUL-terminated strings that live as long as their event.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// How each topic of an assignment is to be read.
#[derive(Debug, Default)]
struct Identities {
    /// Topics to read, and the name their records are stored under.
    stored_as: HashMap<String, String>,
    /// Topics that must not be read, and why.
    held: HashMap<String, String>,
}

impl Bridge {
    /// Resolves the identities of `topics`, binding those seen for the first time. `Err` when
    /// Kafka's or PostgreSQL's side could not be read (or a binding not recorded): then
    /// nothing can be told about any of them.
    fn resolve_identities(
        &self,
        consumer: &Kafka,
        topics: &[String],
    ) -> Result<Identities, String> {
        let current = identities(consumer.client(), topics, IDENTITY_TIMEOUT)
            .map_err(|e| format!("the topic's identity could not be read from Kafka: {e}"))?;
        let bindings = self
            .within(IDENTITY_TIMEOUT, self.offsets.bindings(topics))
            .map_err(|e| format!("topic identities could not be read from PostgreSQL: {e}"))?;
        let mut out = Identities::default();
        for topic in topics {
            let Some(identity) = current.get(topic) else {
                // No id (an old broker) or not in the metadata yet: the name is all there is.
                out.stored_as.insert(topic.clone(), topic.clone());
                continue;
            };
            match resolve(topic, identity, &bindings) {
                Resolution::Bound(name) => {
                    out.stored_as.insert(topic.clone(), name);
                }
                Resolution::BindAsName => {
                    let binding = Binding {
                        identity: identity.clone(),
                        topic: topic.clone(),
                        stored_as: topic.clone(),
                    };
                    let b = self
                        .within(IDENTITY_TIMEOUT, self.offsets.bind(binding))
                        .map_err(|e| format!("topic identity {identity} not recorded: {e}"))?;
                    tracing::info!(topic, %identity, stored_as = b.stored_as, "topic identity recorded");
                    out.stored_as.insert(topic.clone(), b.stored_as);
                }
                Resolution::Conflict { stored } => {
                    out.held.insert(
                        topic.clone(),
                        conflict_message(topic, identity, &stored, super::IDENTITY_RECHECK),
                    );
                }
            }
        }
        Ok(out)
    }

    /// The identities of an assignment's topics (recorded for the periodic check): each
    /// partition as it is stored, and the topics that must not be read, with why. A topic whose
    /// identity cannot be told is held (reading it could mix two incarnations).
    pub(super) fn assign_identities(
        &self,
        consumer: &Kafka,
        tps: &[TopicPartition],
    ) -> (
        HashMap<TopicPartition, TopicPartition>,
        HashMap<String, String>,
    ) {
        if tps.is_empty() {
            return Default::default();
        }
        let mut topics: Vec<String> = tps.iter().map(|tp| tp.topic.to_string()).collect();
        topics.sort();
        topics.dedup();
        let ids = self
            .resolve_identities(consumer, &topics)
            .unwrap_or_else(|why| Identities {
                stored_as: HashMap::new(),
                held: topics.iter().map(|t| (t.clone(), why.clone())).collect(),
            });
        let mut st = self.lock();
        for t in &topics {
            st.identities
                .insert(t.clone(), ids.stored_as.get(t).cloned());
        }
        let stored_as = tps
            .iter()
            .map(|tp| {
                let name = ids
                    .stored_as
                    .get(&*tp.topic)
                    .map_or(&*tp.topic, String::as_str);
                (tp.clone(), TopicPartition::new(name, tp.partition))
            })
            .collect();
        (stored_as, ids.held)
    }

    /// The periodic check (`IDENTITY_RECHECK`): a topic recreated under the running daemon is
    /// held, and a held one an operator adopted meanwhile is picked up, both by a new member
    /// that is assigned them afresh. A check that cannot read its stores changes nothing.
    pub(super) fn recheck_identities(&self, consumer: &Kafka) {
        let before = self.lock().identities.clone();
        if before.is_empty() {
            return;
        }
        let topics: Vec<String> = before.keys().cloned().collect();
        let ids = match self.resolve_identities(consumer, &topics) {
            Ok(ids) => ids,
            Err(e) => {
                tracing::debug!(error = e, "topic identities not checked");
                return;
            }
        };
        let mut st = self.lock();
        for topic in topics {
            let now = ids.stored_as.get(&topic);
            if now == before[&topic].as_ref() {
                continue;
            }
            let why = match (&before[&topic], now) {
                (Some(_), _) => {
                    let why = ids.held.get(&topic).cloned().unwrap_or_else(|| {
                        format!("topic {topic} is now stored under another name")
                    });
                    // Nothing more is read under the old name from now on.
                    let mut owned = st.core.owned();
                    owned.retain(|tp| *tp.topic == *topic);
                    for tp in owned {
                        tracing::error!(partition = %tp, "{why}");
                        st.core.hold(tp, why.clone());
                    }
                    why
                }
                (None, Some(name)) => format!("topic {topic} is readable now, stored as {name}"),
                (None, None) => continue,
            };
            st.identities.insert(topic, now.cloned());
            st.core.rejoin_now(why, Instant::now());
        }
        st.apply_pause(consumer);
    }
}
