//! What applications hand to the core and get from it: plain payloads and addresses,
//! never envelopes, signatures or ciphertext.

use std::fmt;

use rmb_proto::Address;

/// An error reply: what a remote handler (or a relay, with code 0) said went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteError {
    /// rmb-rs error code (see [`codes`](super::codes)); applications may use any value.
    pub code: u32,
    pub message: String,
}

impl RemoteError {
    /// An error reply with `code` and `message`.
    pub fn new(code: u32, message: impl Into<String>) -> Self {
        RemoteError {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.message, self.code)
    }
}

impl std::error::Error for RemoteError {}

/// A request to send: the core encrypts, stamps, signs and routes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingRequest {
    /// Request id; replies carry it back. A UUIDv4 for new requests.
    pub uid: String,
    pub destination: Address,
    pub command: String,
    /// Plain payload (encrypted by the core when the destination publishes a key).
    pub payload: Vec<u8>,
    pub schema: Option<String>,
    pub tags: Option<String>,
    /// Unix seconds the request was made; 0 (or a future time) means now.
    pub timestamp: u64,
    /// Seconds of validity from `timestamp`; 0 → 300, above 1800 → 1800 (as rmb-rs).
    pub expiration: u64,
}

/// A reply to send for a request received earlier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingResponse {
    /// The uid of the request being answered.
    pub uid: String,
    /// The request's source (twin and session).
    pub destination: Address,
    /// The reply body, or an error envelope.
    pub reply: Result<Vec<u8>, RemoteError>,
    pub schema: Option<String>,
    /// As for requests: 0 means now.
    pub timestamp: u64,
    /// As for requests: 0 → 300, above 1800 → 1800.
    pub expiration: u64,
}

/// A message for the layers above the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// Signature checked, payload decrypted.
    Request(InboundRequest),
    /// Signature checked, payload decrypted.
    Response(InboundResponse),
    /// An *unsigned* connection data frame (`rmb.conn.data`): the core checked only its
    /// addressing and expiry, so it is for [`Connections`](crate::conn::Connections)
    /// alone, which authenticates it under the connection's keys. Any other layer must
    /// drop it.
    ConnFrame(ConnFrame),
}

/// An unsigned connection data frame as the relay delivered it. Nothing in it is
/// authenticated yet: `source` is only what the envelope claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnFrame {
    /// The claimed sender (connections are looked up by its twin).
    pub source: Address,
    /// `id ‖ packet number ‖ ciphertext` (see [`conn::wire`](crate::conn::wire)).
    pub payload: Vec<u8>,
}

/// A request from another twin, signature checked and payload decrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundRequest {
    pub uid: String,
    /// Who asked (reply to this address).
    pub source: Address,
    pub command: String,
    /// Plain payload.
    pub payload: Vec<u8>,
    pub schema: Option<String>,
    pub tags: Option<String>,
    pub timestamp: u64,
    pub expiration: u64,
    /// How it proved its sender: a signature, or its encryption
    /// ([`unsigned`](super::unsigned)); the answer to an unsigned topic request goes
    /// unsigned with the same binding.
    pub auth: RequestAuth,
}

/// How a received request proved who sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestAuth {
    /// A signature (or it is not a request).
    Signed,
    /// Its encryption, bound to direction, uid and command only: a topic request, which
    /// its handler checks for repeats itself ([`rmb_proto::Binding::Topic`]).
    Topic,
    /// Its encryption, bound to every field: an RPC, as good as signed
    /// ([`rmb_proto::Binding::Rpc`]).
    Rpc,
}

impl InboundRequest {
    /// Unix seconds after which a reply is useless.
    pub fn deadline(&self) -> u64 {
        self.timestamp.saturating_add(self.expiration)
    }
}

/// A reply to one of our requests (matched by `uid`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundResponse {
    pub uid: String,
    /// Who answered; twin 0 means a relay reporting a delivery error.
    pub source: Address,
    /// The reply body, or the error the remote side (or a relay, code 0) sent.
    pub reply: Result<Vec<u8>, RemoteError>,
    pub schema: Option<String>,
    pub timestamp: u64,
}

/// rmb-rs's expiration rule for outgoing envelopes: 0 → 300 s, above 1800 s → 1800 s.
pub fn clamp_expiration(expiration: u64) -> u64 {
    match expiration {
        0 => DEFAULT_EXPIRATION,
        e => e.min(MAX_EXPIRATION),
    }
}

/// Expiration given to envelopes that did not ask for one, and to error replies.
pub const DEFAULT_EXPIRATION: u64 = 300;
/// Longest validity an outgoing envelope gets.
pub const MAX_EXPIRATION: u64 = 1800;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiration_is_clamped_as_rmb_rs_does() {
        assert_eq!(clamp_expiration(0), 300);
        assert_eq!(clamp_expiration(1), 1);
        assert_eq!(clamp_expiration(1800), 1800);
        assert_eq!(clamp_expiration(3600), 1800);
    }
}
