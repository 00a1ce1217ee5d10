//! What can go wrong with connections: the error codes of refused opens on the wire, and
//! one error enum per operation (`connect`, `listen`, `accept`).

use std::time::Duration;

use rmb_proto::Address;

use super::crypto::HandshakeError;
use super::wire::WireError;
use crate::core::{RemoteError, SendError};

/// Error codes of refused opens (in the error reply to `rmb.conn.open`).
pub mod codes {
    /// The open request could not be parsed or its signature did not verify.
    pub const BAD_OPEN: u32 = 4000;
    /// The protocol's access list does not name the opener's twin.
    pub const NOT_ALLOWED: u32 = 4001;
    /// The protocol's handler refused the connection.
    pub const REFUSED: u32 = 4003;
    /// No handler listens for the protocol.
    pub const UNKNOWN_PROTOCOL: u32 = 4004;
    /// Too many connections, or too many waiting to be accepted.
    pub const BUSY: u32 = 4029;
}

/// Why `connect` did not give a stream. Each outcome the issue names is its own variant.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    InvalidProtocol(#[from] WireError),
    #[error("unknown twin id '{0}'")]
    UnknownTwin(u32),
    #[error("twin {twin} has no handler for protocol '{protocol}'")]
    UnknownProtocol { twin: u32, protocol: String },
    #[error("twin {twin} refused the connection: {reason}")]
    Refused { twin: u32, reason: String },
    #[error("twin {twin} does not allow us to open '{protocol}'")]
    NotAllowed { twin: u32, protocol: String },
    #[error("twin {twin} is busy: {reason}")]
    Busy { twin: u32, reason: String },
    #[error("twin {twin} could not be reached: {detail}")]
    Unreachable { twin: u32, detail: String },
    #[error("no answer from twin {twin} within {waited:?}")]
    Timeout { twin: u32, waited: Duration },
    #[error("the handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("the accept reply is malformed: {0}")]
    BadReply(WireError),
    #[error("twin {twin} answered with an error: {error}")]
    Remote { twin: u32, error: RemoteError },
    #[error("too many open connections ({0})")]
    TooMany(usize),
    #[error("the peer is closed")]
    Closed,
}

/// Why `listen` failed.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(transparent)]
    InvalidProtocol(#[from] WireError),
    #[error("protocol '{0}' already has a listener")]
    AlreadyListening(String),
}

/// Why accepting an incoming connection failed.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("the handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("sending the accept failed: {0}")]
    Send(#[from] SendError),
}

/// The error an opener gets for an error reply.
pub(super) fn refusal(
    twin: u32,
    protocol: &str,
    source: &Address,
    error: RemoteError,
) -> ConnectError {
    if source.twin == 0 {
        return ConnectError::Unreachable {
            twin,
            detail: error.message,
        };
    }
    match error.code {
        codes::UNKNOWN_PROTOCOL => ConnectError::UnknownProtocol {
            twin,
            protocol: protocol.to_string(),
        },
        codes::NOT_ALLOWED => ConnectError::NotAllowed {
            twin,
            protocol: protocol.to_string(),
        },
        codes::REFUSED => ConnectError::Refused {
            twin,
            reason: error.message,
        },
        codes::BUSY => ConnectError::Busy {
            twin,
            reason: error.message,
        },
        _ => ConnectError::Remote { twin, error },
    }
}
