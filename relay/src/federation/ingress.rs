//! `POST /`: an envelope from another relay; `POST /federation/batch`: many, each
//! handled as `POST /` handles one ([`super::batch`]).
//!
//! Unlike rmb-rs, which accepts anything, an envelope is only accepted if its body
//! arrives within `--body-timeout` and the size limit, it is signed by the twin it claims
//! to come from (checked against the registry), is not a relay-made (twin 0) message, is
//! within that twin's rate limit — charged only once the signature is checked, so nobody
//! can spend another twin's budget — and is for a twin that lives here. Every refusal is
//! counted in `relay_errors_total{kind}`.
//!
//! The exception to the signature: connection data frames (their connection's AEAD
//! authenticates them end to end; docs/protocol.md §10), and requests and answers with
//! an encrypted payload (topic pushes and RPCs between rmb peers: their e2e encryption
//! does, bound to the envelope's fields, §3.4) may travel unsigned
//! ([`Envelope::is_unsigned_by_design`]); any other unsigned envelope (a plain payload,
//! an error) is refused like a bad signature, since no peer would accept it. Nothing here can tell a forged one from a
//! real one, so an unsigned envelope is charged to the pair
//! (claimed twin, posting address) instead, in a limiter of its own: frames forged in a
//! twin's name from elsewhere spend only their poster's budget, never the twin's own
//! (signed traffic) nor another relay's. They are counted in
//! `relay_unsigned_frames_in_total` as they arrive; the destination peer drops
//! forgeries.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use futures_util::StreamExt;
use rmb_identity::verify_envelope;
use rmb_proto::Envelope;

use super::batch::{self, BatchError, Outcome};
use super::outbound::LOG_EVERY;
use super::signatures;
use crate::errors::RouteError;
use crate::routing::{Origin, route};
use crate::state::RelayState;
use crate::throttle::LogThrottle;

static BODY_LOG: LogThrottle = LogThrottle::new(LOG_EVERY);

/// Envelopes of one batch being checked and routed at once. Each is started in the
/// batch's order, and one that does not wait is routed before the next starts.
const BATCH_CONCURRENCY: usize = 32;

fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    (status, message.into()).into_response()
}

/// A refusal after which the connection is closed (the rest of the body is not read).
fn refuse_and_close(status: StatusCode, message: impl Into<String>) -> Response {
    let mut response = refuse(status, message);
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Why a request body was not read (federation, and the hosted registry's POSTs, which
/// are read the same way: `crate::server::registry_body`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("request body of more than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("request body not received within {0:?}")]
    Timeout(std::time::Duration),
    #[error("request body could not be read: {0}")]
    Read(axum::Error),
}

impl BodyError {
    /// The `relay_errors_total{kind}` label and the HTTP status of this refusal.
    pub(crate) fn kind_and_status(&self) -> (&'static str, StatusCode) {
        match self {
            BodyError::TooLarge { .. } => ("oversize", StatusCode::PAYLOAD_TOO_LARGE),
            BodyError::Timeout(_) => ("body_timeout", StatusCode::REQUEST_TIMEOUT),
            BodyError::Read(_) => ("body_read", StatusCode::BAD_REQUEST),
        }
    }
}

/// Reads the body, at most `limit` bytes and within `--body-timeout`.
pub(crate) async fn read_body(
    state: &RelayState,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, BodyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    let read = async {
        // A body that arrives in one chunk is passed on as it is; from the second chunk
        // on they are joined in one buffer (never a list of chunks: a poster sending
        // byte-sized chunks would make that list cost many times the body).
        let mut first: Option<Bytes> = None;
        let mut buf: Vec<u8> = Vec::new();
        let mut total = 0usize;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(BodyError::Read)?;
            total = total.saturating_add(chunk.len());
            if total > limit {
                return Err(BodyError::TooLarge { limit });
            }
            if first.is_none() && buf.is_empty() {
                first = Some(chunk);
                continue;
            }
            if let Some(first) = first.take() {
                let capacity = declared.map_or(0, |n| n as usize).clamp(total, limit);
                buf.reserve_exact(capacity);
                buf.extend_from_slice(&first);
            }
            buf.extend_from_slice(&chunk);
        }
        if let Some(only) = first {
            return Ok(only);
        }
        Ok(Bytes::from(buf))
    };
    let timeout = state.config.body_timeout;
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(BodyError::Timeout(timeout)))
}

/// Counts a body that was not read, and answers it (closing the connection).
fn refuse_body(state: &RelayState, e: BodyError) -> Response {
    let (kind, status) = e.kind_and_status();
    state.metrics.error(kind);
    if let Some(held_back) = BODY_LOG.allow() {
        tracing::info!(error = %e, held_back, "federation request refused");
    }
    refuse_and_close(status, e.to_string())
}

/// The address a federation request came from (unspecified when unknown, as in tests
/// that call the router directly).
fn poster_ip(poster: Option<axum::Extension<ConnectInfo<SocketAddr>>>) -> IpAddr {
    poster.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| p.0.0.ip())
}

/// `POST /`: an envelope from another relay.
pub async fn ingress(
    State(state): State<Arc<RelayState>>,
    poster: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = match read_body(&state, &headers, body, state.config.max_envelope_size).await {
        Ok(body) => body,
        Err(e) => return refuse_body(&state, e),
    };
    let accepted = accept(&state, poster_ip(poster), body, false).await;
    deliveries_first().await;
    match accepted {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(refusal) => refuse(refusal.status, refusal.text),
    }
}

/// `POST /federation/batch`: envelopes from another relay, each checked and routed as
/// `POST /` would, in order; answered with one outcome per envelope (§11 of
/// docs/protocol.md). A body that is not a batch is refused as a whole.
pub async fn batch_ingress(
    State(state): State<Arc<RelayState>>,
    poster: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let max_envelope = state.config.max_envelope_size;
    let limit = max_envelope.max(batch::MIN_BATCH_BODY);
    let body = match read_body(&state, &headers, body, limit).await {
        Ok(body) => body,
        Err(e) => return refuse_body(&state, e),
    };
    let envelopes = match batch::decode(&body, max_envelope, batch::MAX_BATCH_ENVELOPES) {
        Ok(envelopes) => envelopes,
        Err(e) => {
            let (kind, status) = match e {
                BatchError::EnvelopeTooLarge { .. } | BatchError::TooMany { .. } => {
                    ("oversize", StatusCode::PAYLOAD_TOO_LARGE)
                }
                _ => ("malformed_batch", StatusCode::BAD_REQUEST),
            };
            state.metrics.error(kind);
            return refuse(status, format!("bad batch: {e}"));
        }
    };
    state.metrics.batches_in.inc();
    let from = poster_ip(poster);
    // Taken in order; one that waits (a registry lookup of a new twin, a Redis queue)
    // holds up at most BATCH_CONCURRENCY - 1 others, not the rest of the batch.
    let verified = signatures::verified_together(&state, &envelopes).await;
    let outcomes: Vec<Outcome> = futures_util::stream::iter(envelopes.into_iter().zip(verified))
        .map(|(envelope, verified)| {
            let state = &state;
            async move {
                match accept(state, from, envelope, verified).await {
                    Ok(()) => Outcome::accepted(),
                    Err(refusal) => Outcome::refused(refusal.status.as_u16(), &refusal.text),
                }
            }
        })
        .buffered(BATCH_CONCURRENCY)
        .collect()
        .await;
    deliveries_first().await;
    Json(outcomes).into_response()
}

/// Lets the sessions that routing just handed envelopes to write them before this task
/// answers the posting relay. Their writers were woken onto this worker; without the
/// yield each waited for the answer to be encoded and written (and on a busy machine
/// for the posting relay, woken by it, to give the CPU back): a tenth of a millisecond
/// or more on every federated hop of an RPC. The answer waits only for those writes,
/// which are already due; what it says is settled.
async fn deliveries_first() {
    tokio::task::yield_now().await;
}

/// Why one envelope from another relay was not taken: the status and text a `POST /`
/// of it answers.
struct Refusal {
    status: StatusCode,
    text: String,
}

impl Refusal {
    fn new(status: StatusCode, text: impl Into<String>) -> Self {
        Refusal {
            status,
            text: text.into(),
        }
    }
}

/// Checks one envelope posted by `from` and routes it; `verified` when its batch's
/// signatures were checked together already ([`signatures`]).
async fn accept(
    state: &Arc<RelayState>,
    from: IpAddr,
    body: Bytes,
    verified: bool,
) -> Result<(), Refusal> {
    let now = rmb_proto::time::unix_now();
    state.metrics.messages_in.inc();
    state.metrics.bytes_in.inc_by(body.len() as u64);
    let env = match Envelope::decode_limited_shared(&body, state.config.max_envelope_size) {
        Ok(env) => env,
        Err(rmb_proto::DecodeError::TooLarge { size, limit }) => {
            state.metrics.error("oversize");
            return Err(Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("envelope of {size} bytes exceeds the limit of {limit} bytes"),
            ));
        }
        Err(e) => {
            state.metrics.error("malformed");
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                format!("bad request: {e}"),
            ));
        }
    };
    let source = env.source_twin();
    if source == 0 {
        state.metrics.error("unsigned_federation");
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "federated envelopes must come from a twin (source twin 0 is refused)",
        ));
    }
    let account = match state.registry.get_twin(source).await {
        Ok(Some(twin)) => twin.account,
        Ok(None) => {
            state.metrics.error("unknown_source");
            return Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                format!("unknown source twin {source}"),
            ));
        }
        Err(e) => {
            state.metrics.error("registry");
            return Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("failed to get twin: {e}"),
            ));
        }
    };
    let charged = if env.is_unsigned_by_design() {
        // Unprovable as the twin's: charged to (twin, poster), never to the twin.
        state.metrics.unsigned_frames_in.inc();
        state.rate_limit_unsigned(source, from, body.len(), now)
    } else {
        let checked = if verified {
            Ok(())
        } else {
            verify_envelope(&env, &account)
        };
        if let Err(e) = checked {
            state.metrics.error("bad_signature");
            return Err(Refusal::new(StatusCode::UNAUTHORIZED, e.to_string()));
        }
        // Only now, with the signature checked, is this the source's own traffic:
        // charging its budget before would let anyone lock a twin out with forged POSTs
        // in its name.
        state.rate_limit(source, body.len(), now)
    };
    if let Err(reason) = charged {
        // Counted as the session path counts it: `relay_errors_total{kind="rate_limited"}`.
        state.metrics.rate_limited.inc();
        return Err(Refusal::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("exceeded rate limits: {reason}"),
        ));
    }
    match route(state, &Origin::Federation, body, env, now).await {
        Ok(()) => {
            state.metrics.federated_in.inc();
            Ok(())
        }
        Err(e) => {
            let status = match e {
                RouteError::DestinationOffline | RouteError::UnknownTwin => StatusCode::NOT_FOUND,
                RouteError::Federation(_) => StatusCode::MISDIRECTED_REQUEST,
                RouteError::QueueFull(_) | RouteError::RateLimited(_) => {
                    StatusCode::TOO_MANY_REQUESTS
                }
                RouteError::Registry(_) => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_REQUEST,
            };
            Err(Refusal::new(status, e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::sync::Notify;

    use super::deliveries_first;

    /// A session writer woken by routing writes before the handler goes on to answer:
    /// no timer, no wait for the answer (one thread, so the order is fixed).
    #[tokio::test(flavor = "current_thread")]
    async fn a_woken_session_writer_runs_before_the_answer() {
        let ready = Arc::new(Notify::new());
        let written = Arc::new(AtomicBool::new(false));
        let writer = {
            let (ready, written) = (Arc::clone(&ready), Arc::clone(&written));
            tokio::spawn(async move {
                ready.notified().await;
                written.store(true, Ordering::SeqCst);
            })
        };
        // Let the writer start waiting, as a connected session's writer does.
        tokio::task::yield_now().await;
        ready.notify_one();
        assert!(!written.load(Ordering::SeqCst));
        deliveries_first().await;
        assert!(written.load(Ordering::SeqCst), "the answer went first");
        writer.await.unwrap();
    }
}
