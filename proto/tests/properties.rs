//! Property tests of the wire format: encode/decode, the size limit, and decoder safety.

use proptest::prelude::*;
use rmb_proto::{
    Address, DecodeError, Envelope, Error, Message, Payload, Ping, Pong, Request, Response,
};

fn address() -> impl Strategy<Value = Address> {
    (any::<u32>(), proptest::option::of("[a-z0-9]{0,8}"))
        .prop_map(|(twin, connection)| Address { twin, connection })
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        "[a-z.]{0,24}".prop_map(|command| Message::Request(Request { command })),
        Just(Message::Response(Response {})),
        (any::<u32>(), ".{0,24}")
            .prop_map(|(code, message)| Message::Error(Error { code, message })),
        Just(Message::Ping(Ping {})),
        Just(Message::Pong(Pong {})),
    ]
}

fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..128).prop_map(Payload::Plain),
        proptest::collection::vec(any::<u8>(), 0..128).prop_map(Payload::Cipher),
    ]
}

/// Any envelope, including the deprecated fields.
pub fn envelope() -> impl Strategy<Value = Envelope> {
    (
        ("[a-f0-9-]{0,36}", proptest::option::of("[a-z, -]{0,16}")),
        (any::<u64>(), any::<u64>()),
        (
            proptest::option::of(address()),
            proptest::option::of(address()),
        ),
        proptest::option::of(message()),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 65)),
        (
            proptest::option::of("[a-z/]{0,16}"),
            proptest::option::of("[a-z]{0,8}"),
        ),
        proptest::option::of(payload()),
        proptest::collection::vec("[a-z.]{0,12}", 0..3),
    )
        .prop_map(
            |(
                (uid, tags),
                (timestamp, expiration),
                (source, destination),
                message,
                signature,
                (schema, federation),
                payload,
                relays,
            )| {
                Envelope {
                    uid,
                    tags,
                    timestamp,
                    expiration,
                    source,
                    destination,
                    message,
                    signature,
                    schema,
                    federation,
                    payload,
                    relays,
                }
            },
        )
}

proptest! {
    #[test]
    fn encode_then_decode_is_identity(env in envelope()) {
        let bytes = env.to_bytes();
        let back = Envelope::decode_limited(&bytes, bytes.len()).unwrap();
        prop_assert_eq!(back, env);
    }

    #[test]
    fn anything_over_the_limit_is_refused(env in envelope(), cut in 1usize..32) {
        let bytes = env.to_bytes();
        let limit = bytes.len().saturating_sub(cut);
        if limit < bytes.len() {
            let refused = matches!(
                Envelope::decode_limited(&bytes, limit),
                Err(DecodeError::TooLarge { .. })
            );
            prop_assert!(refused);
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Envelope::decode_limited(&bytes, 1024);
    }

    #[test]
    fn address_text_round_trips(addr in address()) {
        let text = addr.to_string();
        let parsed = text.parse::<Address>();
        if addr.connection.as_deref() == Some("") {
            prop_assert!(parsed.is_err());
        } else {
            prop_assert_eq!(parsed.unwrap(), addr);
        }
    }
}
