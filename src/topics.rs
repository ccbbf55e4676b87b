//! Which Kafka topics `LP_TOPICS` selects. An entry is a topic's name or, when it starts with
//! `^`, a regular expression (librdkafka's convention: the consumer subscribes with the entries
//! as given and librdkafka matches the patterns against the cluster's topics, picking up new
//! ones at each metadata refresh). The same rule, here and without I/O, tells the operator
//! commands which topics a list selects among the names Kafka or PostgreSQL knows.
//!
//! Patterns are POSIX extended regular expressions, matched by libc's engine as librdkafka
//! matches them (`posix.rs`); they search, so `^logs-` takes every name starting with `logs-`.
//! Refused at start-up, naming `LP_TOPICS`: what libc refuses, and a backslash before a letter
//! or digit (`\d`, `\w`, `\1`), whose meaning differs between libc engines and from the Perl
//! syntax an operator may expect (glibc reads `\d` as `d`): write `[0-9]`, `[[:alnum:]_]`.
//!
//! Internal topics (`__consumer_offsets`, `__transaction_state`, any name starting with `__`)
//! are never taken by a pattern: the consumer gives librdkafka `topic.blacklist` for them when
//! a pattern is present, which excludes exact names too, so an exact `__` name cannot be mixed
//! with patterns.

mod posix;

use posix::Regex;

/// librdkafka's `topic.blacklist` while a pattern is subscribed: keeps internal topics out.
pub const INTERNAL_BLACKLIST: &str = "^__.*";

/// Whether an `LP_TOPICS` entry is a pattern.
pub fn is_pattern(entry: &str) -> bool {
    entry.starts_with('^')
}

/// Whether Kafka, or a tool beside it, keeps the topic for itself (see the module's comment).
pub fn is_internal(topic: &str) -> bool {
    topic.starts_with("__")
}

/// `LP_TOPICS` checked: exact names and patterns, in the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSelection {
    entries: Vec<String>,
}

impl TopicSelection {
    /// Trims the entries, drops empty ones, and checks every pattern (see the module).
    pub fn parse(entries: &[String]) -> Result<TopicSelection, String> {
        let entries: Vec<String> = entries
            .iter()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if entries.is_empty() {
            return Err("at least one topic is required".into());
        }
        for e in entries.iter().filter(|e| is_pattern(e)) {
            check_pattern(e)?;
        }
        if entries.iter().any(|e| is_pattern(e))
            && let Some(e) = entries.iter().find(|e| !is_pattern(e) && is_internal(e))
        {
            return Err(format!(
                "{e}: a topic starting with __ cannot be listed with a pattern (internal \
                 topics are kept out of pattern subscriptions, and that excludes it too)"
            ));
        }
        Ok(TopicSelection { entries })
    }

    /// The entries as the consumer subscribes with them.
    pub fn entries(&self) -> &[String] {
        &self.entries
    }

    pub fn has_patterns(&self) -> bool {
        self.entries.iter().any(|e| is_pattern(e))
    }

    /// The exact names, in the order given.
    pub fn exact(&self) -> Vec<String> {
        (self.entries.iter())
            .filter(|e| !is_pattern(e))
            .cloned()
            .collect()
    }

    /// Which of `names` the list selects: each exact name, and each name a pattern matches
    /// unless it is internal. Sorted, each once.
    pub fn select<S: AsRef<str>>(&self, names: &[S]) -> Vec<String> {
        // Checked by `parse`: a pattern that no longer compiles (it cannot) selects nothing.
        let patterns: Vec<Regex> = (self.entries.iter())
            .filter(|e| is_pattern(e))
            .filter_map(|e| Regex::new(e).ok())
            .collect();
        let mut out: Vec<String> = (names.iter().map(AsRef::as_ref))
            .filter(|n| {
                self.entries.iter().any(|e| !is_pattern(e) && e == n)
                    || (!is_internal(n) && patterns.iter().any(|p| p.is_match(n)))
            })
            .map(str::to_string)
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The topics a command works on when `known` are the names it can see: every exact name
    /// (known or not: a missing one is reported where it is used) and the names patterns
    /// select among `known`. Sorted, each once.
    pub fn resolve<S: AsRef<str>>(&self, known: &[S]) -> Vec<String> {
        let mut out = self.select(known);
        out.extend(self.exact());
        out.sort();
        out.dedup();
        out
    }
}

/// Why a pattern cannot be used, if it cannot.
fn check_pattern(pattern: &str) -> Result<(), String> {
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c == '\\'
            && let Some(next) = chars.next()
            && next.is_ascii_alphanumeric()
        {
            return Err(format!(
                "{pattern}: \\{next} is not a POSIX extended regular expression (libc reads it \
                 differently from Perl-style engines); use a bracket expression such as [0-9] \
                 or [[:alnum:]_]"
            ));
        }
    }
    Regex::new(pattern)
        .map(drop)
        .map_err(|e| format!("{pattern}: {e}"))
}

#[cfg(test)]
mod tests;
