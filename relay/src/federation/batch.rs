//! The body and answer of `POST /federation/batch`: many envelopes in one federation
//! request, between relays that both speak it (docs/protocol.md §11).
//!
//! rmb-rs federates one envelope per `POST /`. Fanning a topic message out to 100
//! subscribers on another relay then costs 100 HTTP requests between the two relays,
//! and their handling, not the envelopes, is most of the CPU. A batch carries what
//! queued up for one relay while its previous request was under way.
//!
//! Body: the envelopes one after another, each as a 4-byte big-endian length followed
//! by that many bytes of the envelope's encoding. Answer: `200` with a JSON array of one
//! [`Outcome`] per envelope, in the body's order, carrying the status a `POST /` of
//! that envelope alone would have had (`202`, or the refusal and its text). A body that
//! is not a batch at all is refused as a whole (4xx), and the sender then posts each
//! envelope alone. Relays that do not know the path (rmb-rs answers 404) are posted to
//! one envelope at a time.
//!
//! This module is the format only: pure functions, no I/O.

use axum::body::Bytes;
use serde::{Deserialize, Serialize};

/// The path of the batch endpoint.
pub const BATCH_PATH: &str = "/federation/batch";

/// Content type of a batch body.
pub const BATCH_CONTENT_TYPE: &str = "application/x-rmb-envelope-batch";

/// Most envelopes a receiving relay takes in one batch; more is refused as a whole.
pub const MAX_BATCH_ENVELOPES: usize = 1024;

/// A receiving relay accepts batch bodies of at least this many bytes (or of
/// `--max-envelope-size` if that is larger), so a sender batching up to this much is
/// never refused for the batch's size by a relay of ours with default settings.
pub const MIN_BATCH_BODY: usize = 1024 * 1024;

/// Most bytes of one envelope's refusal text in an answer.
pub const MAX_ERROR_TEXT: usize = 200;

/// Bytes a batch body spends on each envelope besides the envelope: its length prefix.
pub const PREFIX: usize = 4;

/// Why a batch body was refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("empty batch")]
    Empty,
    #[error("batch cut short in envelope {index} (at byte {offset})")]
    Truncated { index: usize, offset: usize },
    #[error("envelope {index} of the batch is empty")]
    EmptyEnvelope { index: usize },
    #[error("envelope {index} of the batch has {size} bytes, more than the limit of {limit}")]
    EnvelopeTooLarge {
        index: usize,
        size: usize,
        limit: usize,
    },
    #[error("more than {limit} envelopes in one batch")]
    TooMany { limit: usize },
}

/// The batch body carrying `envelopes`, in order.
pub fn encode<'a>(envelopes: impl IntoIterator<Item = &'a Bytes>) -> Bytes {
    let mut body = Vec::new();
    for envelope in envelopes {
        let len = u32::try_from(envelope.len()).expect("envelopes are far below 4 GiB");
        body.extend_from_slice(&len.to_be_bytes());
        body.extend_from_slice(envelope);
    }
    Bytes::from(body)
}

/// The envelopes of a batch body (slices of `body`, not copies), each at most
/// `max_envelope` bytes and at most `max_count` of them.
pub fn decode(
    body: &Bytes,
    max_envelope: usize,
    max_count: usize,
) -> Result<Vec<Bytes>, BatchError> {
    if body.is_empty() {
        return Err(BatchError::Empty);
    }
    let mut envelopes = Vec::new();
    let mut offset = 0usize;
    while offset < body.len() {
        let index = envelopes.len();
        if index >= max_count {
            return Err(BatchError::TooMany { limit: max_count });
        }
        let Some(prefix) = body.get(offset..offset + PREFIX) else {
            return Err(BatchError::Truncated { index, offset });
        };
        let size = u32::from_be_bytes(prefix.try_into().expect("4 bytes")) as usize;
        if size == 0 {
            return Err(BatchError::EmptyEnvelope { index });
        }
        if size > max_envelope {
            return Err(BatchError::EnvelopeTooLarge {
                index,
                size,
                limit: max_envelope,
            });
        }
        let start = offset + PREFIX;
        let end = start.saturating_add(size);
        if end > body.len() {
            return Err(BatchError::Truncated { index, offset });
        }
        envelopes.push(body.slice(start..end));
        offset = end;
    }
    Ok(envelopes)
}

/// What became of one envelope of a batch: the status a `POST /` of it alone would have
/// answered, and for a refusal its text (at most [`MAX_ERROR_TEXT`] bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Outcome {
    /// Taken (202 Accepted).
    pub fn accepted() -> Self {
        Outcome {
            status: 202,
            error: None,
        }
    }

    /// Refused with `status` and `text` (cut to [`MAX_ERROR_TEXT`] bytes).
    pub fn refused(status: u16, text: &str) -> Self {
        let mut end = text.len().min(MAX_ERROR_TEXT);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        Outcome {
            status,
            error: Some(text[..end].to_string()),
        }
    }
}

/// Most bytes an answer to a batch of `count` envelopes can take from a relay of ours:
/// a sender reads no more than this.
pub fn max_answer_bytes(count: usize) -> usize {
    // `{"status":NNN,"error":"…"},` with every character of the text escaped (\uXXXX).
    2 + count.saturating_mul(32 + 6 * MAX_ERROR_TEXT)
}

/// The outcomes in an answer to a batch of `count` envelopes, if it is one.
pub fn decode_answer(answer: &[u8], count: usize) -> Option<Vec<Outcome>> {
    let outcomes: Vec<Outcome> = serde_json::from_slice(answer).ok()?;
    (outcomes.len() == count).then_some(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelopes(sizes: &[usize]) -> Vec<Bytes> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| Bytes::from(vec![i as u8 + 1; n]))
            .collect()
    }

    #[test]
    fn a_batch_decodes_to_its_envelopes_in_order() {
        let sent = envelopes(&[1, 300, 70_000, 5]);
        let body = encode(&sent);
        assert_eq!(body.len(), 70_306 + 4 * PREFIX);
        assert_eq!(decode(&body, 70_000, 4).unwrap(), sent);
    }

    #[test]
    fn bodies_that_are_not_batches_are_refused() {
        let body = encode(&envelopes(&[10, 20]));
        assert_eq!(decode(&Bytes::new(), 100, 10), Err(BatchError::Empty));
        // Cut in the second envelope, and in the second prefix.
        for cut in [body.len() - 1, 14 + 2] {
            assert_eq!(
                decode(&body.slice(..cut), 100, 10),
                Err(BatchError::Truncated {
                    index: 1,
                    offset: 14
                }),
                "cut at {cut}"
            );
        }
        assert_eq!(
            decode(&Bytes::from_static(&[0, 0, 0, 0, 1]), 100, 10),
            Err(BatchError::EmptyEnvelope { index: 0 })
        );
        // A length far beyond the body (and beyond any limit) is refused before any
        // allocation or arithmetic overflow.
        assert_eq!(
            decode(&Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 1]), 100, 10),
            Err(BatchError::EnvelopeTooLarge {
                index: 0,
                size: u32::MAX as usize,
                limit: 100
            })
        );
        assert_eq!(
            decode(&body, 15, 10),
            Err(BatchError::EnvelopeTooLarge {
                index: 1,
                size: 20,
                limit: 15
            })
        );
        assert_eq!(decode(&body, 100, 1), Err(BatchError::TooMany { limit: 1 }));
    }

    #[test]
    fn answers_match_their_batch() {
        let outcomes = vec![Outcome::accepted(), Outcome::refused(404, "offline")];
        let json = serde_json::to_vec(&outcomes).unwrap();
        assert_eq!(
            std::str::from_utf8(&json).unwrap(),
            r#"[{"status":202},{"status":404,"error":"offline"}]"#
        );
        assert_eq!(decode_answer(&json, 2), Some(outcomes));
        assert_eq!(decode_answer(&json, 3), None);
        assert_eq!(decode_answer(b"page not found", 1), None);
    }

    #[test]
    fn refusal_texts_are_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_ERROR_TEXT);
        let cut = Outcome::refused(400, &long).error.unwrap();
        assert_eq!(cut.len(), MAX_ERROR_TEXT);
        let worst = vec![Outcome::refused(400, &"\u{1}".repeat(MAX_ERROR_TEXT)); 3];
        assert!(serde_json::to_vec(&worst).unwrap().len() <= max_answer_bytes(3));
    }
}
