//! The two stores. Each sink knows the model and its own client; neither knows the other.

pub mod elastic;
pub mod postgres;
pub mod retry;

/// A store operation that did not succeed. Neither kind is ever a record's fault: those come
/// back as dead letters, not errors. A worker holds and retries a batch whatever the kind (see
/// `worker`); only start-up treats `Permanent` as fatal (a bad URL, a schema it may not create).
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Worth retrying: the store is unreachable, overloaded or restarting.
    #[error("{store} unavailable: {message}")]
    Transient {
        store: &'static str,
        message: String,
    },
    /// Retrying the same request is unlikely to help without an operator (privileges, schema,
    /// configuration).
    #[error("{store} rejected the request: {message}")]
    Permanent {
        store: &'static str,
        message: String,
    },
    /// The store holds less of the partition than the batch follows: PostgreSQL's watermark is
    /// behind where the batch starts (the database went back in time under the daemon: a
    /// restore, a failover to a lagging replica). Retrying cannot help; the partition must be
    /// read again from the watermark the database has now.
    #[error("{store} is behind this batch: {message}")]
    Behind {
        store: &'static str,
        message: String,
    },
    /// Shutdown or revocation asked the caller to give up.
    #[error("cancelled")]
    Cancelled,
}

impl SinkError {
    pub fn is_transient(&self) -> bool {
        matches!(self, SinkError::Transient { .. })
    }
}
