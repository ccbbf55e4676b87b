//! The two stores. Each sink knows the model and its own client; neither knows the other.

pub mod elastic;
pub mod postgres;
pub mod retry;

/// A store operation that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Worth retrying: the store is unreachable, overloaded or restarting.
    #[error("{store} unavailable: {message}")]
    Transient {
        store: &'static str,
        message: String,
    },
    /// Retrying the same request cannot help (bad data, schema problem).
    #[error("{store} rejected the request: {message}")]
    Permanent {
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
