//! Encoding envelopes, and decoding them with a size limit.
//!
//! Every decoder in rmb takes a limit: a relay or peer must be able to refuse a huge
//! input before spending memory on it, and say clearly why it refused.

use prost::Message as _;

use crate::types::{Envelope, EnvelopeHeader, envelope, envelope_header};

/// Default largest envelope accepted (4 MiB): far above any RPC body rmb-rs sees in
/// practice, far below the 64 MiB a WebSocket would otherwise accept.
pub const DEFAULT_MAX_ENVELOPE_SIZE: usize = 4 * 1024 * 1024;

/// Why bytes could not be turned into an envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("envelope of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("malformed envelope: {0}")]
    Malformed(#[from] prost::DecodeError),
}

impl Envelope {
    /// Decodes `bytes` if they are at most `limit` bytes long.
    pub fn decode_limited(bytes: &[u8], limit: usize) -> Result<Self, DecodeError> {
        if bytes.len() > limit {
            return Err(DecodeError::TooLarge {
                size: bytes.len(),
                limit,
            });
        }
        Ok(Envelope::decode(bytes)?)
    }

    /// [`decode_limited`](Envelope::decode_limited) of bytes already shared: the payload
    /// and signature are copied out once (from a `&[u8]` prost copies them twice: into a
    /// `Bytes`, then into the `Vec`), which counts on bulk connection frames.
    pub fn decode_limited_shared(
        bytes: &prost::bytes::Bytes,
        limit: usize,
    ) -> Result<Self, DecodeError> {
        if bytes.len() > limit {
            return Err(DecodeError::TooLarge {
                size: bytes.len(),
                limit,
            });
        }
        Ok(Envelope::decode(bytes.clone())?)
    }

    /// Decodes only what routing needs (at most `limit` bytes): the result has no
    /// signature, schema or payload, which are skipped without being copied. For relays,
    /// which forward the original bytes and never check signatures of session traffic.
    pub fn decode_routing(bytes: &[u8], limit: usize) -> Result<Self, DecodeError> {
        if bytes.len() > limit {
            return Err(DecodeError::TooLarge {
                size: bytes.len(),
                limit,
            });
        }
        let header = EnvelopeHeader::decode(bytes)?;
        use envelope_header::Message as H;
        Ok(Envelope {
            uid: header.uid,
            tags: header.tags,
            timestamp: header.timestamp,
            expiration: header.expiration,
            source: header.source,
            destination: header.destination,
            message: header.message.map(|m| match m {
                H::Request(r) => envelope::Message::Request(r),
                H::Response(r) => envelope::Message::Response(r),
                H::Error(e) => envelope::Message::Error(e),
                H::Ping(p) => envelope::Message::Ping(p),
                H::Pong(p) => envelope::Message::Pong(p),
            }),
            ..Default::default()
        })
    }

    /// The protobuf encoding of this envelope.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode_to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Address, Request, envelope::Message};

    #[test]
    fn size_limit_is_enforced_with_a_clear_error() {
        let env = Envelope {
            uid: "x".repeat(100),
            destination: Some(Address::twin(1)),
            message: Some(Message::Request(Request {
                command: "c".into(),
            })),
            ..Default::default()
        };
        let bytes = env.to_bytes();
        assert_eq!(Envelope::decode_limited(&bytes, bytes.len()).unwrap(), env);
        let shared = prost::bytes::Bytes::from(bytes.clone());
        assert_eq!(
            Envelope::decode_limited_shared(&shared, bytes.len()).unwrap(),
            env
        );
        assert!(Envelope::decode_limited_shared(&shared, 50).is_err());
        let err = Envelope::decode_limited(&bytes, 50).unwrap_err();
        assert_eq!(
            err,
            DecodeError::TooLarge {
                size: bytes.len(),
                limit: 50
            }
        );
        assert!(err.to_string().contains("exceeds the limit of 50 bytes"));
    }

    #[test]
    fn routing_decode_keeps_every_routing_field_and_skips_the_rest() {
        let env = Envelope {
            uid: "u-1".into(),
            tags: Some("fail-fast".into()),
            timestamp: 10,
            expiration: 20,
            source: Some(Address::session(1, "web")),
            destination: Some(Address::twin(2)),
            message: Some(Message::Request(Request {
                command: "echo".into(),
            })),
            signature: Some(vec![7; 65]),
            schema: Some("application/json".into()),
            federation: Some("x".into()),
            payload: Some(crate::Payload::Cipher(vec![1; 300])),
            relays: vec!["r".into()],
        };
        let bytes = env.to_bytes();
        let routed = Envelope::decode_routing(&bytes, bytes.len()).unwrap();
        let expected = Envelope {
            signature: None,
            schema: None,
            federation: None,
            payload: None,
            relays: vec![],
            ..env
        };
        assert_eq!(routed, expected);
        assert!(matches!(
            Envelope::decode_routing(&bytes, 10),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let err = Envelope::decode_limited(&[0x0a, 0xff], 1024).unwrap_err();
        assert!(matches!(err, DecodeError::Malformed(_)));
        assert!(err.to_string().starts_with("malformed envelope"));
    }
}
