//! What a mapping's tables need in PostgreSQL, from what the catalog shows: pure, so the rules
//! of evolution are tested without a database.
//!
//! Evolution goes one way online: a table or a column added. A column whose type differs from
//! the mapping's (narrowed or changed), or one the daemon created that the mapping no longer
//! names, is refused with the statements to run by hand: the daemon never drops or rewrites
//! what an operator may query.

use std::collections::BTreeMap;

use super::{Column, Table};

/// One change a table needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The table with every column, its key and its indices.
    CreateTable,
    /// A column missing from an existing table; existing rows are filled from `fields` after.
    AddColumn(String),
    /// An index of an indexed column.
    Index(String),
}

/// What the catalog shows of a table: each column's `information_schema` data type, and the
/// typed columns the daemon recorded creating (`mapped_columns`).
#[derive(Clone, Debug, Default)]
pub struct Existing {
    pub columns: BTreeMap<String, String>,
    pub recorded: BTreeMap<String, String>,
    /// The table's indices by name.
    pub indices: std::collections::BTreeSet<String>,
}

/// The steps `table` needs, or why the daemon will not take them itself (with the statements).
/// `existing` is `None` when the table does not exist.
pub fn plan(table: &Table, existing: Option<&Existing>) -> Result<Vec<Step>, String> {
    let Some(existing) = existing else {
        let mut steps = vec![Step::CreateTable];
        steps.extend(indices(table));
        return Ok(steps);
    };
    let mut steps = Vec::new();
    for c in &table.columns {
        match existing.columns.get(&c.name) {
            None => steps.push(Step::AddColumn(c.name.clone())),
            Some(t) if *t == c.kind.catalog_name() => {}
            Some(t) => {
                return Err(format!(
                    "column {} of {} is {t} in PostgreSQL but {} in the mapping; the daemon \
                     never changes a column's type. By hand: ALTER TABLE {} ALTER COLUMN {} TYPE \
                     {} USING {}::{}; UPDATE mapped_columns SET column_type = '{}' WHERE \
                     table_name = '{}' AND column_name = '{}';",
                    c.name,
                    table.name,
                    c.kind.name(),
                    table.name,
                    c.name,
                    c.kind.name(),
                    c.name,
                    c.kind.name(),
                    c.kind.name(),
                    table.name,
                    c.name
                ));
            }
        }
    }
    let dropped = (existing.recorded.keys()).find(|r| !table.columns.iter().any(|c| c.name == **r));
    if let Some(gone) = dropped {
        return Err(format!(
            "column {gone} of {} was mapped and the mapping no longer names it; the daemon never \
             removes a column. Keep it in the mapping, or by hand: ALTER TABLE {} DROP COLUMN \
             {gone}; DELETE FROM mapped_columns WHERE table_name = '{}' AND column_name = \
             '{gone}';",
            table.name, table.name, table.name
        ));
    }
    let missing = indices(table).filter(|s| match s {
        Step::Index(c) => !existing.indices.contains(&index_name(table, c)),
        _ => true,
    });
    steps.extend(missing);
    Ok(steps)
}

fn indices(table: &Table) -> impl Iterator<Item = Step> + '_ {
    let indexed = table.columns.iter().filter(|c| c.indexed);
    indexed.map(|c| Step::Index(c.name.clone()))
}

/// The name of a column's index (PostgreSQL cuts names at 63 bytes, as it does here).
pub fn index_name(table: &Table, column: &str) -> String {
    let mut name = format!("{}_{column}_idx", table.name);
    name.truncate(63);
    name
}

/// The SQL of a step. Indices are built `CONCURRENTLY` (outside a transaction), so adding one
/// to a large table does not stop the batches writing to it.
pub fn sql(table: &Table, step: &Step) -> String {
    let t = &table.name;
    match step {
        Step::CreateTable => {
            let typed: String = (table.columns.iter())
                .map(|c| format!("    {} {},\n", c.name, c.kind.name()))
                .collect();
            format!(
                "CREATE TABLE IF NOT EXISTS {t} (\n    topic text NOT NULL,\n    kafka_partition \
                 integer NOT NULL,\n    kafka_offset bigint NOT NULL,\n    ts timestamptz NOT \
                 NULL,\n    level text,\n    service text,\n    message text,\n    fields jsonb NOT \
                 NULL,\n    kafka_key bytea,\n    kafka_ts timestamptz,\n    ingested_at \
                 timestamptz NOT NULL DEFAULT now(),\n{typed}    CONSTRAINT {t}_pkey PRIMARY KEY \
                 (topic, kafka_partition, kafka_offset)\n);\nCREATE INDEX IF NOT EXISTS {t}_ts ON \
                 {t} (ts);"
            )
        }
        Step::AddColumn(name) => {
            let kind = column(table, name).kind.name();
            format!("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {name} {kind};")
        }
        Step::Index(name) => {
            let index = index_name(table, name);
            format!("CREATE INDEX CONCURRENTLY IF NOT EXISTS {index} ON {t} ({name});")
        }
    }
}

fn column<'a>(table: &'a Table, name: &str) -> &'a Column {
    let found = table.columns.iter().find(|c| c.name == name);
    found.expect("a step names a column of its table")
}
