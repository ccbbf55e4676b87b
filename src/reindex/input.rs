//! Where a re-index reads: Kafka (the records' own bytes, decoded as the daemon decodes them)
//! or, with `--from postgres`, the daemon's own rows (records Kafka no longer holds, decoded
//! when they were stored; read only).

use super::kafka::Source;
use crate::admin::AdminError;
use crate::model::{RawRecord, StoredRecord, TopicPartition};
use crate::sink::postgres::PgSink;

pub enum Input<'a> {
    Kafka(&'a Source),
    /// A sink with the daemon's mapping: `rows_in` reads its tables.
    Postgres(&'a PgSink),
}

pub enum Batch {
    Raw(Vec<RawRecord>),
    Stored(Vec<StoredRecord>),
}

/// One batch and the offset after it.
pub struct Read {
    pub batch: Batch,
    pub next: i64,
}

impl Input<'_> {
    /// Positions the reader at `from` of `tp`.
    pub fn start(&self, tp: &TopicPartition, from: i64) -> Result<(), AdminError> {
        match self {
            Input::Kafka(source) => source.assign(tp, from),
            Input::Postgres(_) => Ok(()),
        }
    }

    /// Up to `max` records (Kafka) or offsets (PostgreSQL) of `tp` from `next`, below `to`.
    pub async fn read(
        &self,
        tp: &TopicPartition,
        next: i64,
        to: i64,
        max: usize,
    ) -> Result<Read, AdminError> {
        match self {
            Input::Kafka(source) => {
                let read = source.read(tp, next, to, max).await?;
                Ok(Read {
                    batch: Batch::Raw(read.records),
                    next: read.next,
                })
            }
            Input::Postgres(pg) => {
                let end = to.min(next.saturating_add(max as i64));
                Ok(Read {
                    batch: Batch::Stored(pg.rows_in(tp, next, end).await?),
                    next: end,
                })
            }
        }
    }
}
