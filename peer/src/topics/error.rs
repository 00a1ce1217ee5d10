//! Why a topic operation failed ([`TopicError`]), one type for the handle, the tasks
//! and the HTTP API (each variant maps to a status there), and the reading of other
//! twins' answers into it.

use super::config::ConfigError;
use super::store::StoreError;
use super::wire::{DraftError, NameError};
use crate::core::{RemoteError, SendError};

/// Why a topic operation failed; each maps to an HTTP status in the local API.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Draft(#[from] DraftError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("no topic {0}")]
    NotFound(String),
    #[error("topic {topic} belongs to twin {owner}; only its owner can do that")]
    NotOwner { topic: String, owner: u32 },
    #[error("not subscribed to {0}")]
    NotSubscribed(String),
    #[error("refused by the topic's owner: {0}")]
    Refused(String),
    #[error("twin {twin} answered: {error}")]
    Remote { twin: u32, error: RemoteError },
    #[error("sending to twin {twin} failed: {error}")]
    Send { twin: u32, error: SendError },
    #[error("twin {twin} did not answer within {secs} s")]
    Timeout { twin: u32, secs: u64 },
    #[error("twin {twin} sent an answer that cannot be read: {detail}")]
    BadAnswer { twin: u32, detail: String },
    #[error("too many requests in flight; try again")]
    Busy,
    #[error("the topics store is unavailable: {0}")]
    Store(#[from] StoreError),
    #[error("the peer is shutting down")]
    Closed,
}

/// Reads `twin`'s answer as `T`; an answer that does not read is its own error.
pub(crate) fn parse<T: serde::de::DeserializeOwned>(
    twin: u32,
    bytes: &[u8],
) -> Result<T, TopicError> {
    serde_json::from_slice(bytes).map_err(|e| TopicError::BadAnswer {
        twin,
        detail: e.to_string(),
    })
}
