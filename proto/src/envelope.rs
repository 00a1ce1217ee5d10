//! Conveniences on [`Envelope`] that relay and peer both need.

use crate::types::Envelope;
use crate::types::envelope::{Message, Payload};

/// The tag token that asks a relay to fail at once instead of queueing for an offline twin.
pub const FAIL_FAST_TAG: &str = "fail-fast";

/// Command of connection data frames: the one request that travels unsigned, because
/// the connection's own AEAD authenticates it (docs/protocol.md §10). Peers hand such
/// envelopes to their connection layer only; our relays charge them to the posting
/// address, never to the twin they claim (they cannot prove it).
pub const CONN_DATA_COMMAND: &str = "rmb.conn.data";

/// Commands of the requests that may travel unsigned with an encrypted payload (topic
/// pushes and acknowledgements, docs/protocol.md §3.4): their handlers take the body as
/// the whole message. Any other request needs a signature, so relays and peers refuse
/// it unsigned before it costs anything further.
pub const UNSIGNED_SEALED_COMMANDS: &[&str] = &["rmb.topic.message", "rmb.topic.ack"];

/// Domain tag opening [`Envelope::unsigned_binding`].
pub const UNSIGNED_BINDING_TAG: &[u8] = b"rmb.unsigned.v1";

/// What an envelope carries, without its contents (for logs, metrics and dispatch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    Request,
    Response,
    Error,
    Ping,
    Pong,
    /// The `message` oneof is not set (or set to a variant this build does not know).
    Unset,
}

impl MessageKind {
    /// Lower-case name, stable for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Request => "request",
            MessageKind::Response => "response",
            MessageKind::Error => "error",
            MessageKind::Ping => "ping",
            MessageKind::Pong => "pong",
            MessageKind::Unset => "unset",
        }
    }
}

impl Envelope {
    /// Which kind of message this envelope carries.
    pub fn kind(&self) -> MessageKind {
        match &self.message {
            Some(Message::Request(_)) => MessageKind::Request,
            Some(Message::Response(_)) => MessageKind::Response,
            Some(Message::Error(_)) => MessageKind::Error,
            Some(Message::Ping(_)) => MessageKind::Ping,
            Some(Message::Pong(_)) => MessageKind::Pong,
            None => MessageKind::Unset,
        }
    }

    /// The payload bytes, whether plain or encrypted (empty when there is none).
    pub fn payload_bytes(&self) -> &[u8] {
        match &self.payload {
            Some(Payload::Plain(bytes) | Payload::Cipher(bytes)) => bytes,
            None => &[],
        }
    }

    /// True when the tags hold the exact token `fail-fast` (tokens split on `,` and
    /// whitespace, case-sensitive, as rmb-rs does).
    pub fn is_fail_fast(&self) -> bool {
        self.tags.as_deref().is_some_and(|tags| {
            tags.split(|c: char| c == ',' || c.is_whitespace())
                .any(|token| token == FAIL_FAST_TAG)
        })
    }

    /// True when it carries no signature (none, or an empty one).
    pub fn is_unsigned(&self) -> bool {
        self.signature.as_deref().is_none_or(<[u8]>::is_empty)
    }

    /// True for an unsigned `rmb.conn.data` request with a plain payload: the
    /// connection's own AEAD authenticates it (docs/protocol.md §10).
    pub fn is_unsigned_conn_frame(&self) -> bool {
        self.is_unsigned()
            && matches!(&self.message, Some(Message::Request(r)) if r.command == CONN_DATA_COMMAND)
            && matches!(self.payload, Some(Payload::Plain(_)))
    }

    /// True for an unsigned request of an [`UNSIGNED_SEALED_COMMANDS`] command, or an
    /// unsigned response, with an encrypted payload: one the receiving peer may
    /// authenticate by decrypting it (topic pushes and their answers, docs/protocol.md
    /// §3.4; the peer decides which it accepts).
    pub fn is_unsigned_sealed(&self) -> bool {
        self.is_unsigned()
            && match &self.message {
                Some(Message::Request(r)) => UNSIGNED_SEALED_COMMANDS.contains(&r.command.as_str()),
                Some(Message::Response(_)) => true,
                _ => false,
            }
            && matches!(self.payload, Some(Payload::Cipher(_)))
    }

    /// What the encryption of an unsigned sealed envelope authenticates besides its
    /// payload (the AEAD's associated data, docs/protocol.md §3.4): without a signature,
    /// only this stops a relay from reflecting the envelope back to its sender (the
    /// secp256k1 key is the same both ways), re-sourcing it to a twin that publishes
    /// the same key, or moving it to another uid or command.
    ///
    /// `tag ‖ kind u8 (1 request, 2 response, 0 other) ‖ source twin u32 ‖ destination
    /// twin u32 ‖ uid length u32 ‖ uid ‖ command length u32 ‖ command` (big-endian;
    /// command empty for a response).
    pub fn unsigned_binding(&self) -> Vec<u8> {
        let (kind, command) = match &self.message {
            Some(Message::Request(r)) => (1u8, r.command.as_bytes()),
            Some(Message::Response(_)) => (2, &[][..]),
            _ => (0, &[][..]),
        };
        let uid = self.uid.as_bytes();
        let mut out =
            Vec::with_capacity(UNSIGNED_BINDING_TAG.len() + 17 + uid.len() + command.len());
        out.extend_from_slice(UNSIGNED_BINDING_TAG);
        out.push(kind);
        out.extend_from_slice(&self.source_twin().to_be_bytes());
        out.extend_from_slice(&self.destination_twin().to_be_bytes());
        for field in [uid, command] {
            // Envelopes are far below 4 GiB; saturating keeps this total anyway.
            let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(field);
        }
        out
    }

    /// True for the unsigned envelopes rmb peers send (and relays therefore pass on
    /// without a signature check): [`is_unsigned_conn_frame`](Self::is_unsigned_conn_frame)
    /// or [`is_unsigned_sealed`](Self::is_unsigned_sealed). Anything else unsigned is
    /// refused as before.
    pub fn is_unsigned_by_design(&self) -> bool {
        self.is_unsigned_conn_frame() || self.is_unsigned_sealed()
    }

    /// The source twin id; `0` (relay-generated) when the source is missing.
    pub fn source_twin(&self) -> u32 {
        self.source.as_ref().map_or(0, |a| a.twin)
    }

    /// The destination twin id; `0` when the destination is missing.
    pub fn destination_twin(&self) -> u32 {
        self.destination.as_ref().map_or(0, |a| a.twin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Ping, Request};

    #[test]
    fn fail_fast_token_matching() {
        let with = |tags: &str| Envelope {
            tags: Some(tags.into()),
            ..Default::default()
        };
        assert!(with("fail-fast").is_fail_fast());
        assert!(with("a, fail-fast").is_fail_fast());
        assert!(with("a fail-fast\tb").is_fail_fast());
        assert!(!with("Fail-Fast").is_fail_fast());
        assert!(!with("fail-faster").is_fail_fast());
        assert!(!Envelope::default().is_fail_fast());
    }

    #[test]
    fn kind_and_payload() {
        let mut env = Envelope::default();
        assert_eq!(env.kind(), MessageKind::Unset);
        assert_eq!(env.payload_bytes(), b"");
        env.message = Some(Message::Request(Request::default()));
        env.payload = Some(Payload::Cipher(vec![1, 2]));
        assert_eq!(env.kind().as_str(), "request");
        assert_eq!(env.payload_bytes(), &[1, 2]);
        env.message = Some(Message::Ping(Ping {}));
        assert_eq!(env.kind(), MessageKind::Ping);
        assert_eq!(env.source_twin(), 0);
    }

    #[test]
    fn only_topic_commands_and_responses_go_unsigned_sealed() {
        let unsigned = |message: Message| Envelope {
            message: Some(message),
            payload: Some(Payload::Cipher(vec![7; 40])),
            ..Default::default()
        };
        let request = |command: &str| {
            Message::Request(Request {
                command: command.into(),
            })
        };
        assert!(unsigned(request("rmb.topic.message")).is_unsigned_sealed());
        assert!(unsigned(request("rmb.topic.ack")).is_unsigned_sealed());
        assert!(unsigned(Message::Response(Default::default())).is_unsigned_sealed());
        assert!(!unsigned(request("echo")).is_unsigned_by_design());
        let mut signed = unsigned(request("rmb.topic.ack"));
        signed.signature = Some(vec![1; 65]);
        assert!(!signed.is_unsigned_sealed());
    }

    #[test]
    fn the_unsigned_binding_names_direction_uid_and_command() {
        let env = Envelope {
            uid: "u".into(),
            source: Some(crate::Address::twin(1)),
            destination: Some(crate::Address::twin(2)),
            message: Some(Message::Request(Request {
                command: "rmb.topic.ack".into(),
            })),
            ..Default::default()
        };
        let mut expected = b"rmb.unsigned.v1\x01\0\0\0\x01\0\0\0\x02\0\0\0\x01u\0\0\0\x0d".to_vec();
        expected.extend_from_slice(b"rmb.topic.ack");
        assert_eq!(env.unsigned_binding(), expected);
        let mut reflected = env.clone();
        std::mem::swap(&mut reflected.source, &mut reflected.destination);
        assert_ne!(reflected.unsigned_binding(), env.unsigned_binding());
        let mut answer = env.clone();
        answer.message = Some(Message::Response(Default::default()));
        assert_ne!(answer.unsigned_binding(), env.unsigned_binding());
    }
}
