//! What ThreeFold's official TypeScript client (`@threefold/rmb_direct_client` 2.9.2)
//! sent on the wire must verify and decrypt with our code: its login token, its requests
//! (which carry the deprecated, signed `relays` field, an empty `tags` and, for an empty
//! body, an unencrypted `plain`), and its unsigned pings.
//!
//! The frames and the identities (twins 1-3 of `rmb-rs-vectors.json`) live in
//! `../shared/reference/`. `rmb_rs_compat.rs` sends these same requests to a live peer.

use rmb_identity::{AccountId, E2eScheme, Identity, KeyType, Token, verify_envelope};
use rmb_proto::{Address, DEFAULT_MAX_ENVELOPE_SIZE, Envelope, MessageKind, Payload};
use rmb_testsupport::recorded::{envelope_bytes, restamp, ts_client_vectors};
use serde_json::Value;

struct Twin {
    identity: Identity,
    account: AccountId,
    secp_pk: Vec<u8>,
}

fn twin(id: u32) -> Twin {
    let vectors = rmb_testsupport::rmb_rs_vectors();
    let t = &vectors["twins"][id.to_string()];
    Twin {
        identity: Identity::from_secret(t["mnemonic"].as_str().unwrap(), KeyType::Ed25519).unwrap(),
        account: format!("0x{}", t["account_hex"].as_str().unwrap())
            .parse()
            .unwrap(),
        secp_pk: hex::decode(t["pk_secp256k1_hex"].as_str().unwrap()).unwrap(),
    }
}

fn decode(vector: &Value) -> Envelope {
    Envelope::decode_limited(&envelope_bytes(vector), DEFAULT_MAX_ENVELOPE_SIZE).unwrap()
}

#[test]
fn the_login_token_verifies() {
    let vectors = ts_client_vectors();
    let jwt = &vectors["jwt"];
    let token = Token::parse(jwt["query"].as_str().unwrap()).unwrap();
    let claims = token.claims().clone();
    assert_eq!((claims.sub, claims.sid.as_deref()), (3, Some("tsclient")));
    let t3 = twin(3);
    assert_eq!(hex::encode(t3.account.0), jwt["verifies_with_account_hex"]);
    token
        .verify(&t3.account, claims.iat, &Default::default())
        .unwrap();
    assert!(token.verify_signature(&twin(2).account).is_err());
}

#[test]
fn every_request_verifies_and_decrypts_with_the_relays_field_signed() {
    let vectors = ts_client_vectors();
    let (t2, t3) = (twin(2), twin(3));
    let requests = vectors["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 2);
    for vector in requests {
        let env = decode(vector);
        assert_eq!(env.kind(), MessageKind::Request);
        assert_eq!(env.source, Some(Address::session(3, "tsclient")));
        assert_eq!(env.destination_twin(), 2);
        assert_eq!(
            env.relays,
            ["relay.localtest"],
            "the TS client sets field 17"
        );
        assert_eq!(env.tags.as_deref(), Some(""), "and an empty tags field");
        verify_envelope(&env, &t3.account).unwrap();

        // The relays are part of the challenge: dropping them breaks the signature.
        let mut stripped = env.clone();
        stripped.relays.clear();
        assert!(verify_envelope(&stripped, &t3.account).is_err());

        let plain = match &env.payload {
            Some(Payload::Cipher(cipher)) => {
                assert_eq!(vector["payload"], "cipher");
                assert_eq!(hex::encode(&t2.secp_pk), vector["recipient_e2e_pk_hex"]);
                t2.identity
                    .e2e()
                    .open(E2eScheme::Secp256k1, Some(&t3.secp_pk), cipher)
                    .unwrap()
            }
            Some(Payload::Plain(bytes)) => {
                assert_eq!(vector["payload"], "plain");
                bytes.clone()
            }
            None => panic!("a request without payload"),
        };
        assert_eq!(hex::encode(plain), vector["plaintext_hex"]);
    }
}

#[test]
fn restamping_with_the_recorded_values_gives_back_the_recorded_bytes() {
    let vectors = ts_client_vectors();
    let t3 = twin(3);
    for vector in vectors["requests"].as_array().unwrap() {
        let bytes = envelope_bytes(vector);
        let timestamp = vector["timestamp"].as_u64().unwrap();
        assert_eq!(restamp(&bytes, None, timestamp, &t3.identity), bytes);
        let fresh = restamp(&bytes, None, timestamp + 1000, &t3.identity);
        assert_eq!(fresh.len(), bytes.len());
        let env = Envelope::decode_limited(&fresh, DEFAULT_MAX_ENVELOPE_SIZE).unwrap();
        assert_eq!(env.timestamp, timestamp + 1000);
        verify_envelope(&env, &t3.account).unwrap();
    }
    // The same holds for a request recorded from rmb-rs's own peer (fields out of order).
    let rmb_rs = rmb_testsupport::rmb_rs_vectors();
    let bytes = envelope_bytes(&rmb_rs["request_by_rmb_rs_peer_twin1_to_twin3"]);
    let env = Envelope::decode_limited(&bytes, DEFAULT_MAX_ENVELOPE_SIZE).unwrap();
    assert_eq!(
        restamp(&bytes, None, env.timestamp, &twin(1).identity),
        bytes
    );
}

#[test]
fn pings_decode_as_unsigned_keepalives() {
    let vectors = ts_client_vectors();
    for vector in vectors["pings"].as_array().unwrap() {
        let env = decode(vector);
        assert_eq!(env.kind(), MessageKind::Ping);
        assert_eq!(env.destination_twin(), 0);
        assert!(env.signature.as_deref().unwrap_or_default().is_empty());
        // Not something a peer verifies: pings carry no signature to check.
        assert!(verify_envelope(&env, &twin(3).account).is_err());
    }
}
