//! The closing report: per partition, the range read against what Kafka holds (offsets in the
//! range, records written, dead letters, refused, offsets without a record) and the offsets of
//! the window Kafka no longer holds, then the alias cut-over.

use std::fmt;

use crate::sink::elastic::CutOver;
use crate::sink::postgres::JobPartition;

/// Refused offsets printed per partition; all of them stay in `reindex_positions`.
const LISTED: usize = 100;

/// What happened to the alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Alias {
    /// No `--to-index`: no alias to move.
    NotAsked,
    /// Not every partition is read yet: the cut-over waits for the end.
    Pending,
    Done {
        alias: String,
        outcome: CutOver,
    },
}

#[derive(Debug, Clone)]
pub struct Summary {
    pub job: String,
    pub parts: Vec<JobPartition>,
    pub alias: Alias,
}

impl Summary {
    /// 0 when the whole window was written; 3 when not everything was (Kafka no longer held
    /// part of it, or the target index refused records for their own content, listed), so a
    /// script cannot mistake a partial re-index for a whole one.
    pub fn exit_code(&self) -> u8 {
        match self
            .parts
            .iter()
            .any(|p| p.missing.is_some() || p.refused > 0)
        {
            true => 3,
            false => 0,
        }
    }

    /// Offsets of a partition's range read without a record written, dead-lettered or refused:
    /// offsets that hold no record (transaction markers, compacted records).
    pub fn without_record(p: &JobPartition) -> i64 {
        (p.next - p.from) - (p.written + p.dead_letters + p.refused)
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "reindex job {}", self.job)?;
        writeln!(
            f,
            "{:<40} {:>10} {:>10} {:>9} {:>9} {:>8} {:>8} {:>9}  missing from Kafka",
            "partition", "from", "to", "in_range", "written", "dead", "refused", "no_record"
        )?;
        for p in &self.parts {
            let missing = match p.missing {
                None => "-".to_string(),
                Some((from, to, true)) => format!("[{from}, {to}) deleted by retention"),
                Some((from, to, false)) => format!(
                    "at most [{from}, {to}) deleted by retention (the window starts before the \
                     log start; the daemon's stored rows do not say exactly where)"
                ),
            };
            let done = match p.next >= p.to {
                true => String::new(),
                false => format!(" (read up to {})", p.next),
            };
            writeln!(
                f,
                "{:<40} {:>10} {:>10} {:>9} {:>9} {:>8} {:>8} {:>9}  {missing}{done}",
                p.tp.to_string(),
                p.from,
                p.to,
                p.to - p.from,
                p.written,
                p.dead_letters,
                p.refused,
                Self::without_record(p),
            )?;
        }
        let sum = |f: fn(&JobPartition) -> i64| self.parts.iter().map(f).sum::<i64>();
        write!(
            f,
            "total: in_range={} written={} dead={} refused={} missing={}",
            sum(|p| p.to - p.from),
            sum(|p| p.written),
            sum(|p| p.dead_letters),
            sum(|p| p.refused),
            sum(|p| p.missing.map_or(0, |m| m.1 - m.0)),
        )?;
        for p in &self.parts {
            listed(
                f,
                "refused by the index, not written",
                &p.tp,
                &p.refused_offsets,
            )?;
            listed(
                f,
                "rows refused by PostgreSQL, dead letters",
                &p.tp,
                &p.row_refused_offsets,
            )?;
        }
        match &self.alias {
            Alias::NotAsked => Ok(()),
            Alias::Pending => write!(
                f,
                "\nalias: not switched (the range is not read to its end)"
            ),
            Alias::Done { alias, outcome } => match outcome {
                CutOver::NoTarget => write!(
                    f,
                    "\nalias {alias}: left as it was (no index of the target exists)"
                ),
                CutOver::Switched { from, to } => write!(
                    f,
                    "\nalias {alias}: now {} (was: {})",
                    to.join(","),
                    match from.is_empty() {
                        true => "none".to_string(),
                        false => from.join(","),
                    }
                ),
            },
        }
    }
}

/// `\n<what>: <partition> offsets 1,2,3` (the first [`LISTED`]), nothing for no offsets.
fn listed(
    f: &mut fmt::Formatter<'_>,
    what: &str,
    tp: &crate::model::TopicPartition,
    offsets: &[i64],
) -> fmt::Result {
    if offsets.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = offsets.iter().take(LISTED).map(i64::to_string).collect();
    let more = match offsets.len().saturating_sub(LISTED) {
        0 => String::new(),
        n => format!(" and {n} more (in reindex_positions)"),
    };
    write!(f, "\n{what}: {tp} offsets {}{more}", shown.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TopicPartition;

    fn part(missing: Option<(i64, i64, bool)>) -> JobPartition {
        JobPartition {
            tp: TopicPartition::new("t", 0),
            from: 150,
            to: 200,
            next: 200,
            missing,
            written: 45,
            dead_letters: 3,
            refused: 1,
            refused_offsets: vec![170],
            row_refused_offsets: Vec::new(),
        }
    }

    #[test]
    fn the_summary_names_missing_offsets_and_exits_3_for_them() {
        let whole = Summary {
            job: "j".into(),
            parts: vec![part(None)],
            alias: Alias::NotAsked,
        };
        // A record the index refused is not written: exit 3, its offset listed.
        assert_eq!(whole.exit_code(), 3);
        assert_eq!(Summary::without_record(&whole.parts[0]), 1);
        let text = whole.to_string();
        assert!(
            text.ends_with(
                "total: in_range=50 written=45 dead=3 refused=1 missing=0\n\
                 refused by the index, not written: t/0 offsets 170"
            ),
            "{text}"
        );
        let mut rows = whole.clone();
        rows.parts[0].row_refused_offsets = vec![160, 161];
        assert!(
            rows.to_string()
                .ends_with("\nrows refused by PostgreSQL, dead letters: t/0 offsets 160,161"),
            "{rows}"
        );
        let mut all = whole.clone();
        all.parts[0].refused = 0;
        all.parts[0].refused_offsets.clear();
        all.parts[0].written = 46;
        assert_eq!(all.exit_code(), 0);
        assert!(all.to_string().ends_with("refused=0 missing=0"), "{all}");

        let known = Summary {
            parts: vec![part(Some((100, 150, true)))],
            ..whole.clone()
        };
        assert_eq!(known.exit_code(), 3);
        assert!(
            known
                .to_string()
                .contains("  [100, 150) deleted by retention\n"),
            "{known}"
        );
        let bound = Summary {
            parts: vec![part(Some((0, 150, false)))],
            ..whole
        };
        assert!(
            bound
                .to_string()
                .contains("at most [0, 150) deleted by retention"),
            "{bound}"
        );
        assert!(bound.to_string().contains("missing=150\n"), "{bound}");
    }
}
