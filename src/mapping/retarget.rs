//! The same mapping pointed at other destinations (`log-processor reindex --to-index /
//! --to-table`): routes, typed columns and decoding stay, so a re-indexed record becomes the row
//! and document the daemon made of it, only in another index or table.

use super::{Mapping, valid_index_pattern};

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
            for route in &mut out.routes {
                route.index = index.to_string();
            }
        }
        if let Some(table) = table {
            if !valid_table_name(table) {
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
            out.tables[0].name = table.to_string();
        }
        Ok(out)
    }
}

/// A name PostgreSQL takes unquoted, as the mapping's own table names are.
fn valid_table_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
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
    }
}
