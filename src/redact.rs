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

    /// What this redacts, as a dead letter records it (`dead_letters.redaction`): the field
    /// names and whether hashing is keyed, never the key. `None` when nothing is redacted.
    pub fn policy(&self) -> Option<String> {
        if self.is_empty() {
            return None;
        }
        let policy = Policy {
            drop: self.drop.clone(),
            hash: self.hash.clone(),
            keyed: !self.key.is_empty(),
        };
        Some(serde_json::to_string(&policy).expect("a policy serialises"))
    }

    /// The settings this lacks to redact at least as much as `recorded` (a [`Self::policy`]):
    /// a field dropped then must be dropped now, a field hashed then hashed or dropped now,
    /// and a keyed hash keyed now (the key itself is not recorded, so not compared). Empty when this redacts as much or more.
    pub fn missing(&self, recorded: &str) -> Result<Vec<String>, String> {
        let then: Policy = serde_json::from_str(recorded)
            .map_err(|e| format!("unreadable redaction policy {recorded:?}: {e}"))?;
        let mut missing = Vec::new();
        for f in then.drop.iter().filter(|f| !self.drop.contains(f)) {
            missing.push(format!("LP_REDACT_DROP lacks {f}"));
        }
        for f in then.hash.iter() {
            if !self.hash.contains(f) && !self.drop.contains(f) {
                missing.push(format!("LP_REDACT_HASH lacks {f}"));
            }
        }
        // An unkeyed hash of a guessable value is as good as the value; a dropped one is gone.
        if then.keyed && self.key.is_empty() && then.hash.iter().any(|f| !self.drop.contains(f)) {
            missing.push("LP_REDACT_KEY is not set".into());
        }
        Ok(missing)
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

/// A redaction as a dead letter records it.
#[derive(serde::Serialize, serde::Deserialize)]
struct Policy {
    drop: Vec<String>,
    hash: Vec<String>,
    keyed: bool,
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
    fn less_redaction_than_recorded_is_named() {
        let then = Redactor::new(vec!["password".into()], vec!["email".into()], Some("k"))
            .policy()
            .unwrap();
        assert_eq!(Redactor::default().policy(), None);
        assert_eq!(
            Redactor::default().missing(&then).unwrap(),
            [
                "LP_REDACT_DROP lacks password",
                "LP_REDACT_HASH lacks email",
                "LP_REDACT_KEY is not set"
            ]
        );
        let more = Redactor::new(vec!["password".into(), "email".into()], vec![], None);
        assert!(more.missing(&then).unwrap().is_empty());
        let same = Redactor::new(vec!["password".into()], vec!["email".into()], Some("x"));
        assert!(same.missing(&then).unwrap().is_empty());
        assert!(Redactor::default().missing("nonsense").is_err());
    }

    #[test]
    fn default_changes_nothing() {
        let mut a = json!({"password":"p"}).as_object().unwrap().clone();
        Redactor::default().apply(&mut a);
        assert_eq!(a["password"], "p");
    }
}
