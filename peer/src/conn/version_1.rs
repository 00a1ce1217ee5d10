//! Which peers opened as version 1 peers: those that answered a version 2 open (with a
//! cipher offer) as malformed, because they predate the cipher choice.
//!
//! Without a memory every open to such a peer cost a refused round trip before the
//! version 1 open that works. The next opens within [`REMEMBER_FOR`] go straight to
//! version 1. A remembered peer that upgraded meanwhile accepts a version 1 open too
//! (with ChaCha20-Poly1305), so a stale entry costs at most the cipher choice until it
//! expires, never a failed open. Only the peer's signed refusal puts it here: a relay
//! cannot forge one to pin a peer to version 1.
//!
//! A pure state machine with time as input; [`Connections`](super::Connections) holds it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rmb_proto::Address;

/// How long a peer is remembered as version 1 only.
pub const REMEMBER_FOR: Duration = Duration::from_secs(600);

/// Most peers remembered (all are forgotten when it fills).
pub const MAX_REMEMBERED: usize = 1024;

/// Version 1 peers by address (twin and session), with when they were seen as such.
#[derive(Debug, Default)]
pub struct Version1Peers {
    seen: HashMap<(u32, Option<String>), Instant>,
}

fn key(peer: &Address) -> (u32, Option<String>) {
    (peer.twin, peer.connection.clone())
}

impl Version1Peers {
    /// True when `peer` refused a version 2 open less than [`REMEMBER_FOR`] before
    /// `now`; an older entry is dropped.
    pub fn remembers(&mut self, peer: &Address, now: Instant) -> bool {
        let key = key(peer);
        match self.seen.get(&key) {
            Some(at) if now.saturating_duration_since(*at) < REMEMBER_FOR => true,
            Some(_) => {
                self.seen.remove(&key);
                false
            }
            None => false,
        }
    }

    /// Notes that `peer` refused a version 2 open as malformed at `now`.
    pub fn note(&mut self, peer: &Address, now: Instant) {
        let key = key(peer);
        if self.seen.len() >= MAX_REMEMBERED && !self.seen.contains_key(&key) {
            self.seen.clear();
        }
        self.seen.insert(key, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_a_peer_for_a_while_by_twin_and_session() {
        let mut peers = Version1Peers::default();
        let t0 = Instant::now();
        let bob = Address::twin(7);
        let bobs_session = Address::session(7, "s");
        assert!(!peers.remembers(&bob, t0));
        peers.note(&bob, t0);
        assert!(peers.remembers(&bob, t0 + REMEMBER_FOR / 2));
        assert!(
            !peers.remembers(&bobs_session, t0),
            "another session of the twin"
        );
        assert!(!peers.remembers(&bob, t0 + REMEMBER_FOR), "expired");
        assert!(peers.seen.is_empty(), "the expired entry is dropped");
    }

    #[test]
    fn stays_bounded() {
        let mut peers = Version1Peers::default();
        let now = Instant::now();
        for twin in 0..3 * MAX_REMEMBERED as u32 {
            peers.note(&Address::twin(twin), now);
            assert!(peers.seen.len() <= MAX_REMEMBERED);
        }
        assert!(peers.remembers(&Address::twin(3 * MAX_REMEMBERED as u32 - 1), now));
    }
}
