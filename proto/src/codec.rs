//! Encoding envelopes, and decoding them with a size limit.
//!
//! Every decoder in rmb takes a limit: a relay or peer must be able to refuse a huge
//! input before spending memory on it, and say clearly why it refused.

use prost::Message as _;

use crate::types::Envelope;

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
    fn garbage_is_malformed_not_a_panic() {
        let err = Envelope::decode_limited(&[0x0a, 0xff], 1024).unwrap_err();
        assert!(matches!(err, DecodeError::Malformed(_)));
        assert!(err.to_string().starts_with("malformed envelope"));
    }
}
