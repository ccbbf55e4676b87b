//! Secret values: one type that never shows its value (`Secret`), and the reading of a secret
//! from a file.

use std::fmt;
use std::path::Path;

use super::{ConfigError, invalid};

/// A secret value: never shown by `Debug` (so never by `check-config` or a log line).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"****\"")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

/// Reads a secret from a file: one value, a trailing newline dropped. The error names the
/// field and the path, never the content.
pub(super) fn read_secret(field: &'static str, path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(field, format!("cannot read {}: {e}", path.display())))?;
    let value = text.trim_end_matches(['\n', '\r']);
    if value.is_empty() {
        return Err(invalid(field, format!("{} is empty", path.display())));
    }
    Ok(value.to_string())
}
