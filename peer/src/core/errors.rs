//! Errors of the core, each with the rmb-rs error code (§8.1 of the reference) that an
//! application sees for it.

use rmb_identity::EnvelopeError;
use rmb_identity::registry::RegistryError;

use super::refusals::Reason;
use crate::links::{LinkError, RelayUrlError};

/// The error codes of rmb-rs, shared by peers, SDKs and our JSON API.
pub mod codes {
    /// Free text: relay-generated errors and failures while handling a request.
    pub const HANDLING: u32 = 0;
    /// The envelope carries no (known) message type.
    pub const INVALID_MESSAGE: u32 = 100;
    /// The payload could not be read.
    pub const INVALID_PAYLOAD: u32 = 101;
    /// The envelope is not valid now: expired, misaddressed or already received.
    pub const VALIDATION: u32 = 102;
    /// The twin is not in the registry.
    pub const UNKNOWN_TWIN: u32 = 103;
    /// The signature (or the envelope's shape, which the signature cannot see) is wrong.
    pub const INVALID_SIGNATURE: u32 = 104;
    /// The payload is encrypted but the sender's key needed to open it is not published.
    pub const NO_PUBLIC_KEY: u32 = 105;
    /// Encryption or decryption failed.
    pub const CRYPTO: u32 = 106;
    /// Anything else (registry down, expired before sending, no relay).
    pub const OTHER: u32 = 500;
}

/// Why the peer could not start.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error(
        "no twin found on this network for account {account_ss58}; register a twin for it \
         first (e.g. `rmb twin register`)"
    )]
    NoTwin { account_ss58: String },
    #[error("at least one relay URL is needed")]
    NoRelays,
    #[error("the number of relays should not exceed 4 (got {0})")]
    TooManyRelays(usize),
    #[error(transparent)]
    RelayUrl(#[from] RelayUrlError),
    #[error("twin registry: {0}")]
    Registry(RegistryError),
    #[error(
        "publishing the twin's relays and encryption key failed: {0} (check the registry \
         URL given with -s/--substrate or --registry, or keep the entry as it is with \
         --no-update)"
    )]
    Publish(RegistryError),
}

/// Why an envelope could not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("unknown twin id '{0}'")]
    UnknownTwin(u32),
    #[error("response has expired before sending!")]
    Expired,
    #[error("twin registry: {0}")]
    Registry(RegistryError),
    #[error("{0}")]
    Seal(EnvelopeError),
    #[error("{0}")]
    Link(LinkError),
    #[error("the peer is shut down")]
    Closed,
    /// Encrypted and signed, the envelope would be larger than relays accept (they drop
    /// the connection of a peer sending one, so it is never sent).
    #[error("envelope too large: {size} bytes encoded, the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error(
        "e2e error: twin {0} publishes a secp256k1 key, which only twins publishing secp256k1 \
         keys can write to (start this peer with --e2e secp256k1)"
    )]
    SchemeMismatch(u32),
}

impl SendError {
    /// The rmb-rs error code for this failure (what a JSON client gets in `err.code`).
    pub fn code(&self) -> u32 {
        match self {
            SendError::UnknownTwin(_) => codes::UNKNOWN_TWIN,
            SendError::TooLarge { .. } => codes::INVALID_PAYLOAD,
            SendError::Seal(_) | SendError::SchemeMismatch(_) => codes::CRYPTO,
            SendError::Expired
            | SendError::Registry(_)
            | SendError::Link(_)
            | SendError::Closed => codes::OTHER,
        }
    }
}

impl From<LinkError> for SendError {
    fn from(e: LinkError) -> Self {
        match e {
            LinkError::Expired => SendError::Expired,
            LinkError::Closed => SendError::Closed,
            other => SendError::Link(other),
        }
    }
}

/// Why a received envelope was refused: the code and text sent back for a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (code {code})")]
pub struct Refusal {
    pub code: u32,
    pub message: String,
    /// The counter it is counted under.
    pub reason: Reason,
}

impl Refusal {
    /// A refusal with `code` and `message`, counted under `reason`.
    pub fn new(code: u32, reason: Reason, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
            reason,
        }
    }

    /// The refusal for an envelope that failed verification or decryption.
    pub fn of_envelope_error(e: &EnvelopeError) -> Self {
        use rmb_identity::E2eError;
        match e {
            EnvelopeError::E2e(E2eError::MissingSenderKey) => Refusal::new(
                codes::NO_PUBLIC_KEY,
                Reason::NoPublicKey,
                "sender twin has no public key",
            ),
            EnvelopeError::E2e(_) => Refusal::new(codes::CRYPTO, Reason::Crypto, e.to_string()),
            EnvelopeError::Signature(_) => Refusal::new(
                codes::INVALID_SIGNATURE,
                Reason::BadSignature,
                e.to_string(),
            ),
            EnvelopeError::NotSigned(_)
            | EnvelopeError::DeprecatedField(_)
            | EnvelopeError::InvalidRelays(_)
            | EnvelopeError::EmptyCommand => Refusal::new(
                codes::INVALID_SIGNATURE,
                Reason::BadSignature,
                format!("invalid envelope signature: {e}"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmb_identity::{E2eError, SignatureError};

    #[test]
    fn codes_and_texts_follow_rmb_rs() {
        assert_eq!(SendError::UnknownTwin(7).code(), 103);
        assert_eq!(SendError::UnknownTwin(7).to_string(), "unknown twin id '7'");
        assert_eq!(SendError::Expired.code(), 500);
        assert_eq!(
            SendError::from(LinkError::Expired),
            SendError::Expired,
            "a relay wait that outlives the envelope is an expiry"
        );
        let r = Refusal::of_envelope_error(&EnvelopeError::Signature(SignatureError::Missing));
        assert_eq!(
            (r.code, r.message.as_str()),
            (104, "invalid envelope signature: signature is missing")
        );
        let r = Refusal::of_envelope_error(&EnvelopeError::E2e(E2eError::MissingSenderKey));
        assert_eq!(
            (r.code, r.message.as_str()),
            (105, "sender twin has no public key")
        );
        let r = Refusal::of_envelope_error(&EnvelopeError::E2e(E2eError::Decrypt));
        assert_eq!(r.code, 106);
        assert!(r.message.starts_with("e2e error: "), "{}", r.message);
        let r = Refusal::of_envelope_error(&EnvelopeError::DeprecatedField("federation"));
        assert_eq!(r.code, 104);
    }
}
