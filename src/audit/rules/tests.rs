//! The rules on ranges built by hand, and a property: a consistent range has no finding, and
//! each corruption made to it is found, at its offset, as its kind, and nothing else.

use proptest::prelude::*;
use serde_json::json;

use super::*;

fn shape(offset: i64, text: &str) -> Shape {
    Shape {
        document: json!({ "message": text, "kafka": { "offset": offset } }),
        index: Some("logs-a".into()),
        key: None,
        kafka_ms: Some(offset),
    }
}

fn doc(index: &str, s: &Shape) -> Doc {
    Doc {
        index: index.into(),
        id: format!("t-0-{}", s.document["kafka"]["offset"]),
        source: s.document.clone(),
    }
}

/// What an offset is in a consistent range.
#[derive(Clone, Copy, Debug)]
enum Fate {
    Row,
    Dead,
    Parked,
    Gap,
}

fn consistent(fates: &[Fate]) -> Range {
    let mut r = Range {
        from: 0,
        to: fates.len() as i64,
        kafka: Some(BTreeMap::new()),
        ..Range::default()
    };
    for (o, fate) in fates.iter().enumerate() {
        let o = o as i64;
        let s = shape(o, "m");
        match fate {
            Fate::Row => {
                r.docs.insert(o, vec![doc("logs-a", &s)]);
                r.rows.insert(o, s.clone());
                r.kafka.as_mut().unwrap().insert(o, Source::Decoded(s));
            }
            Fate::Dead => {
                r.dead.insert(o);
                r.kafka.as_mut().unwrap().insert(o, Source::Undecodable);
            }
            Fate::Parked => {
                r.parked.insert(o);
            }
            Fate::Gap => r.gaps.push((o, o + 1)),
        }
    }
    r
}

fn kinds(found: &[Finding]) -> Vec<(Kind, i64)> {
    found.iter().map(|f| (f.kind, f.offset)).collect()
}

#[test]
fn each_kind_is_found_where_it_is() {
    let mut r = consistent(&[Fate::Row; 8]);
    assert!(check(&r).is_empty());
    r.docs.remove(&0); // row without document
    r.rows.remove(&1); // document without row, and unaccounted (Kafka holds it)
    r.docs.get_mut(&2).unwrap()[0].source["message"] = json!("altered");
    let copy = doc("logs-b", &r.rows[&3]);
    r.docs.get_mut(&3).unwrap().push(copy);
    if let Some(Source::Decoded(s)) = r.kafka.as_mut().unwrap().get_mut(&4) {
        s.key = Some(b"other".to_vec());
    }
    r.rows.remove(&5);
    r.docs.remove(&5);
    r.kafka.as_mut().unwrap().remove(&5); // gone from Kafka too: lost
    let found = check(&r);
    assert_eq!(
        kinds(&found),
        [
            (Kind::RowWithoutDocument, 0),
            (Kind::Unaccounted, 1),
            (Kind::DocumentWithoutRow, 1),
            (Kind::DocumentMismatch, 2),
            (Kind::DuplicateDocument, 3),
            (Kind::SourceMismatch, 4),
            (Kind::Unaccounted, 5),
        ]
    );
    assert!(found[1].repairable, "Kafka holds 1");
    assert!(!found[6].repairable, "5 is gone from Kafka and both stores");
    assert_eq!(
        found[4].index.as_deref(),
        Some("logs-b"),
        "the copy is the one named"
    );
}

#[test]
fn dead_letters_parked_records_and_gaps_account_for_offsets() {
    let mut r = consistent(&[Fate::Dead, Fate::Parked, Fate::Gap, Fate::Row]);
    r.gaps = vec![(-5, 3)]; // a gap reaching in from before the range
    let s = shape(1, "m");
    r.docs.insert(1, vec![doc("logs-a", &s)]); // a parked record's document, already in
    assert!(check(&r).is_empty(), "{:?}", check(&r));
    // A document of a dead letter is not.
    r.docs.insert(0, vec![doc("logs-a", &shape(0, "m"))]);
    assert_eq!(kinds(&check(&r)), [(Kind::DocumentWithoutRow, 0)]);
}

#[test]
fn rows_whose_records_kafka_no_longer_holds_are_not_compared_with_it() {
    // Deleted by retention, or removed by compaction.
    let mut r = consistent(&[Fate::Row, Fate::Row, Fate::Row]);
    r.kafka.as_mut().unwrap().retain(|&o, _| o == 1);
    assert!(check(&r).is_empty(), "{:?}", check(&r));
}

#[test]
fn a_recorded_gap_where_kafka_hands_over_a_record_accounts_for_nothing() {
    let mut r = consistent(&[Fate::Row, Fate::Gap, Fate::Gap]);
    let s = shape(1, "m");
    r.kafka.as_mut().unwrap().insert(1, Source::Decoded(s));
    let found = check(&r);
    assert_eq!(kinds(&found), [(Kind::Unaccounted, 1)]);
    assert!(found[0].repairable);
}

#[test]
fn without_kafka_only_the_stores_are_compared() {
    let mut r = consistent(&[Fate::Row, Fate::Row]);
    r.kafka = None;
    r.rows.remove(&1);
    r.docs.remove(&1);
    let found = check(&r);
    assert_eq!(kinds(&found), [(Kind::Unaccounted, 1)]);
    assert!(!found[0].repairable, "nothing says Kafka holds it");
}

#[test]
fn a_number_written_otherwise_is_the_same_value() {
    let a: Value = serde_json::from_str(r#"{"n":1e2,"m":[1.50]}"#).unwrap();
    let b: Value = serde_json::from_str(r#"{"n":100,"m":[1.5]}"#).unwrap();
    assert!(same(&a, &b));
    let c: Value = serde_json::from_str(r#"{"n":101,"m":[1.5]}"#).unwrap();
    assert!(!same(&a, &c));
    let d: Value = serde_json::from_str(r#"{"n":100,"m":[1.5],"x":null}"#).unwrap();
    assert!(!same(&b, &d), "an added key is a change");
}

#[test]
fn only_what_is_seen_twice_is_confirmed() {
    let f = |kind, offset| Finding {
        kind,
        offset,
        index: None,
        id: None,
        repairable: true,
    };
    let first = [f(Kind::RowWithoutDocument, 3), f(Kind::Unaccounted, 4)];
    let again = [f(Kind::Unaccounted, 4), f(Kind::Unaccounted, 9)];
    assert_eq!(confirmed(&first, &again), [f(Kind::Unaccounted, 4)]);
}

/// A corruption of one offset of a consistent range, and what it must be found as.
#[derive(Clone, Debug)]
enum Harm {
    DropDocument,
    DropRow,
    AlterDocument,
    CopyDocument,
    AlterKafka,
}

fn fates() -> impl Strategy<Value = Vec<Fate>> {
    let fate = prop_oneof![
        6 => Just(Fate::Row),
        1 => Just(Fate::Dead),
        1 => Just(Fate::Parked),
        1 => Just(Fate::Gap),
    ];
    prop::collection::vec(fate, 1..60)
}

proptest! {
    #[test]
    fn every_harm_is_found_as_itself_and_nothing_else(
        fates in fates(),
        harms in prop::collection::btree_map(0i64..60, prop_oneof![
            Just(Harm::DropDocument),
            Just(Harm::DropRow),
            Just(Harm::AlterDocument),
            Just(Harm::CopyDocument),
            Just(Harm::AlterKafka),
        ], 0..10),
    ) {
        let mut r = consistent(&fates);
        prop_assert!(check(&r).is_empty());
        let mut expected = Vec::new();
        for (&o, harm) in &harms {
            if !matches!(fates.get(o as usize), Some(Fate::Row)) {
                continue;
            }
            match harm {
                Harm::DropDocument => {
                    r.docs.remove(&o);
                    expected.push((Kind::RowWithoutDocument, o));
                }
                Harm::DropRow => {
                    r.rows.remove(&o);
                    expected.push((Kind::Unaccounted, o));
                    expected.push((Kind::DocumentWithoutRow, o));
                }
                Harm::AlterDocument => {
                    r.docs.get_mut(&o).unwrap()[0].source["message"] = json!("x");
                    expected.push((Kind::DocumentMismatch, o));
                }
                Harm::CopyDocument => {
                    let copy = doc("logs-old", &r.rows[&o]);
                    r.docs.get_mut(&o).unwrap().insert(0, copy);
                    expected.push((Kind::DuplicateDocument, o));
                }
                Harm::AlterKafka => {
                    r.kafka.as_mut().unwrap().insert(o, Source::Decoded(shape(o, "other")));
                    expected.push((Kind::SourceMismatch, o));
                }
            }
        }
        prop_assert_eq!(kinds(&check(&r)), expected);
    }
}
