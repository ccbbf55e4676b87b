//! What a dead letter keeps of its record: the raw bytes, unless redaction is configured, in
//! which case no redacted field may stay readable in `dead_letters` either.
//!
//! | redaction | payload                | stored as                                   |
//! |-----------|------------------------|---------------------------------------------|
//! | none      | anything               | the raw bytes (`raw`)                        |
//! | on, key   | anything               | AES-256-GCM of the raw bytes (`aes-256-gcm`) |
//! | on, none  | a JSON object          | the object after redaction (`redacted-json`) |
//! | on, none  | anything else          | nothing (`withheld`): it cannot be redacted  |
//!
//! The encrypted form is `nonce (12 bytes) || ciphertext || tag`, key from `LP_DEAD_LETTER_KEY`
//! (64 hex digits); `decrypt` is the inverse, for re-drive.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use serde_json::Value;

use crate::model::{DeadLetter, PayloadEncoding, RawRecord, RejectStage};
use crate::redact::Redactor;

/// Builds dead letters that honour the redaction settings. Cheap to share.
#[derive(Clone, Default)]
pub struct DeadLetterPolicy {
    redactor: Redactor,
    cipher: Option<Aes256Gcm>,
}

#[derive(Debug, thiserror::Error)]
#[error("LP_DEAD_LETTER_KEY must be 64 hexadecimal digits (a 256-bit key)")]
pub struct BadKey;

/// Parses a 256-bit key written as 64 hex digits.
pub fn parse_key(hex: &str) -> Result<[u8; 32], BadKey> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(BadKey);
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| BadKey)?;
    }
    Ok(key)
}

impl DeadLetterPolicy {
    pub fn new(redactor: Redactor, key: Option<[u8; 32]>) -> Self {
        let cipher = key.map(|k| Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&k)));
        Self { redactor, cipher }
    }

    /// The dead letter of `raw`, rejected at `stage` for `reason`.
    pub fn make(
        &self,
        raw: &RawRecord,
        stage: RejectStage,
        reason: impl Into<String>,
    ) -> DeadLetter {
        let (payload, encoding) = self.protect(raw.payload.as_deref());
        DeadLetter {
            offset: raw.offset,
            key: raw.key.clone(),
            payload,
            encoding,
            redaction: self.redactor.policy(),
            kafka_timestamp_ms: raw.kafka_timestamp_ms,
            stage,
            reason: reason.into(),
        }
    }

    fn protect(&self, payload: Option<&[u8]>) -> (Option<Vec<u8>>, PayloadEncoding) {
        let Some(bytes) = payload else {
            return (None, PayloadEncoding::Raw);
        };
        if self.redactor.is_empty() {
            return (Some(bytes.to_vec()), PayloadEncoding::Raw);
        }
        if let Some(cipher) = &self.cipher {
            let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
            let sealed = cipher
                .encrypt(&nonce, bytes)
                .expect("AES-GCM encryption of an in-memory buffer cannot fail");
            let mut out = nonce.to_vec();
            out.extend_from_slice(&sealed);
            return (Some(out), PayloadEncoding::Aes256Gcm);
        }
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(mut object)) => {
                self.redactor.apply(&mut object);
                let text = serde_json::to_vec(&object).expect("a JSON map serialises");
                (Some(text), PayloadEncoding::RedactedJson)
            }
            _ => (None, PayloadEncoding::Withheld),
        }
    }
}

/// The raw bytes of an `aes-256-gcm` dead letter, given the key.
pub fn decrypt(key: &[u8; 32], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < 12 {
        return None;
    }
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key));
    let (nonce, body) = sealed.split_at(12);
    cipher.decrypt(Nonce::from_slice(nonce), body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(payload: &[u8]) -> RawRecord {
        RawRecord {
            offset: 3,
            key: None,
            payload: Some(payload.to_vec()),
            kafka_timestamp_ms: None,
        }
    }
    fn redacting() -> Redactor {
        Redactor::new(vec!["password".into()], vec!["email".into()], Some("k"))
    }

    #[test]
    fn without_redaction_the_raw_bytes_are_kept() {
        let d = DeadLetterPolicy::default().make(&raw(b"\xff{x"), RejectStage::Decode, "bad");
        assert_eq!(d.payload.as_deref(), Some(&b"\xff{x"[..]));
        assert_eq!(d.encoding, PayloadEncoding::Raw);
    }

    #[test]
    fn redacted_fields_never_stay_in_clear() {
        let p = DeadLetterPolicy::new(redacting(), None);
        let d = p.make(
            &raw(br#"{"password":"hunter2","email":"a@b","timestamp":"nope"}"#),
            RejectStage::Decode,
            "bad timestamp",
        );
        let text = String::from_utf8(d.payload.unwrap()).unwrap();
        assert!(!text.contains("hunter2") && !text.contains("a@b"), "{text}");
        assert!(text.contains("\"timestamp\":\"nope\""), "{text}");
        assert_eq!(d.encoding, PayloadEncoding::RedactedJson);

        // Not a JSON object: nothing can be redacted, so nothing is kept.
        let d = p.make(
            &raw(b"{\"password\":\"hunter2\""),
            RejectStage::Decode,
            "bad",
        );
        assert_eq!((d.payload, d.encoding), (None, PayloadEncoding::Withheld));
    }

    #[test]
    fn with_a_key_the_raw_bytes_are_sealed_and_recoverable() {
        let key = parse_key(&"ab".repeat(32)).unwrap();
        let p = DeadLetterPolicy::new(redacting(), Some(key));
        let original = b"{\"password\":\"hunter2\"".to_vec();
        let d = p.make(&raw(&original), RejectStage::Decode, "bad");
        assert_eq!(d.encoding, PayloadEncoding::Aes256Gcm);
        let sealed = d.payload.unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(decrypt(&key, &sealed).unwrap(), original);
        let other = parse_key(&"cd".repeat(32)).unwrap();
        assert_eq!(decrypt(&other, &sealed), None, "another key reads nothing");
    }

    #[test]
    fn keys_are_64_hex_digits() {
        assert!(parse_key(&"0f".repeat(32)).is_ok());
        assert!(parse_key("abc").is_err());
        assert!(parse_key(&"zz".repeat(32)).is_err());
    }
}
