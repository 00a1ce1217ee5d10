//! Federation: envelopes between relays, over `POST /` with the raw envelope bytes (as
//! rmb-rs), or many at once over `POST /federation/batch` between relays that take it.
//!
//! - [`outbound`]: [`Federator`] sends envelopes to the destination twin's relays; it
//!   knows nothing of routing (so routing → … → state → federation does not loop back);
//! - [`lane`]: one actor per destination relay, batching what queues for it;
//! - [`batch`]: the batch body and answer (pure);
//! - [`target`]: which relays it may connect to at all (domain names resolving to
//!   public addresses, unless the operator allows more);
//! - [`ingress`]: the `POST /` and `POST /federation/batch` handlers, which check each
//!   envelope from another relay and hand it to routing;
//! - [`signatures`]: a batch's signatures verified together before that.

pub mod batch;
pub mod ingress;
pub mod lane;
pub mod outbound;
pub mod outcome;
pub mod signatures;
pub mod target;
pub mod unbatched;

pub use ingress::{batch_ingress, ingress};
pub use lane::{BatchCounters, BatchSettings};
pub use outbound::{Federator, Outgoing, RETRY_BUDGET_KIB};
pub use target::{AllowEntry, TargetPolicy};

/// Why an envelope could not be federated. The Display text is what the sender reads:
/// it never carries what a remote relay answered (the sender chose that relay through
/// the registry; its answers are logged, rate-limited, not passed on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FederationError {
    /// Came in by federation for a twin that does not live here (never re-forwarded).
    #[error("twin {0} does not live on this relay")]
    NotHere(u32),
    /// None of the destination's relays is an allowed federation target.
    #[error(
        "destination relay not allowed by this relay (a private or loopback address needs \
         rmb-relay --federation-allow, plain http:// needs --federation-http)"
    )]
    NotAllowed,
    /// A destination relay refused the envelope (a 4xx answer).
    #[error("destination relay refused the envelope")]
    Refused,
    /// No destination relay could be reached (or none took it) in time.
    #[error("destination relay unreachable")]
    Unreachable,
    /// The envelope expired before any relay took it.
    #[error("envelope expired before delivery")]
    Expired,
    /// Unreachable, and too many envelopes already wait for relays to try it again.
    #[error("destination relay unreachable; not tried again: too many envelopes wait for relays")]
    Busy,
    /// Not sent at all: envelopes already on their way to other relays outside the
    /// batches hold all of their budget (a slow or silent relay holds them).
    #[error(
        "not forwarded: too many envelopes are on their way to other relays; send it again later"
    )]
    Overloaded,
}

impl FederationError {
    /// Short label for the `relay_errors_total{kind}` metric.
    pub fn kind(&self) -> &'static str {
        match self {
            FederationError::NotHere(_) => "federation_not_here",
            FederationError::NotAllowed => "federation_not_allowed",
            FederationError::Refused => "federation_refused",
            FederationError::Unreachable => "federation_unreachable",
            FederationError::Expired => "federation_expired",
            FederationError::Busy => "federation_busy",
            FederationError::Overloaded => "federation_overloaded",
        }
    }
}
