//! A topic is an identity, not a name: which incarnation of a topic PostgreSQL's rows came from.
//!
//! Kafka gives every topic a UUID when it is created (KIP-516), and every cluster an id. A
//! topic deleted and recreated under the same name, or a topic of the same name on another
//! cluster, has the same name and fresh offsets from 0: read as the old one, its records would
//! collide with the old rows (or pass below the stored watermark). So each identity PostgreSQL
//! has stored records of is bound, in `topic_identities`, to the name its rows, dead letters,
//! gaps, watermarks and documents are stored under. The first identity seen under a name is
//! stored under that name; any other is held until an operator binds it to a name of its own
//! (`log-processor topics adopt`). Pure rules here; the I/O is in `consumer::identity` and
//! `sink::postgres::identity`.

use std::collections::HashMap;
use std::fmt;

/// What Kafka says a topic is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TopicIdentity {
    /// The Kafka cluster's id (`cluster.id` of its metadata).
    pub cluster_id: String,
    /// The topic's id, base64 as Kafka's tools print it.
    pub topic_id: String,
}

impl fmt::Display for TopicIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "topic id {} on cluster {}",
            self.topic_id, self.cluster_id
        )
    }
}

/// The id librdkafka reports for a topic it knows no id of (brokers before Kafka 2.8).
pub const NO_TOPIC_ID: &str = "AAAAAAAAAAAAAAAAAAAAAA";

/// One row of `topic_identities`: records of `identity`, a topic named `topic` in Kafka, are
/// stored under the name `stored_as`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    pub identity: TopicIdentity,
    pub topic: String,
    pub stored_as: String,
}

/// What the daemon does with a topic of this identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Bound already: stored under this name.
    Bound(String),
    /// Seen for the first time and its name is free: bind it to its own name, then read it.
    /// Also what a schema from before identities were recorded looks like: its rows are taken
    /// to be this incarnation's (the end-offset check still catches a recreate that refilled
    /// less than the watermark).
    BindAsName,
    /// Another identity is stored under this name: reading this one would mix two topics.
    /// Held until an operator binds it to a name of its own.
    Conflict { stored: TopicIdentity },
}

/// How a topic named `name`, of identity `current`, is stored, given the bindings PostgreSQL
/// has for that name (as a Kafka topic name or as a stored name).
pub fn resolve(name: &str, current: &TopicIdentity, bindings: &[Binding]) -> Resolution {
    if let Some(b) = bindings.iter().find(|b| b.identity == *current) {
        return Resolution::Bound(b.stored_as.clone());
    }
    match bindings.iter().find(|b| b.stored_as == name) {
        Some(other) => Resolution::Conflict {
            stored: other.identity.clone(),
        },
        None => Resolution::BindAsName,
    }
}

/// What a held topic of another identity says (the daemon's error, `status`'s warning): both
/// identities and the remedy; a running daemon looks again every `recheck`.
pub fn conflict_message(
    topic: &str,
    current: &TopicIdentity,
    stored: &TopicIdentity,
    recheck: std::time::Duration,
) -> String {
    format!(
        "topic {topic} is now {current}, but PostgreSQL's records under the name {topic} came from \
         {stored} (the topic was deleted and recreated, or this is another cluster): reading it \
         would mix two topics. To store this incarnation under a name of its own, read from its \
         beginning, run `log-processor topics adopt --topic {topic}`; the daemon picks it up \
         within {} s",
        recheck.as_secs()
    )
}

/// Read-only resolution, for commands that bind nothing (`status`): the Kafka topic each
/// stored name reads (a topic resolved to no binding reads its own name), and why each topic in
/// conflict is held.
pub fn stored_names(
    topics: &[String],
    current: &HashMap<String, TopicIdentity>,
    bindings: &[Binding],
    recheck: std::time::Duration,
) -> (HashMap<String, String>, HashMap<String, String>) {
    let mut names = HashMap::new();
    let mut conflicts = HashMap::new();
    for topic in topics {
        let name = match current
            .get(topic)
            .map(|id| (id, resolve(topic, id, bindings)))
        {
            Some((_, Resolution::Bound(name))) => name,
            Some((id, Resolution::Conflict { stored })) => {
                conflicts.insert(topic.clone(), conflict_message(topic, id, &stored, recheck));
                topic.clone()
            }
            Some((_, Resolution::BindAsName)) | None => topic.clone(),
        };
        names.insert(name, topic.clone());
    }
    (names, conflicts)
}

/// The name `topics adopt` stores a new incarnation under unless told otherwise: the topic's
/// name and the start of its id, so two incarnations never share one.
pub fn default_stored_name(topic: &str, identity: &TopicIdentity) -> String {
    let id: String = identity
        .topic_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect();
    format!("{topic}@{id}")
}

/// Why a name cannot be bound to `identity`, if it cannot: it must not be taken by another
/// identity, and must not be another Kafka topic's name (whose first incarnation would
/// otherwise be stored under it later).
pub fn check_new_name(
    stored_as: &str,
    identity: &TopicIdentity,
    bindings: &[Binding],
    kafka_topics: &[String],
) -> Result<(), String> {
    if stored_as.is_empty() || stored_as.len() > 200 {
        return Err("a stored name must have 1 to 200 characters".into());
    }
    if let Some(b) = bindings
        .iter()
        .find(|b| b.stored_as == stored_as && b.identity != *identity)
    {
        return Err(format!(
            "name {stored_as} already holds the records of topic {} ({})",
            b.topic, b.identity
        ));
    }
    if kafka_topics.iter().any(|t| t == stored_as) {
        return Err(format!(
            "{stored_as} is the name of a Kafka topic: its own records would be stored under it"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(c: &str, t: &str) -> TopicIdentity {
        TopicIdentity {
            cluster_id: c.into(),
            topic_id: t.into(),
        }
    }

    fn bound(topic: &str, identity: TopicIdentity, stored_as: &str) -> Binding {
        Binding {
            identity,
            topic: topic.into(),
            stored_as: stored_as.into(),
        }
    }

    #[test]
    fn first_sight_binds_to_the_name() {
        assert_eq!(resolve("logs", &id("c", "a"), &[]), Resolution::BindAsName);
    }

    #[test]
    fn a_known_identity_keeps_its_name() {
        let b = [bound("logs", id("c", "a"), "logs")];
        assert_eq!(
            resolve("logs", &id("c", "a"), &b),
            Resolution::Bound("logs".into())
        );
    }

    #[test]
    fn a_recreated_topic_or_another_cluster_conflicts() {
        let b = [bound("logs", id("c", "a"), "logs")];
        for other in [id("c", "b"), id("d", "a")] {
            assert_eq!(
                resolve("logs", &other, &b),
                Resolution::Conflict {
                    stored: id("c", "a")
                }
            );
        }
    }

    #[test]
    fn an_adopted_incarnation_reads_under_its_own_name() {
        let b = [
            bound("logs", id("c", "a"), "logs"),
            bound("logs", id("c", "b"), "logs@b"),
        ];
        assert_eq!(
            resolve("logs", &id("c", "b"), &b),
            Resolution::Bound("logs@b".into())
        );
        // The old one, back on another cluster's daemon, still reads under the name.
        assert_eq!(
            resolve("logs", &id("c", "a"), &b),
            Resolution::Bound("logs".into())
        );
    }

    #[test]
    fn status_reads_adopted_names_and_names_conflicts() {
        let b = [
            bound("logs", id("c", "a"), "logs"),
            bound("audit", id("c", "x"), "audit"),
            bound("audit", id("c", "y"), "audit@y"),
        ];
        let topics = ["logs".to_string(), "audit".to_string(), "new".to_string()];
        let current = HashMap::from([
            ("logs".to_string(), id("c", "b")),
            ("audit".to_string(), id("c", "y")),
        ]);
        let (names, conflicts) =
            stored_names(&topics, &current, &b, std::time::Duration::from_secs(10));
        assert_eq!(names["audit@y"], "audit");
        assert_eq!(
            (names["logs"].as_str(), names["new"].as_str()),
            ("logs", "new")
        );
        assert!(conflicts["logs"].contains("topics adopt --topic logs"));
        assert_eq!(conflicts.len(), 1);
    }

    #[test]
    fn the_default_name_differs_per_incarnation() {
        let a = default_stored_name("logs", &id("c", "Zx+9/aQ1bCdEfGh"));
        assert_eq!(a, "logs@Zx9aQ1bC");
        assert_ne!(a, default_stored_name("logs", &id("c", "Yx+9/aQ1bCdEfGh")));
    }

    #[test]
    fn a_new_name_is_neither_taken_nor_a_topic() {
        let b = [bound("logs", id("c", "a"), "logs")];
        let topics = vec!["logs".to_string(), "audit".to_string()];
        assert!(check_new_name("logs", &id("c", "b"), &b, &topics).is_err());
        assert!(check_new_name("audit", &id("c", "b"), &b, &topics).is_err());
        assert!(check_new_name("", &id("c", "b"), &b, &topics).is_err());
        assert!(check_new_name("logs@b", &id("c", "b"), &b, &topics).is_ok());
    }
}
