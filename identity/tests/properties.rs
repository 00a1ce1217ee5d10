//! Property tests: signatures and sealed payloads verify when intact, and any single
//! flipped bit in a signed envelope or a sealed payload is rejected.

use std::sync::OnceLock;

use proptest::prelude::*;
use rmb_identity::{E2eScheme, Identity, KeyType, verify};
use rmb_proto::{Address, Envelope, Error, Message, Payload, Request, Response};

fn ed() -> &'static Identity {
    static ID: OnceLock<Identity> = OnceLock::new();
    ID.get_or_init(|| Identity::from_secret("//Alice", KeyType::Ed25519).unwrap())
}

fn sr() -> &'static Identity {
    static ID: OnceLock<Identity> = OnceLock::new();
    ID.get_or_init(|| Identity::from_secret("//Bob", KeyType::Sr25519).unwrap())
}

fn identity(ed25519: bool) -> &'static Identity {
    if ed25519 { ed() } else { sr() }
}

/// Envelopes as a current sender makes them before sealing (plain or no payload).
fn outgoing_envelope() -> impl Strategy<Value = Envelope> {
    let message = prop_oneof![
        // Never empty: receivers refuse a request without a command (check_shape).
        "[a-z.]{1,20}".prop_map(|command| Message::Request(Request { command })),
        Just(Message::Response(Response {})),
        (any::<u32>(), "[a-z ]{0,20}")
            .prop_map(|(code, message)| Message::Error(Error { code, message })),
    ];
    (
        "[a-f0-9-]{0,36}",
        proptest::option::of("[a-z,-]{0,12}"),
        (1u64..u64::MAX / 2, 0u64..100_000),
        (
            any::<u32>(),
            proptest::option::of("[a-z]{0,6}"),
            any::<u32>(),
        ),
        message,
        proptest::option::of("[a-z/]{0,16}"),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..48)),
    )
        .prop_map(
            |(uid, tags, (timestamp, expiration), (src, sid, dst), message, schema, plain)| {
                Envelope {
                    uid,
                    tags,
                    timestamp,
                    expiration,
                    source: Some(Address {
                        twin: src,
                        connection: sid,
                    }),
                    destination: Some(Address::twin(dst)),
                    message: Some(message),
                    schema,
                    payload: plain.map(Payload::Plain),
                    ..Default::default()
                }
            },
        )
}

/// What an envelope means to a receiver: empty optional strings and an empty plain
/// payload are the same as absent ones (the v1 challenge cannot tell them apart).
fn meaning(mut env: Envelope) -> Envelope {
    fn blank(s: &mut Option<String>) {
        if s.as_deref() == Some("") {
            *s = None;
        }
    }
    blank(&mut env.tags);
    blank(&mut env.schema);
    for addr in [&mut env.source, &mut env.destination]
        .into_iter()
        .flatten()
    {
        blank(&mut addr.connection);
    }
    if matches!(&env.payload, Some(Payload::Plain(p)) if p.is_empty()) {
        env.payload = None;
    }
    env
}

/// The sender, the receiver, and the e2e scheme (None = the receiver publishes no key).
fn parties(
    ed25519_sender: bool,
    scheme: Option<E2eScheme>,
) -> (&'static Identity, &'static Identity, Option<E2eScheme>) {
    (identity(ed25519_sender), identity(!ed25519_sender), scheme)
}

/// Runs the receive pipeline on `bytes`: decode, verify, decrypt. The opened envelope.
fn receive(
    bytes: &[u8],
    from: &Identity,
    to: &Identity,
    scheme: Option<E2eScheme>,
) -> Option<Envelope> {
    let mut env = Envelope::decode_limited(bytes, 1 << 20).ok()?;
    let sender_key = scheme.map(|s| from.e2e_public_key(s));
    to.open_envelope(
        &mut env,
        &from.signer().account(),
        sender_key.as_deref(),
        scheme.unwrap_or_default(),
    )
    .ok()?;
    Some(env)
}

fn scheme_strategy() -> impl Strategy<Value = Option<E2eScheme>> {
    prop_oneof![
        Just(None),
        Just(Some(E2eScheme::X25519)),
        Just(Some(E2eScheme::Secp256k1))
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn sign_then_verify(message in proptest::collection::vec(any::<u8>(), 0..256), ed25519 in any::<bool>()) {
        let id = identity(ed25519);
        let signature = id.signer().sign(&message);
        prop_assert!(verify(&id.signer().account(), &message, &signature).is_ok());
        let other = identity(!ed25519);
        prop_assert!(verify(&other.signer().account(), &message, &signature).is_err());
    }

    #[test]
    fn any_flipped_bit_in_a_sealed_signed_envelope_is_rejected(
        env in outgoing_envelope(),
        ed25519 in any::<bool>(),
        scheme in scheme_strategy(),
    ) {
        let (from, to, scheme) = parties(ed25519, scheme);
        let original = env.clone();
        let mut env = env;
        let recipient_key = scheme.map(|s| to.e2e_public_key(s));
        from.seal_envelope(&mut env, recipient_key.as_deref(), 1_700_000_000).unwrap();
        let bytes = env.to_bytes();
        let opened = receive(&bytes, from, to, scheme).expect("intact envelope is accepted");
        prop_assert_eq!(meaning(opened.clone()).payload, meaning(original).payload);
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            // A flip is refused, or it hit something with no meaning: the top bits of a
            // uint32 varint (protobuf drops them) or the presence of an empty field.
            if let Some(read) = receive(&flipped, from, to, scheme) {
                prop_assert_eq!(
                    meaning(read),
                    meaning(opened.clone()),
                    "flipping bit {} changed the envelope yet it was accepted",
                    bit
                );
            }
        }
    }

    #[test]
    fn seal_then_open(plain in proptest::collection::vec(any::<u8>(), 0..2048), x25519 in any::<bool>()) {
        let scheme = if x25519 { E2eScheme::X25519 } else { E2eScheme::Secp256k1 };
        let (from, to) = (ed(), sr());
        let sealed = from.e2e().seal(&to.e2e_public_key(scheme), &plain).unwrap();
        let opened = to.e2e().open(scheme, Some(&from.e2e_public_key(scheme)), &sealed).unwrap();
        prop_assert_eq!(opened, plain);
    }

    #[test]
    fn any_flipped_bit_in_a_sealed_payload_is_rejected(plain in proptest::collection::vec(any::<u8>(), 0..64), x25519 in any::<bool>()) {
        let scheme = if x25519 { E2eScheme::X25519 } else { E2eScheme::Secp256k1 };
        let (from, to) = (ed(), sr());
        let sender_key = from.e2e_public_key(scheme);
        let sealed = from.e2e().seal(&to.e2e_public_key(scheme), &plain).unwrap();
        for bit in 0..sealed.len() * 8 {
            let mut flipped = sealed.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(to.e2e().open(scheme, Some(&sender_key), &flipped).is_err(), "bit {}", bit);
        }
    }
}
