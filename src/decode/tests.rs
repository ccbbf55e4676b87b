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
        Value::Object(e.fields.to_map().unwrap()),
        serde_json::json!({"user": {"id": 1}})
    );
}

#[test]
fn non_string_recognised_fields_stay_in_fields() {
    let e = dec(br#"{"level":3,"message":{"a":1}}"#).unwrap();
    assert_eq!(e.level, None);
    assert_eq!(e.fields.to_map().unwrap().len(), 2);
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
    let e =
        dec(br#"{"big":123456789012345678901234567890,"f":0.1000000000000000055511151231257827}"#)
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

/// The reference: every record read through a `Value` tree.
fn by_tree(raw: &RawRecord) -> Result<LogEntry, String> {
    let text = text_of(raw, usize::MAX)?;
    read_tree(text, &Redactor::default())?
        .0
        .into_entry(raw.kafka_timestamp_ms)
}

#[test]
fn records_as_loggers_write_them_take_the_way_without_a_tree() {
    for seq in 0..200u64 {
        // The shape of the load generator's records: sorted keys at every level (as
        // serde_json writes a map), a nested object, strings and numbers.
        let level = ["info", "warn"][seq as usize % 2];
        let payload = serde_json::json!({
            "timestamp": format!("2026-11-26T10:00:{:02}.{:03}Z", seq % 60, seq % 1000),
            "level": level,
            "service": "api",
            "message": format!("handled request {seq} in {} ms", seq * 7 % 2000),
            "seq": seq,
            "host": format!("api-{}.prod.internal", seq % 16),
            "http": {"method": "GET", "path": "/api/v1/cart", "status": 200, "duration_ms": seq % 2000},
            "region": "eu-west-1",
        })
        .to_string()
        .into_bytes();
        let text = std::str::from_utf8(&payload).unwrap();
        assert!(read_object(text).is_some(), "{text}");
        assert_eq!(dec(&payload), by_tree(&raw(&payload)));
    }
}

#[test]
fn values_not_written_as_serde_json_writes_them_are_rewritten_its_way() {
    let p = br#"{ "z":1, "a" : {"y": [1, {"b":2,"a":"\u00e9\/"}], "x":"q"}, "a\u0041":"x", "n":1E+5 , "z":-0.0}"#;
    let e = dec(p).unwrap();
    assert_eq!(
        e.fields.as_str(),
        r#"{"a":{"x":"q","y":[1,{"a":"é/","b":2}]},"aA":"x","n":1e+5,"z":-0.0}"#
    );
    assert_eq!(Ok(e), by_tree(&raw(p)));
    for (json, want) in [
        (r#"{"a":[1,"b"],"b":{}}"#, object::Form::AsWritten),
        (r#"{"b":1,"a":2}"#, object::Form::Other),
        (r#"{"a":1,"a":2}"#, object::Form::Other),
        (r#"["a\"b"]"#, object::Form::Other),
        (r#"[1, 2]"#, object::Form::Other),
        (r#"[1e5,true]"#, object::Form::Other),
        (r#"[1E+5]"#, object::Form::Other),
        (r#"[1e-5,1.5e+10,false]"#, object::Form::AsWritten),
    ] {
        assert_eq!(object::form(json), want, "{json}");
    }
}

#[test]
fn keys_named_like_serde_jsons_private_ones_are_read_as_the_tree_reads_them() {
    for p in [
        r#"{"$serde_json::private::Number":"1"}"#,
        r#"{"$serde_json::private::RawValue":"{\"message\":\"hi\"}"}"#,
        r#"{"\u0024serde_json::private::Number":"1"}"#,
        r#"{"a":{"$serde_json::private::Number":"1"}}"#,
        r#"{"a":{"$serde_json::private::Number":"x"}}"#,
        r#"{"a":{"$serde_json::private::Number":"1","b":2}}"#,
        r#"{"timestamp":{"$serde_json::private::Number":"1700000000"}}"#,
        r#"{"a":{"$serde_json::private::Number":"x"},"a":1}"#,
        r#"{"a":{"b":1,"$serde_json::private::Number":"x"}}"#,
    ] {
        assert!(read_object(p).is_none(), "{p}");
        assert_eq!(dec(p.as_bytes()), by_tree(&raw(p.as_bytes())), "{p}");
        let with_map = decode_with_map(&raw(p.as_bytes()), 1024, &Redactor::default());
        if let Ok((e, map)) = &with_map {
            assert_eq!(e.fields.to_map().as_ref(), Ok(map), "{p}: read back");
        }
        assert_eq!(with_map.map(|(e, _)| e), by_tree(&raw(p.as_bytes())), "{p}");
    }
}

/// A stored row's fields read back (parked records, the audit) are the map they were written
/// from, even where serde_json alone reads that text as something else: an object holding a
/// private name among other keys serialises with that key first.
#[test]
fn fields_read_back_as_the_map_they_were_written_from() {
    let p = r#"{"a":{"b":1,"$serde_json::private::Number":"x"},"c":{"z":[1.50],"$serde_json::private::RawValue":"1"}}"#;
    let (e, map) = decode_with_map(&raw(p.as_bytes()), 1024, &Redactor::default()).unwrap();
    assert!(
        e.fields
            .as_str()
            .contains(r#"{"$serde_json::private::Number":"x","b":1}"#)
    );
    assert!(serde_json::from_str::<Map<String, Value>>(e.fields.as_str()).is_err());
    assert_eq!(e.fields.to_map(), Ok(map));
    let not_a_map = Fields::from_text(r#"{"a":{"$serde_json::private::Number":{}}}"#.into());
    assert!(not_a_map.unwrap().to_map().is_err());
}

#[test]
fn deep_nesting_is_judged_by_serde_json_either_way() {
    for depth in [99, 100, 101, 125, 126, 127, 200] {
        let p = format!("{{\"a\":{}{}}}", "[".repeat(depth), "]".repeat(depth));
        let (fast, tree) = (dec(p.as_bytes()), by_tree(&raw(p.as_bytes())));
        assert_eq!(fast, tree, "depth {depth}");
        assert_eq!(fast.is_ok(), depth <= 126, "depth {depth}: {fast:?}");
    }
}

mod same_either_way {
    use super::*;
    use proptest::prelude::*;

    fn ws() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["", "", "", " ", "\n\t"])
    }

    fn string() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            20 => prop::sample::select(vec![
                "a", "b", "Z", "é", "𝄞", "\u{7f}", " ", r#"\""#, r"\\", r"\/", r"\n", r"\u00e9",
                r"\u0041", r"\ud834\udd1e", "2026-11-26T10:00:00.123Z", "2016-12-31T23:59:60.5Z",
            ]),
            1 => prop::sample::select(vec![r"\u0000", r"\ud800", r"\udc00x"]),
        ];
        prop::collection::vec(piece, 0..4).prop_map(|p| format!("\"{}\"", p.concat()))
    }

    fn key() -> impl Strategy<Value = String> {
        let plain = prop::sample::select(vec![
            "a",
            "b",
            "ab",
            "B",
            "é",
            "level",
            "service",
            "message",
            "timestamp",
            "@timestamp",
        ]);
        prop_oneof![
            8 => plain.prop_map(|k| format!("\"{k}\"")),
            1 => prop::sample::select(vec![r#""\u0061""#, r#""x\"y""#, r#""a\u0000""#])
                .prop_map(str::to_string),
            1 => prop::sample::select(vec![
                r#""$serde_json::private::Number""#,
                r#""$serde_json::private::RawValue""#,
            ])
            .prop_map(str::to_string),
        ]
    }

    fn value() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            prop::sample::select(vec!["null", "true", "false", "1764151200", "1700000000001"])
                .prop_map(str::to_string),
            "-?(0|[1-9][0-9]{0,22})(\\.[0-9]{1,12})?([eE][+-]?[0-9]{1,3})?",
            string(),
        ];
        leaf.prop_recursive(4, 24, 4, |inner| {
            let items = prop::collection::vec((ws(), inner.clone(), ws()), 0..4);
            let entries = prop::collection::vec((key(), ws(), inner, ws()), 0..4);
            prop_oneof![
                items.prop_map(|v| {
                    let v: Vec<String> = v
                        .into_iter()
                        .map(|(a, x, b)| format!("{a}{x}{b}"))
                        .collect();
                    format!("[{}]", v.join(","))
                }),
                entries.prop_map(|m| {
                    let m: Vec<String> = m
                        .into_iter()
                        .map(|(k, a, v, b)| format!("{k}{a}:{b}{v}"))
                        .collect();
                    format!("{{{}}}", m.join(","))
                }),
            ]
        })
    }

    fn record() -> impl Strategy<Value = String> {
        let entries = prop::collection::vec((ws(), key(), ws(), value(), ws()), 0..10);
        (ws(), entries, ws()).prop_map(|(a, m, b)| {
            let m: Vec<String> = m
                .into_iter()
                .map(|(w, k, x, v, y)| format!("{w}{k}{x}:{v}{y}"))
                .collect();
            format!("{a}{{{}}}{b}", m.join(","))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The record without a tree is the record through a tree: the same entry (fields'
        /// text byte for byte) or the same reason.
        #[test]
        fn records_decode_the_same_either_way(text in record(), kafka_ms in prop::option::of(0i64..4_000_000_000_000)) {
            let r = RawRecord { kafka_timestamp_ms: kafka_ms, ..raw(text.as_bytes()) };
            let fast = decode(&r, usize::MAX, &Redactor::default());
            prop_assert_eq!(&fast, &by_tree(&r), "{}", text);
        }

        /// What a stored row's fields read back as (`Fields::to_map`) is the map the record
        /// was decoded into.
        #[test]
        fn fields_read_back_as_decoded(text in record()) {
            if let Ok((e, map)) = decode_with_map(&raw(text.as_bytes()), usize::MAX, &Redactor::default()) {
                prop_assert_eq!(e.fields.to_map(), Ok(map), "{}", text);
            }
        }

        #[test]
        fn any_value_decodes_the_same_either_way(text in value()) {
            let r = raw(text.as_bytes());
            prop_assert_eq!(decode(&r, usize::MAX, &Redactor::default()), by_tree(&r), "{}", text);
        }
    }
}
