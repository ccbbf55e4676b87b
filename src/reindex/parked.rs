//! Documents the search store *parked* (their destination index refused them while the store
//! took others: a closed or write-blocked index, an index auto-create does not allow). Those
//! are the index's trouble, not the record's, and usually pass: they are sent again with
//! backoff. A re-index has no parking table to leave them in, so when the bound is spent the
//! batch is not committed and the run stops: its position stays before them.

use std::time::Duration;

use tokio::time::Instant;

use crate::admin::AdminError;
use crate::model::StoredRecord;
use crate::pipeline::Refused;

/// The first wait between two sends of parked documents, doubled up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(500);
const MAX_PAUSE: Duration = Duration::from_secs(10);

/// What became of a batch's parked documents.
#[derive(Debug)]
pub enum Settled {
    /// All taken now, except those refused meanwhile for their own content (`rejected`).
    Taken {
        rejected: Vec<(StoredRecord, String)>,
    },
    /// Still refused by their index when the bound was spent: the batch must not commit.
    Stuck { parked: Vec<(StoredRecord, String)> },
}

/// Sends `parked` again through `send` (one indexing of exactly the records given, what it
/// refused taken out) with growing pauses until none is parked or `bound` is spent.
/// `on_park` hears each round that found documents still parked.
pub async fn retry(
    mut parked: Vec<(StoredRecord, String)>,
    bound: Duration,
    mut send: impl AsyncFnMut(Vec<StoredRecord>, Duration) -> Result<Refused, AdminError>,
    mut on_park: impl FnMut(&[(StoredRecord, String)]),
) -> Result<Settled, AdminError> {
    let deadline = Instant::now() + bound;
    let mut rejected = Vec::new();
    let mut pause = FIRST_PAUSE;
    while !parked.is_empty() {
        on_park(&parked);
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Settled::Stuck { parked });
        }
        tokio::time::sleep(pause.min(left)).await;
        pause = (pause * 2).min(MAX_PAUSE);
        let records = parked.into_iter().map(|(r, _)| r).collect();
        let left = deadline.saturating_duration_since(Instant::now());
        let refused = send(records, left.max(Duration::from_secs(1))).await?;
        rejected.extend(refused.rejected);
        parked = refused.parked;
    }
    Ok(Settled::Taken { rejected })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::StoredRecord;

    fn record(offset: i64) -> StoredRecord {
        StoredRecord {
            offset,
            key: None,
            kafka_timestamp_ms: None,
            entry: crate::model::LogEntry {
                timestamp: "2026-11-30T10:00:00Z".parse().unwrap(),
                level: None,
                service: None,
                message: None,
                fields: crate::model::Fields::from_map(&Default::default()),
            },
            route: 0,
            typed: Vec::new(),
        }
    }

    fn parked(offsets: &[i64]) -> Vec<(StoredRecord, String)> {
        offsets
            .iter()
            .map(|o| (record(*o), "index_closed_exception".to_string()))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn parked_documents_taken_on_a_later_send_settle_with_the_rejected_ones() {
        let mut sends = 0;
        let out = retry(
            parked(&[3, 4, 5]),
            Duration::from_secs(120),
            async |records: Vec<StoredRecord>, _| {
                sends += 1;
                let mut refused = Refused::default();
                for r in records {
                    match (sends, r.offset) {
                        (1, _) => refused.parked.push((r, "closed".into())),
                        (_, 4) => refused.rejected.push((r, "mapper_parsing".into())),
                        _ => {}
                    }
                }
                Ok(refused)
            },
            |_| {},
        )
        .await
        .unwrap();
        assert_eq!(sends, 2);
        match out {
            Settled::Taken { rejected } => {
                assert_eq!(rejected.iter().map(|r| r.0.offset).collect::<Vec<_>>(), [4])
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn documents_parked_past_the_bound_are_stuck_and_not_taken() {
        let started = Instant::now();
        let mut rounds = 0;
        let out = retry(
            parked(&[7]),
            Duration::from_secs(30),
            async |records: Vec<StoredRecord>, _| {
                Ok(Refused {
                    rejected: Vec::new(),
                    parked: records.into_iter().map(|r| (r, "closed".into())).collect(),
                })
            },
            |_| rounds += 1,
        )
        .await
        .unwrap();
        match out {
            Settled::Stuck { parked } => assert_eq!(parked[0].0.offset, 7),
            other => panic!("{other:?}"),
        }
        // Retried with backoff (not once, not in a busy loop), stopped at the bound.
        assert!(rounds > 3 && rounds < 20, "{rounds} rounds");
        assert!(started.elapsed() >= Duration::from_secs(30));
        assert!(started.elapsed() < Duration::from_secs(45));
    }
}
