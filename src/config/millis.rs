//! Durations set in milliseconds.

use std::fmt;
use std::time::Duration;

/// A duration given in milliseconds, as every `LP_*_MS` setting is: parsed once, into a
/// `Duration` (`.0`). `check-config` shows it as the number its variable takes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Millis(pub Duration);

impl std::str::FromStr for Millis {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let ms = text.trim().parse::<u64>();
        ms.map(|ms| Millis(Duration::from_millis(ms)))
            .map_err(|e| format!("{text:?} is not a number of milliseconds: {e}"))
    }
}

impl fmt::Debug for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.as_millis())
    }
}
