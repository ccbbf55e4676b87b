//! The steps of a batch's way into both stores that the worker (`worker::write`) and
//! `dead-letters replay` (`admin::replay`) share, so the rules that keep "no document without
//! its row" true are written once: records decoded, the documents the search store refused
//! taken out before PostgreSQL sees their rows, and the documents of rows PostgreSQL refused
//! found for removal.

use crate::decode::{decode, decode_with_map};
use crate::mapping::Mapping;
use crate::model::{RawRecord, StoredRecord};
use crate::redact::Redactor;
use crate::sink::elastic::Indexed;

/// How records are decoded: the same for the daemon, replays and the audit, so the same Kafka
/// record always yields the same row and document.
#[derive(Clone, Copy)]
pub struct Decoding<'a> {
    pub max_record_bytes: usize,
    pub redactor: &'a Redactor,
    pub mapping: &'a Mapping,
}

/// Decodes records of `topic` and routes them (`mapping`): those that decode, in their order,
/// and the others with why not. A value that does not fit its typed column is the record's
/// fault like a malformed one.
pub fn decode_all<'a>(
    raws: impl IntoIterator<Item = &'a RawRecord>,
    topic: &str,
    how: Decoding<'_>,
) -> (Vec<StoredRecord>, Vec<(&'a RawRecord, String)>) {
    let mut records = Vec::new();
    let mut undecodable = Vec::new();
    for raw in raws {
        // Only a mapping that looks into the fields needs them as a map, which costs more than
        // the rest of decoding; the default one does not.
        let decoded = match how.mapping.reads_fields() {
            true => decode_with_map(raw, how.max_record_bytes, how.redactor),
            false => decode(raw, how.max_record_bytes, how.redactor)
                .map(|entry| (entry, serde_json::Map::new())),
        };
        match decoded.and_then(|(entry, fields)| {
            let route = how.mapping.route_of(topic, &entry, &fields);
            let typed = Mapping::typed_values(how.mapping.table_of(route), &fields)?;
            Ok(StoredRecord {
                offset: raw.offset,
                key: raw.key.clone(),
                kafka_timestamp_ms: raw.kafka_timestamp_ms,
                entry,
                route,
                typed,
            })
        }) {
            Ok(record) => records.push(record),
            Err(reason) => undecodable.push((raw, reason)),
        }
    }
    (records, undecodable)
}

/// The records the search store did not take, with why.
#[derive(Debug, Default)]
pub struct Refused {
    /// Refused for their own content: dead letters.
    pub rejected: Vec<(StoredRecord, String)>,
    /// Refused by their destination index while the store took others: parked by the worker,
    /// left dead letters by a replay.
    pub parked: Vec<(StoredRecord, String)>,
}

/// Takes the records `indexed` says were refused out of `records` (the slice that was
/// indexed): only the rest may become rows.
pub fn take_refused(records: &mut Vec<StoredRecord>, indexed: Indexed) -> Refused {
    if indexed.rejected.is_empty() && indexed.parked.is_empty() {
        return Refused::default();
    }
    let pick = |r: crate::sink::elastic::Rejection| (records[r.index].clone(), r.reason);
    let refused = Refused {
        rejected: indexed.rejected.into_iter().map(pick).collect(),
        parked: indexed.parked.into_iter().map(pick).collect(),
    };
    let gone: std::collections::HashSet<i64> = (refused.rejected.iter())
        .chain(&refused.parked)
        .map(|(r, _)| r.offset)
        .collect();
    records.retain(|r| !gone.contains(&r.offset));
    refused
}

/// The records among `records` whose rows PostgreSQL refused (`offsets`): their documents
/// went in and must go.
pub fn documents_of<'a>(records: &'a [StoredRecord], offsets: &[i64]) -> Vec<&'a StoredRecord> {
    let offsets: std::collections::HashSet<i64> = offsets.iter().copied().collect();
    let refused = records.iter().filter(|r| offsets.contains(&r.offset));
    refused.collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::elastic::Rejection;

    fn plain(mapping: &Mapping) -> Decoding<'_> {
        static REDACTOR: std::sync::LazyLock<Redactor> =
            std::sync::LazyLock::new(Redactor::default);
        Decoding {
            max_record_bytes: 1 << 20,
            redactor: &REDACTOR,
            mapping,
        }
    }

    fn raw(offset: i64, payload: &[u8]) -> RawRecord {
        RawRecord {
            offset,
            key: Some(b"k".to_vec()),
            payload: Some(payload.to_vec()),
            kafka_timestamp_ms: Some(1_700_000_000_000),
        }
    }

    #[test]
    fn records_that_do_not_decode_are_returned_with_their_reason() {
        let raws = [
            raw(1, br#"{"message":"a"}"#),
            raw(2, b"not json"),
            raw(3, b"{}"),
        ];
        let (records, bad) = decode_all(&raws, "t", plain(&Mapping::builtin("logs")));
        let offsets: Vec<i64> = records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, [1, 3]);
        assert_eq!(records[0].key.as_deref(), Some(&b"k"[..]));
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].0.offset, 2);
        assert!(!bad[0].1.is_empty());
    }

    #[test]
    fn a_mapping_that_reads_fields_gets_the_map_the_record_was_decoded_into() {
        let file = "[tables.t]\ncolumns = [{ name = \"b\", path = \"a.b\", type = \"bigint\" }]\n\n\
                    [[routes]]\ntable = \"t\"\nindex = \"t\"";
        let mapping = Mapping::parse(file, "logs").unwrap();
        assert!(mapping.reads_fields());
        // Its fields' text, keys sorted, starts with a name serde_json reads as a number: read
        // again, it is no map, so the map decoding made is the one the mapping must read.
        let raws = [raw(
            1,
            br#"{"a":{"b":7,"$serde_json::private::Number":"x"}}"#,
        )];
        let (records, bad) = decode_all(&raws, "t", plain(&mapping));
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(records[0].typed, [Some("7".to_string())]);
    }

    #[test]
    fn refused_documents_are_taken_out_before_their_rows_are_written() {
        let raws: Vec<RawRecord> = (10..15).map(|o| raw(o, b"{}")).collect();
        let (mut records, _) = decode_all(&raws, "t", plain(&Mapping::builtin("logs")));
        let reject = |index, reason: &str| Rejection {
            index,
            reason: reason.into(),
        };
        let indexed = Indexed {
            rejected: vec![reject(1, "mapper_parsing_exception")],
            parked: vec![reject(3, "index read-only")],
        };
        let refused = take_refused(&mut records, indexed);
        let offsets = |rs: &[StoredRecord]| rs.iter().map(|r| r.offset).collect::<Vec<_>>();
        assert_eq!(offsets(&records), [10, 12, 14]);
        assert_eq!(refused.rejected[0].0.offset, 11);
        assert_eq!(refused.rejected[0].1, "mapper_parsing_exception");
        assert_eq!(refused.parked[0].0.offset, 13);
        assert_eq!(
            offsets(
                &documents_of(&records, &[12, 99])
                    .into_iter()
                    .cloned()
                    .collect::<Vec<_>>()
            ),
            [12]
        );
    }
}
