//! The mapping's tables in PostgreSQL: created, given their new columns and indices
//! (`LP_MIGRATE=auto`) or only checked (`off`, naming the exact DDL missing), and the rows
//! stored before a column existed filled from their `fields` in bounded batches while the
//! pipeline runs.

use std::collections::{BTreeMap, BTreeSet};

use tokio_util::sync::CancellationToken;

use super::PgSink;
use super::refusal::{classify, permanent};
use crate::config::MigrateMode;
use crate::mapping::ddl::{self, Existing, Step};
use crate::mapping::{Mapping, Table};
use crate::sink::SinkError;

/// Rows filled per statement: one short transaction each, beside the batches.
const FILL_BATCH: i64 = 1000;

/// Misfits named in the log per column (all are counted).
const NAMED: usize = 5;

/// What filling a column found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Added {
    pub table: String,
    pub column: String,
    /// Rows given the value their `fields` hold.
    pub filled: u64,
    /// Rows whose value does not fit the column: left NULL (they were stored before the column
    /// existed, so they cannot become dead letters), counted and named in the log.
    pub misfits: u64,
}

type Key = (String, i32, i64);

impl PgSink {
    /// Brings every table of the mapping to what it declares, or with `Off` refuses naming
    /// the statements missing. A change the daemon never makes (a type changed, a mapped
    /// column gone) is refused either way, with the statements to run by hand.
    pub async fn prepare_tables(&self, mode: MigrateMode) -> Result<(), SinkError> {
        if self.mapping.is_builtin() {
            return Ok(()); // log_records as the migrations made it: nothing to add or check
        }
        let mut todo: Vec<(&Table, Step)> = Vec::new();
        for table in self.mapping.tables() {
            let existing = self.existing(table).await?;
            let steps = ddl::plan(table, existing.as_ref()).map_err(permanent)?;
            todo.extend(steps.into_iter().map(|s| (table, s)));
        }
        if mode == MigrateMode::Off && !todo.is_empty() {
            let sql: Vec<String> = todo.iter().map(|(t, s)| ddl::sql(t, s)).collect();
            return Err(permanent(format!(
                "the mapping's tables lack what LP_MAPPING_FILE declares, and LP_MIGRATE=off: \
                 run as the schema's owner (or `log-processor migrate`):\n{}",
                sql.join("\n")
            )));
        }
        for (table, step) in &todo {
            let sql = ddl::sql(table, step);
            tracing::info!(table = %table.name, "mapping: {sql}");
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&self.pool)
                .await
                .map_err(classify)?;
        }
        if mode == MigrateMode::Auto {
            self.record_columns(&todo).await?;
        }
        Ok(())
    }

    async fn existing(&self, table: &Table) -> Result<Option<Existing>, SinkError> {
        let columns: Vec<(String, String)> = sqlx::query_as(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = $1 AND table_name = $2",
        )
        .bind(&self.schema)
        .bind(&table.name)
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        if columns.is_empty() {
            return Ok(None);
        }
        let recorded: Vec<(String, String)> = sqlx::query_as(
            "SELECT column_name, column_type FROM mapped_columns WHERE table_name = $1",
        )
        .bind(&table.name)
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        let indices: Vec<String> = sqlx::query_scalar(
            "SELECT indexname::text FROM pg_indexes WHERE schemaname = $1 AND tablename = $2",
        )
        .bind(&self.schema)
        .bind(&table.name)
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        Ok(Some(Existing {
            columns: columns.into_iter().collect::<BTreeMap<_, _>>(),
            recorded: recorded.into_iter().collect(),
            indices: indices.into_iter().collect::<BTreeSet<_>>(),
        }))
    }

    /// Records every mapped column; one made with its table has no rows to fill.
    async fn record_columns(&self, done: &[(&Table, Step)]) -> Result<(), SinkError> {
        for table in self.mapping.tables() {
            let created =
                (done.iter()).any(|(t, s)| t.name == table.name && *s == Step::CreateTable);
            for c in &table.columns {
                sqlx::query(
                    "INSERT INTO mapped_columns (table_name, column_name, column_type, path, filled) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                )
                .bind(&table.name)
                .bind(&c.name)
                .bind(c.kind.name())
                .bind(c.path.join("."))
                .bind(created)
                .execute(&self.pool)
                .await
                .map_err(classify)?;
            }
        }
        Ok(())
    }

    /// Fills every mapped column not filled yet from the rows' `fields`, batch by batch, until
    /// done or `cancel`; a later start goes on where this one stopped.
    pub async fn fill_columns(&self, cancel: &CancellationToken) -> Result<Vec<Added>, SinkError> {
        if self.mapping.is_builtin() {
            return Ok(Vec::new());
        }
        let unfilled: Vec<(String, String)> = sqlx::query_as(
            "SELECT table_name, column_name FROM mapped_columns WHERE NOT filled ORDER BY 1, 2",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        let mut out = Vec::new();
        for (table, column) in unfilled {
            let Some(t) = self.mapping.tables().iter().find(|t| t.name == table) else {
                continue;
            };
            let Some(c) = t.columns.iter().position(|c| c.name == column) else {
                continue;
            };
            match self.fill(t, c, cancel).await? {
                Some(added) => out.push(added),
                None => break,
            }
        }
        Ok(out)
    }

    /// One column; `None` when cancelled first.
    async fn fill(
        &self,
        table: &Table,
        c: usize,
        cancel: &CancellationToken,
    ) -> Result<Option<Added>, SinkError> {
        let column = &table.columns[c];
        let one = Table {
            name: table.name.clone(),
            columns: vec![column.clone()],
        };
        let (t, name, kind) = (&table.name, &column.name, column.kind.name());
        let select = format!(
            "SELECT topic, kafka_partition, kafka_offset, fields::text FROM {t} \
             WHERE {name} IS NULL AND fields #> $4 IS NOT NULL \
             AND (topic, kafka_partition, kafka_offset) > ($1, $2, $3) \
             ORDER BY topic, kafka_partition, kafka_offset LIMIT {FILL_BATCH}"
        );
        let update = format!(
            "UPDATE {t} SET {name} = u.v::{kind} \
             FROM UNNEST($1::text[], $2::int[], $3::bigint[], $4::text[]) AS u(t, p, o, v) \
             WHERE {t}.topic = u.t AND {t}.kafka_partition = u.p AND {t}.kafka_offset = u.o \
             AND {t}.{name} IS NULL"
        );
        let mut added = Added {
            table: t.clone(),
            column: name.clone(),
            ..Added::default()
        };
        let mut after: Key = (String::new(), i32::MIN, i64::MIN);
        loop {
            if cancel.is_cancelled() {
                return Ok(None);
            }
            let rows: Vec<(String, i32, i64, String)> =
                sqlx::query_as(sqlx::AssertSqlSafe(select.as_str()))
                    .bind(&after.0)
                    .bind(after.1)
                    .bind(after.2)
                    .bind(&column.path)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(classify)?;
            let Some(last) = rows.last() else { break };
            after = (last.0.clone(), last.1, last.2);
            let mut fits: (Vec<String>, Vec<i32>, Vec<i64>, Vec<String>) = Default::default();
            for (topic, partition, offset, fields) in rows {
                let map = serde_json::from_str(&fields).unwrap_or_default();
                match Mapping::typed_values(&one, &map) {
                    Ok(mut v) => {
                        let Some(value) = v.pop().flatten() else {
                            continue;
                        };
                        fits.0.push(topic);
                        fits.1.push(partition);
                        fits.2.push(offset);
                        fits.3.push(value);
                    }
                    Err(why) => {
                        added.misfits += 1;
                        if added.misfits as usize <= NAMED {
                            tracing::warn!(
                                record = %format!("{topic}/{partition}@{offset}"),
                                "stored before its column was mapped, left NULL there: {why}"
                            );
                        }
                    }
                }
            }
            let filled = sqlx::query(sqlx::AssertSqlSafe(update.as_str()))
                .bind(&fits.0)
                .bind(&fits.1)
                .bind(&fits.2)
                .bind(&fits.3)
                .execute(&self.pool)
                .await
                .map_err(classify)?;
            added.filled += filled.rows_affected();
        }
        sqlx::query(
            "UPDATE mapped_columns SET filled = true WHERE table_name = $1 AND column_name = $2",
        )
        .bind(t)
        .bind(name)
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        tracing::info!(table = %t, column = %name, filled = added.filled, misfits = added.misfits, "mapping: rows stored before the column was added are filled");
        Ok(Some(added))
    }
}
