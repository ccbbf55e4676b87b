//! Operators' own tables and indices: one declarative mapping (`LP_MAPPING_FILE`) from which
//! both stores are derived, so they cannot disagree about a field's type.
//!
//! A mapping has tables, each with typed columns taken from JSON paths of the record's other
//! fields (`LogEntry::fields`), and routes, each sending the records of some topics (exact
//! names or `^` patterns), optionally only those whose top-level field has one of some values,
//! to one table and one index pattern. Routes are tried in order; a record no route takes goes
//! to the built-in route: `log_records` and `LP_ES_INDEX`, the shape without a mapping file.
//!
//! Typed columns are copies: `fields` keeps every value as the record had it, in the row and in
//! the document alike, so a column added later can be filled from the rows already stored, and
//! the document's typed fields are those same values under `fields.` (the index template gives
//! them their types). Everything here is pure; `ddl` says what the tables need.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::model::LogEntry;

pub mod ddl;
mod file;
mod retarget;
mod types;

#[cfg(test)]
mod tests;

pub use file::MappingError;
pub use types::ColumnType;

/// The table of records no route takes, created by the migrations.
pub const BUILTIN_TABLE: &str = "log_records";

/// A typed column of a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// Where the value is in the record's other fields, one key per step.
    pub path: Vec<String>,
    pub kind: ColumnType,
    /// Whether PostgreSQL indexes the column.
    pub indexed: bool,
    /// The search store's field type for `fields.<path>` (one `kind` allows).
    pub search: &'static str,
}

impl Column {
    /// The document field holding the value: `fields.` and the path.
    pub fn document_field(&self) -> String {
        format!("fields.{}", self.path.join("."))
    }
}

/// A table records are stored in: the built-in columns and these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    pub name: String,
    pub columns: Vec<Column>,
}

/// Which topics a route takes.
#[derive(Clone, Debug)]
pub enum TopicMatch {
    Exact(String),
    /// A `^` pattern: `LP_TOPICS`'s syntax, searching the name as librdkafka's subscriptions
    /// do (`^logs-` takes every name starting with `logs-`).
    Pattern(regex::Regex),
}

impl TopicMatch {
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            TopicMatch::Exact(name) => name == topic,
            TopicMatch::Pattern(re) => re.is_match(topic),
        }
    }
}

/// Where some records go.
#[derive(Clone, Debug)]
pub struct Route {
    pub name: String,
    /// Empty: every topic.
    pub topics: Vec<TopicMatch>,
    /// Only records whose top-level `field` is one of these strings.
    pub when: Option<(String, Vec<String>)>,
    /// Index into `Mapping::tables`.
    pub table: usize,
    /// The index name pattern (strftime of the record's timestamp).
    pub index: String,
}

/// Where a record read back from a store goes (`Mapping::route_stored`).
#[derive(Debug)]
pub struct StoredRoute {
    pub route: usize,
    /// Its table's typed values, as `StoredRecord::typed`.
    pub typed: Vec<Option<String>>,
    /// Why a value fits no column added since the record was stored (stored NULL there).
    pub misfits: Vec<String>,
}

/// The whole mapping: its tables and routes, the built-in route last.
#[derive(Clone, Debug)]
pub struct Mapping {
    tables: Vec<Table>,
    routes: Vec<Route>,
}

impl Mapping {
    /// The shape without a mapping file: every record into `log_records` and `index`.
    pub fn builtin(index: &str) -> Mapping {
        Mapping {
            tables: vec![Table {
                name: BUILTIN_TABLE.into(),
                columns: Vec::new(),
            }],
            routes: vec![builtin_route(0, index)],
        }
    }

    /// Reads and checks a mapping file (TOML); `index` is `LP_ES_INDEX`, the built-in route's.
    pub fn load(path: &std::path::Path, index: &str) -> Result<Mapping, MappingError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            MappingError::new("LP_MAPPING_FILE", format!("{}: {e}", path.display()))
        })?;
        Mapping::parse(&text, index)
    }

    pub fn parse(text: &str, index: &str) -> Result<Mapping, MappingError> {
        file::parse(text, index)
    }

    /// Whether this is the built-in mapping (no `LP_MAPPING_FILE`): then the daemon needs
    /// nothing of PostgreSQL beyond the tables of its migrations' first versions, and a role
    /// granted only those (README, least privilege) runs it as before.
    pub fn is_builtin(&self) -> bool {
        self.routes.len() == 1 && self.tables.len() == 1 && self.tables[0].columns.is_empty()
    }

    pub fn tables(&self) -> &[Table] {
        &self.tables
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub fn table_of(&self, route: usize) -> &Table {
        &self.tables[self.routes[route].table]
    }

    /// Every index name pattern a route writes to, each once, in route order.
    pub fn index_patterns(&self) -> Vec<&str> {
        let mut patterns: Vec<&str> = Vec::new();
        for r in &self.routes {
            if !patterns.contains(&r.index.as_str()) {
                patterns.push(&r.index);
            }
        }
        patterns
    }

    /// The typed fields of the documents written to `pattern`, by document field: the columns
    /// of every table a route sends there with it.
    pub fn document_fields(&self, pattern: &str) -> BTreeMap<String, &Column> {
        let tables = (self.routes.iter())
            .filter(|r| r.index == pattern)
            .map(|r| &self.tables[r.table]);
        let columns = tables.flat_map(|t| &t.columns);
        columns.map(|c| (c.document_field(), c)).collect()
    }

    /// Whether `route_of` or `typed_values` read a record's other fields: a route with a
    /// condition, or a table with typed columns. Without either both give the same answer
    /// for any fields.
    pub fn reads_fields(&self) -> bool {
        self.routes.iter().any(|r| r.when.is_some())
            || self.tables.iter().any(|t| !t.columns.is_empty())
    }

    /// The route of a decoded record of `topic`: the first that takes it, else the built-in.
    /// A route's field condition reads the entry's own columns (`level`, `service`, `message`)
    /// or a top-level string of its fields, so a stored row yields the same route again.
    pub fn route_of(&self, topic: &str, entry: &LogEntry, fields: &Map<String, Value>) -> usize {
        let value = |field: &str| match field {
            "level" => entry.level.clone(),
            "service" => entry.service.clone(),
            "message" => entry.message.clone(),
            other => fields
                .get(other)
                .and_then(Value::as_str)
                .map(str::to_string),
        };
        let takes = |r: &Route| {
            (r.topics.is_empty() || r.topics.iter().any(|t| t.matches(topic)))
                && r.when
                    .as_ref()
                    .is_none_or(|(field, values)| value(field).is_some_and(|v| values.contains(&v)))
        };
        (self.routes.iter().position(takes)).unwrap_or(self.routes.len() - 1)
    }

    /// The route and typed values of a record read back from a store (a row, a parked
    /// record): what `pipeline::decode_all` makes of it, from its fields' text. It was checked
    /// against the mapping of its day; a value that does not fit a column added since stays
    /// NULL there, as in the rows filled when the column was added, and is named in `misfits`
    /// for the caller to report. An error for fields' text no decoded record has (`Fields::to_map`).
    pub fn route_stored(&self, topic: &str, entry: &LogEntry) -> Result<StoredRoute, String> {
        let fields = entry.fields.to_map()?;
        let route = self.route_of(topic, entry, &fields);
        let table = self.table_of(route);
        let mut misfits = Vec::new();
        let typed = (table.columns.iter())
            .map(|c| {
                let one = Table {
                    name: table.name.clone(),
                    columns: vec![c.clone()],
                };
                match Self::typed_values(&one, &fields) {
                    Ok(mut v) => v.pop().flatten(),
                    Err(why) => {
                        misfits.push(why);
                        None
                    }
                }
            })
            .collect();
        Ok(StoredRoute {
            route,
            typed,
            misfits,
        })
    }

    /// Where `topic`'s records go, in the order routes are tried: `table / index pattern`, with
    /// the condition of a route that has one; up to the first route that takes them all.
    pub fn routes_of(&self, topic: &str) -> Vec<String> {
        let mut out = Vec::new();
        let takes = |r: &&Route| r.topics.is_empty() || r.topics.iter().any(|t| t.matches(topic));
        for r in self.routes.iter().filter(takes) {
            let place = format!("{} / {}", self.tables[r.table].name, r.index);
            match &r.when {
                Some((field, values)) => {
                    out.push(format!("{place} when {field} in [{}]", values.join(", ")))
                }
                None => {
                    out.push(place);
                    break;
                }
            }
        }
        out
    }

    /// The tables' names, the built-in one included.
    pub fn table_names(&self) -> impl Iterator<Item = &str> {
        self.tables.iter().map(|t| t.name.as_str())
    }

    /// The typed values of `table`'s columns from a record's other fields, as the text
    /// PostgreSQL casts (absent or null: NULL), or the first that does not fit, naming it.
    pub fn typed_values(
        table: &Table,
        fields: &Map<String, Value>,
    ) -> Result<Vec<Option<String>>, String> {
        let at = |path: &[String]| {
            let (first, rest) = path.split_first()?;
            rest.iter()
                .try_fold(fields.get(first)?, |v, key| v.as_object()?.get(key))
        };
        table
            .columns
            .iter()
            .map(|c| match at(&c.path) {
                None | Some(Value::Null) => Ok(None),
                Some(value) => c.kind.convert(value, c.search).map(Some).map_err(|why| {
                    format!(
                        "column {} of {} ({}): {why}",
                        c.name,
                        table.name,
                        c.path.join(".")
                    )
                }),
            })
            .collect()
    }
}

/// The wildcard naming every index a pattern makes: each strftime item a `*`
/// (`logs-%Y.%m.%d` is `logs-*.*.*`).
pub fn index_wildcard(pattern: &str) -> String {
    let mut out = String::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '%' => {
                chars.next();
                if !out.ends_with('*') {
                    out.push('*');
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// What every index of a pattern starts with: the text before its first date item (its
/// template's `index_patterns` is this and `*`).
pub fn template_prefix(pattern: &str) -> &str {
    &pattern[..pattern.find('%').unwrap_or(pattern.len())]
}

/// An index name pattern is usable when chrono knows every directive and the names it makes
/// are valid (lowercase, no spaces, `*`, `,` or `#`).
pub fn valid_index_pattern(pattern: &str) -> bool {
    use chrono::format::{Item, StrftimeItems};
    if pattern.is_empty() || StrftimeItems::new(pattern).any(|i| matches!(i, Item::Error)) {
        return false;
    }
    let sample = chrono::DateTime::from_timestamp(1_700_000_000, 0)
        .unwrap_or_default()
        .format(pattern)
        .to_string();
    valid_index_name(&sample)
}

/// An index name both stores accept: lowercase, not starting with `_`, `-` or `+`, none of
/// ` *,#\/?"<>|`.
pub fn valid_index_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(['_', '-', '+'])
        && !name
            .chars()
            .any(|c| c.is_ascii_uppercase() || " *,#\\/?\"<>|".contains(c))
}

fn builtin_route(table: usize, index: &str) -> Route {
    Route {
        name: "built-in".into(),
        topics: Vec::new(),
        when: None,
        table,
        index: index.into(),
    }
}
