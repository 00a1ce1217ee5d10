//! Real outputs of rmb-rs (v1.5.1) must verify, decrypt and reproduce with our code.
//!
//! The vectors and the identities that made them live in
//! `../shared/reference/rmb-rs-vectors.json`.

use rmb_identity::{AccountId, E2eScheme, Identity, KeyType, Token, verify_envelope};
use rmb_proto::{Address, DEFAULT_MAX_ENVELOPE_SIZE, Envelope, Message, MessageKind, Payload};
use serde_json::Value;

struct Twin {
    identity: Identity,
    account: AccountId,
    secp_pk: Vec<u8>,
}

fn twin(vectors: &Value, id: u32) -> Twin {
    let t = &vectors["twins"][id.to_string()];
    assert_eq!(t["key_type"], "ed25519");
    let identity =
        Identity::from_secret(t["mnemonic"].as_str().unwrap(), KeyType::Ed25519).unwrap();
    let account: AccountId = format!("0x{}", t["account_hex"].as_str().unwrap())
        .parse()
        .unwrap();
    Twin {
        identity,
        account,
        secp_pk: hex::decode(t["pk_secp256k1_hex"].as_str().unwrap()).unwrap(),
    }
}

fn envelope(vectors: &Value, name: &str) -> Envelope {
    let bytes = hex::decode(vectors[name]["envelope_hex"].as_str().unwrap()).unwrap();
    Envelope::decode_limited(&bytes, DEFAULT_MAX_ENVELOPE_SIZE).unwrap()
}

#[test]
fn identities_derive_the_published_accounts_and_keys() {
    let vectors = rmb_testsupport::rmb_rs_vectors();
    for id in 1..=3u32 {
        let t = twin(&vectors, id);
        let ours = t.identity.signer().account();
        assert_eq!(ours, t.account, "twin {id} account");
        assert_eq!(
            ours.to_string(),
            vectors["twins"][id.to_string()]["ss58"],
            "twin {id} ss58"
        );
        assert_eq!(
            t.identity.e2e_public_key(E2eScheme::Secp256k1),
            t.secp_pk,
            "twin {id} secp256k1 pk"
        );
    }
}

#[test]
fn login_token_verifies_and_is_reproduced_exactly() {
    let vectors = rmb_testsupport::rmb_rs_vectors();
    let text = vectors["jwt_by_rmb_rs_peer_twin1"]["token"]
        .as_str()
        .unwrap();
    let t1 = twin(&vectors, 1);
    let token = Token::parse(text).unwrap();
    let claims = token.claims().clone();
    assert_eq!((claims.sub, claims.sid.as_deref()), (1, None));
    token.verify_signature(&t1.account).unwrap();
    token
        .verify(&t1.account, claims.iat, &Default::default())
        .unwrap();
    assert!(token.verify_signature(&twin(&vectors, 2).account).is_err());

    let ours = Token::create(
        t1.identity.signer(),
        1,
        None,
        claims.iat,
        claims.exp - claims.iat,
    );
    assert_eq!(
        ours, text,
        "ed25519 is deterministic: same claims, same token"
    );
}

#[test]
fn request_from_rmb_rs_verifies_resigns_and_decrypts() {
    let vectors = rmb_testsupport::rmb_rs_vectors();
    let (t1, t3) = (twin(&vectors, 1), twin(&vectors, 3));
    let env = envelope(&vectors, "request_by_rmb_rs_peer_twin1_to_twin3");

    let Some(Message::Request(request)) = &env.message else {
        panic!("expected a request, got {:?}", env.kind());
    };
    assert_eq!(request.command, "vector.test");
    assert_eq!(env.schema.as_deref(), Some("application/json"));
    assert_eq!(env.expiration, 300);
    assert_eq!(env.source, Some(Address::twin(1)));
    assert_eq!(env.destination, Some(Address::twin(3)));

    verify_envelope(&env, &t1.account).unwrap();
    assert!(verify_envelope(&env, &t3.account).is_err());

    let mut resigned = env.clone();
    rmb_identity::sign_envelope(t1.identity.signer(), &mut resigned);
    assert_eq!(resigned.signature, env.signature);

    let Some(Payload::Cipher(cipher)) = &env.payload else {
        panic!("expected an encrypted payload");
    };
    let plain = t3
        .identity
        .e2e()
        .open(E2eScheme::Secp256k1, Some(&t1.secp_pk), cipher)
        .unwrap();
    assert_eq!(plain, br#"{"vector":1}"#);
}

#[test]
fn request_from_a_session_client_verifies() {
    let vectors = rmb_testsupport::rmb_rs_vectors();
    let env = envelope(&vectors, "request_to_twin2");
    assert_eq!(env.source, Some(Address::session(3, "vec")));
    assert_eq!(env.destination, Some(Address::twin(2)));
    assert_eq!(env.kind(), MessageKind::Request);
    verify_envelope(&env, &twin(&vectors, 3).account).unwrap();
}

#[test]
fn response_from_rmb_rs_verifies_and_decrypts() {
    let vectors = rmb_testsupport::rmb_rs_vectors();
    let (t2, t3) = (twin(&vectors, 2), twin(&vectors, 3));
    let env = envelope(&vectors, "response_by_rmb_rs_peer_twin2");
    assert_eq!(env.kind(), MessageKind::Response);
    assert_eq!(env.source, Some(Address::twin(2)));
    assert_eq!(env.destination.as_ref().unwrap().to_string(), "3:vec");
    verify_envelope(&env, &t2.account).unwrap();

    let plain = t3
        .identity
        .e2e()
        .open(E2eScheme::Secp256k1, Some(&t2.secp_pk), env.payload_bytes())
        .unwrap();
    assert_eq!(plain, br#""v1.5.1-12-g15f2092-modified""#);
}

#[test]
fn relay_error_envelope_reads_as_rmb_rs_meant_it() {
    let vectors = rmb_testsupport::rmb_rs_vectors();
    let env = envelope(&vectors, "error_by_rmb_rs_relay");
    let Some(Message::Error(error)) = &env.message else {
        panic!("expected an error, got {:?}", env.kind());
    };
    assert_eq!(
        (error.code, error.message.as_str()),
        (0, "message wrong source")
    );
    assert_eq!(env.source, None);
    assert_eq!(env.source_twin(), 0);
    assert_eq!(env.destination.as_ref().unwrap().to_string(), "3:vec");
    assert_eq!(env.signature, None);
    assert_eq!(env.uid.len(), 36);
}

#[test]
fn our_encoding_of_a_decoded_vector_decodes_back_identically() {
    // Field order differs from rmb-rs (it writes field 7 after 9 and 10); content must not.
    let vectors = rmb_testsupport::rmb_rs_vectors();
    for name in [
        "request_by_rmb_rs_peer_twin1_to_twin3",
        "request_to_twin2",
        "response_by_rmb_rs_peer_twin2",
        "error_by_rmb_rs_relay",
    ] {
        let env = envelope(&vectors, name);
        let again = Envelope::decode_limited(&env.to_bytes(), DEFAULT_MAX_ENVELOPE_SIZE).unwrap();
        assert_eq!(again, env, "{name}");
        assert_eq!(again.challenge_digest(), env.challenge_digest(), "{name}");
    }
}
