//! How PostgreSQL's errors are read: a refusal that is a record's fault apart from one that is
//! the store's, SQLSTATE classes that need an operator apart from those that pass, and the
//! bound every statement of a batch runs under.

use std::time::Duration;

use super::STORE;
use crate::sink::SinkError;

/// Why a batch transaction did not commit.
pub(super) enum Refusal {
    /// A data exception (SQLSTATE class 22) from inserting rows: some record's own fault.
    RecordData(String),
    /// A row of a [`Rows::Fresh`] insert exists already at its coordinates (our primary key):
    /// write again with `Rows::MayExist`.
    Conflict,
    /// Anything else: the store's or the batch's fault, never a record's.
    Store(SinkError),
}

impl Refusal {
    pub(super) fn into_sink_error(self) -> SinkError {
        match self {
            Refusal::RecordData(message) => permanent(message),
            Refusal::Conflict => SinkError::Transient {
                store: STORE,
                message: "a row of the batch exists already".into(),
            },
            Refusal::Store(e) => e,
        }
    }
}

impl From<sqlx::Error> for Refusal {
    fn from(e: sqlx::Error) -> Self {
        Refusal::Store(classify(e))
    }
}

/// `fut` within `limit`; no answer in time is the connection's fault.
pub(super) async fn within<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, Refusal> {
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => result.map_err(Refusal::from),
        Err(_) => Err(Refusal::Store(SinkError::Transient {
            store: STORE,
            message: format!("no answer within {} ms", limit.as_millis()),
        })),
    }
}

pub(super) fn code(e: &sqlx::Error) -> Option<String> {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
}

pub(super) fn permanent(message: String) -> SinkError {
    SinkError::Permanent {
        store: STORE,
        message,
    }
}

/// Data, constraint, schema, privilege and authentication errors (SQLSTATE classes 22, 23, 28,
/// 3F, 42, 54) need an operator; everything else (connection loss, server restart, timeouts, lock and resource
/// trouble) may pass by itself. Which statement failed decides whether it was a record's fault
/// (`row_refusal`), not this.
pub(super) fn classify(e: sqlx::Error) -> SinkError {
    let message = e.to_string();
    match code(&e) {
        Some(c)
            if ["22", "23", "28", "3F", "42", "54"]
                .iter()
                .any(|class| c.starts_with(class)) =>
        {
            permanent(message)
        }
        _ => SinkError::Transient {
            store: STORE,
            message,
        },
    }
}
