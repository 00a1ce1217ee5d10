//! Error envelopes: how the relay tells a sender that something went wrong.
//!
//! As in rmb-rs, a relay error is an unsigned envelope with no source (twin 0), the uid of
//! the refused envelope, `Error { code: 0, message }` and a 300 s expiration, addressed to
//! the sender's own session. rmb-rs peers know to skip verification for twin 0.

use rmb_identity::registry::RegistryError;
use rmb_proto::{Envelope, Error, Message, TimeError};

use crate::federation::FederationError;
use crate::limiter::Limited;
use crate::queue::QueueError;
use crate::switch::SessionId;

/// Lifetime of relay error envelopes, as rmb-rs.
pub const ERROR_EXPIRATION: u64 = 300;

/// Why the relay refused an envelope; the Display text is what the sender reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("message wrong source")]
    WrongSource,
    #[error("message with missing destination")]
    MissingDestination,
    #[error("message has expired")]
    Expired,
    /// The envelope's deadline is further ahead than `--max-lifetime`.
    #[error("message lifetime too long: {0}")]
    TooFar(TimeError),
    #[error("unknown twin destination")]
    UnknownTwin,
    #[error("relay info is not set for this twin")]
    NoRelays,
    #[error("destination offline")]
    DestinationOffline,
    /// A bound of the destination's offline queue (or of this relay's) was hit.
    #[error("{0}")]
    QueueFull(#[from] QueueError),
    /// `--limit`.
    #[error("exceeded rate limits, dropping message: {0}")]
    RateLimited(#[from] Limited),
    #[error("failed to get twin: {0}")]
    Registry(#[from] RegistryError),
    #[error("federation failed: {0}")]
    Federation(FederationError),
    /// The relay stopped before the envelope reached the destination's relay.
    #[error("relay shutting down: message not forwarded, send it again")]
    ShuttingDown,
}

impl RouteError {
    /// Short label for the `relay_errors_total{kind}` metric.
    pub fn kind(&self) -> &'static str {
        match self {
            RouteError::WrongSource => "wrong_source",
            RouteError::MissingDestination => "missing_destination",
            RouteError::Expired => "expired",
            RouteError::TooFar(_) => "too_far",
            RouteError::UnknownTwin => "unknown_twin",
            RouteError::NoRelays => "no_relays",
            RouteError::DestinationOffline => "destination_offline",
            RouteError::QueueFull(e) => e.kind(),
            RouteError::RateLimited(_) => "rate_limited",
            RouteError::Registry(_) => "registry",
            RouteError::Federation(e) => e.kind(),
            RouteError::ShuttingDown => "shutting_down",
        }
    }
}

/// The error envelope answering `refused` from `to`, stamped at `now`.
pub fn error_envelope(uid: &str, to: &SessionId, message: &str, now: u64) -> Envelope {
    Envelope {
        uid: uid.to_string(),
        timestamp: now,
        expiration: ERROR_EXPIRATION,
        source: None,
        destination: Some(to.address()),
        message: Some(Message::Error(Error {
            code: 0,
            message: message.to_string(),
        })),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn error_envelopes_look_like_rmb_rs_ones() {
        let to = SessionId {
            twin: 3,
            sid: Some("vec".into()),
        };
        let env = error_envelope(
            "f663aa2c",
            &to,
            &RouteError::WrongSource.to_string(),
            1795308393,
        );
        let decoded = Envelope::decode(env.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded.source, None);
        assert_eq!(decoded.signature, None);
        assert_eq!(decoded.destination.unwrap().to_string(), "3:vec");
        let Some(Message::Error(error)) = decoded.message else {
            panic!("not an error");
        };
        assert_eq!(
            (error.code, error.message.as_str()),
            (0, "message wrong source")
        );
    }
}
