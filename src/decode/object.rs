//! A record's top-level object read without a `serde_json::Value` tree: its keys and the raw
//! text of each value, borrowed from the record. Building a tree per record (a `String` per
//! key and per string, a map node per object) and freeing it again was the largest share of
//! the daemon's CPU per record; most values are copied into the fields' text as they are.
//!
//! The fields' text must stay exactly what serde_json writes for the record's `Value` (keys
//! in byte order at every level, the last of a duplicated key, no whitespace, strings escaped
//! its way; numbers keep their text with `arbitrary_precision`), so the same record yields the
//! same row and document whichever way it was decoded. A value already written that way is
//! copied; any other goes through a `Value` as before. Whatever this cannot read exactly as
//! serde_json would (not an object, a `\u0000`, nesting near serde_json's limit, an escape
//! serde_json refuses, a key named like serde_json's private ones) makes [`Object::read`] or [`Object::fields`] answer `None`, and the
//! caller decodes the record through a `Value` tree, which also words the error.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::ser::{self, Serialize, SerializeMap, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::model::Fields;

/// How serde_json's private key names begin (`$serde_json::private::Number`, `...RawValue`).
const SERDE_JSON_PRIVATE: &str = "$serde_json::private::";

/// Deeper than this a value goes the `Value` way, which applies serde_json's own limit
/// (128 levels, the record's object included).
const MAX_DEPTH: usize = 100;

/// The top-level keys, sorted and unique (the last of a duplicated key), with their values.
pub(super) struct Object<'a> {
    entries: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'a> Object<'a> {
    /// `None` unless `text` is a JSON object this reads exactly as serde_json's `Value` would.
    pub(super) fn read(text: &'a str) -> Option<Self> {
        // A NUL character needs the path the `Value` way names; `\\u0000` only costs a detour.
        // serde_json reads an object whose first key is one of its private names as something
        // else (a number, or JSON inside a string); the tree keeps that reading.
        if !text.trim_start().starts_with('{')
            || text.contains("\\u0000")
            || text.contains(SERDE_JSON_PRIVATE)
        {
            return None;
        }
        let Entries(mut entries) = serde_json::from_str(text).ok()?;
        // The same names spelled with escapes, which the text search above does not see.
        if entries
            .iter()
            .any(|(k, _)| k.starts_with(SERDE_JSON_PRIVATE))
        {
            return None;
        }
        // A stable sort keeps duplicates in record order: the last of each run wins, as a
        // map's insert does.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut unique: Vec<(Cow<'a, str>, &'a RawValue)> = Vec::with_capacity(entries.len());
        for entry in entries {
            match unique.last_mut() {
                // The value it replaces is not written anywhere, so it is not checked there:
                // one that is not plainly valid is left to the tree to judge.
                Some(last) if last.0 == entry.0 => match form(last.1.get()) {
                    Form::AsWritten => *last = entry,
                    _ => return None,
                },
                _ => unique.push(entry),
            }
        }
        Some(Object { entries: unique })
    }

    fn position(&self, name: &str) -> Result<usize, usize> {
        self.entries.binary_search_by(|(k, _)| k.as_ref().cmp(name))
    }

    pub(super) fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.position(name).ok().map(|i| self.entries[i].1)
    }

    pub(super) fn remove(&mut self, name: &str) {
        if let Ok(i) = self.position(name) {
            self.entries.remove(i);
        }
    }

    /// The other fields, byte for byte the text serde_json writes for their map; `None` when
    /// a value must be judged the `Value` way (see the module docs).
    pub(super) fn fields(&self) -> Option<Fields> {
        Fields::serialize(&AsFields(self)).ok()
    }
}

/// The entries serialised as a map: a value already written as serde_json writes it goes in as
/// its raw text, any other through a `Value`. serde_json writes the keys and the braces.
struct AsFields<'o, 'a>(&'o Object<'a>);

impl Serialize for AsFields<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.entries.len()))?;
        for (key, value) in &self.0.entries {
            match form_of_value(value.get()) {
                Form::AsWritten => map.serialize_entry(key.as_ref(), value)?,
                Form::Other => {
                    let tree: Value =
                        serde_json::from_str(value.get()).map_err(ser::Error::custom)?;
                    map.serialize_entry(key.as_ref(), &tree)?
                }
                Form::TooDeep => return Err(ser::Error::custom("nested too deep")),
            }
        }
        map.end()
    }
}

/// A string value without its quotes and escapes; `None` if it is not a string or has an
/// escape serde_json refuses.
pub(super) fn as_string(value: &RawValue) -> Option<Cow<'_, str>> {
    let text = value.get();
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    match inner.contains('\\') {
        false => Some(Cow::Borrowed(inner)),
        true => serde_json::from_str::<String>(text).ok().map(Cow::Owned),
    }
}

/// What a value is, in the words of a dead letter's reason.
pub(super) fn kind(value: &RawValue) -> &'static str {
    match value.get().as_bytes().first() {
        Some(b'n') => "null",
        Some(b't' | b'f') => "a boolean",
        Some(b'"') => "a string",
        Some(b'[') => "an array",
        Some(b'{') => "an object",
        _ => "a number",
    }
}

#[derive(Debug, PartialEq)]
pub(super) enum Form {
    /// Already as serde_json writes it: no whitespace between tokens, no escape in a string,
    /// each object's keys in ascending byte order without a repeat, exponents as `e+`/`e-`.
    AsWritten,
    Other,
    /// Nested deeper than `MAX_DEPTH`.
    TooDeep,
}

/// [`form`], quicker for the usual top-level value: a string, a number or a literal.
fn form_of_value(json: &str) -> Form {
    match json.as_bytes()[0] {
        b'"' if memchr::memchr(b'\\', json.as_bytes()).is_none() => Form::AsWritten,
        b'n' | b't' | b'f' => Form::AsWritten,
        b'0'..=b'9' | b'-' if !json.contains(['E', 'e']) => Form::AsWritten,
        _ => form(json),
    }
}

/// How one valid JSON value (as serde_json's parser checked it) is written.
pub(super) fn form(json: &str) -> Form {
    enum Frame {
        Array,
        /// The previous key's byte range, and whether the next string is a key.
        Object(Option<(usize, usize)>, bool),
    }
    let b = json.as_bytes();
    let mut stack: Vec<Frame> = Vec::new();
    let mut as_written = true;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                let start = i + 1;
                let mut end = start;
                // Most of a record is inside strings: jump to the next quote or backslash.
                while let Some(at) = memchr::memchr2(b'"', b'\\', &b[end.min(b.len())..]) {
                    end += at;
                    if b[end] == b'"' {
                        break;
                    }
                    as_written = false;
                    end += 2;
                }
                if let Some(Frame::Object(last, next_is_key @ true)) = stack.last_mut() {
                    if last.is_some_and(|(s, e)| b[s..e] >= b[start..end]) {
                        as_written = false;
                    }
                    *last = Some((start, end));
                    *next_is_key = false;
                }
                i = end;
            }
            open @ (b'{' | b'[') => {
                stack.push(match open {
                    b'{' => Frame::Object(None, true),
                    _ => Frame::Array,
                });
                if stack.len() > MAX_DEPTH {
                    return Form::TooDeep;
                }
            }
            b'}' | b']' => {
                stack.pop();
            }
            b',' => {
                if let Some(Frame::Object(_, next_is_key)) = stack.last_mut() {
                    *next_is_key = true;
                }
            }
            b' ' | b'\t' | b'\n' | b'\r' => as_written = false,
            // serde_json writes an exponent as `e` and a sign (`1E5` is `1e+5`). Outside
            // strings an `e` is otherwise only in `true` and `false`, before no digit.
            b'E' => as_written = false,
            b'e' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => as_written = false,
            _ => {}
        }
        i += 1;
    }
    match as_written {
        true => Form::AsWritten,
        false => Form::Other,
    }
}

/// The object's entries in record order, keys borrowed where they have no escape.
struct Entries<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for Entries<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(EntriesVisitor)
    }
}

struct EntriesVisitor;

impl<'de> Visitor<'de> for EntriesVisitor {
    type Value = Entries<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(16));
        while let Some(key) = map.next_key_seed(Key)? {
            entries.push((key, map.next_value::<&'de RawValue>()?));
        }
        Ok(Entries(entries))
    }
}

/// A key, borrowed from the record when it has no escape.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
}
