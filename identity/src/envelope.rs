//! Signing, verifying, sealing and opening [`Envelope`]s: what a twin does to every
//! message it sends or receives.
//!
//! Sending ([`Identity::seal_envelope`]): encrypt the plain payload to the recipient's
//! published key (if it has one), stamp, sign. Receiving ([`Identity::open_envelope`]):
//! check the shape, verify the signature against the sender's account, decrypt.
//!
//! ## Why the shape is checked too
//!
//! The signature covers the MD5 of the rmb-rs challenge ([`rmb_proto::challenge`]),
//! which concatenates fields without separators or field markers. Some one-bit changes
//! on the wire therefore keep the signature valid while moving bytes between fields:
//! `schema` → deprecated `federation`, an empty `Response` → an empty `schema`, an empty
//! plain payload → a `Ping`, `schema` → `cipher`. The rules here refuse every such case
//! that changes meaning:
//!
//! - a signed envelope carries a request, response or error (pings and pongs are relay
//!   keepalives and are never signed-verified, as in rmb-rs);
//! - the deprecated `federation` field, which no sender sets, must be absent;
//! - the deprecated `relays` field is accepted, because ThreeFold's TypeScript client
//!   sets it on every request and signs it, but each entry must look like a relay name
//!   (at most [`MAX_RELAY_ENTRIES`] entries of host-name characters, each at most
//!   [`MAX_RELAY_NAME`] bytes). Nothing routes by it;
//! - a `cipher` payload must decrypt (its AEAD tag catches bytes moved into it).
//!
//! What remains is indistinguishable by construction: an empty optional string versus
//! an absent one, and an empty plain payload versus none. Receivers give these the same
//! meaning (see [`Address::sid`](rmb_proto::Address::sid)). The `relays` list closes the
//! challenge right after the payload, so the tail of a *plain* payload that looks like a
//! relay name could be moved into it (or back) without breaking the signature; cipher
//! payloads cannot be split that way, which is one more reason every twin publishes a key.

use rmb_proto::{Binding, Envelope, Message, MessageKind, Payload};

use crate::account::AccountId;
use crate::e2e::{E2eError, E2eScheme};
use crate::identity::Identity;
use crate::signer::Signer;
use crate::verify::{SignatureError, verify};

/// Why a received envelope was refused (or an outgoing one could not be sealed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("{0} envelopes carry no verifiable signature; expected a request, response or error")]
    NotSigned(&'static str),
    #[error("envelope uses the deprecated '{0}' field, which no current sender sets")]
    DeprecatedField(&'static str),
    #[error("envelope's deprecated 'relays' field is not a list of relay names: {0}")]
    InvalidRelays(&'static str),
    /// The challenge of a request with an empty command is that of a response: either
    /// could be turned into the other under the same signature.
    #[error("request envelope names no command")]
    EmptyCommand,
    #[error("invalid envelope signature: {0}")]
    Signature(#[from] SignatureError),
    #[error("e2e error: {0}")]
    E2e(#[from] E2eError),
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
    match env.kind() {
        MessageKind::Request | MessageKind::Response | MessageKind::Error => {}
        other => return Err(EnvelopeError::NotSigned(other.as_str())),
    }
    if env.federation.is_some() {
        return Err(EnvelopeError::DeprecatedField("federation"));
    }
    if matches!(&env.message, Some(Message::Request(r)) if r.command.is_empty()) {
        return Err(EnvelopeError::EmptyCommand);
    }
    check_relay_names(&env.relays)
}

/// Most entries accepted in the deprecated `relays` field (senders list the relays of
/// the destination twin, which the registry caps at 4).
pub const MAX_RELAY_ENTRIES: usize = 16;
/// Longest entry accepted in the deprecated `relays` field (a DNS name, plus `:port`).
pub const MAX_RELAY_NAME: usize = 261;

/// The `relays` entries must look like relay names: signed, but never used for routing.
fn check_relay_names(relays: &[String]) -> Result<(), EnvelopeError> {
    if relays.len() > MAX_RELAY_ENTRIES {
        return Err(EnvelopeError::InvalidRelays("too many entries"));
    }
    let name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':');
    for relay in relays {
        if relay.is_empty() || relay.len() > MAX_RELAY_NAME {
            return Err(EnvelopeError::InvalidRelays(
                "an entry is empty or too long",
            ));
        }
        if !relay.chars().all(name_char) {
            return Err(EnvelopeError::InvalidRelays(
                "an entry has characters no host name has",
            ));
        }
    }
    Ok(())
}

impl Identity {
    /// Prepares `env` for sending: encrypts a plain payload to `recipient_key` (the
    /// destination's published key; `None` leaves it plain), stamps it at `now`, signs it.
    ///
    /// The order (encrypt, stamp, sign) is rmb-rs's, so the signature covers the ciphertext.
    pub fn seal_envelope(
        &self,
        env: &mut Envelope,
        recipient_key: Option<&[u8]>,
        now: u64,
    ) -> Result<(), EnvelopeError> {
        if let Some(key) = recipient_key {
            let plain = match env.payload.take() {
                Some(Payload::Plain(bytes)) => bytes,
                Some(Payload::Cipher(bytes)) => {
                    // Already sealed by the caller; keep it.
                    env.payload = Some(Payload::Cipher(bytes));
                    return self.finish(env, now);
                }
                None => Vec::new(),
            };
            env.payload = Some(Payload::Cipher(self.e2e().seal(key, &plain)?));
        }
        self.finish(env, now)
    }

    /// Prepares `env` for sending *without a signature*: stamps it at `now`, then
    /// encrypts its plain payload to `recipient_key` with `binding`'s associated data
    /// ([`Envelope::binding_data`]: direction, uid and command; for
    /// [`Binding::Rpc`] every other field too). Set every other field first.
    ///
    /// Only for envelopes whose receiver authenticates them by the decryption
    /// ([`E2eKeys::open_from`](crate::E2eKeys::open_from)): a payload only we and the
    /// recipient can seal, for this source and destination. It costs no signature and no
    /// digest of the payload; rmb-rs relays route it (they never verify), rmb-rs peers
    /// would refuse it.
    pub fn encrypt_envelope(
        &self,
        env: &mut Envelope,
        recipient_key: &[u8],
        binding: Binding,
        now: u64,
    ) -> Result<(), EnvelopeError> {
        env.stamp_at(now);
        let binding = env.binding_data(binding);
        let cipher = match env.payload.take() {
            Some(Payload::Plain(bytes)) => {
                self.e2e().seal_bound(recipient_key, &bytes, &binding)?
            }
            // Already sealed by the caller; keep it.
            Some(Payload::Cipher(bytes)) => bytes,
            None => self.e2e().seal_bound(recipient_key, &[], &binding)?,
        };
        env.payload = Some(Payload::Cipher(cipher));
        env.signature = None;
        Ok(())
    }

    fn finish(&self, env: &mut Envelope, now: u64) -> Result<(), EnvelopeError> {
        env.stamp_at(now);
        sign_envelope(self.signer(), env);
        Ok(())
    }

    /// Checks a received `env` and decrypts its payload in place.
    ///
    /// `sender_account` and `sender_key` come from the registry entry of the source
    /// twin; `own_scheme` is the scheme of the key we publish (what senders encrypt to).
    pub fn open_envelope(
        &self,
        env: &mut Envelope,
        sender_account: &AccountId,
        sender_key: Option<&[u8]>,
        own_scheme: E2eScheme,
    ) -> Result<(), EnvelopeError> {
        verify_envelope(env, sender_account)?;
        if let Some(Payload::Cipher(cipher)) = &env.payload {
            let plain = self.e2e().open(own_scheme, sender_key, cipher)?;
            env.payload = Some(Payload::Plain(plain));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signer::KeyType;
    use rmb_proto::{Address, Message, Ping, Request};

    fn request() -> Envelope {
        Envelope {
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
        }
    }

    fn signed(signer: &Signer) -> Envelope {
        let mut env = request();
        env.stamp_at(1_700_000_000);
        sign_envelope(signer, &mut env);
        env
    }

    #[test]
    fn signed_envelopes_verify_and_tampering_is_caught() {
        for key_type in [KeyType::Ed25519, KeyType::Sr25519] {
            let signer = Signer::from_secret("//Alice", key_type).unwrap();
            let env = signed(&signer);
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
        let env = signed(&signer);
        let mut moved = env.clone();
        moved.federation = moved.schema.take();
        assert_eq!(moved.challenge_digest(), env.challenge_digest());
        assert_eq!(
            verify_envelope(&moved, &signer.account()),
            Err(EnvelopeError::DeprecatedField("federation"))
        );
        let mut ping = env.clone();
        ping.message = Some(Message::Ping(Ping {}));
        assert_eq!(
            verify_envelope(&ping, &signer.account())
                .unwrap_err()
                .to_string(),
            "ping envelopes carry no verifiable signature; expected a request, response or error"
        );
        // A response signed by its twin, turned into a request without a command: the
        // same challenge (found by the bit-flip property test), refused by its shape.
        let mut response = env.clone();
        response.message = Some(Message::Response(Default::default()));
        sign_envelope(&signer, &mut response);
        let mut request = response.clone();
        request.message = Some(Message::Request(Request::default()));
        assert_eq!(request.challenge_digest(), response.challenge_digest());
        verify_envelope(&response, &signer.account()).unwrap();
        assert_eq!(
            verify_envelope(&request, &signer.account()),
            Err(EnvelopeError::EmptyCommand)
        );
    }

    #[test]
    fn the_deprecated_relays_field_is_signed_and_accepted_when_it_names_relays() {
        let signer = Signer::from_secret("//Alice", KeyType::Ed25519).unwrap();
        let mut env = request();
        env.relays = vec!["relay.grid.tf".into(), "127.0.0.1:8080".into()];
        env.stamp_at(1_700_000_000);
        sign_envelope(&signer, &mut env);
        verify_envelope(&env, &signer.account()).unwrap();

        let mut changed = env.clone();
        changed.relays[0] = "relay.grid.tg".into();
        assert!(matches!(
            verify_envelope(&changed, &signer.account()),
            Err(EnvelopeError::Signature(_))
        ));
        for (relays, why) in [
            (vec!["a b".to_string()], "characters"),
            (vec![String::new()], "empty"),
            (vec!["x".repeat(MAX_RELAY_NAME + 1)], "too long"),
            (vec!["r".to_string(); MAX_RELAY_ENTRIES + 1], "too many"),
        ] {
            let mut env = request();
            env.relays = relays;
            sign_envelope(&signer, &mut env);
            let err = verify_envelope(&env, &signer.account()).unwrap_err();
            assert!(
                matches!(err, EnvelopeError::InvalidRelays(_)) && err.to_string().contains(why),
                "{err}"
            );
        }
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

    #[test]
    fn seal_then_open_for_both_schemes_and_plain() {
        let alice = Identity::from_secret("//Alice", KeyType::Sr25519).unwrap();
        let bob = Identity::from_secret("//Bob", KeyType::Ed25519).unwrap();
        for scheme in [Some(E2eScheme::X25519), Some(E2eScheme::Secp256k1), None] {
            let bob_key = scheme.map(|s| bob.e2e_public_key(s));
            let alice_key = scheme.map(|s| alice.e2e_public_key(s));
            let mut env = request();
            alice
                .seal_envelope(&mut env, bob_key.as_deref(), 1_700_000_000)
                .unwrap();
            assert_eq!(env.timestamp, 1_700_000_000);
            assert_eq!(
                matches!(env.payload, Some(Payload::Cipher(_))),
                scheme.is_some()
            );
            let mut received = env.clone();
            bob.open_envelope(
                &mut received,
                &alice.signer().account(),
                alice_key.as_deref(),
                scheme.unwrap_or_default(),
            )
            .unwrap();
            assert_eq!(received.payload, Some(Payload::Plain(b"{}".to_vec())));

            if let Some(Payload::Cipher(cipher)) = &mut env.payload {
                // Tampering after signing breaks the signature first.
                cipher[20] ^= 1;
                assert!(matches!(
                    bob.open_envelope(
                        &mut env,
                        &alice.signer().account(),
                        alice_key.as_deref(),
                        scheme.unwrap()
                    ),
                    Err(EnvelopeError::Signature(_))
                ));
            }
        }
    }

    #[test]
    fn a_cipher_for_someone_else_is_an_e2e_error() {
        let alice = Identity::from_secret("//Alice", KeyType::Sr25519).unwrap();
        let bob = Identity::from_secret("//Bob", KeyType::Sr25519).unwrap();
        let carol = Identity::from_secret("//Carol", KeyType::Sr25519).unwrap();
        let mut env = request();
        let carol_key = carol.e2e_public_key(E2eScheme::X25519);
        alice.seal_envelope(&mut env, Some(&carol_key), 1).unwrap();
        assert_eq!(
            bob.open_envelope(&mut env, &alice.signer().account(), None, E2eScheme::X25519),
            Err(EnvelopeError::E2e(E2eError::Decrypt))
        );
    }
}
