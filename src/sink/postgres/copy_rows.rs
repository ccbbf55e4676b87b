//! A batch's rows as the text of `COPY ... FROM STDIN`: how a batch none of whose rows can
//! exist yet (`Rows::Fresh`) is written. `COPY` costs PostgreSQL less per row than an `INSERT`
//! of the same rows from arrays, and it takes every value through the same input function as
//! the `INSERT`'s casts from text, so a row is the same either way and a refused value is the
//! same data exception. `COPY` skips rules (`CREATE RULE`), never triggers or constraints.

use std::io::Write;

use chrono::{DateTime, Datelike, Timelike, Utc};

use super::kafka_time;
use crate::mapping::Table;
use crate::model::{StoredRecord, TopicPartition};

/// `COPY {table} (columns) FROM STDIN`: the columns in the order `copy_text` writes them.
pub(super) fn copy_statement(table: &Table) -> String {
    let typed: String = table
        .columns
        .iter()
        .map(|c| format!(", {}", c.name))
        .collect();
    format!(
        "COPY {} (topic, kafka_partition, kafka_offset, ts, level, service, message, fields, \
         kafka_key, kafka_ts{typed}) FROM STDIN",
        table.name
    )
}

/// The rows in `COPY`'s text format, or `None` if a timestamp lies outside the years 1..=9999,
/// whose text PostgreSQL could read differently (the caller then inserts them from arrays,
/// where a timestamp travels as a number).
pub(super) fn copy_text(tp: &TopicPartition, records: &[&StoredRecord]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(records.iter().map(|r| row_size(r)).sum());
    for r in records {
        text(&mut out, &tp.topic);
        write!(out, "\t{}\t{}\t", tp.partition, r.offset).expect("writing to memory");
        timestamp(&mut out, r.entry.timestamp)?;
        for value in [&r.entry.level, &r.entry.service, &r.entry.message] {
            out.push(b'\t');
            optional_text(&mut out, value.as_deref());
        }
        out.push(b'\t');
        text(&mut out, r.entry.fields.as_str());
        out.push(b'\t');
        match &r.key {
            Some(key) => bytea(&mut out, key),
            None => out.extend_from_slice(b"\\N"),
        }
        out.push(b'\t');
        match kafka_time(r.kafka_timestamp_ms) {
            Some(t) => timestamp(&mut out, t)?,
            None => out.extend_from_slice(b"\\N"),
        }
        for value in &r.typed {
            out.push(b'\t');
            optional_text(&mut out, value.as_deref());
        }
        out.push(b'\n');
    }
    Some(out)
}

/// About a row's length in `COPY` text, so the buffer is allocated once.
fn row_size(r: &StoredRecord) -> usize {
    let texts = [&r.entry.level, &r.entry.service, &r.entry.message];
    96 + texts
        .iter()
        .map(|t| t.as_ref().map_or(2, String::len))
        .sum::<usize>()
        + r.entry.fields.as_str().len()
        + 2 * r.key.as_ref().map_or(0, Vec::len)
        + r.typed
            .iter()
            .map(|t| t.as_ref().map_or(2, String::len))
            .sum::<usize>()
}

fn optional_text(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(v) => text(out, v),
        None => out.extend_from_slice(b"\\N"),
    }
}

/// A text value with `COPY`'s escapes: a backslash and the three separators it could be
/// mistaken for. Nothing else needs one (NUL never gets here: decode refuses it).
fn text(out: &mut Vec<u8>, value: &str) {
    let special = |b: &u8| matches!(b, b'\\' | b'\t' | b'\n' | b'\r');
    if !value.as_bytes().iter().any(special) {
        out.extend_from_slice(value.as_bytes());
        return;
    }
    for &b in value.as_bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            other => out.push(other),
        }
    }
}

/// `bytea` in hex (`\x..`), its backslash escaped for `COPY`.
fn bytea(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(b"\\\\x");
    for &b in bytes {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 15)]);
    }
}

/// ISO 8601 in UTC with microseconds (decode cuts every timestamp to them; Kafka's are whole
/// milliseconds). `None` outside the years 1..=9999.
fn timestamp(out: &mut Vec<u8>, t: DateTime<Utc>) -> Option<()> {
    if !(1..=9999).contains(&t.year()) {
        return None;
    }
    write!(
        out,
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}+00",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond() / 1000
    )
    .expect("writing to memory");
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Fields, LogEntry};

    fn record(message: &str, key: Option<&[u8]>, ms: Option<i64>) -> StoredRecord {
        StoredRecord {
            offset: 7,
            key: key.map(<[u8]>::to_vec),
            kafka_timestamp_ms: ms,
            entry: LogEntry {
                timestamp: "2026-11-30T10:00:00.123456Z".parse().unwrap(),
                level: Some("warn".into()),
                service: None,
                message: Some(message.into()),
                fields: Fields::from_map(&serde_json::from_str(r#"{"p":"a\\b"}"#).unwrap()),
            },
            route: 0,
            typed: vec![Some("1".into()), None],
        }
    }

    #[test]
    fn separators_and_backslashes_are_escaped_and_nulls_marked() {
        let tp = TopicPartition::new("t", 2);
        let r = record("a\tb\nc\rd\\e \\. é", Some(&[0, 0xab, 0x10]), None);
        let text = String::from_utf8(copy_text(&tp, &[&r]).unwrap()).unwrap();
        assert_eq!(
            text,
            "t\t2\t7\t2026-11-30 10:00:00.123456+00\twarn\t\\N\ta\\tb\\nc\\rd\\\\e \\\\. é\t\
             {\"p\":\"a\\\\\\\\b\"}\t\\\\x00ab10\t\\N\t1\t\\N\n"
        );
    }

    #[test]
    fn kafka_time_is_written_and_a_year_outside_four_digits_is_left_to_insert() {
        let tp = TopicPartition::new("t", 0);
        let r = record("m", None, Some(1_764_000_000_001));
        let text = String::from_utf8(copy_text(&tp, &[&r]).unwrap()).unwrap();
        assert!(text.contains("\t2025-11-24 16:00:00.001000+00\t"), "{text}");
        let far = record("m", None, Some(300_000_000_000_000));
        assert!(copy_text(&tp, &[&r, &far]).is_none());
        let before = record("m", None, Some(-62_200_000_000_000));
        assert!(copy_text(&tp, &[&before]).is_none());
    }
}
