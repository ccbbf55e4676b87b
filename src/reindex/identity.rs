//! Which incarnation of a topic a re-index reads. The daemon stores each incarnation (Kafka's
//! topic id) under a name of its own (`topic_identities`, see `crate::identity`); a re-index
//! writes under the Kafka name and reads the daemon's rows by it, so it runs only where the
//! two agree: the topic's current incarnation is stored under its own name, or was never
//! recorded. Anything else is refused rather than mixing incarnations. Read only: a re-index
//! binds nothing.

use crate::identity::{Binding, Resolution, TopicIdentity, resolve};

/// Why `topic` (of identity `current`, `None` when Kafka reports no id) cannot be re-indexed
/// as it stands, given the bindings recorded for its name.
pub fn refusal(
    topic: &str,
    current: Option<&TopicIdentity>,
    bindings: &[Binding],
) -> Option<String> {
    let current = current?;
    match resolve(topic, current, bindings) {
        Resolution::Bound(name) if name == topic => None,
        Resolution::BindAsName => None,
        Resolution::Bound(name) => Some(format!(
            "topic {topic} ({current}) is stored under the name {name} (adopted after a \
             recreate), where reindex would write and read under {topic}: re-indexing an \
             adopted topic is not supported"
        )),
        Resolution::Conflict { stored } => Some(format!(
            "topic {topic} is now {current}, but the records stored under {topic} came from \
             {stored} (the topic was deleted and recreated): re-indexing would mix two \
             incarnations; adopt the new one first (`log-processor topics adopt`)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(topic_id: &str) -> TopicIdentity {
        TopicIdentity {
            cluster_id: "c".into(),
            topic_id: topic_id.into(),
        }
    }

    fn bound(topic_id: &str, topic: &str, stored_as: &str) -> Binding {
        Binding {
            identity: id(topic_id),
            topic: topic.into(),
            stored_as: stored_as.into(),
        }
    }

    #[test]
    fn only_an_incarnation_stored_under_its_own_name_is_re_indexed() {
        // Stored under its own name, never recorded, or no id known: read as named.
        assert_eq!(refusal("t", Some(&id("a")), &[bound("a", "t", "t")]), None);
        assert_eq!(refusal("t", Some(&id("a")), &[]), None);
        assert_eq!(refusal("t", None, &[bound("a", "t", "t")]), None);
        // Adopted under another name: the daemon's rows and documents are not under `t`.
        let e = refusal(
            "t",
            Some(&id("b")),
            &[bound("a", "t", "t"), bound("b", "t", "t_b")],
        );
        assert!(e.unwrap().contains("stored under the name t_b"));
        // Recreated, not adopted: the rows under `t` are the old incarnation's.
        let e = refusal("t", Some(&id("b")), &[bound("a", "t", "t")]);
        assert!(e.unwrap().contains("mix two incarnations"));
    }
}
