//! The signatures of a federation batch, checked together before its envelopes are
//! routed one by one.
//!
//! A relay receiving federated traffic verifies every signed envelope against its
//! source's account (an envelope posted by another relay proves nothing else). One by
//! one that is a full verification each, about half of the receiving relay's CPU per
//! envelope; verified together per scheme (most of a batch is one peer pair's traffic)
//! it costs less than half. An envelope whose batch does not verify is not marked, so
//! [`ingress`](super::ingress) verifies it alone as before: a forgery in a batch costs
//! the batch its discount and is refused by itself, never passed.

use std::sync::Arc;

use axum::body::Bytes;
use futures_util::StreamExt;
use rmb_identity::envelope::check_shape;
use rmb_identity::{AccountId, verified_in_groups};
use rmb_proto::Envelope;

use crate::state::RelayState;

/// Registry lookups of one batch running at once (they are cached; a new twin waits).
const LOOKUPS: usize = 32;

/// What verifying one envelope needs.
struct Signed {
    account: AccountId,
    digest: [u8; 16],
    signature: Vec<u8>,
}

/// For each envelope of a batch: true when its signature was verified here, with the
/// others of its scheme; false when it must be checked alone (unsigned by design,
/// unreadable, unknown source, or in a group that did not verify).
pub(super) async fn verified_together(state: &Arc<RelayState>, envelopes: &[Bytes]) -> Vec<bool> {
    // Owned (an Arc and a refcounted body each): the handler's future must be Send for
    // any lifetime, which futures borrowing from the batch cannot prove.
    let signed: Vec<Option<Signed>> = futures_util::stream::iter(envelopes.to_vec())
        .map(|body| {
            let state = Arc::clone(state);
            async move { signed(&state, &body).await }
        })
        .buffered(LOOKUPS)
        .collect()
        .await;
    let known: Vec<(usize, &Signed)> = signed
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.as_ref().map(|s| (i, s)))
        .collect();
    let items: Vec<(&AccountId, &[u8], &[u8])> = known
        .iter()
        .map(|(_, s)| (&s.account, &s.digest[..], s.signature.as_slice()))
        .collect();
    let mut verified = vec![false; envelopes.len()];
    for ((i, _), together) in known.iter().zip(verified_in_groups(&items)) {
        verified[*i] = together;
    }
    verified
}

/// The signature check one envelope needs, when it is a signed envelope of a known twin.
async fn signed(state: &RelayState, body: &Bytes) -> Option<Signed> {
    let env = Envelope::decode_limited_shared(body, state.config.max_envelope_size).ok()?;
    let source = env.source_twin();
    if source == 0 || env.is_unsigned_by_design() || check_shape(&env).is_err() {
        return None;
    }
    let signature = env.signature.as_deref()?;
    let twin = state.registry.get_twin(source).await.ok()??;
    Some(Signed {
        account: twin.account,
        digest: env.challenge_digest(),
        signature: signature.to_vec(),
    })
}
