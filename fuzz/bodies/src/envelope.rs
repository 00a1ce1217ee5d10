//! Envelopes and what comes with them: the protobuf envelope a relay or peer receives,
//! its signed challenge, the login token a relay reads, and the end-to-end payload a
//! peer opens.

use std::sync::OnceLock;

use prost::bytes::Bytes;
use rmb_identity::{AccountId, E2eScheme, Identity, JwtPolicy, KeyType, Token};
use rmb_proto::{Envelope, challenge};

use crate::alloc;

/// Largest envelope the targets decode (a relay's default limit is 4 MiB; inputs are
/// far smaller, this only keeps the limit in play).
const LIMIT: usize = 64 * 1024;

/// Any bytes to the envelope decoders a peer (`decode_limited`, `decode_limited_shared`)
/// and a relay (`decode_routing`) use: no panic, allocations bounded by the input; what
/// decodes survives the checks a receiver runs, re-encodes to an equal envelope, reads
/// the same routing fields through the relay's header decoder, and has a challenge
/// that starts with its uid and digests the same after the round trip.
pub fn envelope_decode(data: &[u8]) {
    let decoded = alloc::bounded("Envelope::decode_limited", alloc::limit(data.len()), || {
        Envelope::decode_limited(data, LIMIT)
    });
    let routing = Envelope::decode_routing(data, LIMIT);
    let Ok(env) = decoded else {
        return;
    };
    let shared = Envelope::decode_limited_shared(&Bytes::copy_from_slice(data), LIMIT)
        .expect("the shared decoder takes what the plain one does");
    assert_eq!(shared, env);
    let routing = routing.expect("the routing decoder takes what the full one does");
    assert_eq!(
        (
            &routing.uid,
            &routing.tags,
            routing.timestamp,
            routing.expiration
        ),
        (&env.uid, &env.tags, env.timestamp, env.expiration)
    );
    assert_eq!(
        (&routing.source, &routing.destination, &routing.message),
        (&env.source, &env.destination, &env.message)
    );
    assert!(challenge::bytes(&env).starts_with(env.uid.as_bytes()));
    let _ = env.source.as_ref().map(ToString::to_string);
    let _ = env.destination.as_ref().map(ToString::to_string);
    let _ = rmb_identity::envelope::check_shape(&env);
    let _ = env.valid_at(1_700_000_000);
    let again = Envelope::decode_limited(&env.to_bytes(), usize::MAX).expect("re-encoding decodes");
    assert_eq!(again, env);
    assert_eq!(again.challenge_digest(), env.challenge_digest());
}

/// Any text to the login-token parser a relay runs on every connection: no panic; what
/// parses has its times checked, and its signature never verifies against an account
/// that signed nothing (all-0x01).
pub fn jwt_parse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(token) = alloc::bounded("Token::parse", alloc::limit(data.len()), || {
        Token::parse(text)
    }) else {
        return;
    };
    let _ = token.check_time(token.claims().iat, &JwtPolicy::default());
    let _ = token.last_valid_second(&JwtPolicy::default());
    assert!(token.verify_signature(&AccountId([1; 32])).is_err());
}

/// The receiving identity (//Bob) and a sender's secp256k1 key (//Alice's).
fn keys() -> &'static (Identity, Vec<u8>) {
    static KEYS: OnceLock<(Identity, Vec<u8>)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let sender = Identity::from_secret("//Alice", KeyType::Sr25519).expect("dev secret");
        let receiver = Identity::from_secret("//Bob", KeyType::Sr25519).expect("dev secret");
        (receiver, sender.e2e_public_key(E2eScheme::Secp256k1))
    })
}

/// Any bytes as an end-to-end payload to both decryptors: no panic, and nothing opens
/// (forging a ciphertext for //Bob's keys would take the keys).
pub fn e2e_open(data: &[u8]) {
    let (receiver, sender_key) = keys();
    assert!(receiver.e2e().open(E2eScheme::X25519, None, data).is_err());
    assert!(
        receiver
            .e2e()
            .open(E2eScheme::Secp256k1, Some(sender_key), data)
            .is_err()
    );
}
