//! [`PeerStatus`]: what `rmb status` and the logs show about a running peer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

pub use crate::links::LinkStatus;

/// A snapshot of a peer: who it is, its relay links, and message counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub twin: u32,
    /// The twin's account, SS58.
    pub account: String,
    /// Session id (`None` for an rmb-peer).
    pub sid: Option<String>,
    /// Unix seconds when the peer started.
    pub started_at: u64,
    /// One entry per relay, in the configured order.
    pub relays: Vec<LinkStatus>,
    /// Envelopes handed to a relay.
    pub sent: u64,
    /// Envelopes accepted (verified, decrypted, new).
    pub received: u64,
    /// Envelopes refused (malformed, expired, unknown sender, bad signature…).
    pub rejected: u64,
    /// `rejected`, by reason (labels of [`Reason`](super::Reason); zero counts left out).
    #[serde(default)]
    pub rejected_by: BTreeMap<String, u64>,
    /// Envelopes sent again because no answer came (or a relay link reconnected).
    #[serde(default)]
    pub resent: u64,
    /// Copies of envelopes already accepted, dropped (relays deliver at least once,
    /// and senders resend).
    #[serde(default)]
    pub duplicates: u64,
    /// Repeated requests answered with the cached response instead of running the
    /// handler again.
    #[serde(default)]
    pub replayed: u64,
    /// Requests sent and not answered yet (kept for resending).
    #[serde(default)]
    pub awaiting: u64,
    /// Refused requests dropped without an error envelope, because nothing proved who
    /// sent them (unsigned and not authenticated, a bad signature, an unknown sender):
    /// the answer would go to whichever twin they name; or because the same signed
    /// request, refused for its time or address, came more often than repeats are
    /// answered. Also in `rejected_by`.
    #[serde(default)]
    pub unanswered: u64,
    /// Requests and answers sent without a signature, their encryption authenticating
    /// them (docs/protocol.md §3.4); also in `sent`.
    #[serde(default)]
    pub sent_unsigned: u64,
    /// Unsigned envelopes whose encryption authenticated them (copies included).
    #[serde(default)]
    pub received_unsigned: u64,
}

/// The histogram of request round trips (`rmb_peer_rpc_seconds`): from a request
/// leaving for a relay to its answer arriving, for requests answered without a resend.
pub(crate) fn rpc_histogram() -> prometheus::Histogram {
    let opts = prometheus::HistogramOpts::new(
        "rmb_peer_rpc_seconds",
        "Round trip of requests this peer sent, from leaving to the answer arriving (requests answered without a resend)",
    )
    .buckets(vec![
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ]);
    prometheus::Histogram::with_opts(opts).expect("valid metric")
}

/// The live counters behind [`PeerStatus`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub rejected: AtomicU64,
    pub resent: AtomicU64,
    pub duplicates: AtomicU64,
    pub replayed: AtomicU64,
    pub unanswered: AtomicU64,
    pub sent_unsigned: AtomicU64,
    pub received_unsigned: AtomicU64,
}

impl Counters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn read(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
