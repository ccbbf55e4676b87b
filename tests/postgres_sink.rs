//! The PostgreSQL sink against the real server: what it does when PostgreSQL refuses work.
//! A refusal that is not a record's own fault writes nothing and leaves the watermark where it
//! is; a record's own data exception dead-letters exactly that record, with its raw bytes.

mod common;

use std::time::Duration;

use common::*;
use log_processor::config::MigrateMode;
use log_processor::dead_letter::DeadLetterPolicy;
use log_processor::model::{
    DeadLetter, LogEntry, Position, RawRecord, RejectStage, StoredRecord, TopicPartition,
};
use log_processor::sink::SinkError;
use log_processor::sink::postgres::{BatchWrite, PgSettings, PgSink, Written};
use serde_json::{Map, Value};
use sqlx::PgPool;

const GROUP: &str = "g";

struct Fixture {
    schema: String,
    owner: PgPool,
    sink: PgSink,
    tp: TopicPartition,
}

fn settings(url: &str, schema: &str) -> PgSettings {
    PgSettings {
        url: url.to_string(),
        schema: schema.to_string(),
        pool_size: 2,
        connect_timeout: Duration::from_secs(5),
        statement_timeout: Duration::from_secs(10),
        mapping: std::sync::Arc::new(log_processor::mapping::Mapping::builtin("logs-%Y")),
    }
}

async fn fixture(name: &str) -> Fixture {
    require("PostgreSQL", &database_url());
    let schema = unique(name).to_lowercase();
    let sink = PgSink::new(&settings(&database_url(), &schema)).unwrap();
    sink.prepare(MigrateMode::Auto).await.expect("migrate");
    let owner = PgPool::connect(&database_url()).await.unwrap();
    Fixture {
        schema,
        owner,
        sink,
        tp: TopicPartition::new("t", 0),
    }
}

/// Raw records `first..next` whose payload is a small JSON object; `bad` offsets carry a
/// number PostgreSQL's jsonb cannot hold (a data exception, SQLSTATE 22003).
fn raws(first: i64, next: i64, bad: &[i64]) -> Vec<RawRecord> {
    (first..next)
        .map(|o| {
            let payload = if bad.contains(&o) {
                format!(r#"{{"message":"m{o}","n":1e200000}}"#)
            } else {
                format!(r#"{{"message":"m{o}","n":{o}}}"#)
            };
            RawRecord {
                offset: o,
                key: Some(format!("k{o}").into_bytes()),
                payload: Some(payload.into_bytes()),
                kafka_timestamp_ms: Some(1_764_000_000_000 + o),
            }
        })
        .collect()
}

fn stored(raw: &RawRecord) -> StoredRecord {
    let mut fields: Map<String, Value> =
        serde_json::from_slice(raw.payload.as_ref().unwrap()).unwrap();
    let message = fields
        .remove("message")
        .and_then(|m| m.as_str().map(String::from));
    StoredRecord {
        offset: raw.offset,
        key: raw.key.clone(),
        kafka_timestamp_ms: raw.kafka_timestamp_ms,
        entry: LogEntry {
            timestamp: chrono::DateTime::from_timestamp_millis(raw.kafka_timestamp_ms.unwrap())
                .unwrap(),
            level: None,
            service: None,
            message,
            fields: log_processor::model::Fields::from_map(&fields),
        },
        route: 0,
        typed: Vec::new(),
    }
}

impl Fixture {
    async fn write(
        &self,
        start: Position,
        raws: &[RawRecord],
        dead: &[DeadLetter],
    ) -> Result<Written, SinkError> {
        let policy = DeadLetterPolicy::default();
        let records: Vec<StoredRecord> = raws
            .iter()
            .filter(|r| !dead.iter().any(|d| d.offset == r.offset))
            .map(stored)
            .collect();
        let make = |offset: i64, reason: String| {
            let raw = raws.iter().find(|r| r.offset == offset).unwrap();
            policy.make(raw, RejectStage::Store, reason)
        };
        // As the worker does: a batch with `store` dead letters is rolled back until their
        // documents are removed (there is no search store here), then written again.
        let mut removed = Vec::new();
        let before = self.state().await;
        loop {
            let written = self
                .sink
                .write_batch(&BatchWrite {
                    group_id: GROUP,
                    tp: &self.tp,
                    records: &records,
                    dead_letters: dead,
                    parked: &[],
                    start,
                    first_offset: raws[0].offset,
                    next_offset: raws.last().unwrap().offset + 1,
                    gaps: &[],
                    dead_letter: &make,
                    documents_removed: &removed,
                })
                .await?;
            if written.committed {
                return Ok(written);
            }
            assert!(removed.is_empty(), "one pass removes them all");
            assert!(!written.store_dead_letters.is_empty());
            assert_eq!(
                self.state().await,
                before,
                "nothing committed before the documents are removed"
            );
            removed = written.store_dead_letters;
        }
    }

    async fn scalar(&self, sql: &str) -> i64 {
        let sql = sql.replace("{s}", &self.schema);
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
            .fetch_one(&self.owner)
            .await
            .unwrap()
    }

    async fn exec(&self, sql: &str) {
        let sql = sql.replace("{s}", &self.schema);
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&self.owner)
            .await
            .unwrap();
    }

    async fn watermark(&self) -> i64 {
        self.scalar("SELECT coalesce(max(next_offset), -1) FROM {s}.consumer_offsets")
            .await
    }

    /// Watermark, rows and dead letters.
    async fn state(&self) -> (i64, i64, i64) {
        let dead = self.scalar("SELECT count(*) FROM {s}.dead_letters").await;
        (self.watermark().await, self.rows().await, dead)
    }

    async fn rows(&self) -> i64 {
        self.scalar("SELECT count(*) FROM {s}.log_records").await
    }
}

#[tokio::test]
async fn the_watermark_never_jumps_a_batch_that_is_not_durable() {
    let f = fixture("sink_cas").await;
    f.write(Position::Assigned(Some(0)), &raws(0, 10, &[]), &[])
        .await
        .unwrap();
    assert_eq!(f.watermark().await, 10);

    // Batch [10, 20) never written: [20, 30) must not move the watermark, nor store its rows.
    let err = f
        .write(Position::After(20), &raws(20, 30, &[]), &[])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not durable"), "{err}");
    assert!(!matches!(err, SinkError::Cancelled));
    assert_eq!((f.watermark().await, f.rows().await), (10, 10));

    f.write(Position::After(10), &raws(10, 20, &[]), &[])
        .await
        .unwrap();
    let w = f
        .write(Position::After(20), &raws(20, 30, &[]), &[])
        .await
        .unwrap();
    assert!(!w.already_durable);
    assert_eq!((f.watermark().await, f.rows().await), (30, 30));

    // A replay of a durable batch changes nothing and says so.
    let w = f
        .write(Position::Assigned(Some(0)), &raws(0, 10, &[]), &[])
        .await
        .unwrap();
    assert!(w.already_durable);
    assert_eq!((f.watermark().await, f.rows().await), (30, 30));
}

/// A batch that starts at the stored watermark is `COPY`ed (`Rows::Fresh`), the first one
/// (no watermark yet) inserted from arrays. Both must store the same row for the same record:
/// text full of `COPY`'s separators and escapes, keys of every byte, a missing Kafka time.
#[tokio::test]
async fn a_copied_batch_stores_the_rows_an_insert_stores() {
    let f = fixture("sink_copy").await;
    // Which statement wrote each row: `COPY` for the copied batch, `INSERT` for the other.
    f.exec(
        "CREATE TABLE {s}.written_by (kafka_offset bigint, statement text);
         CREATE FUNCTION {s}.note() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
             INSERT INTO {s}.written_by VALUES (NEW.kafka_offset, split_part(ltrim(current_query()), ' ', 1));
             RETURN NEW; END $$;
         CREATE TRIGGER note BEFORE INSERT ON {s}.log_records FOR EACH ROW EXECUTE FUNCTION {s}.note();",
    )
    .await;
    let texts = [
        "tab\there",
        "new\nline\r\n",
        "back\\slash \\. \\N \\x00",
        "\\.",
        "é ✓ 𝄞 \u{7f}",
        "",
    ];
    let record = |o: i64| {
        let t = texts[o as usize % texts.len()];
        let mut fields = Map::new();
        fields.insert(format!("k\t{o}"), Value::String(format!("{t}\\")));
        fields.insert("n".into(), serde_json::json!(1.5e-7));
        StoredRecord {
            offset: o,
            key: (o % 3 != 0).then(|| (0..=255u8).map(|b| b.wrapping_add(o as u8)).collect()),
            kafka_timestamp_ms: (o % 2 == 0).then_some(1_764_000_000_000 + o),
            entry: LogEntry {
                timestamp: "2026-11-30T10:00:00.123456Z".parse().unwrap(),
                level: (o % 2 == 1).then(|| t.to_string()),
                service: Some(format!("s\n{t}")),
                message: Some(t.to_string()),
                fields: log_processor::model::Fields::from_map(&fields),
            },
            route: 0,
            typed: Vec::new(),
        }
    };
    let n = texts.len() as i64;
    for (start, first) in [(Position::Assigned(Some(0)), 0), (Position::After(n), n)] {
        let records: Vec<StoredRecord> = (first..first + n)
            .map(|o| {
                let mut r = record(o - first);
                r.offset = o;
                r
            })
            .collect();
        let w = f
            .sink
            .write_batch(&BatchWrite {
                group_id: GROUP,
                tp: &f.tp,
                records: &records,
                dead_letters: &[],
                parked: &[],
                start,
                first_offset: first,
                next_offset: first + n,
                gaps: &[],
                dead_letter: &|_, _| unreachable!("no record is refused"),
                documents_removed: &[],
            })
            .await
            .unwrap();
        assert!(w.committed);
    }
    let by = |statement: &str| {
        format!(
            "SELECT count(*) FROM {{s}}.written_by WHERE statement = '{statement}' AND kafka_offset {}",
            if statement == "INSERT" {
                format!("< {n}")
            } else {
                format!(">= {n}")
            }
        )
    };
    assert_eq!(
        f.scalar(&by("INSERT")).await,
        n,
        "the first batch is inserted"
    );
    assert_eq!(f.scalar(&by("COPY")).await, n, "the second batch is copied");
    let same = f
        .scalar(&format!(
            "SELECT count(*) FROM {{s}}.log_records a JOIN {{s}}.log_records b
               ON b.kafka_offset = a.kafka_offset + {n}
             WHERE a.kafka_offset < {n}
               AND (a.topic, a.kafka_partition, a.ts, a.level, a.service, a.message, a.fields::text,
                    a.kafka_key, a.kafka_ts)
                   IS NOT DISTINCT FROM
                   (b.topic, b.kafka_partition, b.ts, b.level, b.service, b.message, b.fields::text,
                    b.kafka_key, b.kafka_ts)"
        ))
        .await;
    assert_eq!(same, n, "each copied row is the row the insert stored");
    // And what both stored is the record itself, not the same mangling twice.
    let (message, key): (String, Vec<u8>) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT m.message, k.kafka_key FROM {s}.log_records m, {s}.log_records k \
         WHERE m.kafka_offset = {} AND k.kafka_offset = {}",
        n + 2,
        n + 1,
        s = f.schema
    )))
    .fetch_one(&f.owner)
    .await
    .unwrap();
    assert_eq!(message, texts[2]);
    assert_eq!(Some(key), record(1).key);
}

/// The batch insert assumes its rows are new (no conflict check, see `Rows::Fresh`); the same
/// rows another writer put there first make it write again, leaving theirs alone.
#[tokio::test]
async fn rows_another_writer_stored_first_are_left_alone_and_the_batch_completes() {
    let f = fixture("sink_conflict").await;
    f.write(Position::Assigned(Some(0)), &raws(0, 10, &[]), &[])
        .await
        .unwrap();
    // Another writer (a second group, say) stored records 12 and 15 as we would.
    other_writer(&f, &raws(12, 13, &[]), &[]).await;
    other_writer(&f, &raws(15, 16, &[]), &[]).await;
    let w = f
        .write(Position::After(10), &raws(10, 20, &[]), &[])
        .await
        .unwrap();
    assert!(w.store_dead_letters.is_empty() && !w.already_durable);
    assert_eq!((f.watermark().await, f.rows().await), (20, 20));
    let ours = f
        .scalar("SELECT count(*) FROM {s}.log_records WHERE message = 'm' || kafka_offset AND kafka_offset BETWEEN 10 AND 19")
        .await;
    assert_eq!(ours, 10);
    let dead = f.scalar("SELECT count(*) FROM {s}.dead_letters").await;
    assert_eq!(dead, 0);
}

/// Stores `raws` as the daemon would, in a schema of their own group, then copies the rows
/// into `f`'s table: rows equal to ours but written by someone else. `change` is SQL applied to
/// the copies first (`SET message = ...`), for rows that differ.
async fn other_writer(f: &Fixture, raws: &[RawRecord], change: &[&str]) {
    let other = PgSink::new(&settings(&database_url(), &f.schema)).unwrap();
    let records: Vec<StoredRecord> = raws.iter().map(stored).collect();
    let make = |_: i64, _: String| unreachable!("no row of these is refused");
    other
        .write_batch(&BatchWrite {
            group_id: "other-writer",
            tp: &f.tp,
            records: &records,
            dead_letters: &[],
            parked: &[],
            start: Position::Assigned(Some(raws[0].offset)),
            first_offset: raws[0].offset,
            next_offset: raws.last().unwrap().offset + 1,
            gaps: &[],
            dead_letter: &make,
            documents_removed: &[],
        })
        .await
        .unwrap();
    for sql in change {
        f.exec(&format!(
            "UPDATE {{s}}.log_records {sql} WHERE kafka_offset BETWEEN {} AND {}",
            raws[0].offset,
            raws.last().unwrap().offset
        ))
        .await;
    }
    f.exec("DELETE FROM {s}.consumer_offsets WHERE group_id = 'other-writer'")
        .await;
}

/// A stored row at our coordinates with other content (another cluster, or an earlier
/// incarnation of the topic, writing into this schema) is not taken for ours: the batch is
/// refused, held by the worker, with an error naming the record, and nothing is written.
#[tokio::test]
async fn a_stored_row_with_other_content_at_our_coordinates_holds_the_batch() {
    let f = fixture("sink_conflict_differs").await;
    f.write(Position::Assigned(Some(0)), &raws(0, 10, &[]), &[])
        .await
        .unwrap();
    other_writer(&f, &raws(12, 13, &[]), &["SET message = 'another cluster'"]).await;
    other_writer(&f, &raws(15, 16, &[]), &[]).await;
    for _ in 0..2 {
        // The fast path (plain INSERT, then the retry skipping existing rows) and, the second
        // time, the partition's batches written with the conflict check from the start.
        let err = f
            .write(Position::After(10), &raws(10, 20, &[]), &[])
            .await
            .unwrap_err();
        assert!(
            matches!(err, SinkError::Permanent { .. }),
            "held and retried by the worker: {err:?}"
        );
        assert!(err.to_string().contains("t/0@12"), "{err}");
        assert!(
            !err.to_string().contains("t/0@15"),
            "the same content: {err}"
        );
        assert_eq!((f.watermark().await, f.rows().await), (10, 12));
        assert_eq!(f.scalar("SELECT count(*) FROM {s}.dead_letters").await, 0);
    }
    // Without a stored watermark (a new group) rows may exist: checked the same way.
    f.exec("DELETE FROM {s}.consumer_offsets").await;
    let err = f
        .write(Position::Assigned(Some(0)), &raws(0, 20, &[]), &[])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("t/0@12"), "{err}");
    assert_eq!((f.watermark().await, f.rows().await), (-1, 12));

    // Once the operator moves the foreign row away, the batch goes through.
    f.exec("DELETE FROM {s}.log_records WHERE kafka_offset = 12")
        .await;
    f.write(Position::Assigned(Some(0)), &raws(0, 20, &[]), &[])
        .await
        .unwrap();
    assert_eq!((f.watermark().await, f.rows().await), (20, 20));
    let ours = f
        .scalar("SELECT count(*) FROM {s}.log_records WHERE message = 'm' || kafka_offset")
        .await;
    assert_eq!(ours, 20);
}

/// A unique index an operator adds to `log_records` is the store's rule, like a CHECK: two
/// records with the same message hold the batch, in the plain insert and in the
/// insert that skips our own rows, instead of the second one vanishing.
#[tokio::test]
async fn a_unique_index_of_the_operator_holds_the_batch_instead_of_dropping_a_row() {
    let f = fixture("sink_unique").await;
    f.exec("CREATE UNIQUE INDEX same_message ON {s}.log_records (message)")
        .await;
    let same = |o: i64| RawRecord {
        offset: o,
        key: Some(format!("k{o}").into_bytes()),
        payload: Some(format!(r#"{{"message":"same","n":{o}}}"#).into_bytes()),
        kafka_timestamp_ms: Some(1_764_000_000_000 + o),
    };
    // The first batch of a new group is written with the conflict check (rows may exist).
    let mut first = raws(0, 10, &[]);
    first[3] = same(3);
    first[7] = same(7);
    let err = f
        .write(Position::Assigned(Some(0)), &first, &[])
        .await
        .unwrap_err();
    assert!(
        matches!(err, SinkError::Permanent { .. }) && err.to_string().contains("same_message"),
        "{err:?}"
    );
    assert_eq!((f.watermark().await, f.rows().await), (-1, 0));
    assert_eq!(f.scalar("SELECT count(*) FROM {s}.dead_letters").await, 0);

    // A later batch starts at the watermark: the plain insert, no fallback on another index.
    first[7] = raws(7, 8, &[]).remove(0);
    f.write(Position::Assigned(Some(0)), &first, &[])
        .await
        .unwrap();
    let mut next = raws(10, 20, &[]);
    next[2] = same(12);
    let err = f.write(Position::After(10), &next, &[]).await.unwrap_err();
    assert!(err.to_string().contains("same_message"), "{err:?}");
    assert_eq!((f.watermark().await, f.rows().await), (10, 10));
    assert_eq!(f.scalar("SELECT count(*) FROM {s}.dead_letters").await, 0);

    f.exec("DROP INDEX {s}.same_message").await;
    f.write(Position::After(10), &next, &[]).await.unwrap();
    assert_eq!((f.watermark().await, f.rows().await), (20, 20));
    let same_rows = f
        .scalar("SELECT count(*) FROM {s}.log_records WHERE message = 'same'")
        .await;
    assert_eq!(same_rows, 2, "records 3 and 12, each its own row");
}

#[tokio::test]
async fn bisection_dead_letters_exactly_the_refused_rows_with_their_raw_bytes() {
    let f = fixture("sink_bisect").await;
    let batch = raws(0, 200, &[37, 38, 150]);
    let w = f
        .write(Position::Assigned(Some(0)), &batch, &[])
        .await
        .unwrap();
    assert_eq!(
        w.store_dead_letters
            .iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        [37, 38, 150].into()
    );
    assert_eq!((f.watermark().await, f.rows().await), (200, 197));
    let dead: Vec<(i64, Vec<u8>, String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT kafka_offset, payload, stage, payload_encoding FROM {}.dead_letters ORDER BY kafka_offset",
        f.schema
    )))
    .fetch_all(&f.owner)
    .await
    .unwrap();
    assert_eq!(dead.len(), 3);
    for (offset, payload, stage, encoding) in dead {
        let raw = &batch[offset as usize];
        assert_eq!(
            Some(payload),
            raw.payload.clone(),
            "offset {offset}: the raw bytes"
        );
        assert_eq!((stage.as_str(), encoding.as_str()), ("store", "raw"));
    }
}

#[tokio::test]
async fn a_refusal_by_the_bookkeeping_tables_writes_nothing_and_dead_letters_nothing() {
    let f = fixture("sink_dl_check").await;
    f.exec("ALTER TABLE {s}.dead_letters ADD CONSTRAINT refuse_all CHECK (false) NOT VALID")
        .await;
    let batch = raws(0, 10, &[]);
    let dead = vec![DeadLetterPolicy::default().make(&batch[4], RejectStage::Decode, "bad")];
    let err = f
        .write(Position::Assigned(Some(0)), &batch, &dead)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("refuse_all"), "{err}");
    assert_eq!(
        (f.watermark().await, f.rows().await),
        (-1, 0),
        "nothing of the batch is stored"
    );

    f.exec("ALTER TABLE {s}.dead_letters DROP CONSTRAINT refuse_all")
        .await;
    f.write(Position::Assigned(Some(0)), &batch, &dead)
        .await
        .unwrap();
    assert_eq!((f.watermark().await, f.rows().await), (10, 9));
    assert_eq!(f.scalar("SELECT count(*) FROM {s}.dead_letters").await, 1);
}

/// The documented choice for an ambiguous case: a constraint an operator adds to `log_records`
/// is the store's rule, not a record's fault, so the batch is held, not dead-lettered.
/// A parked row whose fields cannot be read back (text edited by hand) stays parked, counted
/// as tried with why, and does not hold up the parked records behind it.
#[tokio::test]
async fn an_unreadable_parked_row_does_not_hold_up_the_others() {
    let f = fixture("unreadable_parked").await;
    for (offset, fields, minutes_ago) in [(1, "[1]", 2), (2, r#"{"a":1}"#, 1)] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {}.parked_records (topic, kafka_partition, kafka_offset, destination, \
             reason, ts, fields, payload_encoding, parked_at) VALUES ('t', 0, {offset}, \
             'logs-2026', 'index closed', now(), '{fields}', 'raw', \
             now() - interval '{minutes_ago} minutes')",
            f.schema
        )))
        .execute(&f.owner)
        .await
        .unwrap();
    }
    // Least recently tried, then oldest, first: the unreadable row alone in a round of one.
    assert!(f.sink.parked_due(1).await.unwrap().is_empty());
    let (attempts, reason): (i32, String) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT attempts, reason FROM {}.parked_records WHERE kafka_offset = 1",
        f.schema
    )))
    .fetch_one(&f.owner)
    .await
    .unwrap();
    assert_eq!(attempts, 1);
    assert!(reason.contains("not a JSON object"), "{reason}");
    let due = f.sink.parked_due(1).await.unwrap();
    assert_eq!(due.len(), 1, "the readable row comes next");
    assert_eq!(due[0].1.record.offset, 2);
    assert_eq!(due[0].1.record.entry.fields.as_str(), r#"{"a":1}"#);
}

#[tokio::test]
async fn a_check_constraint_on_log_records_holds_the_batch() {
    let f = fixture("sink_lr_check").await;
    f.exec("ALTER TABLE {s}.log_records ADD CONSTRAINT no_m3 CHECK (message <> 'm3') NOT VALID")
        .await;
    let err = f
        .write(Position::Assigned(Some(0)), &raws(0, 10, &[]), &[])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no_m3"), "{err}");
    assert_eq!(f.scalar("SELECT count(*) FROM {s}.dead_letters").await, 0);
    assert_eq!((f.watermark().await, f.rows().await), (-1, 0));
}

#[tokio::test]
async fn permission_denied_is_not_a_record_fault() {
    let f = fixture("sink_priv").await;
    let role = format!("r_{}", f.schema);
    f.exec(&format!(
        "CREATE ROLE {role} LOGIN PASSWORD 'pw'; GRANT USAGE ON SCHEMA {{s}} TO {role}; \
         GRANT SELECT, UPDATE ON ALL TABLES IN SCHEMA {{s}} TO {role}; \
         GRANT INSERT ON {{s}}.dead_letters, {{s}}.consumer_offsets TO {role}"
    ))
    .await;
    let url = database_url().replacen("logproc:logproc@", &format!("{role}:pw@"), 1);
    let sink = PgSink::new(&settings(&url, &f.schema)).unwrap();
    sink.prepare(MigrateMode::Off)
        .await
        .expect("the schema is in place: nothing to create");
    let as_role = Fixture { sink, ..f };
    let err = as_role
        .write(Position::Assigned(Some(0)), &raws(0, 10, &[]), &[])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
    assert_eq!(
        as_role
            .scalar("SELECT count(*) FROM {s}.dead_letters")
            .await,
        0
    );
    assert_eq!(as_role.watermark().await, -1);

    as_role
        .exec(&format!("GRANT INSERT ON {{s}}.log_records TO {role}"))
        .await;
    as_role
        .write(Position::Assigned(Some(0)), &raws(0, 10, &[]), &[])
        .await
        .unwrap();
    assert_eq!((as_role.watermark().await, as_role.rows().await), (10, 10));
}

#[tokio::test]
async fn a_least_privilege_role_starts_on_a_migrated_schema_and_is_told_what_is_missing() {
    let f = fixture("sink_least").await;
    let role = format!("r_{}", f.schema);
    f.exec(&format!(
        "CREATE ROLE {role} LOGIN PASSWORD 'pw'; GRANT USAGE ON SCHEMA {{s}} TO {role}; \
         GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA {{s}} TO {role}"
    ))
    .await;
    let url = database_url().replacen("logproc:logproc@", &format!("{role}:pw@"), 1);
    for mode in [MigrateMode::Auto, MigrateMode::Off] {
        let sink = PgSink::new(&settings(&url, &f.schema)).unwrap();
        sink.prepare(mode)
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
    }
    // A schema that is not there: `off` refuses, naming the setting.
    let sink = PgSink::new(&settings(&url, &format!("{}_missing", f.schema))).unwrap();
    let err = sink.prepare(MigrateMode::Off).await.unwrap_err();
    assert!(err.to_string().contains("LP_MIGRATE=off"), "{err}");
}

#[tokio::test]
async fn a_mixed_case_schema_is_used_as_written() {
    require("PostgreSQL", &database_url());
    let schema = format!("Mixed_{}", unique("sink_case"));
    let sink = PgSink::new(&settings(&database_url(), &schema)).unwrap();
    sink.prepare(MigrateMode::Auto)
        .await
        .expect("migrate a mixed-case schema");
    sink.prepare(MigrateMode::Off)
        .await
        .expect("and find it again");
    let owner = PgPool::connect(&database_url()).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname = $1")
        .bind(&schema)
        .fetch_one(&owner)
        .await
        .unwrap();
    assert_eq!(n, 1, "schema {schema} kept its case");
}

/// Whatever order batches of a partition are written, lost or replayed in (a consumer moving
/// on past a batch that never reached PostgreSQL, a zombie's late write, a new owner starting at
/// the stored watermark), the rows PostgreSQL holds for the partition are exactly the offsets
/// below its stored watermark: the watermark never passes an offset that is not durable.
#[test]
fn no_sequence_of_writes_losses_and_revocations_lets_the_watermark_pass_a_hole() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    #[derive(Debug, Clone)]
    enum Step {
        Write(i64),
        Lose(i64),
        WriteOldestLost,
        Revoke,
    }
    let step = prop_oneof![
        3 => (1i64..6).prop_map(Step::Write),
        2 => (1i64..6).prop_map(Step::Lose),
        2 => Just(Step::WriteOldestLost),
        1 => Just(Step::Revoke),
    ];

    let rt = tokio::runtime::Runtime::new().unwrap();
    let f = rt.block_on(fixture("sink_prop"));
    let partition = std::sync::atomic::AtomicI32::new(0);
    let mut runner = TestRunner::new(Config {
        cases: 24,
        ..Config::default()
    });
    runner
        .run(&proptest::collection::vec(step, 1..14), |steps| {
            let tp = TopicPartition::new(
                "t",
                partition.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
            );
            let f = Fixture {
                tp: tp.clone(),
                schema: f.schema.clone(),
                owner: f.owner.clone(),
                sink: f.sink.clone(),
            };
            rt.block_on(async {
                let mut pos = 0i64;
                let mut at = Position::Assigned(None);
                let mut lost: std::collections::VecDeque<(Position, i64, i64)> = Default::default();
                for step in steps {
                    match step {
                        Step::Write(n) => {
                            let _ = f.write(at, &raws(pos, pos + n, &[]), &[]).await;
                            pos += n;
                            at = Position::After(pos);
                        }
                        Step::Lose(n) => {
                            lost.push_back((at, pos, pos + n));
                            pos += n;
                            at = Position::After(pos);
                        }
                        Step::WriteOldestLost => {
                            if let Some((start, first, next)) = lost.pop_front() {
                                let _ = f.write(start, &raws(first, next, &[]), &[]).await;
                            }
                        }
                        Step::Revoke => {
                            // The next owner starts at the stored watermark.
                            let w = f.partition_watermark().await;
                            pos = w.max(0);
                            at = Position::Assigned((w >= 0).then_some(w));
                        }
                    }
                    let w = f.partition_watermark().await;
                    let offsets = f.partition_offsets().await;
                    let expect: Vec<i64> = (0..w.max(0)).collect();
                    prop_assert_eq!(&offsets, &expect, "rows of {} against watermark {}", tp, w);
                }
                Ok(())
            })
        })
        .unwrap();
}

impl Fixture {
    async fn partition_watermark(&self) -> i64 {
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
            "SELECT coalesce(max(next_offset), -1) FROM {}.consumer_offsets WHERE kafka_partition = $1",
            self.schema
        )))
        .bind(self.tp.partition)
        .fetch_one(&self.owner)
        .await
        .unwrap()
    }

    async fn partition_offsets(&self) -> Vec<i64> {
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
            "SELECT kafka_offset FROM {}.log_records WHERE kafka_partition = $1 ORDER BY 1",
            self.schema
        )))
        .bind(self.tp.partition)
        .fetch_all(&self.owner)
        .await
        .unwrap()
    }
}

/// A write cancelled while PostgreSQL is silent (a revocation or an abort drops it) must not
/// keep the pool's slot: with a pool of one, the next write gets a fresh connection at once.
#[tokio::test]
async fn a_cancelled_write_to_a_silent_server_does_not_leak_its_pooled_connection() {
    let f = fixture("sink_cancel").await;
    let (proxy, url) = common::proxy::in_front_of(&database_url()).await;
    let sink = PgSink::new(&PgSettings {
        pool_size: 1,
        connect_timeout: Duration::from_secs(2),
        ..settings(&url, &f.schema)
    })
    .unwrap();
    let f = Fixture { sink, ..f };
    f.write(Position::Assigned(Some(0)), &raws(0, 10, &[]), &[])
        .await
        .unwrap();

    proxy.set(common::proxy::Mode::Silent);
    let cancelled = tokio::time::timeout(
        Duration::from_millis(500),
        f.write(Position::After(10), &raws(10, 20, &[]), &[]),
    )
    .await;
    assert!(
        cancelled.is_err(),
        "the silent server answered: {cancelled:?}"
    );

    proxy.set(common::proxy::Mode::Pass);
    // Retried as a worker does: a connection caught mid-check by the silence is given up
    // within the connect timeout (2 s here), so the pool's one slot is free again by then.
    let t = std::time::Instant::now();
    let mut outcome = Err(SinkError::Cancelled);
    while t.elapsed() < Duration::from_secs(8) {
        outcome = f.write(Position::After(10), &raws(10, 20, &[]), &[]).await;
        if outcome.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    outcome.unwrap_or_else(|e| panic!("no write got a connection within {:?}: {e}", t.elapsed()));
    println!(
        "next write stored {:?} after the silence ended",
        t.elapsed()
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(f.watermark().await, 20);
}
