//! The bytes an envelope signature covers: rmb-rs's "v1" challenge.
//!
//! The challenge is the envelope's fields written one after another as text (integers
//! in decimal, strings as UTF-8, payload raw), with no separators. Its MD5 digest is what
//! gets signed. The exact order matters for compatibility with rmb-rs:
//!
//! ```text
//! uid ‖ tags? ‖ dec(timestamp) ‖ dec(expiration)
//!     ‖ dec(source.twin) ‖ source.connection? ‖ dec(destination.twin) ‖ destination.connection?
//!     ‖ (request: command | error: dec(code) ‖ message | otherwise: nothing)
//!     ‖ schema? ‖ federation? ‖ payload (plain or cipher bytes) ‖ relays…
//! ```
//!
//! Missing addresses are written as twin `0`. Because there are no separators, different
//! envelopes can share a challenge (e.g. a `schema` moved to the deprecated `federation`
//! field); receivers therefore also check the envelope's shape, see
//! `rmb_identity::envelope`.

use md5::{Digest, Md5};

use crate::types::envelope::{Message, Payload};
use crate::types::{Address, Envelope};

/// Length of the digest that is signed.
pub const DIGEST_LEN: usize = 16;

/// Feeds every challenge part of `env`, in order, to `feed`. No allocation.
pub fn for_each_part(env: &Envelope, mut feed: impl FnMut(&[u8])) {
    let mut num = itoa::Buffer::new();
    let mut address = |feed: &mut dyn FnMut(&[u8]), addr: Option<&Address>| {
        let twin = addr.map_or(0, |a| a.twin);
        feed(num.format(twin).as_bytes());
        if let Some(sid) = addr.and_then(|a| a.connection.as_deref()) {
            feed(sid.as_bytes());
        }
    };

    feed(env.uid.as_bytes());
    if let Some(tags) = &env.tags {
        feed(tags.as_bytes());
    }
    let mut num2 = itoa::Buffer::new();
    feed(num2.format(env.timestamp).as_bytes());
    feed(num2.format(env.expiration).as_bytes());
    address(&mut feed, env.source.as_ref());
    address(&mut feed, env.destination.as_ref());
    match &env.message {
        Some(Message::Request(request)) => feed(request.command.as_bytes()),
        Some(Message::Error(error)) => {
            feed(num2.format(error.code).as_bytes());
            feed(error.message.as_bytes());
        }
        Some(Message::Response(_) | Message::Ping(_) | Message::Pong(_)) | None => {}
    }
    if let Some(schema) = &env.schema {
        feed(schema.as_bytes());
    }
    if let Some(federation) = &env.federation {
        feed(federation.as_bytes());
    }
    match &env.payload {
        Some(Payload::Plain(bytes) | Payload::Cipher(bytes)) => feed(bytes),
        None => {}
    }
    for relay in &env.relays {
        feed(relay.as_bytes());
    }
}

/// The full challenge as one byte string (for tests and debugging; signing uses [`digest`]).
pub fn bytes(env: &Envelope) -> Vec<u8> {
    let mut out = Vec::new();
    for_each_part(env, |part| out.extend_from_slice(part));
    out
}

/// MD5 of the challenge: the 16 bytes that are actually signed.
pub fn digest(env: &Envelope) -> [u8; DIGEST_LEN] {
    let mut hasher = Md5::new();
    for_each_part(env, |part| hasher.update(part));
    hasher.finalize().into()
}

impl Envelope {
    /// Shorthand for [`digest`]: what the sender signs and the receiver verifies.
    pub fn challenge_digest(&self) -> [u8; DIGEST_LEN] {
        digest(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Error, Request, Response};

    fn worked_example() -> Envelope {
        Envelope {
            uid: "6f1a2b3c-0000-4000-8000-000000000001".into(),
            timestamp: 1_700_000_000,
            expiration: 300,
            source: Some(Address::twin(41)),
            destination: Some(Address::twin(55)),
            message: Some(Message::Request(Request {
                command: "zos.system.version".into(),
            })),
            schema: Some("application/json".into()),
            payload: Some(Payload::Plain(b"{}".to_vec())),
            ..Default::default()
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn worked_example_of_the_spec() {
        let env = worked_example();
        assert_eq!(
            bytes(&env),
            b"6f1a2b3c-0000-4000-8000-00000000000117000000003004155zos.system.versionapplication/json{}"
        );
        assert_eq!(hex(&digest(&env)), "352a51e6c849271d13b31911305dccae");
    }

    #[test]
    fn optional_parts_appear_in_their_place() {
        let env = Envelope {
            uid: "u".into(),
            tags: Some("fail-fast".into()),
            timestamp: 1,
            expiration: 2,
            source: Some(Address::session(3, "s")),
            destination: None,
            message: Some(Message::Error(Error {
                code: 404,
                message: "gone".into(),
            })),
            schema: None,
            federation: Some("fed".into()),
            payload: Some(Payload::Cipher(vec![0xff, 0x00])),
            relays: vec!["r1".into(), "r2".into()],
            signature: Some(vec![1; 65]),
        };
        let mut want = b"ufail-fast123s0404gonefed".to_vec();
        want.extend_from_slice(&[0xff, 0x00]);
        want.extend_from_slice(b"r1r2");
        assert_eq!(bytes(&env), want);
    }

    #[test]
    fn response_and_signature_add_nothing() {
        let mut env = worked_example();
        env.message = Some(Message::Response(Response {}));
        env.signature = Some(vec![9; 65]);
        assert_eq!(
            bytes(&env),
            b"6f1a2b3c-0000-4000-8000-00000000000117000000003004155application/json{}"
        );
    }
}
