//! The one error type of the queue's operations.

/// A queue operation failure.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Redis failed or is unreachable.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A record in Redis could not be decoded.
    #[error("corrupt job record {id}: {reason}")]
    Corrupt {
        /// The job.
        id: String,
        /// Why.
        reason: String,
    },
    /// Job arguments could not be encoded.
    #[error("cannot encode job arguments: {0}")]
    Encode(String),
}

pub(crate) fn corrupt(id: &str, reason: impl std::fmt::Display) -> QueueError {
    QueueError::Corrupt {
        id: id.to_string(),
        reason: reason.to_string(),
    }
}

impl From<serde_json::Error> for QueueError {
    fn from(e: serde_json::Error) -> Self {
        QueueError::Encode(e.to_string())
    }
}
