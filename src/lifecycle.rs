//! `LP_ES_LIFECYCLE`: one index lifecycle for every index pattern, declared once as a short
//! spec, e.g. `rollover=10gb/1d,warm=7d,delete=30d`, and the rules it must keep. Pure: the
//! policies' JSON (`policy.rs`) and the checks; installing them is the search sink's.
//!
//! * `rollover=SIZE`, `=AGE` or `=SIZE/AGE`: a new write index when the primary shards reach
//!   SIZE or the index AGE (data-stream mode only: a date-named index is written by name, and
//!   a replay finds its document where it wrote it; see `check`).
//! * `warm=AGE` (optional): the index made read-only at AGE.
//! * `delete=AGE` (required): the index deleted at AGE (from its rollover, or its creation).
//!
//! Ages: a number and `s`, `m`, `h` or `d`; sizes: a number and `mb`, `gb` or `tb`.

use std::time::Duration;

mod policy;

pub use policy::{POLICY_NAME, ilm_policy, ism_policy};

/// What `LP_ES_LIFECYCLE` declares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lifecycle {
    pub rollover: Option<Rollover>,
    pub warm_after: Option<Duration>,
    pub delete_after: Duration,
}

/// When a data stream gets a new write index (either condition).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rollover {
    /// In megabytes of primary shards.
    pub max_size_mb: Option<u64>,
    pub max_age: Option<Duration>,
}

/// Reads the spec; the error says what is wrong with it.
pub fn parse(spec: &str) -> Result<Lifecycle, String> {
    let (mut rollover, mut warm_after, mut delete_after) = (None, None, None);
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, value)) = part.split_once('=') else {
            return Err(format!("{part:?} is not key=value"));
        };
        match key.trim() {
            "rollover" => rollover = Some(parse_rollover(value.trim())?),
            "warm" => warm_after = Some(age(value.trim())?),
            "delete" => delete_after = Some(age(value.trim())?),
            other => return Err(format!("unknown phase {other:?} (rollover, warm, delete)")),
        }
    }
    let delete_after = delete_after.ok_or("delete=AGE is required")?;
    if warm_after.is_some_and(|w| w >= delete_after) {
        return Err("warm must come before delete".into());
    }
    Ok(Lifecycle {
        rollover,
        warm_after,
        delete_after,
    })
}

fn parse_rollover(value: &str) -> Result<Rollover, String> {
    let mut r = Rollover {
        max_size_mb: None,
        max_age: None,
    };
    for item in value.split('/') {
        if let Ok(mb) = size_mb(item) {
            r.max_size_mb = Some(mb);
        } else {
            r.max_age =
                Some(age(item).map_err(|_| format!("rollover {item:?}: not a size or an age"))?);
        }
    }
    Ok(r)
}

fn number(text: &str, units: &[(&str, u64)]) -> Option<u64> {
    units.iter().find_map(|(unit, factor)| {
        let n: u64 = text.strip_suffix(unit)?.parse().ok()?;
        (n > 0).then(|| n.checked_mul(*factor)).flatten()
    })
}

fn age(text: &str) -> Result<Duration, String> {
    let units = [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)];
    number(text, &units)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is not an age (e.g. 30d, 12h)"))
}

fn size_mb(text: &str) -> Result<u64, String> {
    let units = [("tb", 1 << 20), ("gb", 1 << 10), ("mb", 1)];
    number(text, &units).ok_or_else(|| format!("{text:?} is not a size"))
}

/// Why a lifecycle cannot be used as declared.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Rollover outside data-stream mode: documents go to date-named indices by name, so
    /// there is no write alias to roll over, and a replay must find its document where it
    /// wrote it.
    RolloverWithoutDataStream,
    /// A data stream always writes to its current write index: without rollover it is never
    /// deleted (the write index cannot be).
    DataStreamWithoutRollover,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::RolloverWithoutDataStream => "rollover needs LP_ES_DATA_STREAM=true: date-named indices are written by name and roll over by date; declare warm and delete only",
            Refusal::DataStreamWithoutRollover => "a data stream writes to its current write index until it rolls over, and a write index is never deleted: declare rollover=SIZE/AGE",
        })
    }
}

/// The lifecycle against the index mode.
pub fn check(lifecycle: &Lifecycle, data_stream: bool) -> Result<(), Refusal> {
    match (lifecycle.rollover.is_some(), data_stream) {
        (true, false) => Err(Refusal::RolloverWithoutDataStream),
        (false, true) => Err(Refusal::DataStreamWithoutRollover),
        _ => Ok(()),
    }
}

/// How long Kafka may keep a topic's records, from its configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicRetention {
    pub topic: String,
    /// `retention.ms`; `None`: `-1`, kept for ever.
    pub retention: Option<Duration>,
    /// `segment.ms`: Kafka deletes whole segments, the newest record of a segment past
    /// `retention.ms`, so a record can outlive it by up to a segment's span.
    pub segment: Duration,
}

impl TopicRetention {
    /// The longest a record can stay readable, so replayed: `retention.ms + segment.ms`.
    pub fn replay_window(&self) -> Option<Duration> {
        self.retention.map(|r| r + self.segment)
    }
}

/// Whether the delete age outlasts every topic's replay window. A batch is indexed before its
/// PostgreSQL commit and replayed from PostgreSQL's watermark after a crash, as long as Kafka
/// still holds it; an index deleted sooner could lose a document its row is committed with
/// later.
#[derive(Debug, PartialEq, Eq)]
pub enum ReplayWindow {
    Covered,
    /// This topic's records can be replayed for longer than the delete age.
    TooShort {
        topic: TopicRetention,
    },
}

pub fn covers_replays(delete_after: Duration, topics: &[TopicRetention]) -> ReplayWindow {
    let longest = topics
        .iter()
        .max_by_key(|t| t.replay_window().unwrap_or(Duration::MAX));
    match longest {
        Some(t) if t.replay_window().is_none_or(|w| w >= delete_after) => {
            ReplayWindow::TooShort { topic: t.clone() }
        }
        _ => ReplayWindow::Covered,
    }
}

/// The refusal's text, naming the setting and the topic's retention.
pub fn too_short(delete_after: Duration, topic: &TopicRetention) -> String {
    let days = |d: Duration| format!("{:.2}d", d.as_secs_f64() / 86_400.0);
    match topic.retention {
        None => format!(
            "LP_ES_LIFECYCLE: delete={} would delete indices while topic {} still holds their records (retention.ms=-1: kept for ever) and may replay them; remove the delete phase or give the topic a retention",
            days(delete_after),
            topic.topic
        ),
        Some(r) => format!(
            "LP_ES_LIFECYCLE: delete={} must exceed the replay window of topic {}: retention.ms={} ({}) plus segment.ms={} ({}) = {}",
            days(delete_after),
            topic.topic,
            r.as_millis(),
            days(r),
            topic.segment.as_millis(),
            days(topic.segment),
            days(r + topic.segment)
        ),
    }
}

#[cfg(test)]
mod tests;
