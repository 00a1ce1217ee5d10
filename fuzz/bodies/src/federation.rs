//! Federation between relays (rmb_relay::federation::batch): the body of
//! `POST /federation/batch` a relay receives from any other relay, and the answer a
//! sending relay reads back.

use axum::body::Bytes;
use rmb_relay::federation::batch::{Outcome, decode, decode_answer, encode, max_answer_bytes};

use crate::{alloc, select};

/// Bounds of the target's decoder: small, so the fuzzer reaches them.
const MAX_ENVELOPE: usize = 512;
const MAX_COUNT: usize = 16;

/// By the first byte, the rest as a batch body or (the second byte the envelope count)
/// as an answer. No panic; a batch decodes without copying envelopes (bounded
/// allocations), within its limits, and encodes back to exactly the body; an answer
/// has one outcome per envelope and, when it is as small as ours are, writes back to
/// one that reads the same.
pub fn federation_batch(data: &[u8]) {
    let Some((which, rest)) = select(data, 2) else {
        return;
    };
    if which == 0 {
        let body = Bytes::copy_from_slice(rest);
        let decoded = alloc::bounded("batch::decode", alloc::limit(rest.len()), || {
            decode(&body, MAX_ENVELOPE, MAX_COUNT)
        });
        if let Ok(envelopes) = decoded {
            assert!(!envelopes.is_empty() && envelopes.len() <= MAX_COUNT);
            assert!(
                envelopes
                    .iter()
                    .all(|e| !e.is_empty() && e.len() <= MAX_ENVELOPE)
            );
            assert_eq!(encode(&envelopes), body);
        }
        return;
    }
    let Some((&count, answer)) = rest.split_first() else {
        return;
    };
    let count = usize::from(count % 32);
    let outcomes = alloc::bounded("batch::decode_answer", alloc::limit(answer.len()), || {
        decode_answer(answer, count)
    });
    let Some(outcomes) = outcomes else {
        return;
    };
    assert_eq!(outcomes.len(), count);
    let again = serde_json::to_vec(&outcomes).expect("outcomes serialize");
    assert_eq!(decode_answer(&again, count), Some(outcomes.clone()));
    let ours: Vec<Outcome> = outcomes
        .iter()
        .map(|o| Outcome::refused(o.status, o.error.as_deref().unwrap_or("")))
        .collect();
    let ours = serde_json::to_vec(&ours).expect("outcomes serialize");
    assert!(
        ours.len() <= max_answer_bytes(count),
        "our answers fit what senders read"
    );
}
