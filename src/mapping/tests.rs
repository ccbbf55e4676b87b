use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::ddl::{Existing, Step, plan, sql};
use super::*;

const EXAMPLE: &str = r#"
[tables.http_logs]
columns = [
  { name = "status_code", path = "status_code", type = "bigint", index = true },
  { name = "trace_id", path = "trace.id", type = "uuid" },
  { name = "client", path = "client_ip", type = "inet" },
  { name = "took", path = "took_ms", type = "double precision" },
]

[tables.billing_logs]
columns = [{ name = "amount", path = "amount", type = "double" }]

[[routes]]
topics = ["http-access", "^web-.*"]
table = "http_logs"
index = "http-%Y.%m.%d"

[[routes]]
name = "billing"
topics = ["app"]
when = { field = "service", values = ["billing"] }
table = "billing_logs"
"#;

fn entry(service: Option<&str>) -> LogEntry {
    LogEntry {
        timestamp: chrono::DateTime::UNIX_EPOCH,
        level: None,
        service: service.map(str::to_string),
        message: None,
        fields: crate::model::Fields::from_map(&Map::new()),
    }
}

fn map(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

fn refusal(text: &str) -> MappingError {
    Mapping::parse(text, "logs-%Y").expect_err("refused")
}

#[test]
fn the_readme_example_is_a_valid_mapping() {
    let m = Mapping::parse(include_str!("../../examples/mapping.toml"), "logs-%Y.%m.%d").unwrap();
    let names: Vec<&str> = m.table_names().collect();
    assert_eq!(names, ["billing_logs", "http_logs", "log_records"]);
    assert_eq!(
        m.index_patterns(),
        ["web-%Y.%m.%d", "billing-%Y.%m.%d", "logs-%Y.%m.%d"]
    );
}

#[test]
fn the_builtin_mapping_is_todays_shape() {
    let m = Mapping::builtin("logs-%Y.%m.%d");
    assert_eq!(m.tables().len(), 1);
    assert_eq!(m.tables()[0].name, BUILTIN_TABLE);
    assert!(m.tables()[0].columns.is_empty());
    assert_eq!(m.route_of("anything", &entry(None), &Map::new()), 0);
    assert_eq!(m.index_patterns(), ["logs-%Y.%m.%d"]);
    assert!(m.is_builtin());
    assert!(!m.reads_fields());
    assert!(!Mapping::parse(EXAMPLE, "logs").unwrap().is_builtin());
    assert!(Mapping::parse(EXAMPLE, "logs").unwrap().reads_fields());
    let routed =
        "[[routes]]\ntopics = [\"a\"]\nwhen = { field = \"env\", values = [\"p\"] }\nindex = \"a\"";
    assert!(Mapping::parse(routed, "logs").unwrap().reads_fields());
    assert!(
        !Mapping::parse("[[routes]]\ntopics = [\"a\"]\nindex = \"a\"", "logs")
            .unwrap()
            .is_builtin()
    );
}

#[test]
fn routes_take_topics_by_name_pattern_and_field_value_in_order() {
    let m = Mapping::parse(EXAMPLE, "logs-%Y").unwrap();
    let table = |topic: &str, service: Option<&str>| {
        m.table_of(m.route_of(topic, &entry(service), &Map::new()))
            .name
            .clone()
    };
    assert_eq!(table("http-access", None), "http_logs");
    assert_eq!(table("web-eu", None), "http_logs");
    assert_eq!(table("xweb-eu", None), "log_records");
    assert_eq!(table("app", Some("billing")), "billing_logs");
    assert_eq!(table("app", Some("search")), "log_records");
    assert_eq!(table("app", None), "log_records");
    assert_eq!(m.index_patterns(), ["http-%Y.%m.%d", "logs-%Y"]);
    assert_eq!(
        m.routes_of("app"),
        [
            "billing_logs / logs-%Y when service in [billing]",
            "log_records / logs-%Y"
        ]
    );
    assert_eq!(m.routes_of("web-1"), ["http_logs / http-%Y.%m.%d"]);
    // A field of `fields` decides as well as a column does.
    let by_field = Mapping::parse(
        "[[routes]]\nwhen = { field = \"team\", values = [\"a\"] }\nindex = \"team-a\"",
        "logs",
    )
    .unwrap();
    let r = by_field.route_of("t", &entry(None), &map(json!({"team": "a"})));
    assert_eq!(by_field.routes()[r].index, "team-a");
}

#[test]
fn typed_values_are_copies_of_the_fields_and_a_misfit_names_its_column() {
    let m = Mapping::parse(EXAMPLE, "logs").unwrap();
    let http = &m.tables()[m.routes()[0].table];
    let fields = map(json!({
        "status_code": 503,
        "trace": {"id": "0b7c2a2e-4c1e-4f55-9a3e-2f9b8d1c7a10"},
        "client_ip": "2001:db8::1",
        "took_ms": 12.5,
        "other": [1, 2]
    }));
    let values = Mapping::typed_values(http, &fields).unwrap();
    assert_eq!(
        values,
        [
            Some("503".to_string()),
            Some("0b7c2a2e-4c1e-4f55-9a3e-2f9b8d1c7a10".to_string()),
            Some("2001:db8::1".to_string()),
            Some("12.5".to_string()),
        ]
    );
    assert_eq!(
        Mapping::typed_values(http, &map(json!({"status_code": null}))).unwrap(),
        [None, None, None, None]
    );
    let err = Mapping::typed_values(http, &map(json!({"status_code": "abc"}))).unwrap_err();
    assert_eq!(
        err,
        "column status_code of http_logs (status_code): string \"abc\" does not fit bigint"
    );
}

/// A row read back is routed and typed from its fields' text, also where an object in it holds
/// a key named like serde_json's private ones, which sorts first and makes serde_json alone
/// read that object as a number.
#[test]
fn a_stored_row_is_routed_from_its_fields_text() {
    let m = Mapping::parse(EXAMPLE, "logs").unwrap();
    let text = r#"{"status_code":404,"trace":{"$serde_json::private::Number":"x","id":"0b7c2a2e-4c1e-4f55-9a3e-2f9b8d1c7a10"}}"#;
    let http = LogEntry {
        fields: crate::model::Fields::from_text(text.into()).unwrap(),
        ..entry(None)
    };
    let stored = m.route_stored("http-access", &http).unwrap();
    assert_eq!(m.routes()[stored.route].index, "http-%Y.%m.%d");
    assert_eq!(
        stored.typed,
        [
            Some("404".to_string()),
            Some("0b7c2a2e-4c1e-4f55-9a3e-2f9b8d1c7a10".to_string()),
            None,
            None,
        ]
    );
    assert!(stored.misfits.is_empty());
    let billing = LogEntry {
        fields: crate::model::Fields::from_text(r#"{"amount":"abc"}"#.into()).unwrap(),
        ..entry(Some("billing"))
    };
    let stored = m.route_stored("app", &billing).unwrap();
    assert_eq!(m.routes()[stored.route].name, "billing");
    assert_eq!(stored.typed, [None]);
    assert_eq!(stored.misfits.len(), 1, "{:?}", stored.misfits);
}

#[test]
fn each_type_takes_only_what_both_stores_read_alike() {
    use ColumnType::*;
    let fits = |t: ColumnType, v: Value| t.convert(&v, t.search_types()[0]).is_ok();
    assert!(fits(Bigint, json!(-9223372036854775808i64)));
    assert!(fits(Bigint, json!("42")));
    assert!(!fits(Bigint, json!(1.5)));
    assert!(!fits(Bigint, json!("9223372036854775808")));
    assert!(!fits(Bigint, serde_json::from_str("1e3").unwrap()));
    assert!(fits(Double, json!(0.1)));
    assert!(fits(Double, json!("-2.5e3")));
    assert!(!fits(Double, json!("NaN")));
    assert!(!fits(Double, serde_json::from_str("1e400").unwrap()));
    assert!(fits(Boolean, json!(true)));
    assert!(fits(Boolean, json!("false")));
    assert!(!fits(Boolean, json!(1)));
    assert!(fits(Timestamptz, json!("2026-11-26T10:00:00.123+01:00")));
    assert!(!fits(Timestamptz, json!("2026-11-26 10:00:00Z")));
    assert!(!fits(Timestamptz, json!(1764151200)));
    assert!(!fits(Timestamptz, json!("0000-01-01T00:00:00Z")));
    assert!(fits(Timestamptz, json!("0001-01-01T00:00:00Z")));
    assert!(fits(Inet, json!("10.0.0.1")));
    assert!(!fits(Inet, json!("10.0.0.0/8")));
    assert!(fits(Uuid, json!("0B7C2A2E-4C1E-4F55-9A3E-2F9B8D1C7A10")));
    assert!(!fits(Uuid, json!("0b7c2a2e4c1e4f559a3e2f9b8d1c7a10")));
    assert!(fits(Text, json!(7)));
    assert!(!fits(Text, json!(["a"])));
    assert!(fits(Jsonb, json!([1, {"a": 2}])));
    assert!(Jsonb.convert(&json!("s"), "object").is_err());
}

#[test]
fn refusals_name_the_field() {
    let e = refusal("[tables.t]\ncolumns = [{ name = \"c\", path = \"c\", type = \"int128\" }]");
    assert_eq!(e.field, "tables.t.columns.c.type");
    assert!(e.message.contains("unknown type \"int128\""), "{e}");

    let e = refusal(
        "[tables.t]\ncolumns = [{ name = \"c\", path = \"c\", type = \"bigint\", search = \"keyword\" }]",
    );
    assert_eq!(e.field, "tables.t.columns.c.search");
    assert!(
        e.message
            .contains("conflicts with the PostgreSQL type bigint"),
        "{e}"
    );

    let e = refusal("[tables.t]\ncolumns = [{ name = \"level\", path = \"x\", type = \"text\" }]");
    assert_eq!(e.field, "tables.t.columns.level");

    let e =
        refusal("[tables.t]\ncolumns = [{ name = \"c\", path = \"service\", type = \"text\" }]");
    assert_eq!(e.field, "tables.t.columns.c.path");

    let e = refusal("[tables.dead_letters]\n");
    assert_eq!(e.field, "tables.dead_letters");

    let e = refusal("[[routes]]\ntable = \"nope\"");
    assert_eq!(e.field, "routes[0].table");

    let e = refusal("[[routes]]\nindex = \"Logs-%Y\"");
    assert_eq!(e.field, "routes[0].index");

    let e = refusal("[[routes]]\ntopics = [\"^(\"]");
    assert_eq!(e.field, "routes[0].topics");
    // What LP_TOPICS refuses, a route refuses too.
    let e = refusal(
        r#"[[routes]]
topics = ['^logs-\d+']"#,
    );
    assert_eq!(e.field, "routes[0].topics");

    let e = refusal("[[routes]]\ncolour = 1");
    assert!(e.message.contains("colour"), "{e}");
}

#[test]
fn two_tables_in_one_index_pattern_must_agree_on_each_field() {
    let conflicting = r#"
[tables.a]
columns = [{ name = "code", path = "code", type = "bigint" }]
[tables.b]
columns = [{ name = "code", path = "code", type = "text" }]
[[routes]]
topics = ["x"]
table = "a"
index = "same"
[[routes]]
topics = ["y"]
table = "b"
index = "same"
"#;
    let e = refusal(conflicting);
    assert_eq!(e.field, "tables.b.columns.code");
    assert!(e.message.contains("fields.code"), "{e}");
    // In indices of their own, the same field may have two types.
    assert!(Mapping::parse(&conflicting.replacen("\"same\"", "\"other\"", 1), "logs").is_ok());

    let nested = r#"
[tables.a]
columns = [
  { name = "t", path = "trace", type = "jsonb" },
  { name = "tid", path = "trace.id", type = "text" },
]
[[routes]]
table = "a"
"#;
    assert_eq!(refusal(nested).field, "tables.a.columns.tid");
}

fn table() -> Table {
    Mapping::parse(EXAMPLE, "logs").unwrap().tables()[1].clone()
}

#[test]
fn a_new_table_is_created_whole_and_a_new_column_added() {
    let t = table();
    assert_eq!(t.name, "http_logs");
    assert_eq!(
        plan(&t, None).unwrap(),
        [Step::CreateTable, Step::Index("status_code".into())]
    );
    let created = sql(&t, &Step::CreateTable);
    assert!(created.contains("status_code bigint,"), "{created}");
    assert!(
        created.contains("CONSTRAINT http_logs_pkey PRIMARY KEY"),
        "{created}"
    );

    let mut existing = Existing::default();
    for c in ["status_code", "trace_id", "client"] {
        let kind = t.columns.iter().find(|x| x.name == c).unwrap().kind;
        existing
            .columns
            .insert(c.into(), kind.catalog_name().into());
        existing.recorded.insert(c.into(), kind.name().into());
    }
    assert_eq!(
        plan(&t, Some(&existing)).unwrap(),
        [
            Step::AddColumn("took".into()),
            Step::Index("status_code".into())
        ]
    );
    assert_eq!(
        sql(&t, &Step::AddColumn("took".into())),
        "ALTER TABLE http_logs ADD COLUMN IF NOT EXISTS took double precision;"
    );
}

#[test]
fn a_changed_or_removed_column_is_refused_with_the_statements_to_run() {
    let t = table();
    let mut existing = Existing::default();
    existing
        .columns
        .insert("status_code".into(), "integer".into());
    let why = plan(&t, Some(&existing)).unwrap_err();
    assert!(
        why.contains("ALTER TABLE http_logs ALTER COLUMN status_code TYPE bigint"),
        "{why}"
    );
    let mut existing = Existing::default();
    existing.columns.insert("gone".into(), "text".into());
    existing.recorded.insert("gone".into(), "text".into());
    let why = plan(&t, Some(&existing)).unwrap_err();
    assert!(
        why.contains("ALTER TABLE http_logs DROP COLUMN gone"),
        "{why}"
    );
    // A column an operator added by hand is theirs, and not in the way.
    let mut existing = Existing::default();
    existing.columns.insert("note".into(), "text".into());
    assert!(plan(&t, Some(&existing)).is_ok());
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (-1e6f64..1e6).prop_map(|f| json!(f)),
        "[a-z0-9:.\\-]{0,40}".prop_map(Value::String),
        Just(json!("2026-01-02T03:04:05Z")),
        Just(json!("192.168.1.1")),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map("[a-c]", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    /// A value that is there is never silently dropped: it fits its column (the same text each
    /// time) or the record is refused naming that column.
    #[test]
    fn a_present_value_is_stored_or_refused_never_nulled(value in json_value(), k in 0usize..8) {
        let kind = ColumnType::ALL[k];
        let t = Table {
            name: "t".into(),
            columns: vec![Column {
                name: "c".into(),
                path: vec!["v".into()],
                kind,
                indexed: false,
                search: kind.search_types()[0],
            }],
        };
        let fields = map(json!({ "v": value.clone() }));
        let first = Mapping::typed_values(&t, &fields);
        prop_assert_eq!(&first, &Mapping::typed_values(&t, &fields));
        match first {
            Ok(v) => prop_assert_eq!(v[0].is_none(), value.is_null()),
            Err(why) => prop_assert!(why.starts_with("column c of t (v): "), "{}", why),
        }
    }
}
