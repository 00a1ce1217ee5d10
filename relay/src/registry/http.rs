//! The embedded registry's HTTP routes (see `rmb_identity::registry::api` for the API).
//!
//! Errors are JSON `{"error": "..."}` with a status that says whose fault it is: 400 bad
//! input, 401 bad signature, 404 unknown twin, 409 replayed or stale request, 429 too
//! many registrations from the client's address ([`RegisterLimit`], when the relay adds
//! one as an extension), 500 store failure.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rmb_identity::AccountId;
use rmb_identity::registry::Twin;
use rmb_identity::registry::api::{ChangesResponse, ErrorBody, PublishRequest};
use serde::Deserialize;

use super::hosted::{HostedRegistry, PublishError, now_ms};
use super::register_limit::RegisterLimit;
use super::store::StoreError;

/// Largest publish request body accepted.
pub const MAX_BODY: usize = 64 * 1024;
/// Longest a `/changes` request may wait.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// The routes, to be merged into the relay's HTTP server.
pub fn router(registry: Arc<HostedRegistry>) -> Router {
    Router::new()
        .route("/twins/{id}", get(twin_by_id))
        .route("/twins/by-account/{account}", get(twin_by_account))
        .route("/twins", axum::routing::post(publish))
        .route("/changes", get(changes))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(registry)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = ErrorBody {
        error: message.into(),
    };
    (status, axum::Json(body)).into_response()
}

fn store_error(e: StoreError) -> Response {
    tracing::error!(error = %e, "registry store failed");
    error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

fn found(twin: Option<Twin>, what: String) -> Response {
    match twin {
        Some(twin) => axum::Json(twin).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("{what} not found")),
    }
}

async fn twin_by_id(
    State(registry): State<Arc<HostedRegistry>>,
    Path(id): Path<String>,
) -> Response {
    let Ok(id) = id.parse::<u32>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("twin id '{id}' is not a number"),
        );
    };
    match registry.store().get(id).await {
        Ok(twin) => found(twin, format!("twin {id}")),
        Err(e) => store_error(e),
    }
}

async fn twin_by_account(
    State(registry): State<Arc<HostedRegistry>>,
    Path(account): Path<String>,
) -> Response {
    let account: AccountId = match account.parse() {
        Ok(account) => account,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("account '{account}': {e}")),
    };
    let twin = match registry.store().id_by_account(&account).await {
        Ok(Some(id)) => registry.store().get(id).await,
        Ok(None) => Ok(None),
        Err(e) => Err(e),
    };
    match twin {
        Ok(twin) => found(twin, format!("twin of account {account}")),
        Err(e) => store_error(e),
    }
}

async fn publish(
    State(registry): State<Arc<HostedRegistry>>,
    client: Option<Extension<ConnectInfo<SocketAddr>>>,
    limit: Option<Extension<Arc<RegisterLimit>>>,
    body: Bytes,
) -> Response {
    let request: PublishRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("invalid publish request: {e}"),
            );
        }
    };
    if let (Some(Extension(limit)), Some(Extension(ConnectInfo(client)))) = (limit, client)
        && request.create
    {
        // Only a new twin is charged: updates of a registered one are not registrations.
        match registry.store().id_by_account(&request.account).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                if let Err(wait) = limit.charge(client.ip(), now_ms()) {
                    let message = format!(
                        "too many new twins registered from {}; try again in {wait} s",
                        client.ip()
                    );
                    let mut refused = error(StatusCode::TOO_MANY_REQUESTS, message);
                    refused
                        .headers_mut()
                        .insert(axum::http::header::RETRY_AFTER, wait.into());
                    return refused;
                }
            }
            Err(e) => return store_error(e),
        }
    }
    match registry.apply(&request, now_ms()).await {
        Ok(twin) => axum::Json(twin).into_response(),
        Err(PublishError::Store(e)) => store_error(e),
        Err(e) => {
            let status = match e {
                PublishError::BadRequest(_) | PublishError::ClockSkew { .. } => {
                    StatusCode::BAD_REQUEST
                }
                PublishError::BadSignature { .. } => StatusCode::UNAUTHORIZED,
                PublishError::Stale { .. } => StatusCode::CONFLICT,
                PublishError::NotRegistered(_) => StatusCode::NOT_FOUND,
                PublishError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            tracing::info!(account = %request.account, error = %e, "publish refused");
            error(status, e.to_string())
        }
    }
}

#[derive(Deserialize)]
struct ChangesQuery {
    #[serde(default)]
    since: u64,
    #[serde(default)]
    epoch: String,
    #[serde(default)]
    wait: u64,
}

async fn changes(
    State(registry): State<Arc<HostedRegistry>>,
    Query(query): Query<ChangesQuery>,
) -> Response {
    let log = registry.changes();
    let in_epoch = query.epoch == log.epoch();
    if in_epoch && log.version() == query.since && query.wait > 0 {
        let wait = Duration::from_secs(query.wait).min(MAX_WAIT);
        log.wait_past(query.since, wait).await;
    }
    let version = log.version();
    let answer = match registry.changed_since(&query.epoch, query.since).await {
        Ok(Some(twins)) => ChangesResponse {
            epoch: log.epoch().to_string(),
            version,
            reset: false,
            twins,
        },
        Ok(None) => ChangesResponse {
            epoch: log.epoch().to_string(),
            version,
            reset: true,
            twins: Vec::new(),
        },
        Err(e) => return store_error(e),
    };
    axum::Json(answer).into_response()
}
