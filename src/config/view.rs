//! The effective configuration for people (`check-config`, the start-up log) and for scripts
//! (`check-config --json`): one line per setting with its source, secrets masked, grouped by
//! section; then what the daemon derives from them and each connection's security. A pure
//! function of the settings and their sources, so it is tested without a process.

mod entries;
mod sources;

use std::collections::BTreeMap;
use std::fmt;

use clap::Args;
use serde::Serialize;

pub use entries::Entry;
pub use sources::{Source, Sources};

use super::Settings;

/// `check-config`'s arguments.
#[derive(Args, Clone, Debug)]
pub struct CheckConfigArgs {
    /// Print one JSON object instead of lines.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub settings: Settings,
}

/// What the daemon computes from the settings, for sizing and for the supervisor.
#[derive(Clone, Debug, Serialize)]
pub struct Derived {
    /// From the first SIGTERM/SIGINT to exit.
    pub shutdown_deadline_ms: u64,
    /// Of that, how long in-flight batches may finish before they are given up...
    pub shutdown_drain_ms: u64,
    /// ...and what is kept back for the final commit and the group leave.
    pub shutdown_close_reserve_ms: u64,
    /// The supervisor's grace period, and what it leaves beyond the deadline.
    pub grace_period_ms: u64,
    pub grace_headroom_ms: u64,
    /// How long batches of revoked partitions may finish in a rebalance.
    pub revoke_drain_timeout_ms: u64,
    /// What the process may hold at most (`Settings::worst_case_memory_mib`).
    pub worst_case_memory_mib: usize,
}

/// The whole view.
#[derive(Clone, Debug, Serialize)]
pub struct View {
    /// Sections in order, each with its settings in order.
    #[serde(serialize_with = "by_name")]
    pub settings: Vec<Entry>,
    pub derived: Derived,
    /// `kafka`, `postgresql`, `search store`: what protects each connection.
    pub security: BTreeMap<String, String>,
}

/// Scripts look settings up by name: `{"LP_WORKERS": {"value": "4", "source": "default"}}`.
fn by_name<S: serde::Serializer>(entries: &[Entry], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(entries.len()))?;
    for e in entries {
        map.serialize_entry(&e.name, e)?;
    }
    map.end()
}

impl View {
    pub fn new(s: &Settings, sources: &Sources) -> View {
        let deadline = s.shutdown_deadline_ms.0;
        let reserve = crate::shutdown::close_reserve(deadline);
        let ms = |d: std::time::Duration| d.as_millis() as u64;
        let derived = Derived {
            shutdown_deadline_ms: ms(deadline),
            shutdown_drain_ms: ms(deadline - reserve),
            shutdown_close_reserve_ms: ms(reserve),
            grace_period_ms: ms(s.grace_period_ms.0),
            grace_headroom_ms: ms(s.grace_period_ms.0.saturating_sub(deadline)),
            revoke_drain_timeout_ms: ms(s.revoke_drain_timeout()),
            worst_case_memory_mib: s.worst_case_memory_mib(),
        };
        let security = s
            .security_summary()
            .lines()
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        View {
            settings: entries::entries(s, sources),
            derived,
            security,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the view serialises")
    }

    /// The JSON on one line, for a JSON log.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("the view serialises")
    }
}

impl fmt::Display for View {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut section = "";
        for e in &self.settings {
            if e.section != section {
                let gap = if section.is_empty() { "" } else { "\n" };
                writeln!(f, "{gap}[{}]", e.section)?;
                section = e.section;
            }
            writeln!(f, "{}={}  ({})", e.name, e.value, e.source.as_str())?;
        }
        let d = &self.derived;
        writeln!(f, "\n[derived]")?;
        writeln!(
            f,
            "shutdown: deadline {} ms after the first signal: in-flight batches drain for {} ms, \
             {} ms kept for the final commit and group leave; the grace period ({} ms) leaves {} ms",
            d.shutdown_deadline_ms,
            d.shutdown_drain_ms,
            d.shutdown_close_reserve_ms,
            d.grace_period_ms,
            d.grace_headroom_ms
        )?;
        writeln!(
            f,
            "rebalance: batches of revoked partitions drain for up to {} ms",
            d.revoke_drain_timeout_ms
        )?;
        // Scripts and tests read the number after this prefix: keep it.
        writeln!(
            f,
            "worst-case memory: {} MiB (a 64 MiB base, the Kafka prefetch of LP_KAFKA_QUEUE_KBYTES \
             and one fetch response of LP_KAFKA_FETCH_MAX_BYTES, LP_MEMORY_BUDGET_MB of batches \
             with every copy of a record counted, and one record of the largest fetchable size \
             crossing the budget with its {} copies)",
            d.worst_case_memory_mib,
            crate::model::RawRecord::COPIES
        )?;
        writeln!(f, "\n[security]")?;
        // The summary's own order: kafka, postgresql, search store.
        for name in ["kafka", "postgresql", "search store"] {
            if let Some(line) = self.security.get(name) {
                writeln!(f, "{name}: {line}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
