//! Turns raw Kafka bytes into a [`LogEntry`], or says exactly why it cannot.
//!
//! Malformed (dead-lettered with the reason, never dropped, never altered):
//! empty payload; larger than the configured maximum; invalid UTF-8; NUL bytes (PostgreSQL text
//! and jsonb cannot hold them); invalid JSON or nesting deeper than 128 levels; JSON that is not
//! an object; a `timestamp`/`@timestamp` that does not parse or falls outside 1900..2200.
//! A record without a timestamp takes Kafka's record timestamp (or the time it was read).

use chrono::{DateTime, Datelike, TimeZone, Utc};
use serde_json::{Map, Value};

use crate::model::{LogEntry, RawRecord};
use crate::redact::Redactor;

const TIMESTAMP_FIELDS: [&str; 2] = ["timestamp", "@timestamp"];
const MIN_YEAR: i32 = 1900;
const MAX_YEAR: i32 = 2199;

/// Decodes one record. `Err` carries the dead-letter reason.
pub fn decode(raw: &RawRecord, max_bytes: usize, redactor: &Redactor) -> Result<LogEntry, String> {
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
            .unwrap_or_else(Utc::now),
    };
    Ok(LogEntry {
        timestamp,
        level: take_string(&mut object, "level"),
        service: take_string(&mut object, "service"),
        message: take_string(&mut object, "message"),
        fields: object,
    })
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
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| format!("unparseable {name} {s:?}: {e}"))?,
        Value::Number(n) => n
            .as_i64()
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
            .ok_or_else(|| format!("unparseable {name} {n}: expected epoch milliseconds"))?,
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
            Value::Object(e.fields),
            serde_json::json!({"user": {"id": 1}})
        );
    }

    #[test]
    fn non_string_recognised_fields_stay_in_fields() {
        let e = dec(br#"{"level":3,"message":{"a":1}}"#).unwrap();
        assert_eq!(e.level, None);
        assert_eq!(e.fields.len(), 2);
    }

    #[test]
    fn missing_timestamp_uses_kafka_time() {
        let e = dec(br#"{"message":"x"}"#).unwrap();
        assert_eq!(e.timestamp.timestamp_millis(), 1_700_000_000_000);
        let e = dec(br#"{"@timestamp":1700000000001}"#).unwrap();
        assert_eq!(e.timestamp.timestamp_millis(), 1_700_000_000_001);
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
