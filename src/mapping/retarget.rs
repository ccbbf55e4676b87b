//! The same mapping pointed at other destinations (`log-processor reindex --to-index /
//! --to-table`): routes, typed columns and decoding stay, so a re-indexed record becomes the row
//! and document the daemon made of it, only in another index or table.

use super::file::OWN_TABLES;
use super::{Mapping, index_wildcard, template_prefix, valid_index_pattern};

/// The re-index's own tables: its position must never be a target's row.
const REINDEX_TABLES: [&str; 2] = ["reindex_jobs", "reindex_positions"];

/// Times the daemon's patterns are formatted at to find an index both would name: a spread of
/// years, months, days and hours (leading zeros and not).
const SAMPLE_TIMES: [i64; 4] = [946_684_800, 1_700_000_000, 1_767_225_599, 1_234_567_890];

impl Mapping {
    /// Every route's index pattern replaced by `index`, and the table replaced by `table`.
    /// A mapping of several tables cannot go into one table (their typed columns differ), so a
    /// `table` is refused for it. Errors name the argument.
    pub fn retargeted(
        &self,
        index: Option<&str>,
        table: Option<&str>,
    ) -> Result<Mapping, (&'static str, String)> {
        let mut out = self.clone();
        if let Some(index) = index {
            if !valid_index_pattern(index) {
                return Err((
                    "--to-index",
                    format!(
                        "{index:?}: not a usable index name or pattern (lowercase, no \
                     spaces or any of *,#\\/?\"<>|, strftime items such as %Y.%m.%d allowed)"
                    ),
                ));
            }
            for daemon in self.index_patterns() {
                if let Some(why) = overlap(daemon, index) {
                    return Err(("--to-index", format!("{index:?}: {why}; name another")));
                }
            }
            for route in &mut out.routes {
                route.index = index.to_string();
            }
        }
        if let Some(table) = table {
            if !super::file::identifier(table) {
                return Err((
                    "--to-table",
                    format!(
                        "{table:?}: expected a plain lowercase SQL name (letters, digits, \
                     underscores; at most 63 bytes)"
                    ),
                ));
            }
            if out.tables.len() != 1 {
                return Err((
                    "--to-table",
                    format!(
                        "{table:?}: the mapping file has {} tables, whose typed columns \
                     differ; re-index into the search store only (--to-index), or use a mapping \
                     file of one table",
                        out.tables.len()
                    ),
                ));
            }
            if self.tables.iter().any(|t| t.name == table) {
                return Err((
                    "--to-table",
                    format!("{table:?}: the daemon writes that table; name a new one"),
                ));
            }
            if OWN_TABLES.contains(&table) || REINDEX_TABLES.contains(&table) {
                return Err((
                    "--to-table",
                    format!(
                        "{table:?}: a bookkeeping table of the daemon or of reindex; name a new one"
                    ),
                ));
            }
            out.tables[0].name = table.to_string();
        }
        Ok(out)
    }
}

/// Why a target pattern cannot share the search store with a daemon pattern: the same
/// pattern; the same template name (`log-processor-` and the text before the first date item,
/// so installing the target's would replace the daemon's); or a target wildcard that takes in
/// indices the daemon writes (the alias would then name them, and readers see records twice).
fn overlap(daemon: &str, target: &str) -> Option<String> {
    let trimmed = |p| {
        template_prefix(p)
            .trim_end_matches(['-', '.', '_'])
            .to_string()
    };
    if daemon == target {
        return Some(format!("the daemon writes {daemon}"));
    }
    if trimmed(daemon) == trimmed(target) {
        return Some(format!(
            "its template would be the daemon's (log-processor-{}), as for {daemon}",
            trimmed(target)
        ));
    }
    let wildcard = index_wildcard(target);
    let taken = SAMPLE_TIMES.iter().find_map(|t| {
        let name = chrono::DateTime::from_timestamp(*t, 0)?
            .format(daemon)
            .to_string();
        glob(&wildcard, &name).then_some(name)
    });
    taken.map(|name| format!("its indices ({wildcard}) take in the daemon's, such as {name}"))
}

/// Whether `name` matches `wildcard`, whose `*` stands for any text.
fn glob(wildcard: &str, name: &str) -> bool {
    let mut parts = wildcard.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_table_point_at_the_new_destinations() {
        let m = Mapping::builtin("logs-%Y.%m.%d");
        let r = m
            .retargeted(Some("rebuilt-%Y.%m.%d"), Some("log_records_rebuilt"))
            .unwrap();
        assert_eq!(r.index_patterns(), ["rebuilt-%Y.%m.%d"]);
        assert_eq!(r.tables()[0].name, "log_records_rebuilt");
        assert!(r.is_builtin());
        let same = m.retargeted(None, None).unwrap();
        assert_eq!(same.index_patterns(), ["logs-%Y.%m.%d"]);
        assert_eq!(same.tables()[0].name, "log_records");
    }

    #[test]
    fn bad_destinations_are_refused_naming_the_argument() {
        let m = Mapping::builtin("logs-%Y.%m.%d");
        let e = m.retargeted(Some("Upper"), None).unwrap_err();
        assert_eq!(e.0, "--to-index", "{e:?}");
        for bad in ["Rows", "1x", "a-b", "a;drop", ""] {
            let e = m.retargeted(None, Some(bad)).unwrap_err();
            assert_eq!(e.0, "--to-table", "{bad}: {e:?}");
        }
        let e = m.retargeted(None, Some("log_records")).unwrap_err();
        assert!(e.1.contains("daemon writes"), "{e:?}");
        for own in [
            "dead_letters",
            "consumer_offsets",
            "source_gaps",
            "reindex_positions",
        ] {
            let e = m.retargeted(None, Some(own)).unwrap_err();
            assert_eq!(e.0, "--to-table", "{own}: {e:?}");
        }
    }

    #[test]
    fn a_target_index_sharing_the_daemons_template_or_indices_is_refused() {
        let m = Mapping::builtin("logs-%Y.%m.%d");
        for (bad, why) in [
            ("logs-%Y.%m.%d", "the daemon writes"),
            // Template log-processor-logs, the daemon's own.
            ("logs-%Y.%m.%d-v2", "template"),
            ("logs_%Y", "template"),
            ("logs-%Y.%m", "template"),
            // Another template, but logs-2*.* names logs-2026.12.06.
            ("logs-2%Y.%m", "take in the daemon's"),
            ("log%Y", "take in the daemon's"),
        ] {
            let e = m.retargeted(Some(bad), None).unwrap_err();
            assert_eq!(e.0, "--to-index", "{bad}: {e:?}");
            assert!(e.1.contains(why), "{bad}: {e:?}");
        }
        for good in ["logs-v2-%Y.%m.%d", "rebuilt-%Y.%m.%d", "logs-v2", "archive"] {
            assert!(m.retargeted(Some(good), None).is_ok(), "{good}");
        }
    }

    #[test]
    fn wildcards_match_as_the_store_matches_them() {
        assert!(glob("logs-*.*", "logs-2026.12.06"));
        assert!(glob("a*b*c", "aXbYc"));
        assert!(glob("*", ""));
        assert!(!glob("logs-v2-*", "logs-2026.12.06"));
        assert!(!glob("ab*ba", "aba"));
        assert!(!glob("logs", "logs-1"));
    }
}
