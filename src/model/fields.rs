//! `Fields`: the text both stores keep of a record's other fields, and reading it back.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value};

/// The JSON text of a record's other fields, serialised once when the record is decoded and
/// written as it is into the row and into the document: one encoding per record, and the two
/// stores cannot receive different texts.
#[derive(Clone, Debug)]
pub struct Fields(Box<RawValue>);

impl Fields {
    pub fn from_map(map: &Map<String, Value>) -> Self {
        Self::serialize(map).expect("a JSON map serialises")
    }

    /// Fields as serde_json writes `object`, which must serialise as a map: text serde_json
    /// wrote itself, so it is not parsed again to check it (as `from_text` must).
    pub fn serialize(object: &impl Serialize) -> Result<Self, serde_json::Error> {
        serde_json::value::to_raw_value(object).map(Fields)
    }

    /// Fields kept as text (a parked record's): must be a JSON object's text.
    pub fn from_text(text: String) -> Result<Self, String> {
        let raw = RawValue::from_string(text).map_err(|e| e.to_string())?;
        match raw.get().trim_start().starts_with('{') {
            true => Ok(Fields(raw)),
            false => Err("fields are not a JSON object".into()),
        }
    }

    /// The JSON object's text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    pub fn as_raw(&self) -> &RawValue {
        &self.0
    }

    /// The fields as the map they were serialised from (a row read back and routed again).
    ///
    /// Not `serde_json::from_str`: with the `arbitrary_precision` and `raw_value` features a
    /// map whose first key is one of serde_json's private names reads as a number or a raw
    /// value, and text serialised from a map sorts such a key first (`$` before letters) in an
    /// object that held it among other keys. `Plain` reads those private names as serde_json's
    /// own tree does, and an object where such a key has company (which the tree refuses to
    /// read, so it can only come from a map) as that object. The fields themselves are always
    /// an object: a record's other keys, one private name alone among them included.
    pub fn to_map(&self) -> Result<Map<String, Value>, String> {
        // serde's own map reads every top-level key as written, whatever its name.
        (serde_json::from_str::<BTreeMap<String, Plain>>(self.as_str()))
            .map(|map| map.into_iter().map(|(k, Plain(v))| (k, v)).collect())
            .map_err(|e| format!("fields cannot be read back: {e}"))
    }
}

impl PartialEq for Fields {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

/// serde_json's names for a number read with arbitrary precision and for a raw value.
const NUMBER_TOKEN: &str = "$serde_json::private::Number";
const RAW_TOKEN: &str = "$serde_json::private::RawValue";

/// A `Value` read as serde_json's tree reads it, except for an object whose first key is a
/// private name and which has other keys too (see `Fields::to_map`).
struct Plain(Value);

impl<'de> Deserialize<'de> for Plain {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PlainVisitor)
    }
}

struct PlainVisitor;

impl<'de> Visitor<'de> for PlainVisitor {
    type Value = Plain;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Plain, E> {
        Ok(Plain(Value::Bool(b)))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Plain, E> {
        Ok(Plain(Value::Number(n.into())))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Plain, E> {
        Ok(Plain(Value::Number(n.into())))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Plain, E> {
        let n = Number::from_f64(n).ok_or_else(|| E::custom("not a finite number"))?;
        Ok(Plain(Value::Number(n)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Plain, E> {
        Ok(Plain(Value::String(s.to_owned())))
    }

    fn visit_string<E>(self, s: String) -> Result<Plain, E> {
        Ok(Plain(Value::String(s)))
    }

    fn visit_unit<E>(self) -> Result<Plain, E> {
        Ok(Plain(Value::Null))
    }

    fn visit_none<E>(self) -> Result<Plain, E> {
        Ok(Plain(Value::Null))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Plain, A::Error> {
        let mut items = Vec::new();
        while let Some(Plain(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Plain(Value::Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Plain, A::Error> {
        let mut map = Map::new();
        let Some(first) = access.next_key::<String>()? else {
            return Ok(Plain(Value::Object(map)));
        };
        let Plain(value) = access.next_value()?;
        let Some(second) = access.next_key::<String>()? else {
            // Alone, a private name means what it means to serde_json (a number read with
            // arbitrary precision arrives exactly so).
            return match (first.as_str(), value) {
                (NUMBER_TOKEN, Value::String(s)) => Number::from_str(&s)
                    .map(|n| Plain(Value::Number(n)))
                    .map_err(de::Error::custom),
                (RAW_TOKEN, Value::String(s)) => serde_json::from_str(&s)
                    .map(Plain)
                    .map_err(de::Error::custom),
                (NUMBER_TOKEN | RAW_TOKEN, _) => Err(de::Error::custom("invalid private value")),
                (_, value) => {
                    map.insert(first, value);
                    Ok(Plain(Value::Object(map)))
                }
            };
        };
        map.insert(first, value);
        let Plain(value) = access.next_value()?;
        map.insert(second, value);
        while let Some((key, Plain(value))) = access.next_entry::<String, Plain>()? {
            map.insert(key, value);
        }
        Ok(Plain(Value::Object(map)))
    }
}
