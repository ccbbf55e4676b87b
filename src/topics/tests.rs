use std::ffi::{CString, c_char, c_int};

use proptest::prelude::*;

use super::*;

fn list(entries: &[&str]) -> TopicSelection {
    TopicSelection::parse(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>()).unwrap()
}

fn refused(entries: &[&str]) -> String {
    TopicSelection::parse(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>()).unwrap_err()
}

#[test]
fn a_pattern_takes_the_names_it_matches_and_never_an_internal_topic() {
    let names = [
        "logs-a",
        "logs-b",
        "xlogs-a",
        "metrics",
        "__consumer_offsets",
        "__transaction_state",
    ];
    assert_eq!(list(&["^logs-.*"]).select(&names), ["logs-a", "logs-b"]);
    assert_eq!(
        list(&["^.*"]).select(&names),
        ["logs-a", "logs-b", "metrics", "xlogs-a"]
    );
    assert_eq!(list(&["^__.*"]).select(&names), Vec::<String>::new());
}

#[test]
fn exact_names_and_patterns_mix_and_exact_names_are_kept_when_unknown() {
    let s = list(&[" metrics ", "^logs-[0-9]+$", ""]);
    assert_eq!(s.entries(), ["metrics", "^logs-[0-9]+$"]);
    assert!(s.has_patterns());
    assert_eq!(s.exact(), ["metrics"]);
    let known = ["logs-1", "logs-12", "logs-1a", "other"];
    assert_eq!(s.select(&known), ["logs-1", "logs-12"]);
    assert_eq!(s.resolve(&known), ["logs-1", "logs-12", "metrics"]);
    assert!(!list(&["logs"]).has_patterns());
}

#[test]
fn a_bad_pattern_is_refused_naming_it() {
    for bad in ["^logs-(", "^logs-[a-", "^logs-{2,1}", "^*("] {
        let why = refused(&["ok", bad]);
        assert!(why.starts_with(bad), "{bad}: {why}");
    }
}

#[test]
fn perl_style_escapes_are_refused_with_the_posix_spelling() {
    for bad in [r"^logs-\d+", r"^logs-\w", r"^(a)\1"] {
        let why = refused(&[bad]);
        assert!(why.contains("[0-9]"), "{bad}: {why}");
    }
    // A backslash before punctuation escapes it, as in POSIX.
    assert_eq!(
        list(&[r"^logs\.a"]).select(&["logs.a", "logsxa"]),
        ["logs.a"]
    );
}

#[test]
fn an_internal_exact_name_cannot_be_mixed_with_a_pattern() {
    assert!(refused(&["__consumer_offsets", "^logs"]).contains("__consumer_offsets"));
    // Alone it is read as it always was (no blacklist is set then).
    assert_eq!(list(&["__mine"]).select(&["__mine", "mine"]), ["__mine"]);
}

#[test]
fn an_empty_list_is_refused() {
    assert!(refused(&[" ", ""]).contains("at least one topic"));
}

unsafe extern "C" {
    /// librdkafka's own matcher (`rdregex.c`), linked into this crate with librdkafka: what
    /// the consumer's subscription matches topics with.
    fn rd_regex_match(
        pattern: *const c_char,
        text: *const c_char,
        errstr: *mut c_char,
        errstr_size: usize,
    ) -> c_int;
}

fn librdkafka_matches(pattern: &str, name: &str) -> bool {
    let (p, n) = (CString::new(pattern).unwrap(), CString::new(name).unwrap());
    let mut err = [0 as c_char; 128];
    // SAFETY: NUL-terminated inputs, an error buffer of the size given.
    let r = unsafe { rd_regex_match(p.as_ptr(), n.as_ptr(), err.as_mut_ptr(), err.len()) };
    assert_ne!(r, -1, "librdkafka refused {pattern}");
    r == 1
}

/// Patterns from the POSIX syntax an operator writes: literals, `.`, bracket expressions and
/// classes, groups with alternatives, the quantifiers, an escaped dot, `$`.
fn pattern() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        "[a-c0-9-]",
        Just(".".to_string()),
        Just("[a-b]".to_string()),
        Just("[[:digit:]]".to_string()),
        Just("[^-]".to_string()),
        Just("(a|b-)".to_string()),
        Just(r"\.".to_string()),
        Just("_".to_string()),
    ];
    let quantifier = prop_oneof![
        Just(""),
        Just(""),
        Just("*"),
        Just("+"),
        Just("?"),
        Just("{1,2}"),
    ];
    (
        prop::collection::vec((atom, quantifier), 0..5),
        any::<bool>(),
    )
        .prop_map(|(parts, end)| {
            let body: String = parts.iter().map(|(a, q)| format!("{a}{q}")).collect();
            format!("^{body}{}", if end { "$" } else { "" })
        })
}

fn names() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec("(__)?[a-c0-9._-]{0,8}", 0..20)
}

proptest! {
    /// Every name the daemon says a pattern selects is one librdkafka subscribes to, and the
    /// other way round, internal topics apart (librdkafka skips them by `topic.blacklist`).
    #[test]
    fn selection_agrees_with_librdkafkas_matcher(p in pattern(), names in names()) {
        let s = list(&[&p]);
        let selected = s.select(&names);
        for n in &names {
            let theirs = librdkafka_matches(&p, n) && !librdkafka_matches(INTERNAL_BLACKLIST, n);
            prop_assert_eq!(selected.contains(n), theirs, "pattern {} name {}", p, n);
        }
    }

    /// A prefix pattern takes exactly the names with that prefix, internal ones never.
    #[test]
    fn a_prefix_takes_the_names_starting_with_it(
        prefix in "[a-c0-9-]{1,4}",
        names in names(),
    ) {
        let selected = list(&[&format!("^{prefix}")]).select(&names);
        let mut expected: Vec<String> = names
            .iter()
            .filter(|n| n.starts_with(&prefix) && !n.starts_with("__"))
            .cloned()
            .collect();
        expected.sort();
        expected.dedup();
        prop_assert_eq!(selected, expected);
    }

    /// Exact names select themselves only: a list without patterns behaves as before.
    #[test]
    fn exact_names_select_only_themselves(
        exact in prop::collection::vec("(__)?[a-c.-]{1,6}", 1..4),
        names in names(),
    ) {
        let s = TopicSelection::parse(&exact).unwrap();
        for n in s.select(&names) {
            prop_assert!(exact.contains(&n));
            prop_assert!(names.contains(&n));
        }
        let resolved = s.resolve(&names);
        for e in &exact {
            prop_assert!(resolved.contains(e));
        }
    }
}
