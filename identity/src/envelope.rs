//! Signing and verifying [`Envelope`]s.
//!
//! The signature covers the MD5 digest of the rmb-rs challenge
//! ([`rmb_proto::challenge`]). Because that challenge concatenates fields without
//! separators, some different envelopes share a digest: a `schema` moved into the
//! deprecated `federation` field, or an empty `Response` turned into an empty `schema`,
//! are one-bit changes on the wire that keep the signature valid. [`verify_envelope`]
//! therefore also checks the envelope's *shape*: a message kind must be set and the
//! deprecated fields (which no current sender sets) must be absent.

use rmb_proto::Envelope;

use crate::account::AccountId;
use crate::signer::Signer;
use crate::verify::{SignatureError, verify};

/// Why a received envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope carries no message (request, response, error, ping or pong)")]
    NoMessage,
    #[error("envelope uses the deprecated '{0}' field, which no current sender sets")]
    DeprecatedField(&'static str),
    #[error("invalid envelope signature: {0}")]
    Signature(#[from] SignatureError),
}

/// Signs `env` in place with `signer` (the caller stamps it first, see `Envelope::stamp_at`).
pub fn sign_envelope(signer: &Signer, env: &mut Envelope) {
    env.signature = None;
    let digest = env.challenge_digest();
    env.signature = Some(signer.sign(&digest).to_vec());
}

/// Checks that `env` is well formed and signed by `account`.
///
/// Expiry, replay and the lookup of `account` are the caller's business.
pub fn verify_envelope(env: &Envelope, account: &AccountId) -> Result<(), EnvelopeError> {
    check_shape(env)?;
    let signature = env
        .signature
        .as_deref()
        .ok_or(EnvelopeError::Signature(SignatureError::Missing))?;
    verify(account, &env.challenge_digest(), signature)?;
    Ok(())
}

/// The structural rules a signed envelope must meet (see the module docs for why).
pub fn check_shape(env: &Envelope) -> Result<(), EnvelopeError> {
    if env.message.is_none() {
        return Err(EnvelopeError::NoMessage);
    }
    if env.federation.is_some() {
        return Err(EnvelopeError::DeprecatedField("federation"));
    }
    if !env.relays.is_empty() {
        return Err(EnvelopeError::DeprecatedField("relays"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signer::KeyType;
    use rmb_proto::{Address, Message, Payload, Request};

    fn request() -> Envelope {
        let mut env = Envelope {
            uid: "u-1".into(),
            expiration: 60,
            source: Some(Address::twin(1)),
            destination: Some(Address::twin(2)),
            message: Some(Message::Request(Request {
                command: "echo".into(),
            })),
            schema: Some("application/json".into()),
            payload: Some(Payload::Plain(b"{}".to_vec())),
            ..Default::default()
        };
        env.stamp_at(1_700_000_000);
        env
    }

    #[test]
    fn signed_envelopes_verify_and_tampering_is_caught() {
        for key_type in [KeyType::Ed25519, KeyType::Sr25519] {
            let signer = Signer::from_secret("//Alice", key_type).unwrap();
            let mut env = request();
            sign_envelope(&signer, &mut env);
            verify_envelope(&env, &signer.account()).unwrap();

            let mut spoofed = env.clone();
            spoofed.source = Some(Address::twin(3));
            assert!(matches!(
                verify_envelope(&spoofed, &signer.account()),
                Err(EnvelopeError::Signature(SignatureError::Mismatch { .. }))
            ));
        }
    }

    #[test]
    fn same_challenge_but_wrong_shape_is_refused() {
        let signer = Signer::from_secret("//Alice", KeyType::Ed25519).unwrap();
        let mut env = request();
        sign_envelope(&signer, &mut env);
        let mut moved = env.clone();
        moved.federation = moved.schema.take();
        assert_eq!(moved.challenge_digest(), env.challenge_digest());
        assert_eq!(
            verify_envelope(&moved, &signer.account()),
            Err(EnvelopeError::DeprecatedField("federation"))
        );
    }

    #[test]
    fn unsigned_envelopes_are_refused() {
        let signer = Signer::from_secret("//Alice", KeyType::Ed25519).unwrap();
        assert_eq!(
            verify_envelope(&request(), &signer.account())
                .unwrap_err()
                .to_string(),
            "invalid envelope signature: signature is missing"
        );
    }
}
