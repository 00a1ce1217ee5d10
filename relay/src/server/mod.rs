//! [`RelayServer`]: the HTTP listener and everything it serves on one address.
//!
//! | request | handler |
//! |---|---|
//! | WebSocket upgrade, any path | login ([`crate::auth`]) then a session ([`crate::session`]) |
//! | `POST /` | federation ingress ([`crate::federation::ingress`]) |
//! | `GET /metrics` | Prometheus text |
//! | `GET /health` | `ok` plus a JSON summary |
//! | `/twins…`, `/changes` | the embedded registry, when this relay hosts it (new twins limited per client address: `--registry-register-rate`) |
//! | anything else | 404 `page not found` |
//!
//! Connections are accepted by [`accept`] (deadlines, TLS, connection limits in
//! [`limits`], large reads for busy connections in [`read_ahead`]); a connection over
//! the limits gets only `/health` and `/metrics`. The registry's request bodies are read
//! under the federation body rules by [`registry_body`].

pub mod accept;
pub mod limits;
pub mod read_ahead;
pub mod registry_body;
pub mod replicas;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::auth::{authenticate, token_of};
use crate::federation;
use crate::registry;
use crate::session;
use crate::state::RelayState;
use crate::throttle::LogThrottle;
use accept::Acceptor;
use limits::ConnLimits;

/// Failed logins are logged at most once per this interval (anyone can cause them).
static LOGIN_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(10));

/// How often expired envelopes are swept out of the offline queues.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// How long shutdown waits for background tasks once the sessions are closed.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running relay.
pub struct RelayServer {
    addr: SocketAddr,
    state: Arc<RelayState>,
    task: JoinHandle<std::io::Result<()>>,
}

impl RelayServer {
    /// Serves `state` on `listener` (plain HTTP/WS) until [`RelayServer::shutdown`].
    pub fn start(state: Arc<RelayState>, listener: TcpListener) -> std::io::Result<Self> {
        Self::serve(state, listener, None)
    }

    /// Serves `state` on `listener` over TLS (HTTPS/WSS) until [`RelayServer::shutdown`].
    pub fn start_tls(
        state: Arc<RelayState>,
        listener: std::net::TcpListener,
        tls: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        Self::serve(state, listener, Some(tokio_rustls::TlsAcceptor::from(tls)))
    }

    fn serve(
        state: Arc<RelayState>,
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let config = &state.config;
        let limits = ConnLimits::new(
            config.max_connections,
            config.max_connections_per_ip,
            config.health_connections,
        );
        let acceptor = Acceptor {
            app: app(Arc::clone(&state)).layer(Extension(Arc::clone(&limits))),
            health_app: health_app(Arc::clone(&state)).layer(Extension(Arc::clone(&limits))),
            state: Arc::clone(&state),
            limits,
            tls,
        };
        spawn_background(&state);
        let task = tokio::spawn(acceptor.run(listener));
        Ok(RelayServer { addr, state, task })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The shared state (for tests and the binary's status output).
    pub fn state(&self) -> &Arc<RelayState> {
        &self.state
    }

    /// Stops accepting, closes every session, waits for sessions to put back what they
    /// held (into the queues), for the supervised background tasks (at most
    /// [`SHUTDOWN_GRACE`]; federation sends not done by then answer their senders with an
    /// error envelope) and for the listener to finish.
    pub async fn shutdown(self) -> std::io::Result<()> {
        self.state.shutdown.cancel();
        // Registry long polls (`/changes`) answer now instead of at their timeout.
        if let Some(hosted) = &self.state.hosted {
            hosted.changes().close();
        }
        self.state.switch.cancel_all();
        self.state.sessions.close();
        self.state.sessions.wait().await;
        self.state.tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.state.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = self.state.tasks.len(),
                "background tasks still running after the shutdown grace"
            );
        }
        self.wait().await
    }

    /// Waits until the server task ends without consuming the server (a listener that
    /// fails ends it; `main` exits non-zero then).
    pub async fn stopped(&mut self) -> std::io::Result<()> {
        (&mut self.task)
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }

    /// Waits until the server stops (after a shutdown, or a fatal listener error).
    pub async fn wait(self) -> std::io::Result<()> {
        self.task
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }
}

/// The routes of one relay. (Federation bodies are size-limited by their handler, which
/// counts the refusal.)
pub fn app(state: Arc<RelayState>) -> Router {
    let mut router = Router::new()
        .route("/", get(upgrade).post(federation::ingress))
        .route(
            federation::batch::BATCH_PATH,
            axum::routing::post(federation::batch_ingress),
        )
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .fallback(upgrade)
        .with_state(Arc::clone(&state));
    if let Some(hosted) = &state.hosted {
        let mut registry_routes = registry::http::router(Arc::clone(hosted));
        let rate = state.config.registry_register_rate;
        if rate > 0 {
            let counted = Arc::clone(&state);
            let limit = registry::register_limit::RegisterLimit::new(rate, move || {
                counted.metrics.error("registry_register_rate")
            });
            registry_routes = registry_routes.layer(Extension(Arc::new(limit)));
        }
        // Its bodies under --body-timeout, as federation's (registry_body).
        let bounded =
            axum::middleware::from_fn_with_state(Arc::clone(&state), registry_body::bounded);
        router = router.merge(registry_routes.layer(bounded));
    }
    router
}

/// The routes for a connection over the connection limits: monitoring only.
fn health_app(state: Arc<RelayState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .fallback(|| async {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "too many connections; only /health and /metrics are served",
            )
        })
        .with_state(state)
}

async fn upgrade(
    State(state): State<Arc<RelayState>>,
    uri: Uri,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let Ok(ws) = ws else {
        return (StatusCode::NOT_FOUND, "page not found").into_response();
    };
    let now = rmb_proto::time::unix_now();
    let login = authenticate(&state, token_of(uri.query(), &headers), now);
    let Ok(login) = tokio::time::timeout(state.config.login_timeout, login).await else {
        state.metrics.error("login_timeout");
        return (StatusCode::SERVICE_UNAVAILABLE, "login timed out").into_response();
    };
    match login {
        Err(e) => {
            state.metrics.error(e.kind());
            if let Some(held_back) = LOGIN_LOG.allow() {
                tracing::info!(error = %e, held_back, "login refused");
            }
            (e.status(), e.to_string()).into_response()
        }
        Ok(session) => {
            let max = state.config.max_envelope_size;
            // tungstenite zero-fills its whole read buffer on first use; 2 KiB instead of the
            // default 128 KiB is what keeps an idle session small (bigger frames still fit:
            // the buffer grows while reading them).
            let mut response = ws
                .max_message_size(max)
                .max_frame_size(max)
                .read_buffer_size(2 * 1024)
                .on_upgrade(move |socket| {
                    let tracker = state.sessions.clone();
                    tracker.track_future(session::serve(socket, session, state))
                });
            // Our peers offer unsigned RPCs only behind relays that pass them on.
            response.headers_mut().insert(
                rmb_proto::RELAY_CAPABILITIES_HEADER,
                axum::http::HeaderValue::from_static(rmb_proto::ROUTES_UNSIGNED_RPC),
            );
            response
        }
    }
}

async fn metrics(State(state): State<Arc<RelayState>>) -> String {
    state.refresh_gauges();
    state.metrics.render()
}

async fn health(
    State(state): State<Arc<RelayState>>,
    limits: Option<Extension<Arc<ConnLimits>>>,
) -> Response {
    let body = serde_json::json!({
        "status": "ok",
        "sessions": state.switch.len(),
        "connections": limits.map(|Extension(l)| l.open()),
        "queued": state.queue.depth(),
        "queues": state.queue.describe(),
        "replica_links": state.replicas.get().map(|links| serde_json::json!({
            "id": links.id(),
            "advertised": links.advertised(),
            "cached_sessions": links.cached_sessions(),
        })),
        "domains": state.config.domains,
        "registry": state.registry.describe(),
        "used_logins": {
            "store": state.used_logins.describe(),
            "remembered": state.used_logins.remembered(),
        },
    });
    axum::Json(body).into_response()
}

/// The relay's background tasks, under its supervisor ([`RelayState::tasks`]): the
/// sweeper, and in Redis mode the wake-up subscription and the hand-over of envelopes
/// other replicas queued.
fn spawn_background(state: &Arc<RelayState>) {
    state.tasks.spawn(sweep(Arc::clone(state)));
    if let Some(listener) = state.queue.wakeup_listener() {
        state.tasks.spawn(listener);
    }
    if let Some(wakeups) = state.queue.wakeups() {
        state
            .tasks
            .spawn(crate::queue::handoff::run(Arc::clone(state), wakeups));
    }
}

async fn sweep(state: Arc<RelayState>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tick.tick() => {
                let dropped = state.queue.sweep(rmb_proto::time::unix_now()).await;
                if dropped > 0 {
                    tracing::debug!(dropped, "expired queued envelopes dropped");
                }
                state.refresh_gauges();
            }
        }
    }
}
