//! `LP_TOPICS` with a pattern (`^prefix-.*`), against real Kafka, PostgreSQL and OpenSearch:
//! the topics matching it at start-up and one created while the daemon runs are stored exactly
//! once, a topic it does not match is not read, the new topic is picked up within the stated
//! bound (LP_TOPIC_REFRESH_MS, 10 s by default with a pattern, plus a rebalance), and the
//! operator commands list the matched topics. A bad pattern stops start-up naming LP_TOPICS.

mod common;

use std::time::{Duration, Instant};

use common::*;
use log_processor::loadgen;

/// The default refresh with a pattern (README, LP_TOPIC_REFRESH_MS) and what a rebalance of a
/// one-member group, a batch's linger and its write may add to it.
const REFRESH: Duration = Duration::from_secs(10);
const REBALANCE_AND_WRITE: Duration = Duration::from_secs(10);

/// One topic of the test: its own records (generated sequence numbers apart from the other
/// topics'), sharing the daemon's group, schema and index with the others.
async fn topic(base: &Scenario, name: &str, partitions: i32) -> Scenario {
    loadgen::create_topic(&kafka_brokers(), name, partitions, 8 * 1024 * 1024)
        .await
        .unwrap_or_else(|e| panic!("create topic {name}: {e}"));
    Scenario {
        topic: name.to_string(),
        partitions,
        ..base.clone()
    }
}

/// Rows plus dead letters PostgreSQL holds of one topic.
async fn stored_of(s: &Scenario, topic: &str) -> i64 {
    let q = format!(
        "SELECT (SELECT count(*) FROM {0}.log_records WHERE topic = $1) \
              + (SELECT count(*) FROM {0}.dead_letters WHERE topic = $1)",
        s.schema
    );
    sqlx::query_scalar(sqlx::AssertSqlSafe(q))
        .bind(topic)
        .fetch_one(&s.pg().await)
        .await
        .unwrap_or(0)
}

/// Waits until every record of `s`'s topic is a row or a dead letter; returns when.
async fn wait_stored(s: &Scenario, d: &Daemon, timeout: Duration) -> Instant {
    let total: i64 = s.end_offsets().values().sum();
    let start = Instant::now();
    loop {
        let n = stored_of(s, &s.topic).await;
        if n >= total {
            return Instant::now();
        }
        assert!(
            start.elapsed() < timeout,
            "{}: only {n} of {total} records stored after {timeout:?}; log:\n{}",
            s.topic,
            d.tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The topics of `status --json` (each with its partitions).
fn status_topics(env: &[(String, String)]) -> Vec<(String, i64)> {
    let status = json(env, &["status", "--json"]);
    let mut out: Vec<(String, i64)> = Vec::new();
    for p in status["partitions"].as_array().expect("partitions") {
        let t = p["topic"].as_str().expect("topic").to_string();
        match out.iter_mut().find(|(n, _)| *n == t) {
            Some((_, count)) => *count += 1,
            None => out.push((t, 1)),
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_reads_matching_topics_and_picks_up_a_new_one_within_the_bound() {
    let base = Scenario::new("regex", 1).await; // its own topic matches no pattern below
    let prefix = format!("{}-rx", base.topic);
    let a = topic(&base, &format!("{prefix}-a"), 2).await;
    let b = topic(&base, &format!("{prefix}-b"), 1).await;
    // Shares the prefix but not the pattern's `-`: must not be read.
    let off = topic(&base, &format!("{prefix}_off"), 1).await;
    let new_name = format!("{prefix}-new");
    let bad_a = a.produce(0, 400, 0.02);
    let bad_b = b.produce(10_000, 300, 0.02);
    off.produce(20_000, 200, 0.0);
    base.produce(30_000, 50, 0.0);

    let pattern = format!("^{prefix}-.*");
    let env = with(&base.env(), &[("LP_TOPICS", pattern.clone())]);
    let mut d = Daemon::start(&env);
    wait_stored(&a, &d, Duration::from_secs(120)).await;
    wait_stored(&b, &d, Duration::from_secs(60)).await;
    assert_eq!(
        status_topics(&env),
        [(a.topic.clone(), 2), (b.topic.clone(), 1)],
        "status lists the topics the pattern matches now"
    );

    // A matching topic created while the daemon runs, and records produced to it at once.
    let created = Instant::now();
    let c = topic(&base, &new_name, 2).await;
    let bad_c = c.produce(40_000, 300, 0.02);
    let stored = wait_stored(
        &c,
        &d,
        REFRESH + REBALANCE_AND_WRITE + Duration::from_secs(20),
    )
    .await;
    let took = stored - created;
    println!(
        "regex: topic {new_name} created while the daemon ran; all 300 records stored {:.1} s \
         after its creation (bound: LP_TOPIC_REFRESH_MS {} s + {} s)",
        took.as_secs_f64(),
        REFRESH.as_secs(),
        REBALANCE_AND_WRITE.as_secs()
    );
    assert!(
        took <= REFRESH + REBALANCE_AND_WRITE,
        "the new topic took {took:?}, beyond the bound"
    );
    assert_eq!(
        status_topics(&env),
        [
            (a.topic.clone(), 2),
            (b.topic.clone(), 1),
            (c.topic.clone(), 2)
        ],
        "status lists the new topic too"
    );
    let listed = json(&env, &["topics", "list", "--json"]);
    let mut names: Vec<&str> = (listed["topics"].as_array().expect("topics").iter())
        .map(|t| t["topic"].as_str().expect("topic"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [&*a.topic, &*b.topic, &*c.topic],
        "topics list shows each matched topic's identity"
    );
    // `dead-letters list` reads PostgreSQL only: the pattern is matched against the names
    // records are stored under.
    let dead = json(&env, &["dead-letters", "list", "--json"]);
    assert_eq!(
        dead["total"].as_u64(),
        Some(bad_a + bad_b + bad_c),
        "dead-letters list selects the matched topics' dead letters: {dead}"
    );

    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(40)), 0, "{}", d.tail(30));

    let all = [&a, &b, &c, &off, &base].map(|s| s.topic.clone());
    for (s, bad) in [(&a, bad_a), (&b, bad_b), (&c, bad_c)] {
        let s = Scenario {
            neighbours: all.iter().filter(|t| **t != s.topic).cloned().collect(),
            ..s.clone()
        };
        let v = s.verify().await;
        v.assert_exact(&s.topic);
        assert_eq!(v.dead_lettered, bad, "{}: the malformed records", s.topic);
    }
    for s in [&off, &base] {
        assert_eq!(stored_of(s, &s.topic).await, 0, "{} is not read", s.topic);
        let mut docs = 0;
        verify::es_hits(&format!("{}-*", s.index), |hit| {
            docs += u32::from(hit["_source"]["kafka"]["topic"] == s.topic.as_str());
        })
        .await;
        assert_eq!(docs, 0, "no document of {}", s.topic);
        assert!(
            s.end_offsets().values().sum::<i64>() > 0,
            "{} has records",
            s.topic
        );
    }
    base.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_pattern_stops_start_up_naming_lp_topics() {
    let s = Scenario::new("regex_bad", 1).await;
    for pattern in [format!("^{}-(", s.topic), format!(r"^{}-\d+", s.topic)] {
        let env = with(&s.env(), &[("LP_TOPICS", format!("{},{pattern}", s.topic))]);
        for command in [&["run"][..], &["check-config"], &["status"]] {
            let (code, out, err) = lp(&env, command);
            assert_eq!(
                code, 2,
                "{command:?} {pattern}: exit 2 expected:\n{out}\n{err}"
            );
            assert!(
                err.contains("LP_TOPICS") && err.contains(&pattern),
                "{command:?}: the error names LP_TOPICS and the pattern:\n{err}"
            );
        }
    }
    s.cleanup().await;
}
