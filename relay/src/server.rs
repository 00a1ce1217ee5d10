//! [`RelayServer`]: the HTTP listener and everything it serves on one address.
//!
//! | request | handler |
//! |---|---|
//! | WebSocket upgrade, any path | login ([`crate::auth`]) then a session ([`crate::session`]) |
//! | `POST /` | federation ingress ([`crate::federation::ingress`]) |
//! | `GET /metrics` | Prometheus text |
//! | `GET /health` | `ok` plus a JSON summary |
//! | `/twins…`, `/changes` | the embedded registry, when this relay hosts it |
//! | anything else | 404 `page not found` |

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{DefaultBodyLimit, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::auth::{authenticate, token_of};
use crate::federation;
use crate::registry;
use crate::session;
use crate::state::RelayState;

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
        let addr = listener.local_addr()?;
        let app = app(Arc::clone(&state));
        spawn_background(&state);
        let stop = state.shutdown.clone();
        let task = tokio::spawn(async move {
            // No Nagle: the session writer batches frames itself and flushes once per batch.
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        });
        Ok(RelayServer { addr, state, task })
    }

    /// Serves `state` on `listener` over TLS (HTTPS/WSS) until [`RelayServer::shutdown`].
    pub fn start_tls(
        state: Arc<RelayState>,
        listener: std::net::TcpListener,
        tls: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let app = app(Arc::clone(&state));
        spawn_background(&state);
        let handle = axum_server::Handle::new();
        let stopper = handle.clone();
        let stop = state.shutdown.clone();
        state.tasks.spawn(async move {
            stop.cancelled().await;
            stopper.graceful_shutdown(Some(Duration::from_secs(5)));
        });
        let config = axum_server::tls_rustls::RustlsConfig::from_config(tls);
        let server = axum_server::from_tcp_rustls(listener, config)?.handle(handle);
        let task = tokio::spawn(async move { server.serve(app.into_make_service()).await });
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

/// The routes of one relay.
pub fn app(state: Arc<RelayState>) -> Router {
    let max = state.config.max_envelope_size;
    let mut router = Router::new()
        .route(
            "/",
            get(upgrade)
                .post(federation::ingress)
                .layer(DefaultBodyLimit::max(max)),
        )
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .fallback(upgrade)
        .with_state(Arc::clone(&state));
    if let Some(hosted) = &state.hosted {
        router = router.merge(registry::http::router(Arc::clone(hosted)));
    }
    router
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
    match authenticate(&state, token_of(uri.query(), &headers), now).await {
        Err(e) => {
            state.metrics.error("login");
            tracing::info!(error = %e, "login refused");
            (e.status(), e.to_string()).into_response()
        }
        Ok(session) => {
            let max = state.config.max_envelope_size;
            // tungstenite zero-fills its whole read buffer on first use; 2 KiB instead of the
            // default 128 KiB is what keeps an idle session small (bigger frames still fit:
            // the buffer grows while reading them).
            ws.max_message_size(max)
                .max_frame_size(max)
                .read_buffer_size(2 * 1024)
                .on_upgrade(move |socket| {
                    let tracker = state.sessions.clone();
                    tracker.track_future(session::serve(socket, session, state))
                })
        }
    }
}

async fn metrics(State(state): State<Arc<RelayState>>) -> String {
    state.refresh_gauges();
    state.metrics.render()
}

async fn health(State(state): State<Arc<RelayState>>) -> Response {
    let body = serde_json::json!({
        "status": "ok",
        "sessions": state.switch.len(),
        "queued": state.queue.depth(),
        "queues": state.queue.describe(),
        "domains": state.config.domains,
        "registry": state.registry.describe(),
    });
    axum::Json(body).into_response()
}

/// The relay's background tasks, under its supervisor ([`RelayState::tasks`]): the
/// sweeper, and the hand-over of envelopes other replicas queued (Redis mode).
fn spawn_background(state: &Arc<RelayState>) {
    state.tasks.spawn(sweep(Arc::clone(state)));
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
