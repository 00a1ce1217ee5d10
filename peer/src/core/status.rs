//! [`PeerStatus`]: what `rmb status` and the logs show about a running peer.

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
    /// Envelopes refused (malformed, expired, unknown sender, bad signature, replayed…).
    pub rejected: u64,
}

/// The live counters behind [`PeerStatus`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub rejected: AtomicU64,
}

impl Counters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn read(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
