//! The hosted registry's request bodies, read under the same rules as a federation
//! `POST /`: within `--body-timeout` and at most the registry's body limit
//! ([`registry::http::MAX_BODY`]). Without this a client could keep a `POST /twins`
//! open forever by sending its body a byte at a time (hyper's header deadline ends with
//! the headers, and axum's body limit counts bytes, not time).
//!
//! A layer in front of the registry's routes, so the handlers stay as they are: the
//! body is read here and handed on whole.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmb_identity::registry::api::ErrorBody;

use crate::federation::ingress::read_body;
use crate::registry;
use crate::state::RelayState;
use crate::throttle::LogThrottle;

/// Refused registry bodies are logged at most once per this interval (anyone can send
/// them).
static REFUSED_LOG: LogThrottle = LogThrottle::new(std::time::Duration::from_secs(10));

/// Reads the request's body (bounded in time and size) before the registry sees it; a
/// body that is too slow or too large is answered with the registry's JSON error, counted
/// (`body_timeout`, `oversize`, `body_read`), and its connection closed.
pub async fn bounded(
    State(state): State<Arc<RelayState>>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let limit = registry::http::MAX_BODY;
    match read_body(&state, &parts.headers, body, limit).await {
        Ok(bytes) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Err(e) => {
            let (kind, status) = e.kind_and_status();
            state.metrics.error(kind);
            if let Some(held_back) = REFUSED_LOG.allow() {
                tracing::info!(error = %e, held_back, path = %parts.uri.path(), "registry request refused");
            }
            let body = ErrorBody {
                error: e.to_string(),
            };
            let mut response = (status, axum::Json(body)).into_response();
            // The rest of the body is not read: the connection cannot be reused.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
    }
}
