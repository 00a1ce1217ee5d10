//! The middleware in front of every route: the access rules ([`super::access`]), CORS
//! for allowed origins, and the request body read whole, within a deadline and a size
//! limit, before any handler runs.
//!
//! Reading the body here, not in the handlers, is what puts a deadline on it: a client
//! that declares a large body and sends it a byte at a time is answered 408 when the
//! deadline passes, one that declares more than the limit is answered 413 at once, and
//! either way the connection closes (hyper does not keep a connection whose body was not
//! read to the end).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmb_proto::throttle::LogThrottle;

use super::access::{ALLOWED_HEADERS, Access, Transport};
use super::error::ApiError;

/// Refusals are logged at most once per this interval (a web page can cause them).
static REFUSAL_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(10));

/// Why requests and connections were refused or dropped, counted (shown by `GET /`).
#[derive(Debug, Default)]
pub struct Refusals {
    counts: [AtomicU64; LABELS.len()],
}

/// Every reason [`Refusals`] counts.
pub const LABELS: [&str; 10] = [
    "host",
    "origin",
    "cross_site",
    "content_type",
    "token",
    "body_too_large",
    "body_timeout",
    "header_timeout",
    "connections",
    "slow_consumer",
];

impl Refusals {
    /// Counts one refusal for `label` (one of [`LABELS`]).
    pub fn count(&self, label: &str) {
        if let Some(i) = LABELS.iter().position(|l| *l == label) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counts by reason.
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        LABELS
            .iter()
            .zip(&self.counts)
            .map(|(l, c)| (*l, c.load(Ordering::Relaxed)))
            .collect()
    }
}

/// What the middleware needs.
#[derive(Debug)]
pub struct Guard {
    /// The access rules.
    pub access: Access,
    /// Counters of refusals.
    pub refusals: Arc<Refusals>,
    /// Deadline for a request body, from the end of its headers.
    pub body_timeout: Duration,
    /// Largest request body.
    pub max_body: usize,
}

/// Applies the access rules, answers preflights and reads the body (see the module doc).
pub async fn guard(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    let transport = request
        .extensions()
        .get::<Transport>()
        .copied()
        .unwrap_or(Transport::Tcp);
    let (parts, body) = request.into_parts();
    if parts.method == Method::OPTIONS && transport == Transport::Tcp {
        return match guard.access.preflight(&parts.headers) {
            Some(origin) => {
                let mut response = StatusCode::NO_CONTENT.into_response();
                let h = response.headers_mut();
                h.insert(
                    header::ACCESS_CONTROL_ALLOW_METHODS,
                    HeaderValue::from_static("GET, POST, PUT, DELETE"),
                );
                h.insert(
                    header::ACCESS_CONTROL_ALLOW_HEADERS,
                    HeaderValue::from_static(ALLOWED_HEADERS),
                );
                h.insert(
                    header::ACCESS_CONTROL_MAX_AGE,
                    HeaderValue::from_static("600"),
                );
                allow(h, origin);
                response
            }
            None => refuse(
                &guard,
                "origin",
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    "cross-origin requests from this origin are refused; allow the origin \
                     with rmb-peer --http-allow-origin",
                ),
            ),
        };
    }
    let origin =
        match guard
            .access
            .check(transport, &parts.method, parts.uri.query(), &parts.headers)
        {
            Ok(origin) => origin,
            Err(refusal) => {
                let mut response = refuse(
                    &guard,
                    refusal.label(),
                    ApiError::new(refusal.status(), refusal.message()),
                );
                if refusal.status() == StatusCode::UNAUTHORIZED {
                    response
                        .headers_mut()
                        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                }
                return response;
            }
        };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > guard.max_body as u64) {
        return too_large(&guard);
    }
    let read = axum::body::to_bytes(body, guard.max_body);
    let bytes = match tokio::time::timeout(guard.body_timeout, read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => {
            if over_the_limit(&e) {
                return too_large(&guard);
            }
            return closing(ApiError::bad_request(format!("reading the body: {e}")));
        }
        Err(_) => {
            return refuse(
                &guard,
                "body_timeout",
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the request body did not arrive within {} s",
                        guard.body_timeout.as_secs()
                    ),
                ),
            );
        }
    };
    let mut response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    if let Some(origin) = origin {
        allow(response.headers_mut(), origin);
    }
    response
}

/// True when reading a body failed for its size (the limit `to_bytes` was given).
fn over_the_limit(e: &axum::Error) -> bool {
    std::error::Error::source(e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
}

fn allow(headers: &mut axum::http::HeaderMap, origin: HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
}

fn too_large(guard: &Guard) -> Response {
    refuse(
        guard,
        "body_too_large",
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {} bytes", guard.max_body),
        ),
    )
}

/// Counts and logs (throttled) a refusal, and answers it on a closing connection.
fn refuse(guard: &Guard, label: &'static str, error: ApiError) -> Response {
    guard.refusals.count(label);
    if let Some(held_back) = REFUSAL_LOG.allow() {
        tracing::info!(reason = label, error = %error.message, held_back, "http api request refused");
    }
    closing(error)
}

fn closing(error: ApiError) -> Response {
    let mut response = error.into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_over_the_limit_is_told_from_other_read_errors() {
        let e = axum::body::to_bytes(Body::from(vec![0u8; 10]), 5)
            .await
            .unwrap_err();
        assert!(over_the_limit(&e), "{e:?}");
        let broken = Body::from_stream(futures_util::stream::once(async {
            Err::<axum::body::Bytes, _>(std::io::Error::other("cut"))
        }));
        let e = axum::body::to_bytes(broken, 5).await.unwrap_err();
        assert!(!over_the_limit(&e), "{e:?}");
    }
}
