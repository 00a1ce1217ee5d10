//! Envelopes sent without a signature, authenticated by their encryption instead.
//!
//! Signing an envelope (an MD5 digest of it, then sr25519 or ed25519) and verifying it
//! costs tens of µs each: most of the CPU a peer spends on a small RPC, and most of
//! what one topic event costs when it becomes hundreds of pushes and acknowledgements.
//! Between two rmb peers that publish keys of the same e2e scheme the signature adds
//! nothing the payload's AEAD cannot prove: only the two twins can make a ciphertext
//! that opens with the key their published keys derive
//! ([`E2eKeys::open_from`](rmb_identity::E2eKeys::open_from)).
//!
//! Without a signature, the encryption must also say which twin sent it to which: the
//! secp256k1 key is the same in both directions (a relay could reflect an envelope back
//! to its sender), and two twins may publish the same key (a relay could re-source it).
//! So the payload is sealed with a *binding* of the envelope's fields as associated
//! data, and opens only under the same one ([`rmb_proto::Binding`]):
//!
//! - **topic** ([`Envelope::unsigned_binding`](rmb_proto::Envelope::unsigned_binding):
//!   kind, source and destination twins, uid, command) for the requests whose command is
//!   in [`UNSIGNED_COMMANDS`] and the answers to them. The times are left out, so a
//!   relay could make an old one look new: their handlers take the body as the whole
//!   message and drop repeats themselves (a topic batch carries its topic and ids; an
//!   acknowledgement names its topic and last id, and an old one changes nothing), and
//!   an answer is taken only while its request is awaited ([`Awaited`]);
//! - **RPC** ([`Envelope::unsigned_rpc_binding`](rmb_proto::Envelope::unsigned_rpc_binding):
//!   every field but payload and signature, times included) for any other request and
//!   its answer. Nothing a signature covers can change on the way, so these go through
//!   the replay store as signed ones do: as good as signed, for the price of the
//!   encryption they pay anyway.
//!
//! Who sends which: topic traffic goes unsigned to any twin publishing a key of our
//! scheme (only rmb peers subscribe to topics). RPCs go unsigned only to twins that said
//! they take them ([`rmb_twins`](super::rmb_twins), capability `unsigned-rpc`, listed
//! only while all their relays route such envelopes) or sent us one. Error envelopes
//! have no payload to authenticate and are always signed; so is everything to a twin
//! publishing the other scheme or no key, and topic requests when [`Awaited`] is full.
//! rmb-rs relays route unsigned envelopes (they never verify); rmb-rs peers would refuse
//! them, and never get any: they do not list the capability.

use std::collections::HashMap;
use std::sync::Mutex;

use rmb_proto::{Binding, Envelope, Message};

use super::types::RequestAuth;

/// Requests accepted without a signature when their payload authenticates them (relays
/// refuse any other unsigned request too).
pub const UNSIGNED_COMMANDS: &[&str] = rmb_proto::UNSIGNED_SEALED_COMMANDS;

/// How a request that passed the receive checks proved its sender: unsigned ones were
/// authenticated by opening with the binding of their command.
pub fn request_auth(env: &Envelope) -> RequestAuth {
    match &env.message {
        Some(Message::Request(r)) if env.is_unsigned() => {
            match Envelope::request_binding(&r.command) {
                Binding::Topic => RequestAuth::Topic,
                Binding::Rpc => RequestAuth::Rpc,
            }
        }
        _ => RequestAuth::Signed,
    }
}

/// Most unsigned requests waiting for their answer at once; past it requests are signed
/// (their answers then need no entry here).
pub const MAX_AWAITED: usize = 65_536;

/// Unsigned requests we sent and whose (unsigned) answers we accept: uid and
/// destination twin → deadline (unix seconds).
#[derive(Debug, Default)]
pub struct Awaited {
    map: Mutex<HashMap<(String, u32), u64>>,
}

impl Awaited {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u32), u64>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a request about to go unsigned; `false` when the table is full even after
    /// dropping what expired by `now` (the request must then be signed).
    pub fn insert(&self, uid: &str, twin: u32, deadline: u64, now: u64) -> bool {
        let mut map = self.lock();
        if map.len() >= MAX_AWAITED {
            map.retain(|_, d| *d > now);
            if map.len() >= MAX_AWAITED {
                return false;
            }
        }
        map.insert((uid.to_string(), twin), deadline);
        true
    }

    /// True when `uid` from `twin` would answer an awaited request (nothing is taken:
    /// only an answer that also decrypts does that, [`take`](Awaited::take)).
    pub fn is_awaited(&self, uid: &str, twin: u32, now: u64) -> bool {
        self.lock()
            .get(&(uid.to_string(), twin))
            .is_some_and(|deadline| *deadline > now)
    }

    /// True (once) when `uid` from `twin` answers an unsigned request of ours that has
    /// not expired by `now`.
    pub fn take(&self, uid: &str, twin: u32, now: u64) -> bool {
        self.lock()
            .remove(&(uid.to_string(), twin))
            .is_some_and(|deadline| deadline > now)
    }

    /// Forgets a request that could not be sent after all.
    pub fn forget(&self, uid: &str, twin: u32) {
        self.lock().remove(&(uid.to_string(), twin));
    }

    /// How many answers are awaited.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when none is.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_taken_once_from_its_twin_before_its_deadline() {
        let awaited = Awaited::default();
        assert!(awaited.insert("u1", 7, 100, 10));
        assert!(
            !awaited.take("u1", 8, 10),
            "another twin's answer is not ours"
        );
        assert!(awaited.take("u1", 7, 10));
        assert!(!awaited.take("u1", 7, 10), "only once");
        assert!(awaited.insert("u2", 7, 100, 10));
        assert!(!awaited.take("u2", 7, 100), "expired");
        assert!(awaited.is_empty());
    }

    #[test]
    fn a_full_table_refuses_until_entries_expire() {
        let awaited = Awaited::default();
        for i in 0..MAX_AWAITED {
            assert!(awaited.insert(&i.to_string(), 1, 50, 10));
        }
        assert!(!awaited.insert("more", 1, 100, 10), "full: sign instead");
        assert!(
            awaited.insert("more", 1, 100, 50),
            "the expired ones made room"
        );
        assert_eq!(awaited.len(), 1);
    }
}
