//! `log-processor topics list` and `topics adopt`: which incarnation of each topic the stored
//! names hold, and the operator's step when a topic was recreated or another cluster's topic of
//! the same name is read (see `crate::identity`).

use std::fmt;

use clap::{Args, Subcommand};
use rdkafka::consumer::Consumer;
use serde::Serialize;

use super::AdminError;
pub use super::ListArgs;
use crate::config::Settings;
use crate::identity::{
    Binding, Resolution, TopicIdentity, check_new_name, default_stored_name, resolve,
};

#[derive(Subcommand)]
pub enum TopicsCommand {
    /// Each topic's identity in Kafka now and the identities PostgreSQL stores records of.
    List(ListArgs),
    /// Stores the topic's current incarnation under a name of its own (read from its
    /// beginning), when another incarnation's records hold the topic's name: after a topic was
    /// deleted and recreated, or when the daemon reads another cluster's topic of that name.
    Adopt(AdoptArgs),
}

#[derive(Args, Clone, Debug)]
pub struct AdoptArgs {
    /// The Kafka topic whose current incarnation is adopted.
    #[arg(long)]
    pub topic: String,
    /// The name to store it under (default: the topic's name, `@` and the start of its id).
    #[arg(long = "as")]
    pub stored_as: Option<String>,
    #[command(flatten)]
    pub settings: Settings,
}

/// One identity PostgreSQL stores records of, or the one Kafka has now.
#[derive(Debug, Serialize)]
pub struct TopicRow {
    pub topic: String,
    pub cluster_id: String,
    pub topic_id: String,
    /// Where its records are stored; `None`: Kafka's current incarnation, not bound (yet).
    pub stored_as: Option<String>,
    /// This is the incarnation the configured cluster has now.
    pub current: bool,
}

#[derive(Debug, Serialize)]
pub struct Listing {
    pub topics: Vec<TopicRow>,
}

/// The identities of the configured topics, in Kafka now and in PostgreSQL.
pub async fn list(args: &ListArgs) -> Result<Listing, AdminError> {
    let pg = super::pg(&args.settings)?;
    // With patterns, the names PostgreSQL stores too: identities of matching topics deleted
    // from Kafka since still hold records.
    let mut topics = kafka_topics(&args.settings).await?;
    topics.extend(super::selection::in_postgres(&args.settings, &pg).await?);
    topics.sort();
    topics.dedup();
    let current = current_identities(&args.settings, &topics).await?;
    let bindings = pg.bindings(&topics).await?;
    pg.close().await;
    let mut rows: Vec<TopicRow> = bindings
        .iter()
        .map(|b| TopicRow {
            topic: b.topic.clone(),
            cluster_id: b.identity.cluster_id.clone(),
            topic_id: b.identity.topic_id.clone(),
            stored_as: Some(b.stored_as.clone()),
            current: current.iter().any(|(_, id)| *id == b.identity),
        })
        .collect();
    for (topic, id) in &current {
        if !bindings.iter().any(|b| b.identity == *id) {
            rows.push(TopicRow {
                topic: topic.clone(),
                cluster_id: id.cluster_id.clone(),
                topic_id: id.topic_id.clone(),
                stored_as: None,
                current: true,
            });
        }
    }
    rows.sort_by(|a, b| (&a.topic, &a.stored_as).cmp(&(&b.topic, &b.stored_as)));
    Ok(Listing { topics: rows })
}

/// Binds the topic's current incarnation to a name of its own. Idempotent: adopting an
/// incarnation already bound says where it is stored and changes nothing.
pub async fn adopt(args: &AdoptArgs) -> Result<String, AdminError> {
    let topic = &args.topic;
    let current = current_identities(&args.settings, std::slice::from_ref(topic)).await?;
    let Some((_, identity)) = current.into_iter().next() else {
        return Err(AdminError::Kafka(format!(
            "topic {topic} does not exist in Kafka, or Kafka gives it no id"
        )));
    };
    let name = args
        .stored_as
        .clone()
        .unwrap_or_else(|| default_stored_name(topic, &identity));
    let pg = super::pg(&args.settings)?;
    let result = bind(&pg, &args.settings, topic, &identity, &name).await;
    pg.close().await;
    result
}

async fn bind(
    pg: &crate::sink::postgres::PgSink,
    settings: &Settings,
    topic: &str,
    identity: &TopicIdentity,
    name: &str,
) -> Result<String, AdminError> {
    let bindings = pg.bindings(&[topic.to_string(), name.to_string()]).await?;
    if let Resolution::Bound(stored_as) = resolve(topic, identity, &bindings) {
        return Ok(format!(
            "topic {topic} ({identity}) is stored as {stored_as} already; nothing changed"
        ));
    }
    let selection = settings.topic_selection()?;
    if selection.has_patterns() && !selection.select(&[name]).is_empty() {
        return Err(AdminError::Refused(format!(
            "{name} matches a pattern of LP_TOPICS: a topic of that name created later would \
             be stored under it too; choose another name with --as"
        )));
    }
    let kafka = kafka_topics(settings).await?;
    check_new_name(name, identity, &bindings, &kafka).map_err(AdminError::Refused)?;
    if pg.holds_records_under(name).await? {
        return Err(AdminError::Refused(format!(
            "PostgreSQL holds records under the name {name} already, of no recorded topic \
             identity: choose another name with --as"
        )));
    }
    let b = pg
        .bind(&Binding {
            identity: identity.clone(),
            topic: topic.to_string(),
            stored_as: name.to_string(),
        })
        .await?;
    Ok(format!(
        "topic {topic} ({identity}) is now stored as {}: its partitions are read from their \
         beginning under that name; a running daemon picks it up within {} s",
        b.stored_as,
        crate::consumer::IDENTITY_RECHECK.as_secs()
    ))
}

/// The topics LP_TOPICS selects in Kafka now (`selection::in_kafka`).
async fn kafka_topics(settings: &Settings) -> Result<Vec<String>, AdminError> {
    let client = super::kafka_client(settings, "log-processor-topics")?;
    let s = settings.clone();
    tokio::task::spawn_blocking(move || super::selection::in_kafka(&client, &s))
        .await
        .map_err(|e| AdminError::Kafka(e.to_string()))?
}

/// What Kafka says each of `topics` is now (topics without an id are left out).
pub(crate) async fn current_identities(
    settings: &Settings,
    topics: &[String],
) -> Result<Vec<(String, TopicIdentity)>, AdminError> {
    let client = super::kafka_client(settings, "log-processor-topics")?;
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || {
        crate::consumer::identities(client.client(), &topics, std::time::Duration::from_secs(10))
    })
    .await
    .map_err(|e| AdminError::Kafka(e.to_string()))?
    .map_err(AdminError::Kafka)
    .map(|m| {
        let mut v: Vec<_> = m.into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    })
}

impl fmt::Display for Listing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "TOPIC  CLUSTER  TOPIC_ID  STORED_AS  KAFKA_NOW")?;
        for r in &self.topics {
            writeln!(
                f,
                "{}  {}  {}  {}  {}",
                r.topic,
                r.cluster_id,
                r.topic_id,
                r.stored_as.as_deref().unwrap_or("(held: not bound)"),
                if r.current { "yes" } else { "no" }
            )?;
        }
        write!(f, "total: identities={}", self.topics.len())
    }
}
