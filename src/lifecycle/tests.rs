use std::time::Duration;

use serde_json::json;

use super::*;

const DAY: Duration = Duration::from_secs(86_400);

#[test]
fn the_spec_reads_each_phase_and_refuses_what_it_cannot_mean() {
    let l = parse("rollover=10gb/1d, warm=7d, delete=30d").unwrap();
    assert_eq!(
        l,
        Lifecycle {
            rollover: Some(Rollover {
                max_size_mb: Some(10 * 1024),
                max_age: Some(DAY)
            }),
            warm_after: Some(7 * DAY),
            delete_after: 30 * DAY,
        }
    );
    assert_eq!(
        parse("delete=12h").unwrap().delete_after,
        12 * 3600 * Duration::from_secs(1)
    );
    assert_eq!(
        parse("rollover=500mb,delete=2d")
            .unwrap()
            .rollover
            .unwrap()
            .max_age,
        None
    );
    for bad in [
        "",
        "warm=1d",
        "delete=30",
        "delete=0d",
        "delete=-1d",
        "cold=1d,delete=2d",
        "rollover=big,delete=1d",
        "warm=3d,delete=2d",
        "delete",
    ] {
        assert!(parse(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn rollover_only_with_data_streams_and_data_streams_only_with_rollover() {
    let dated = parse("warm=7d,delete=30d").unwrap();
    let rolled = parse("rollover=1gb,delete=30d").unwrap();
    assert_eq!(check(&dated, false), Ok(()));
    assert_eq!(check(&rolled, true), Ok(()));
    assert_eq!(
        check(&rolled, false),
        Err(Refusal::RolloverWithoutDataStream)
    );
    assert_eq!(check(&dated, true), Err(Refusal::DataStreamWithoutRollover));
    assert!(
        Refusal::RolloverWithoutDataStream
            .to_string()
            .contains("LP_ES_DATA_STREAM")
    );
}

fn topic(name: &str, retention_days: Option<u64>, segment_days: u64) -> TopicRetention {
    TopicRetention {
        topic: name.into(),
        retention: retention_days.map(|d| d as u32 * DAY),
        segment: segment_days as u32 * DAY,
    }
}

#[test]
fn the_delete_age_must_outlast_the_longest_replay_window() {
    // Kafka's defaults: 7 days of retention, 7-day segments: records readable up to 14 days.
    let topics = [topic("a", Some(7), 7), topic("b", Some(1), 1)];
    assert_eq!(covers_replays(15 * DAY, &topics), ReplayWindow::Covered);
    assert_eq!(
        covers_replays(14 * DAY, &topics),
        ReplayWindow::TooShort {
            topic: topics[0].clone()
        }
    );
    assert_eq!(
        covers_replays(10 * DAY, &topics),
        ReplayWindow::TooShort {
            topic: topics[0].clone()
        }
    );
    // A topic kept for ever can always be replayed: no delete age is long enough.
    let forever = [topic("a", Some(1), 1), topic("f", None, 7)];
    assert!(matches!(
        covers_replays(3650 * DAY, &forever),
        ReplayWindow::TooShort { topic } if topic.topic == "f"
    ));
    assert_eq!(covers_replays(DAY, &[]), ReplayWindow::Covered);
    let text = too_short(10 * DAY, &topics[0]);
    assert!(
        text.contains("LP_ES_LIFECYCLE")
            && text.contains("retention.ms=604800000")
            && text.contains("topic a:"),
        "{text}"
    );
}

#[test]
fn the_ilm_policy_has_each_declared_phase() {
    let l = parse("rollover=10gb/1d,warm=7d,delete=30d").unwrap();
    assert_eq!(
        ilm_policy(&l)["policy"]["phases"],
        json!({
            "hot": { "min_age": "0ms", "actions": { "rollover": { "max_primary_shard_size": "10240mb", "max_age": "86400s" } } },
            "warm": { "min_age": "604800s", "actions": { "readonly": {} } },
            "delete": { "min_age": "2592000s", "actions": { "delete": {} } }
        })
    );
    let dated = ilm_policy(&parse("delete=30d").unwrap());
    assert_eq!(dated["policy"]["phases"]["hot"]["actions"], json!({}));
    assert!(dated["policy"]["phases"].get("warm").is_none());
}

#[test]
fn the_ism_policy_moves_through_its_states_by_age_and_attaches_to_the_patterns() {
    let l = parse("rollover=10gb/1d,warm=7d,delete=30d").unwrap();
    let p = ism_policy(&l, &["logs-*".into()], 501);
    let states = &p["policy"]["states"];
    assert_eq!(
        states[0]["actions"],
        json!([{ "rollover": { "min_primary_shard_size": "10240mb", "min_index_age": "86400s" } }])
    );
    assert_eq!(
        states[0]["transitions"],
        json!([{ "state_name": "warm", "conditions": { "min_rollover_age": "604800s" } }])
    );
    assert_eq!(
        states[1]["transitions"][0]["conditions"]["min_rollover_age"],
        "2592000s"
    );
    assert_eq!(
        states[2],
        json!({ "name": "delete", "actions": [{ "delete": {} }], "transitions": [] })
    );
    assert_eq!(
        p["policy"]["ism_template"],
        json!([{ "index_patterns": ["logs-*"], "priority": 501 }])
    );
    let dated = ism_policy(&parse("delete=30d").unwrap(), &["logs-*".into()], 501);
    assert_eq!(
        dated["policy"]["states"][0]["transitions"][0],
        json!({ "state_name": "delete", "conditions": { "min_index_age": "2592000s" } })
    );
}
