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

/// Response header of a relay's WebSocket upgrade listing what the relay does beyond
/// rmb-rs (comma-separated). A peer tells other peers it takes unsigned RPCs only when
/// every relay it is connected to lists [`ROUTES_UNSIGNED_RPC`]: an older relay would
/// refuse them arriving from another relay (docs/protocol.md §3.4).
pub const RELAY_CAPABILITIES_HEADER: &str = "rmb-relay-capabilities";

/// The relay capability: it passes unsigned RPCs and their answers on from other relays
/// ([`Envelope::is_unsigned_sealed`]).
pub const ROUTES_UNSIGNED_RPC: &str = "unsigned-rpc";

/// Domain tag opening [`Envelope::unsigned_rpc_binding`].
pub const UNSIGNED_RPC_BINDING_TAG: &[u8] = b"rmb.unsigned.v2";

/// Which associated data an unsigned envelope's payload is sealed with
/// (docs/protocol.md §3.4): it decides what a relay cannot change on the way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Binding {
    /// [`Envelope::unsigned_binding`]: direction, uid and command. Topic pushes and
    /// acknowledgements (their handlers drop repeats by their own ids) and the answers
    /// to them.
    Topic,
    /// [`Envelope::unsigned_rpc_binding`]: every field but the payload and signature,
    /// times included, so the envelope means exactly what a signature would have
    /// covered. Any other request between rmb peers that proved they take it, and the
    /// answers to those.
    Rpc,
}

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

    /// True for an unsigned request (other than a connection data frame) or response
    /// with an encrypted payload: one the receiving peer may authenticate by decrypting
    /// it (topic pushes, RPCs between rmb peers and their answers, docs/protocol.md
    /// §3.4; the peer decides which it accepts).
    pub fn is_unsigned_sealed(&self) -> bool {
        self.is_unsigned()
            && match &self.message {
                Some(Message::Request(r)) => r.command != CONN_DATA_COMMAND,
                Some(Message::Response(_)) => true,
                _ => false,
            }
            && matches!(self.payload, Some(Payload::Cipher(_)))
    }

    /// The binding an unsigned *request* is sealed with: [`Binding::Topic`] for an
    /// [`UNSIGNED_SEALED_COMMANDS`] command, [`Binding::Rpc`] for any other. (A
    /// response's follows its request, which only its receiver knows.)
    pub fn request_binding(command: &str) -> Binding {
        if UNSIGNED_SEALED_COMMANDS.contains(&command) {
            Binding::Topic
        } else {
            Binding::Rpc
        }
    }

    /// The associated data of `binding` for this envelope.
    pub fn binding_data(&self, binding: Binding) -> Vec<u8> {
        match binding {
            Binding::Topic => self.unsigned_binding(),
            Binding::Rpc => self.unsigned_rpc_binding(),
        }
    }

    /// What the encryption of an unsigned RPC authenticates besides its payload
    /// (docs/protocol.md §3.4): everything a signature covers except the payload, which
    /// the AEAD covers itself. The times are in it, so a relay cannot make an old
    /// request (or answer) look new, and the replay store, keyed by source and uid,
    /// drops a copy until its deadline, as for a signed one; the sessions, tags and
    /// schema are in it, so none can be changed on the way.
    ///
    /// `tag ‖ kind u8 ‖ source twin u32 ‖ source session ‖ destination twin u32 ‖
    /// destination session ‖ uid ‖ command ‖ timestamp u64 ‖ expiration u64 ‖ tags ‖
    /// schema`, big-endian; a string is `length u32 ‖ bytes`, an optional one `0` when
    /// absent or `1 ‖ string`; the command is empty for a response.
    pub fn unsigned_rpc_binding(&self) -> Vec<u8> {
        let (kind, command) = match &self.message {
            Some(Message::Request(r)) => (1u8, r.command.as_bytes()),
            Some(Message::Response(_)) => (2, &[][..]),
            _ => (0, &[][..]),
        };
        fn session(a: &Option<crate::Address>) -> Option<&[u8]> {
            a.as_ref()
                .and_then(|a| a.connection.as_deref())
                .map(str::as_bytes)
        }
        let mut out = Vec::with_capacity(128 + self.uid.len() + command.len());
        out.extend_from_slice(UNSIGNED_RPC_BINDING_TAG);
        out.push(kind);
        out.extend_from_slice(&self.source_twin().to_be_bytes());
        put_optional(&mut out, session(&self.source));
        out.extend_from_slice(&self.destination_twin().to_be_bytes());
        put_optional(&mut out, session(&self.destination));
        put_string(&mut out, self.uid.as_bytes());
        put_string(&mut out, command);
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(&self.expiration.to_be_bytes());
        put_optional(&mut out, self.tags.as_deref().map(str::as_bytes));
        put_optional(&mut out, self.schema.as_deref().map(str::as_bytes));
        out
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
        put_string(&mut out, uid);
        put_string(&mut out, command);
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

/// Appends `length u32 ‖ bytes` (saturating: envelopes are far below 4 GiB).
fn put_string(out: &mut Vec<u8>, field: &[u8]) {
    let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(field);
}

/// Appends `0` for an absent field, `1 ‖ string` for a present one (an empty string
/// and none differ, as they do on the wire).
fn put_optional(out: &mut Vec<u8>, field: Option<&[u8]>) {
    match field {
        None => out.push(0),
        Some(field) => {
            out.push(1);
            put_string(out, field);
        }
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
    fn encrypted_requests_and_responses_go_unsigned_sealed_but_not_connection_frames() {
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
        assert!(unsigned(request("echo")).is_unsigned_sealed());
        assert!(!unsigned(request(CONN_DATA_COMMAND)).is_unsigned_sealed());
        assert!(!unsigned(Message::Error(Default::default())).is_unsigned_by_design());
        let mut plain = unsigned(request("echo"));
        plain.payload = Some(Payload::Plain(vec![1]));
        assert!(!plain.is_unsigned_by_design());
        assert_eq!(Envelope::request_binding("rmb.topic.ack"), Binding::Topic);
        assert_eq!(Envelope::request_binding("echo"), Binding::Rpc);
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

    #[test]
    fn the_rpc_binding_names_every_field_but_payload_and_signature() {
        let env = Envelope {
            uid: "u".into(),
            tags: Some("t".into()),
            timestamp: 1000,
            expiration: 60,
            source: Some(crate::Address::twin(1)),
            destination: Some(crate::Address {
                twin: 2,
                connection: Some("s".into()),
            }),
            message: Some(Message::Request(Request {
                command: "echo".into(),
            })),
            schema: None,
            payload: Some(Payload::Cipher(vec![1, 2, 3])),
            ..Default::default()
        };
        let mut expected = b"rmb.unsigned.v2\x01\0\0\0\x01\0\0\0\0\x02\x01\0\0\0\x01s".to_vec();
        expected.extend_from_slice(b"\0\0\0\x01u\0\0\0\x04echo");
        expected.extend_from_slice(&1000u64.to_be_bytes());
        expected.extend_from_slice(&60u64.to_be_bytes());
        expected.extend_from_slice(b"\x01\0\0\0\x01t\0");
        assert_eq!(env.unsigned_rpc_binding(), expected);
        // Every change a relay could make gives another binding; payload and signature
        // are not in it (the AEAD covers the payload).
        let changes: Vec<fn(&mut Envelope)> = vec![
            |e| std::mem::swap(&mut e.source, &mut e.destination),
            |e| e.source = Some(crate::Address::twin(3)),
            |e| e.source.as_mut().unwrap().connection = Some(String::new()),
            |e| e.destination.as_mut().unwrap().connection = None,
            |e| e.uid = "v".into(),
            |e| e.message = Some(Message::Response(Default::default())),
            |e| {
                e.message = Some(Message::Request(Request {
                    command: "other".into(),
                }))
            },
            |e| e.timestamp += 1,
            |e| e.expiration += 1,
            |e| e.tags = None,
            |e| e.tags = Some("fail-fast".into()),
            |e| e.schema = Some(String::new()),
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut changed = env.clone();
            change(&mut changed);
            assert_ne!(changed.unsigned_rpc_binding(), expected, "change {i}");
        }
        let mut same = env.clone();
        same.payload = Some(Payload::Cipher(vec![9]));
        same.signature = Some(vec![1; 65]);
        assert_eq!(same.unsigned_rpc_binding(), expected);
        assert_ne!(env.unsigned_binding(), expected, "v1 and v2 never agree");
    }
}
