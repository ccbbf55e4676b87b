//! The mapping file (TOML) and its checks: each refusal names the field at fault, so a bad
//! mapping stops start-up with a message an operator can act on.
//!
//! ```toml
//! [tables.http_logs]
//! columns = [
//!   { name = "status_code", path = "status_code", type = "bigint", index = true },
//!   { name = "trace_id", path = "trace.id", type = "uuid" },
//! ]
//!
//! [[routes]]
//! topics = ["http-access", "^web-.*"]
//! table = "http_logs"
//! index = "http-%Y.%m.%d"
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{BUILTIN_TABLE, Column, ColumnType, Mapping, Route, Table, TopicMatch, builtin_route};

/// A mapping the daemon refuses, naming the field.
#[derive(Debug, thiserror::Error)]
#[error("invalid mapping: LP_MAPPING_FILE: {field}: {message}")]
pub struct MappingError {
    pub field: String,
    pub message: String,
}

impl MappingError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        MappingError {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMapping {
    #[serde(default)]
    tables: BTreeMap<String, FileTable>,
    #[serde(default)]
    routes: Vec<FileRoute>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTable {
    #[serde(default)]
    columns: Vec<FileColumn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileColumn {
    name: String,
    path: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    index: bool,
    search: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRoute {
    name: Option<String>,
    #[serde(default)]
    topics: Vec<String>,
    when: Option<FileWhen>,
    table: Option<String>,
    index: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWhen {
    field: String,
    values: Vec<String>,
}

/// Columns every table has (migrations/0001_init.sql): a typed column cannot take their names.
pub(super) const BUILTIN_COLUMNS: [&str; 11] = [
    "topic",
    "kafka_partition",
    "kafka_offset",
    "ts",
    "level",
    "service",
    "message",
    "fields",
    "kafka_key",
    "kafka_ts",
    "ingested_at",
];

/// The daemon's own tables: never a route's.
pub(super) const OWN_TABLES: [&str; 7] = [
    "dead_letters",
    "consumer_offsets",
    "source_gaps",
    "topic_identities",
    "parked_records",
    "mapped_columns",
    "_sqlx_migrations",
];

/// Keys decode takes out of the record before `fields` is made: a path there finds nothing.
const TAKEN_KEYS: [&str; 5] = ["timestamp", "@timestamp", "level", "service", "message"];

pub(super) fn parse(text: &str, index: &str) -> Result<Mapping, MappingError> {
    let file: FileMapping = toml::from_str(text).map_err(|e| {
        let at = e.span().map(|s| format!("at byte {}", s.start));
        MappingError::new(at.unwrap_or_else(|| "file".into()), e.message().to_string())
    })?;
    let mut tables = Vec::new();
    for (name, t) in &file.tables {
        tables.push(table(name, t)?);
    }
    if !tables.iter().any(|t| t.name == BUILTIN_TABLE) {
        tables.push(Table {
            name: BUILTIN_TABLE.into(),
            columns: Vec::new(),
        });
    }
    let mut routes = Vec::new();
    for (i, r) in file.routes.iter().enumerate() {
        routes.push(route(i, r, &tables, index)?);
    }
    let builtin = tables.iter().position(|t| t.name == BUILTIN_TABLE);
    routes.push(builtin_route(builtin.expect("added above"), index));
    let mapping = Mapping { tables, routes };
    check_documents(&mapping)?;
    Ok(mapping)
}

fn table(name: &str, t: &FileTable) -> Result<Table, MappingError> {
    let at = format!("tables.{name}");
    if !identifier(name) || name.len() > 58 {
        return Err(MappingError::new(
            &at,
            "a table name is lowercase letters, digits and underscores, starting with a \
             letter or underscore, at most 58 characters",
        ));
    }
    if OWN_TABLES.contains(&name) {
        return Err(MappingError::new(&at, "is one of the daemon's own tables"));
    }
    let mut columns: Vec<Column> = Vec::new();
    for c in &t.columns {
        let at = format!("{at}.columns.{}", c.name);
        if !identifier(&c.name) {
            return Err(MappingError::new(
                &at,
                "a column name is lowercase letters, digits and underscores, starting with a \
                 letter or underscore, at most 63 characters",
            ));
        }
        if BUILTIN_COLUMNS.contains(&c.name.as_str()) {
            return Err(MappingError::new(
                &at,
                "is a built-in column of every table",
            ));
        }
        if columns.iter().any(|x| x.name == c.name) {
            return Err(MappingError::new(&at, "is declared twice"));
        }
        let path: Vec<String> = c.path.split('.').map(str::to_string).collect();
        if path.iter().any(String::is_empty) {
            return Err(MappingError::new(
                format!("{at}.path"),
                format!("{:?} is not a dotted path of keys", c.path),
            ));
        }
        if TAKEN_KEYS.contains(&path[0].as_str()) {
            return Err(MappingError::new(
                format!("{at}.path"),
                format!(
                    "{} is a built-in column already, not one of the other fields",
                    path[0]
                ),
            ));
        }
        let kind = ColumnType::parse(&c.kind).ok_or_else(|| {
            let known: Vec<&str> = ColumnType::ALL.iter().map(|t| t.name()).collect();
            MappingError::new(
                format!("{at}.type"),
                format!("unknown type {:?}; one of: {}", c.kind, known.join(", ")),
            )
        })?;
        let allowed = kind.search_types();
        let search = match &c.search {
            None => allowed[0],
            Some(s) => allowed.iter().copied().find(|a| a == s).ok_or_else(|| {
                MappingError::new(
                    format!("{at}.search"),
                    format!(
                        "the search type {s:?} conflicts with the PostgreSQL type {}, \
                         whose values the search store holds as: {}",
                        kind.name(),
                        allowed.join(", ")
                    ),
                )
            })?,
        };
        columns.push(Column {
            name: c.name.clone(),
            path,
            kind,
            indexed: c.index,
            search,
        });
    }
    Ok(Table {
        name: name.into(),
        columns,
    })
}

fn route(i: usize, r: &FileRoute, tables: &[Table], index: &str) -> Result<Route, MappingError> {
    let at = format!("routes[{i}]");
    let mut topics = Vec::new();
    for t in &r.topics {
        topics.push(match t.strip_prefix('^') {
            None if !t.is_empty() => TopicMatch::Exact(t.clone()),
            None => return Err(MappingError::new(format!("{at}.topics"), "an empty name")),
            Some(_) => {
                // The syntax `LP_TOPICS` takes (`crate::topics`, checked by libc's engine as
                // librdkafka's subscriptions are), so a route matches what a subscription can;
                // that common subset reads the same in the `regex` crate that matches it here.
                let bad = |e: String| MappingError::new(format!("{at}.topics"), e);
                crate::topics::TopicSelection::parse(std::slice::from_ref(t)).map_err(bad)?;
                TopicMatch::Pattern(regex::Regex::new(t).map_err(|e| bad(format!("{t:?}: {e}")))?)
            }
        });
    }
    let when = match &r.when {
        None => None,
        Some(w) if w.field.is_empty() || w.values.is_empty() => {
            return Err(MappingError::new(
                format!("{at}.when"),
                "needs a field and at least one value",
            ));
        }
        Some(w) => Some((w.field.clone(), w.values.clone())),
    };
    let table_name = r.table.as_deref().unwrap_or(BUILTIN_TABLE);
    let table = tables
        .iter()
        .position(|t| t.name == table_name)
        .ok_or_else(|| {
            MappingError::new(
                format!("{at}.table"),
                format!("{table_name:?} is not declared under [tables]"),
            )
        })?;
    let index = r.index.clone().unwrap_or_else(|| index.to_string());
    if !super::valid_index_pattern(&index) {
        return Err(MappingError::new(
            format!("{at}.index"),
            format!("{index:?} is not a lowercase index name with valid strftime directives"),
        ));
    }
    Ok(Route {
        name: r.name.clone().unwrap_or(at),
        topics,
        when,
        table,
        index,
    })
}

/// The documents of one index pattern come from every table routed there: a field must have
/// one type across them, and no field may be both a value and an object of others.
fn check_documents(mapping: &Mapping) -> Result<(), MappingError> {
    let patterns = mapping.index_patterns();
    for (i, pattern) in patterns.iter().enumerate() {
        let prefix = super::template_prefix(pattern);
        if let Some(other) = patterns[..i]
            .iter()
            .find(|p| super::template_prefix(p) == prefix)
        {
            let at = mapping
                .routes
                .iter()
                .position(|r| r.index == *pattern)
                .unwrap_or(0);
            return Err(MappingError::new(
                format!("routes[{at}].index"),
                format!(
                    "{pattern} and {other} start alike ({prefix}): one index template cannot serve both"
                ),
            ));
        }
    }
    for pattern in patterns {
        let mut seen: BTreeMap<String, (&Column, &str)> = BTreeMap::new();
        let tables = (mapping.routes.iter())
            .filter(|r| r.index == pattern)
            .map(|r| &mapping.tables[r.table]);
        for t in tables {
            for c in &t.columns {
                let field = c.document_field();
                let at = format!("tables.{}.columns.{}", t.name, c.name);
                match seen.get(&field) {
                    Some((other, table)) if other.search != c.search || other.kind != c.kind => {
                        return Err(MappingError::new(
                            at,
                            format!(
                                "{field} in the indices {pattern} is {} ({}) here but {} ({}) in \
                                 table {table}, column {}",
                                c.kind.name(),
                                c.search,
                                other.kind.name(),
                                other.search,
                                other.name
                            ),
                        ));
                    }
                    _ => {
                        seen.insert(field, (c, &t.name));
                    }
                }
            }
        }
        for (field, (c, table)) in &seen {
            let steps: Vec<&str> = field.split('.').collect();
            let inside = (2..steps.len())
                .map(|n| steps[..n].join("."))
                .find(|p| seen.contains_key(p));
            if let Some(outer) = inside {
                return Err(MappingError::new(
                    format!("tables.{table}.columns.{}", c.name),
                    format!(
                        "{field} in the indices {pattern} lies inside {outer}, which another \
                         column maps as a value"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// A PostgreSQL identifier that needs no quoting (the mapping's table names, `reindex --to-table`).
pub(super) fn identifier(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}
