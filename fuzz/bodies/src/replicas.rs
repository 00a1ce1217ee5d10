//! What replicas of one relay exchange (rmb_relay::replicas::wire and the Redis queue):
//! the replica link's handshake and frames, which any process able to reach the link
//! port can send, and the queue entries and wake-up messages replicas read from Redis.

use axum::body::Bytes;
use rmb_relay::queue::redis::{decode_entry, parse_session};
use rmb_relay::replicas::wire::{
    Frame, Side, decode, decode_hello, decode_prove, decode_proven, encode_ack, encode_batch,
    encode_hello, encode_ping, encode_prove, encode_proven, mac, verify,
};

use crate::{alloc, select};

/// The secret of the target's replica set.
const SECRET: &[u8] = b"fuzz replica secret";

/// By the first byte, the rest as a link frame body, a HELLO, PROVE or PROVEN body, a
/// queue entry or a wake-up message. No panic, bounded allocations (a count or length
/// read from the frame never reserves more than the frame can hold); every frame or
/// handshake message decoded encodes back to exactly the input (after its 4-byte
/// header); a PROVE verifies only if its MAC is the one the secret gives.
pub fn replica_frames(data: &[u8]) {
    let Some((which, rest)) = select(data, 6) else {
        return;
    };
    let body = Bytes::copy_from_slice(rest);
    let limit = alloc::limit(rest.len());
    let mut out = Vec::new();
    match which {
        0 => {
            let Ok(frame) = alloc::bounded("wire::decode", limit, || decode(body)) else {
                return;
            };
            match &frame {
                Frame::Batch { first, items } => {
                    encode_batch(
                        &mut out,
                        *first,
                        items.iter().map(|i| (&i.session, &i.item)),
                    );
                    assert!(items.iter().all(|i| i.session.sid.as_deref() != Some("")));
                }
                Frame::Ack { upto, refused } => encode_ack(&mut out, *upto, refused),
                Frame::Ping => encode_ping(&mut out),
            }
            assert_eq!(out[4..], *rest, "{frame:?} encodes back to its body");
        }
        1 => {
            if let Ok(hello) = alloc::bounded("decode_hello", limit, || decode_hello(body)) {
                encode_hello(&mut out, &hello);
                assert_eq!(out[4..], *rest);
            }
        }
        2 => {
            let Ok(prove) = alloc::bounded("decode_prove", limit, || decode_prove(body)) else {
                return;
            };
            encode_prove(&mut out, &prove);
            assert_eq!(out[4..], *rest);
            let nonce = [3; 32];
            let expected = mac(SECRET, Side::Client, &nonce, &prove.id, "server");
            let verdict = verify(
                SECRET,
                Side::Client,
                &nonce,
                &prove.id,
                "server",
                &prove.mac,
            );
            assert_eq!(verdict.is_ok(), expected == prove.mac);
            assert!(verify(SECRET, Side::Server, &nonce, &prove.id, "server", &expected).is_err());
        }
        3 => {
            if let Ok(proven) = decode_proven(body) {
                encode_proven(&mut out, &proven);
                assert_eq!(out[4..], *rest);
            }
        }
        4 => {
            if let Some((bytes, deadline)) = decode_entry(rest.to_vec(), 1_700_000_000) {
                assert!(deadline > 1_700_000_000);
                assert!(rest.ends_with(&bytes) && rest.len() > bytes.len());
            }
        }
        _ => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            if let Some(session) = parse_session(text) {
                assert!(session.sid.as_deref() != Some(""));
            }
        }
    }
}
