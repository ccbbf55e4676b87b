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

use chrono::{DateTime, Datelike, SubsecRound, TimeZone, Timelike, Utc};
use serde_json::{Map, Value};

use crate::model::{Fields, LogEntry, RawRecord};
use crate::redact::Redactor;

const TIMESTAMP_FIELDS: [&str; 2] = ["timestamp", "@timestamp"];
const MIN_YEAR: i32 = 1900;
const MAX_YEAR: i32 = 2199;

/// Decodes one record. `Err` carries the dead-letter reason.
pub fn decode(raw: &RawRecord, max_bytes: usize, redactor: &Redactor) -> Result<LogEntry, String> {
    decode_parts(raw, max_bytes, redactor).map(|(entry, _)| entry)
}

/// Decodes one record into its entry and the object its `fields` were made from, which the
/// mapping's typed columns are read from without parsing the fields' text again.
pub fn decode_parts(
    raw: &RawRecord,
    max_bytes: usize,
    redactor: &Redactor,
) -> Result<(LogEntry, Map<String, Value>), String> {
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
    let value: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(mut object) = value else {
        return Err(format!("JSON is {}, not an object", kind(&value)));
    };
    if let Some(path) = find_nul(&object) {
        return Err(format!("NUL character (\\u0000) in {path}"));
    }
    redactor.apply(&mut object);

    let timestamp = match take_timestamp(&mut object)? {
        Some(ts) => ts,
        None => raw
            .kafka_timestamp_ms
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
            .ok_or("no timestamp: neither timestamp nor @timestamp, and none from Kafka")?,
    };
    let level = take_string(&mut object, "level");
    let service = take_string(&mut object, "service");
    let message = take_string(&mut object, "message");
    let entry = LogEntry {
        // Both stores keep microseconds; cut here so they cannot round differently.
        timestamp: timestamp.trunc_subsecs(6),
        level,
        service,
        message,
        fields: Fields::from_map(&object),
    };
    Ok((entry, object))
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

fn take_timestamp(object: &mut Map<String, Value>) -> Result<Option<DateTime<Utc>>, String> {
    let Some(name) = TIMESTAMP_FIELDS
        .into_iter()
        .find(|n| object.contains_key(*n))
    else {
        return Ok(None);
    };
    let parsed = match &object[name] {
        Value::String(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| without_leap_second(t.with_timezone(&Utc)))
            .map_err(|e| format!("unparseable {name} {s:?}: {e}"))?,
        Value::Number(n) => from_epoch_number(&n.to_string()).ok_or_else(|| {
            format!("unparseable {name} {n}: expected epoch seconds or milliseconds")
        })?,
        other => {
            return Err(format!(
                "unparseable {name}: {} is not a timestamp",
                kind(other)
            ));
        }
    };
    if !(MIN_YEAR..=MAX_YEAR).contains(&parsed.year()) {
        return Err(format!(
            "{name} {parsed} is outside the years {MIN_YEAR}..{MAX_YEAR}"
        ));
    }
    object.remove(name);
    Ok(Some(parsed))
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
mod tests {
    use super::*;

    fn raw(payload: &[u8]) -> RawRecord {
        RawRecord {
            offset: 7,
            key: None,
            payload: Some(payload.to_vec()),
            kafka_timestamp_ms: Some(1_700_000_000_000),
        }
    }
    fn dec(payload: &[u8]) -> Result<LogEntry, String> {
        decode(&raw(payload), 1024, &Redactor::default())
    }

    #[test]
    fn decodes_recognised_fields_and_keeps_the_rest() {
        let e = dec(br#"{"timestamp":"2026-11-26T10:00:00.123Z","level":"warn","service":"api","message":"hi","user":{"id":1}}"#).unwrap();
        assert_eq!(e.timestamp.to_rfc3339(), "2026-11-26T10:00:00.123+00:00");
        assert_eq!(e.level.as_deref(), Some("warn"));
        assert_eq!(e.service.as_deref(), Some("api"));
        assert_eq!(e.message.as_deref(), Some("hi"));
        assert_eq!(
            Value::Object(e.fields.to_map()),
            serde_json::json!({"user": {"id": 1}})
        );
    }

    #[test]
    fn non_string_recognised_fields_stay_in_fields() {
        let e = dec(br#"{"level":3,"message":{"a":1}}"#).unwrap();
        assert_eq!(e.level, None);
        assert_eq!(e.fields.to_map().len(), 2);
    }

    #[test]
    fn missing_timestamp_uses_kafka_time_and_never_the_clock() {
        let e = dec(br#"{"message":"x"}"#).unwrap();
        assert_eq!(e.timestamp.timestamp_millis(), 1_700_000_000_000);
        let none = RawRecord {
            kafka_timestamp_ms: None,
            ..raw(br#"{"message":"x"}"#)
        };
        let err = decode(&none, 1024, &Redactor::default()).unwrap_err();
        assert!(err.starts_with("no timestamp"), "{err}");
    }

    #[test]
    fn epoch_numbers_are_seconds_below_1e11_and_milliseconds_above() {
        let ms = |p: &[u8]| dec(p).unwrap().timestamp.timestamp_millis();
        assert_eq!(ms(br#"{"@timestamp":1700000000001}"#), 1_700_000_000_001);
        assert_eq!(ms(br#"{"timestamp":1764151200}"#), 1_764_151_200_000);
        assert_eq!(ms(br#"{"timestamp":1764151200.25}"#), 1_764_151_200_250);
        let us = dec(br#"{"timestamp":1764151200123.5}"#)
            .unwrap()
            .timestamp
            .timestamp_micros();
        assert_eq!(us, 1_764_151_200_123_500);
        assert!(dec(br#"{"timestamp":1e400}"#).is_err());
    }

    #[test]
    fn a_leap_second_becomes_the_second_before() {
        let e = dec(br#"{"timestamp":"2016-12-31T23:59:60.5Z"}"#).unwrap();
        assert_eq!(e.timestamp.to_rfc3339(), "2016-12-31T23:59:59.500+00:00");
    }

    #[test]
    fn timestamps_are_cut_to_the_microsecond_both_stores_keep() {
        let e = dec(br#"{"timestamp":"1999-12-31T23:59:59.9999999Z"}"#).unwrap();
        assert_eq!(e.timestamp.to_rfc3339(), "1999-12-31T23:59:59.999999+00:00");
    }

    #[test]
    fn numbers_keep_their_exact_value() {
        let e = dec(
            br#"{"big":123456789012345678901234567890,"f":0.1000000000000000055511151231257827}"#,
        )
        .unwrap();
        assert_eq!(
            e.fields.as_str(),
            r#"{"big":123456789012345678901234567890,"f":0.1000000000000000055511151231257827}"#
        );
    }

    #[test]
    fn decoding_is_deterministic() {
        let p = br#"{"message":"m","n":1}"#;
        let none = RawRecord {
            kafka_timestamp_ms: Some(5),
            ..raw(p)
        };
        let a = decode(&none, 1024, &Redactor::default()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b = decode(&none, 1024, &Redactor::default()).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn malformed_records_are_rejected_with_reasons() {
        let deep = "[".repeat(200) + &"]".repeat(200);
        let deep_obj = format!("{{\"a\":{deep}}}");
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"".to_vec(), "empty payload"),
            (vec![b'a'; 2000], "exceeds"),
            (b"{\"a\":\"\xff\"}".to_vec(), "invalid UTF-8"),
            (b"{\"a\":1}\0".to_vec(), "NUL byte"),
            (br#"{"a":"x\u0000y"}"#.to_vec(), "NUL character"),
            (br#"{"a\u0000":1}"#.to_vec(), "NUL character"),
            (b"{not json".to_vec(), "invalid JSON"),
            (deep_obj.into_bytes(), "invalid JSON"),
            (b"[1,2]".to_vec(), "not an object"),
            (b"\"s\"".to_vec(), "not an object"),
            (
                br#"{"timestamp":"yesterday"}"#.to_vec(),
                "unparseable timestamp",
            ),
            (br#"{"timestamp":true}"#.to_vec(), "unparseable timestamp"),
            (
                br#"{"timestamp":"0001-01-01T00:00:00Z"}"#.to_vec(),
                "outside the years",
            ),
            (
                br#"{"timestamp":"9999-01-01T00:00:00Z"}"#.to_vec(),
                "outside the years",
            ),
        ];
        for (payload, expect) in cases {
            let err = dec(&payload).unwrap_err();
            assert!(
                err.contains(expect),
                "{:?}: {err}",
                String::from_utf8_lossy(&payload)
            );
        }
        let none = RawRecord {
            payload: None,
            ..raw(b"")
        };
        assert_eq!(
            decode(&none, 10, &Redactor::default()).unwrap_err(),
            "empty payload"
        );
    }

    #[test]
    fn nul_path_is_reported() {
        let err = dec(br#"{"a":{"b":["x\u0000"]}}"#).unwrap_err();
        assert!(err.contains("$.a.b"), "{err}");
    }
}
