//! `audit --repair`: mends what a divergence says without guessing, idempotently, while the
//! daemon runs (it writes above the watermark, the audit only below it).
//!
//! - a document without a row, or a second copy of one, is deleted;
//! - a row without its document, or whose document says something else, gets its document
//!   again (the wrong one deleted first: a data stream would not overwrite it), made from the
//!   Kafka record when Kafka still holds it and it agrees with the row, else from the row;
//! - an unaccounted offset Kafka still holds is read again and stored as the daemon would:
//!   document first, then its row (or its dead letter) in one transaction.
//!
//! What needs a decision stays, reported: a row that disagrees with its Kafka record (the
//! record, the row or the settings changed?), a committed offset past the watermark (the
//! daemon re-reads from the watermark by itself), and offsets gone from Kafka and both stores.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Kind;
use super::read::{self, Context};
use super::rules::Finding;
use crate::dead_letter::DeadLetterPolicy;
use crate::model::{RawRecord, RejectStage, StoredRecord, TopicPartition};
use crate::pipeline;
use crate::sink::SinkError;

/// How long the search store may refuse one chunk's repair (retried meanwhile).
const STORE_BOUND: Duration = Duration::from_secs(120);

/// Repair's own settings: dead letters made as the daemon makes them.
pub struct Repair {
    pub policy: DeadLetterPolicy,
}

/// What a repair did, by kind, and why it left the rest.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Mended {
    pub repaired: BTreeMap<Kind, u64>,
    pub unrepaired: BTreeMap<Kind, u64>,
    pub notes: Vec<String>,
    /// Unrepaired findings past the first [`NOTES`], only counted.
    pub notes_left_out: u64,
}

/// Unrepaired findings named one by one.
const NOTES: usize = 1000;

impl Mended {
    pub fn add(&mut self, other: Mended) {
        for (k, n) in other.repaired {
            *self.repaired.entry(k).or_default() += n;
        }
        for (k, n) in other.unrepaired {
            *self.unrepaired.entry(k).or_default() += n;
        }
        for note in other.notes {
            match self.notes.len() < NOTES {
                true => self.notes.push(note),
                false => self.notes_left_out += 1,
            }
        }
        self.notes_left_out += other.notes_left_out;
    }

    fn done(&mut self, kind: Kind, n: usize) {
        if n > 0 {
            *self.repaired.entry(kind).or_default() += n as u64;
        }
    }

    fn left(&mut self, f: &Finding, why: String) {
        *self.unrepaired.entry(f.kind).or_default() += 1;
        // Named one by one up to a bound: memory must not grow with the divergence found.
        if self.notes.len() >= NOTES {
            self.notes_left_out += 1;
            return;
        }
        self.notes.push(format!(
            "{}@{}: {}: {why}",
            f.kind.as_str(),
            f.offset,
            "not repaired"
        ));
    }
}

impl Repair {
    /// Mends the findings of one chunk of `tp` (its stored name); `raws` are the chunk's
    /// records as Kafka holds them.
    pub async fn mend(
        &self,
        a: &Context<'_>,
        tp: &TopicPartition,
        found: &[Finding],
        raws: &[RawRecord],
    ) -> Result<Mended, String> {
        let mut out = Mended::default();
        let cancel = CancellationToken::new();
        let of = |kinds: &[Kind]| -> Vec<&Finding> {
            found.iter().filter(|f| kinds.contains(&f.kind)).collect()
        };
        let disagree: BTreeSet<i64> = of(&[Kind::SourceMismatch])
            .iter()
            .map(|f| f.offset)
            .collect();
        let unwanted = of(&[
            Kind::DocumentWithoutRow,
            Kind::DuplicateDocument,
            Kind::DocumentMismatch,
        ]);
        let docs: Vec<(String, String)> = (unwanted.iter())
            .filter(|f| !(f.kind == Kind::DocumentMismatch && disagree.contains(&f.offset)))
            .filter_map(|f| Some((f.index.clone()?, f.id.clone()?)))
            .collect();
        bounded(a.es.delete_found(&docs, &cancel, |_| {})).await?;
        out.done(
            Kind::DocumentWithoutRow,
            of(&[Kind::DocumentWithoutRow]).len(),
        );
        out.done(
            Kind::DuplicateDocument,
            of(&[Kind::DuplicateDocument]).len(),
        );

        // Where the row disagrees with Kafka, its document is not made from it: which of the
        // two is right is the operator's call.
        let (undecided, missing): (Vec<&Finding>, Vec<&Finding>) =
            of(&[Kind::RowWithoutDocument, Kind::DocumentMismatch])
                .into_iter()
                .partition(|f| disagree.contains(&f.offset));
        for f in undecided {
            out.left(
                f,
                "its row disagrees with its Kafka record (source_mismatch)".into(),
            );
        }
        let offsets: BTreeSet<i64> = missing.iter().map(|f| f.offset).collect();
        if let (Some(&lo), Some(&hi)) = (offsets.first(), offsets.last()) {
            let rows =
                a.pg.rows_in(tp, lo, hi + 1)
                    .await
                    .map_err(|e| e.to_string())?;
            let kafka: BTreeMap<i64, &RawRecord> = raws.iter().map(|r| (r.offset, r)).collect();
            let records: Vec<StoredRecord> = (rows.into_iter())
                .filter(|r| offsets.contains(&r.offset))
                .map(|row| self.best(a, tp, row, &kafka, &disagree))
                .collect();
            let indexed = bounded(a.es.index(tp, &records, &cancel, |_| {})).await?;
            let mut kept = records.clone();
            let refused = pipeline::take_refused(&mut kept, indexed);
            let kept: BTreeSet<i64> = kept.iter().map(|r| r.offset).collect();
            for f in missing {
                match kept.contains(&f.offset) {
                    true => out.done(f.kind, 1),
                    false => out.left(f, refusal(&refused, f.offset)),
                }
            }
        }

        let unaccounted = of(&[Kind::Unaccounted]);
        let wanted: BTreeSet<i64> = (unaccounted.iter())
            .filter(|f| f.repairable)
            .map(|f| f.offset)
            .collect();
        let again: Vec<&RawRecord> = raws.iter().filter(|r| wanted.contains(&r.offset)).collect();
        if !again.is_empty() {
            let (mut records, undecodable) =
                pipeline::decode_all(again.iter().copied(), &tp.topic, a.decoding());
            let mut dead: Vec<_> = (undecodable.into_iter())
                .map(|(raw, why)| self.policy.make(raw, RejectStage::Decode, why))
                .collect();
            let indexed = bounded(a.es.index(tp, &records, &cancel, |_| {})).await?;
            let refused = pipeline::take_refused(&mut records, indexed);
            let raw_at = |o: i64| again.iter().find(|r| r.offset == o).copied();
            for (record, why) in &refused.rejected {
                if let Some(raw) = raw_at(record.offset) {
                    dead.push(self.policy.make(raw, RejectStage::Index, why.clone()));
                }
            }
            a.pg.restore(tp, &records, &dead)
                .await
                .map_err(|e| e.to_string())?;
            let parked: BTreeSet<i64> = refused.parked.iter().map(|(r, _)| r.offset).collect();
            for f in &unaccounted {
                if !f.repairable {
                    out.left(
                        f,
                        "Kafka no longer holds it and neither store does: lost".into(),
                    );
                } else if parked.contains(&f.offset) {
                    out.left(f, "its index refuses documents now; run again later".into());
                } else {
                    out.done(Kind::Unaccounted, 1);
                }
            }
        } else {
            for f in &unaccounted {
                out.left(
                    f,
                    "Kafka no longer holds it and neither store does: lost".into(),
                );
            }
        }

        for f in of(&[Kind::SourceMismatch]) {
            out.left(
                f,
                "the row differs from what these settings make of the Kafka record: the \
                 record, the row or the settings changed; an operator decides"
                    .into(),
            );
        }
        Ok(out)
    }

    /// The record to index for a row: Kafka's, decoded as the daemon does, when it is the
    /// row's (its text is the one the daemon sent; the row's `jsonb` is normalised).
    fn best(
        &self,
        a: &Context<'_>,
        tp: &TopicPartition,
        row: StoredRecord,
        kafka: &BTreeMap<i64, &RawRecord>,
        disagree: &BTreeSet<i64>,
    ) -> StoredRecord {
        let Some(raw) = kafka
            .get(&row.offset)
            .filter(|_| !disagree.contains(&row.offset))
        else {
            return row;
        };
        let (mut decoded, _) = pipeline::decode_all([*raw], &tp.topic, a.decoding());
        let document = |r: &StoredRecord| read::shape(a.es, tp, r).document;
        match decoded.pop() {
            Some(d) if super::rules::same(&document(&d), &document(&row)) => d,
            _ => row,
        }
    }
}

fn refusal(refused: &pipeline::Refused, offset: i64) -> String {
    let all = refused.rejected.iter().chain(&refused.parked);
    match all.into_iter().find(|(r, _)| r.offset == offset) {
        Some((_, why)) => format!("the search store refused its document: {why}"),
        None => "its row is gone".into(),
    }
}

async fn bounded<T>(
    op: impl std::future::Future<Output = Result<T, SinkError>>,
) -> Result<T, String> {
    match tokio::time::timeout(STORE_BOUND, op).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "the search store did not take the repair within {} s; run again",
            STORE_BOUND.as_secs()
        )),
    }
}
