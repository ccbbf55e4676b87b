//! The source's shape, checked: no two sibling modules import each other, directly or around a
//! circle. A module may use its parent's items and its own children (that is what nesting is
//! for); between siblings, dependencies run one way, so each file can be read after the files
//! it uses. Needs no service: part of `make unit`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every module of `src/` (`consumer::client`, `config`, ...) and its file's text.
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, prefix: &[String], out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).expect("read src") {
            let path = entry.expect("entry").path();
            let name = path.file_stem().unwrap().to_string_lossy().to_string();
            if path.is_dir() {
                let mut p = prefix.to_vec();
                p.push(name);
                walk(&path, &p, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let mut p = prefix.to_vec();
                if !matches!(name.as_str(), "mod" | "lib" | "main") {
                    p.push(name);
                }
                let text = std::fs::read_to_string(&path).expect("read file");
                out.entry(p.join("::")).or_default().push_str(&text);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &[],
        &mut out,
    );
    out
}

/// The paths a file names (`crate::a::b`, `super::c`, `super::{d, e}`), resolved against the
/// module `at` and cut to the longest module that exists.
fn references(at: &str, text: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    let base: Vec<&str> = if at.is_empty() {
        vec![]
    } else {
        at.split("::").collect()
    };
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    for start in ["crate::", "super::"] {
        for (i, _) in code.match_indices(start) {
            if code[..i]
                .chars()
                .last()
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
            {
                continue; // part of a longer path (`super::super::`, `x::crate`)
            }
            let rest = &code[i..];
            let path_end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            let mut segments: Vec<&str> = rest[..path_end]
                .split("::")
                .filter(|s| !s.is_empty())
                .collect();
            let module: Vec<&str> = if segments[0] == "crate" {
                segments.remove(0);
                vec![]
            } else {
                let mut m = base.clone();
                while segments.first() == Some(&"super") {
                    segments.remove(0);
                    m.pop();
                }
                m
            };
            // `super::{a, b::c}`: each item of the group.
            let mut groups = vec![segments.clone()];
            if rest[path_end..].starts_with('{') {
                let close = rest[path_end..]
                    .find('}')
                    .map_or(rest.len(), |c| path_end + c);
                groups = rest[path_end + 1..close]
                    .split(',')
                    .map(|item| {
                        let mut g = segments.clone();
                        g.extend(
                            item.trim()
                                .split("::")
                                .filter(|s| !s.is_empty() && !s.contains(' ')),
                        );
                        g
                    })
                    .collect();
            }
            for g in groups {
                let mut full = module.clone();
                full.extend(g.iter().copied());
                while !full.is_empty() && !known.contains(&full.join("::")) {
                    full.pop();
                }
                refs.insert(full.join("::"));
            }
        }
    }
    refs
}

/// `a` is `b`, or one contains the other.
fn related(a: &str, b: &str) -> bool {
    let within = |x: &str, y: &str| y.is_empty() || x == y || x.starts_with(&format!("{y}::"));
    within(a, b) || within(b, a)
}

fn sibling_graph() -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules();
    let known: BTreeSet<String> = modules.keys().cloned().collect();
    modules
        .iter()
        .map(|(m, text)| {
            let to = references(m, text, &known)
                .into_iter()
                .filter(|r| !related(m, r))
                .collect();
            (m.clone(), to)
        })
        .collect()
}

/// One circle of the graph, if there is any.
fn circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut c = path[i..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for m in graph.get(n).into_iter().flatten() {
            // An edge to a module counts for the whole module: `a::x -> b` and `b -> a`
            // are a circle between the siblings `a` and `b`.
            let target = graph
                .keys()
                .filter(|k| related(k, m))
                .cloned()
                .collect::<Vec<_>>();
            for t in target {
                if related(&t, n) {
                    continue;
                }
                if let Some(c) = visit(&t, graph, path, done) {
                    return Some(c);
                }
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for n in graph.keys() {
        if let Some(c) = visit(n, graph, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn no_two_sibling_modules_import_each_other() {
    let graph = sibling_graph();
    assert!(graph.contains_key("consumer::client") && graph.contains_key("admin::replay"));
    assert!(
        graph["consumer::rebalance"].contains("consumer::client"),
        "the reader sees the imports it must: {:?}",
        graph["consumer::rebalance"]
    );
    if let Some(c) = circle(&graph) {
        panic!("an import circle: {}", c.join(" -> "));
    }
}

#[test]
fn the_circle_check_finds_a_circle() {
    let mut graph = sibling_graph();
    graph
        .get_mut("consumer::client")
        .unwrap()
        .insert("consumer::rebalance".into());
    let c = circle(&graph).expect("client <-> rebalance is a circle");
    assert!(c.len() >= 3, "{c:?}");
}

/// The consumer's rules run without Kafka, channels or a runtime (`consumer::rules`): that is
/// what lets their property tests drive them with any order of events.
#[test]
fn the_consumer_rules_do_no_io() {
    let modules = modules();
    let rules: Vec<(&String, &String)> = modules
        .iter()
        .filter(|(m, _)| m.as_str() == "consumer::rules" || m.starts_with("consumer::rules::"))
        .collect();
    assert!(rules.len() >= 2, "the rules and their tests: {rules:?}");
    for (module, text) in rules {
        let code: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect();
        for io in [
            "rdkafka",
            "tokio::sync",
            "mpsc",
            "sqlx",
            "elasticsearch",
            "std::thread",
        ] {
            assert!(!code.contains(io), "{module} names {io}");
        }
    }
}
