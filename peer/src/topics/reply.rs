//! Answers to the topic requests of other twins (`rmb.topic.*`), shared by the owner
//! and the subscriber task: an answer, or an error reply that is counted and logged at
//! a bounded rate. Below both, so neither imports the other or the router for it.

use super::shared::Shared;
use crate::core::types::DEFAULT_EXPIRATION;
use crate::core::{InboundRequest, OutgoingResponse, Reason, RemoteError, RequestAuth};

/// Refuses a topic request with an error reply (counted by reason, logged at most once
/// per 10 s per twin).
pub(crate) async fn reply_error(
    shared: &Shared,
    request: &InboundRequest,
    reason: &'static str,
    code: u32,
    message: String,
) {
    shared.counters.refuse(reason);
    if shared
        .peer
        .log_allowed(u64::from(request.source.twin), Reason::InvalidMessage)
    {
        tracing::info!(twin = request.source.twin, command = %request.command, reason, %message, "refused a topic request (logged once per 10 s per twin)");
    }
    reply(shared, request, Err(RemoteError::new(code, message))).await;
}

/// Answers a topic request (the core keeps the reply for repeats of the request).
pub(crate) async fn reply(
    shared: &Shared,
    request: &InboundRequest,
    reply: Result<Vec<u8>, RemoteError>,
) {
    let response = OutgoingResponse {
        uid: request.uid.clone(),
        destination: request.source.clone(),
        reply,
        schema: Some("application/json".into()),
        timestamp: 0,
        expiration: DEFAULT_EXPIRATION,
    };
    // A push that came unsigned is answered unsigned with its binding (when the answer
    // has a body); any other as an RPC's answer.
    let sent = if request.auth == RequestAuth::Topic {
        shared.peer.send_unsigned_response(response).await
    } else {
        shared.peer.send_response(response).await
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "could not send a topic reply");
    }
}
