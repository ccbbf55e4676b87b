//! Optional field redaction, applied to the decoded object before either store sees it.

use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;

/// Drops or hashes configured top-level fields. The default redacts nothing.
#[derive(Clone, Default)]
pub struct Redactor {
    drop: Vec<String>,
    hash: Vec<String>,
    key: Vec<u8>,
}

impl Redactor {
    pub fn new(drop: Vec<String>, hash: Vec<String>, key: Option<&str>) -> Self {
        let clean = |v: Vec<String>| {
            v.into_iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        };
        Self {
            drop: clean(drop),
            hash: clean(hash),
            key: key.unwrap_or_default().as_bytes().to_vec(),
        }
    }

    /// True when no field is redacted.
    pub fn is_empty(&self) -> bool {
        self.drop.is_empty() && self.hash.is_empty()
    }

    pub fn apply(&self, object: &mut Map<String, Value>) {
        for name in &self.drop {
            object.remove(name);
        }
        for name in &self.hash {
            if let Some(v) = object.get_mut(name) {
                *v = Value::String(self.keyed_hash(v));
            }
        }
    }

    /// HMAC-SHA256 of the value's JSON text: equal values still match, the value is unreadable.
    fn keyed_hash(&self, value: &Value) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(value.to_string().as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut out = String::with_capacity(5 + 64);
        out.push_str("hmac:");
        for b in digest {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn drops_and_hashes() {
        let r = Redactor::new(
            vec!["password".into()],
            vec!["email".into(), " ".into()],
            Some("k"),
        );
        let mut a = json!({"password":"p","email":"a@b","x":1})
            .as_object()
            .unwrap()
            .clone();
        let mut b = json!({"email":"a@b"}).as_object().unwrap().clone();
        r.apply(&mut a);
        r.apply(&mut b);
        assert!(!a.contains_key("password"));
        let h = a["email"].as_str().unwrap();
        assert!(h.starts_with("hmac:") && h.len() == 69 && !h.contains("a@b"));
        assert_eq!(a["email"], b["email"], "same value, same key: same hash");
        assert_eq!(a["x"], 1);
        let other = Redactor::new(vec![], vec!["email".into()], Some("other"));
        let mut c = json!({"email":"a@b"}).as_object().unwrap().clone();
        other.apply(&mut c);
        assert_ne!(a["email"], c["email"], "the hash depends on the key");
    }

    #[test]
    fn default_changes_nothing() {
        let mut a = json!({"password":"p"}).as_object().unwrap().clone();
        Redactor::default().apply(&mut a);
        assert_eq!(a["password"], "p");
    }
}
