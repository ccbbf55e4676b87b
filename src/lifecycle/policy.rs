//! The lifecycle as each store's policy: an ILM policy (Elasticsearch 8/9, attached by the
//! index template's `index.lifecycle.name`) and an ISM policy (OpenSearch 2/3, attached by its
//! own `ism_template` to the indices created under the given patterns).

use std::time::Duration;

use serde_json::{Value, json};

use super::Lifecycle;

/// The policy's name in either store.
pub const POLICY_NAME: &str = "log-processor";

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

/// `PUT _ilm/policy/log-processor`'s body. ILM counts a phase's `min_age` from the rollover
/// once an index rolled over, from its creation otherwise.
pub fn ilm_policy(l: &Lifecycle) -> Value {
    let mut hot = json!({ "min_age": "0ms", "actions": {} });
    if let Some(r) = &l.rollover {
        let mut rollover = json!({});
        if let Some(mb) = r.max_size_mb {
            rollover["max_primary_shard_size"] = json!(format!("{mb}mb"));
        }
        if let Some(age) = r.max_age {
            rollover["max_age"] = json!(secs(age));
        }
        hot["actions"]["rollover"] = rollover;
    }
    let mut phases = json!({ "hot": hot });
    if let Some(warm) = l.warm_after {
        phases["warm"] = json!({ "min_age": secs(warm), "actions": { "readonly": {} } });
    }
    phases["delete"] = json!({ "min_age": secs(l.delete_after), "actions": { "delete": {} } });
    json!({ "policy": { "_meta": { "managed_by": "log-processor" }, "phases": phases } })
}

/// `PUT _plugins/_ism/policies/log-processor`'s body: states hot, (warm,) delete, entered
/// by age, which ISM counts from the rollover (`min_rollover_age`) where indices roll over
/// and from their creation otherwise.
pub fn ism_policy(l: &Lifecycle, patterns: &[String], priority: u32) -> Value {
    let condition = match l.rollover {
        Some(_) => "min_rollover_age",
        None => "min_index_age",
    };
    let to = |state: &str, age: Duration| json!([{ "state_name": state, "conditions": { condition: secs(age) } }]);
    let mut hot_actions = Vec::new();
    if let Some(r) = &l.rollover {
        let mut rollover = json!({});
        if let Some(mb) = r.max_size_mb {
            rollover["min_primary_shard_size"] = json!(format!("{mb}mb"));
        }
        if let Some(age) = r.max_age {
            rollover["min_index_age"] = json!(secs(age));
        }
        hot_actions.push(json!({ "rollover": rollover }));
    }
    let mut states = Vec::new();
    match l.warm_after {
        Some(warm) => {
            states.push(
                json!({ "name": "hot", "actions": hot_actions, "transitions": to("warm", warm) }),
            );
            states.push(json!({ "name": "warm", "actions": [{ "read_only": {} }], "transitions": to("delete", l.delete_after) }));
        }
        None => {
            states.push(json!({ "name": "hot", "actions": hot_actions, "transitions": to("delete", l.delete_after) }));
        }
    }
    states.push(json!({ "name": "delete", "actions": [{ "delete": {} }], "transitions": [] }));
    json!({ "policy": {
        "description": "log-processor: LP_ES_LIFECYCLE",
        "default_state": "hot",
        "states": states,
        "ism_template": [{ "index_patterns": patterns, "priority": priority }]
    } })
}
