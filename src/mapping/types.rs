//! The column types a mapping may declare, what each is in PostgreSQL and in the search store,
//! and which JSON values each takes.
//!
//! One rule decides, before either store sees the record, whether a value fits its column: a
//! value that does not is the record's fault (a dead letter naming the column), never a NULL.
//! The rule accepts only what both stores take as the same value, so the row and the document
//! cannot disagree: a `timestamptz` takes RFC 3339 text only (an epoch number would be seconds
//! to PostgreSQL's reading and milliseconds to the search store's), a `bigint` no fraction or
//! exponent (the search store would truncate it), an `inet` a plain address (no CIDR suffix).

use serde_json::Value;

/// A typed column's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnType {
    Text,
    Bigint,
    Double,
    Boolean,
    Timestamptz,
    Jsonb,
    Inet,
    Uuid,
}

impl ColumnType {
    pub const ALL: [ColumnType; 8] = [
        ColumnType::Text,
        ColumnType::Bigint,
        ColumnType::Double,
        ColumnType::Boolean,
        ColumnType::Timestamptz,
        ColumnType::Jsonb,
        ColumnType::Inet,
        ColumnType::Uuid,
    ];

    /// The name a mapping file uses, also PostgreSQL's for the column.
    pub fn name(self) -> &'static str {
        match self {
            ColumnType::Text => "text",
            ColumnType::Bigint => "bigint",
            ColumnType::Double => "double precision",
            ColumnType::Boolean => "boolean",
            ColumnType::Timestamptz => "timestamptz",
            ColumnType::Jsonb => "jsonb",
            ColumnType::Inet => "inet",
            ColumnType::Uuid => "uuid",
        }
    }

    /// What `information_schema.columns.data_type` says of such a column.
    pub fn catalog_name(self) -> &'static str {
        match self {
            ColumnType::Timestamptz => "timestamp with time zone",
            other => other.name(),
        }
    }

    pub fn parse(name: &str) -> Option<ColumnType> {
        let name = name.trim().to_ascii_lowercase();
        match name.as_str() {
            "double" | "float8" => Some(ColumnType::Double),
            "int8" => Some(ColumnType::Bigint),
            "bool" => Some(ColumnType::Boolean),
            "timestamp with time zone" => Some(ColumnType::Timestamptz),
            _ => Self::ALL.into_iter().find(|t| t.name() == name),
        }
    }

    /// The search-store field types that hold the same values, the default first. Any other
    /// is a conflict between the two stores, refused at start-up.
    pub fn search_types(self) -> &'static [&'static str] {
        match self {
            ColumnType::Text => &["keyword", "text"],
            ColumnType::Bigint => &["long"],
            ColumnType::Double => &["double"],
            ColumnType::Boolean => &["boolean"],
            ColumnType::Timestamptz => &["date", "date_nanos"],
            // `none`: kept in the document's source, not indexed (any JSON value fits).
            ColumnType::Jsonb => &["none", "object"],
            ColumnType::Inet => &["ip", "keyword"],
            ColumnType::Uuid => &["keyword"],
        }
    }

    /// The value as the text PostgreSQL casts to the column's type, or why it does not fit.
    /// `search` is the search-store type (an `object` field takes only objects).
    pub fn convert(self, value: &Value, search: &str) -> Result<String, String> {
        let text = match (self, value) {
            (ColumnType::Jsonb, Value::Object(_)) => Some(value.to_string()),
            (ColumnType::Jsonb, _) if search != "object" => Some(value.to_string()),
            (ColumnType::Text, Value::String(s)) => Some(s.clone()),
            (ColumnType::Text, Value::Number(n)) => Some(n.to_string()),
            (ColumnType::Text, Value::Bool(b)) => Some(b.to_string()),
            (ColumnType::Bigint, Value::Number(n)) => integer(&n.to_string()),
            (ColumnType::Bigint, Value::String(s)) => integer(s),
            (ColumnType::Double, Value::Number(n)) => double(&n.to_string()),
            (ColumnType::Double, Value::String(s)) => double(s),
            (ColumnType::Boolean, Value::Bool(b)) => Some(b.to_string()),
            (ColumnType::Boolean, Value::String(s)) if s == "true" || s == "false" => {
                Some(s.clone())
            }
            (ColumnType::Timestamptz, Value::String(s)) => timestamp(s),
            (ColumnType::Inet, Value::String(s)) => {
                s.parse::<std::net::IpAddr>().ok().map(|_| s.clone())
            }
            (ColumnType::Uuid, Value::String(s)) => uuid(s).then(|| s.clone()),
            _ => None,
        };
        text.ok_or_else(|| format!("{} does not fit {}", describe(value), self.name()))
    }
}

/// A value as a dead letter's reason names it: its JSON type, and a short value when it is one.
fn describe(value: &Value) -> String {
    let short = |s: String| {
        if s.chars().count() <= 40 {
            s
        } else {
            format!("{}...", s.chars().take(40).collect::<String>())
        }
    };
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {}", short(n.to_string())),
        Value::String(s) => format!("string {:?}", short(s.clone())),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// An integer in bigint's range, written as digits (a sign allowed), as both stores read it.
fn integer(text: &str) -> Option<String> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let plain = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
    (plain && text.parse::<i64>().is_ok()).then(|| text.to_string())
}

/// A finite number in JSON's number syntax (no `NaN`, `inf` or `0x`).
fn double(text: &str) -> Option<String> {
    let number: serde_json::Number = serde_json::from_str(text).ok()?;
    let finite = number.to_string().parse::<f64>().is_ok_and(f64::is_finite);
    finite.then(|| text.to_string())
}

/// RFC 3339 with an upper-case `T` and `Z` (or an offset), years 0001..9999: what PostgreSQL and
/// the search store's `strict_date_optional_time` both read as the same instant.
fn timestamp(text: &str) -> Option<String> {
    use chrono::Datelike;
    let strict = text.as_bytes().get(10) == Some(&b'T') && !text.ends_with('z');
    // Year 0 exists for chrono, not for PostgreSQL.
    let parsed = chrono::DateTime::parse_from_rfc3339(text).ok();
    (strict && parsed.is_some_and(|t| t.year() >= 1)).then(|| text.to_string())
}

/// The hyphenated form `8-4-4-4-12` of hexadecimal digits.
fn uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    lengths == [8, 4, 4, 4, 12]
        && groups
            .iter()
            .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
}
