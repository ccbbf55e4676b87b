//! Turns raw Kafka bytes into a [`LogEntry`], or says exactly why it cannot.
//!
//! Malformed (dead-lettered with the reason, never dropped, never altered):
//! empty payload; larger than the configured maximum; invalid UTF-8; NUL bytes (PostgreSQL text
//! and jsonb cannot hold them); invalid JSON or nesting deeper than 128 levels; JSON that is not
//! an object; a `timestamp`/`@timestamp` that does not parse or falls outside 1900..2200; no
//! timestamp at all, neither in the record nor from Kafka.
//!
//! Deterministic: the same record always decodes to the same entry (no wall clock). Numbers
//! keep their exact text (serde_json's `arbitrary_precision`). Timestamps: an RFC 3339 string,
//! a leap second (`23:59:60.5`) read as the second before it (`23:59:59.5`), as Unix time does;
//! or a number of seconds since the epoch when its magnitude is below 10^11 (before the year
//! 5138), otherwise of milliseconds, fractions allowed. A record without a timestamp takes
//! Kafka's record timestamp.

mod object;

use std::borrow::Cow;

use chrono::{DateTime, Datelike, SubsecRound, TimeZone, Timelike, Utc};
use serde_json::{Map, Value};

use crate::model::{Fields, LogEntry, RawRecord};
use crate::redact::Redactor;
use object::Object;

const TIMESTAMP_FIELDS: [&str; 2] = ["timestamp", "@timestamp"];
const RECOGNISED: [&str; 3] = ["level", "service", "message"];
const MIN_YEAR: i32 = 1900;
const MAX_YEAR: i32 = 2199;

/// Decodes one record. `Err` carries the dead-letter reason.
///
/// Two ways, one result: most records are read without a `Value` tree (`object`); a record
/// that one cannot read exactly as serde_json would, or whose fields are redacted (redaction
/// rewrites values in the tree), goes through a tree, which also words every error.
pub fn decode(raw: &RawRecord, max_bytes: usize, redactor: &Redactor) -> Result<LogEntry, String> {
    let text = text_of(raw, max_bytes)?;
    let parts = match redactor.is_empty().then(|| read_object(text)).flatten() {
        Some(parts) => parts,
        None => read_tree(text, redactor)?.0,
    };
    parts.into_entry(raw.kafka_timestamp_ms)
}

/// Decodes one record through the tree, with the map its `fields` were written from: what a
/// mapping that looks into the fields reads (`Mapping::reads_fields`). The map is the tree's
/// own, not the fields' text read again, which serde_json may read otherwise.
pub fn decode_with_map(
    raw: &RawRecord,
    max_bytes: usize,
    redactor: &Redactor,
) -> Result<(LogEntry, Map<String, Value>), String> {
    let (parts, object) = read_tree(text_of(raw, max_bytes)?, redactor)?;
    Ok((parts.into_entry(raw.kafka_timestamp_ms)?, object))
}

/// The payload as text, or why it cannot be a record.
fn text_of(raw: &RawRecord, max_bytes: usize) -> Result<&str, String> {
    let bytes = match raw.payload.as_deref() {
        None | Some([]) => return Err("empty payload".into()),
        Some(b) => b,
    };
    if bytes.len() > max_bytes {
        return Err(format!(
            "record of {} bytes exceeds the {max_bytes}-byte limit",
            bytes.len()
        ));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|e| format!("invalid UTF-8 at byte {}", e.valid_up_to()))?;
    if let Some(pos) = text.find('\0') {
        return Err(format!("NUL byte at byte {pos}"));
    }
    Ok(text)
}

/// What a record's object holds, whichever way it was read.
struct Parts<'a> {
    /// The timestamp field's name and value, if the record has one.
    stamp: Option<(&'static str, Stamp<'a>)>,
    level: Option<String>,
    service: Option<String>,
    message: Option<String>,
    fields: Fields,
}

/// A timestamp field's value.
enum Stamp<'a> {
    Text(Cow<'a, str>),
    /// A number's JSON text.
    Number(Cow<'a, str>),
    /// Neither: what it is instead.
    Other(&'static str),
}

impl Parts<'_> {
    fn into_entry(self, kafka_timestamp_ms: Option<i64>) -> Result<LogEntry, String> {
        let timestamp = match self.stamp {
            Some((name, stamp)) => parse_timestamp(name, stamp)?,
            None => kafka_timestamp_ms
                .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
                .ok_or("no timestamp: neither timestamp nor @timestamp, and none from Kafka")?,
        };
        Ok(LogEntry {
            // Both stores keep microseconds; cut here so they cannot round differently.
            timestamp: timestamp.trunc_subsecs(6),
            level: self.level,
            service: self.service,
            message: self.message,
            fields: self.fields,
        })
    }
}

/// The record read as borrowed keys and raw values; `None`: read it as a tree instead.
fn read_object(text: &str) -> Option<Parts<'_>> {
    let mut object = Object::read(text)?;
    let found = TIMESTAMP_FIELDS
        .into_iter()
        .find_map(|n| Some((n, object.get(n)?)));
    let stamp = match found {
        None => None,
        Some((name, value)) => {
            // A number's reason quotes its text as serde_json keeps it (`1E5` as `1e+5`); in
            // any other value an escape serde_json refuses makes the record invalid JSON.
            let as_written = || object::form(value.get()) == object::Form::AsWritten;
            let stamp = match value.get().as_bytes()[0] {
                b'"' => Stamp::Text(object::as_string(value)?),
                _ if !as_written() => return None,
                b'-' | b'0'..=b'9' => Stamp::Number(Cow::Borrowed(value.get())),
                _ => Stamp::Other(object::kind(value)),
            };
            object.remove(name);
            Some((name, stamp))
        }
    };
    let columns = RECOGNISED.map(|name| match object.get(name) {
        Some(v) if v.get().starts_with('"') => Some(object::as_string(v).map(Cow::into_owned)),
        _ => None,
    });
    for (name, column) in RECOGNISED.iter().zip(&columns) {
        match column {
            Some(None) => return None,
            Some(Some(_)) => object.remove(name),
            None => {}
        }
    }
    let [level, service, message] = columns.map(Option::flatten);
    let fields = object.fields()?;
    Some(Parts {
        stamp,
        level,
        service,
        message,
        fields,
    })
}

/// The record read as a `serde_json::Value` tree, redacted, with the map of its other fields;
/// `Err` says why it is no record.
fn read_tree(
    text: &str,
    redactor: &Redactor,
) -> Result<(Parts<'static>, Map<String, Value>), String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(mut object) = value else {
        return Err(format!("JSON is {}, not an object", kind(&value)));
    };
    if let Some(path) = find_nul(&object) {
        return Err(format!("NUL character (\\u0000) in {path}"));
    }
    redactor.apply(&mut object);
    let stamp = TIMESTAMP_FIELDS
        .into_iter()
        .find(|n| object.contains_key(*n))
        .map(|name| match object.remove(name) {
            Some(Value::String(s)) => (name, Stamp::Text(Cow::Owned(s))),
            Some(Value::Number(n)) => (name, Stamp::Number(Cow::Owned(n.to_string()))),
            other => (name, Stamp::Other(other.as_ref().map_or("null", kind))),
        });
    let [level, service, message] = RECOGNISED.map(|name| take_string(&mut object, name));
    let fields = Fields::from_map(&object);
    let parts = Parts {
        stamp,
        level,
        service,
        message,
        fields,
    };
    Ok((parts, object))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Only string values become columns; anything else stays in `fields` untouched.
fn take_string(object: &mut Map<String, Value>, name: &str) -> Option<String> {
    match object.get(name) {
        Some(Value::String(_)) => match object.remove(name) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        },
        _ => None,
    }
}

fn parse_timestamp(name: &str, stamp: Stamp<'_>) -> Result<DateTime<Utc>, String> {
    let parsed = match stamp {
        Stamp::Text(s) => DateTime::parse_from_rfc3339(&s)
            .map(|t| without_leap_second(t.with_timezone(&Utc)))
            .map_err(|e| format!("unparseable {name} {s:?}: {e}"))?,
        Stamp::Number(n) => from_epoch_number(&n).ok_or_else(|| {
            format!("unparseable {name} {n}: expected epoch seconds or milliseconds")
        })?,
        Stamp::Other(kind) => return Err(format!("unparseable {name}: {kind} is not a timestamp")),
    };
    if !(MIN_YEAR..=MAX_YEAR).contains(&parsed.year()) {
        return Err(format!(
            "{name} {parsed} is outside the years {MIN_YEAR}..{MAX_YEAR}"
        ));
    }
    Ok(parsed)
}

/// Below this magnitude an epoch number counts seconds, from it milliseconds.
const SECONDS_BELOW: f64 = 1e11;

/// An epoch number (as its JSON text) in seconds or milliseconds, see the module docs.
/// Integers are exact; fractions are rounded to the microsecond, what both stores keep.
fn from_epoch_number(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(n) = text.parse::<i64>() {
        return if (n as f64).abs() < SECONDS_BELOW {
            Utc.timestamp_opt(n, 0).single()
        } else {
            Utc.timestamp_millis_opt(n).single()
        };
    }
    let value: f64 = text.parse().ok().filter(|v: &f64| v.is_finite())?;
    let micros_per_unit = if value.abs() < SECONDS_BELOW {
        1e6
    } else {
        1e3
    };
    let micros = (value * micros_per_unit).round();
    // Years 1900..2199 are checked by the caller; this only keeps the cast in range.
    if micros.abs() > 9.2e18 {
        return None;
    }
    Utc.timestamp_micros(micros as i64).single()
}

/// chrono keeps a leap second as a nanosecond count of a billion or more; neither store takes
/// it, so it becomes the same fraction of the second before.
fn without_leap_second(t: DateTime<Utc>) -> DateTime<Utc> {
    match t.nanosecond() {
        n if n >= 1_000_000_000 => t.with_nanosecond(n - 1_000_000_000).unwrap_or(t),
        _ => t,
    }
}

/// The path of the first key or string holding a NUL character, if any.
fn find_nul(object: &Map<String, Value>) -> Option<String> {
    fn walk(v: &Value, path: &mut String) -> bool {
        match v {
            Value::String(s) => s.contains('\0'),
            Value::Array(items) => items.iter().any(|i| walk(i, path)),
            Value::Object(map) => map.iter().any(|(k, v)| {
                let len = path.len();
                path.push('.');
                path.push_str(&k.replace('\0', "\\u0000"));
                if k.contains('\0') || walk(v, path) {
                    return true;
                }
                path.truncate(len);
                false
            }),
            _ => false,
        }
    }
    let mut path = String::from("$");
    object
        .iter()
        .any(|(k, v)| {
            path.truncate(1);
            path.push('.');
            path.push_str(&k.replace('\0', "\\u0000"));
            k.contains('\0') || walk(v, &mut path)
        })
        .then_some(path)
}

#[cfg(test)]
mod tests;
