//! The relay's own accept loop: connection limits and a deadline on every read before
//! a request is served.
//!
//! `axum::serve` has neither a header read deadline nor connection limits, so a client
//! could hold connections forever by sending nothing, or one header byte at a time, until
//! the relay ran out of file descriptors. Here each accepted connection:
//!
//! 1. is counted against `--max-connections` and `--max-connections-per-ip`
//!    ([`ConnLimits`]); over them it may only ask for `/health` and `/metrics`, within
//!    [`HEALTH_DEADLINE`], or is closed at once;
//! 2. over TLS, must finish its handshake within `--tls-handshake-timeout`;
//! 3. is served HTTP/1.1 by hyper with `--header-timeout` as header read deadline, which
//!    also covers a connection that never sends a byte and an idle keep-alive one;
//!    request bodies have their own deadline where they are read (federation ingress).
//!
//! WebSocket upgrades keep the connection's slot until the session ends. On shutdown the
//! loop stops accepting, asks every connection to finish its current request, and waits
//! for them (bounded by [`DRAIN`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::limits::{Admission, ConnLimits, Counted};
use super::read_ahead::ReadAhead;
use crate::state::RelayState;
use crate::throttle::LogThrottle;

/// Whole lifetime of a health-only connection (one over the connection limits).
pub const HEALTH_DEADLINE: Duration = Duration::from_secs(5);
/// How long shutdown waits for open HTTP exchanges to finish.
const DRAIN: Duration = Duration::from_secs(5);
/// Pause after a failed accept (e.g. out of file descriptors) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

static ACCEPT_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(10));
static LIMIT_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(10));
static TIMEOUT_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(10));

/// What every connection task needs.
#[derive(Clone)]
pub struct Acceptor {
    pub state: Arc<RelayState>,
    pub limits: Arc<ConnLimits>,
    /// All routes.
    pub app: Router,
    /// `/health` and `/metrics` only, for connections over the limits.
    pub health_app: Router,
    /// Set for `https://` / `wss://`.
    pub tls: Option<TlsAcceptor>,
}

impl Acceptor {
    /// Accepts connections on `listener` until the relay shuts down, then waits
    /// (bounded) for the open HTTP exchanges.
    pub async fn run(self, listener: TcpListener) -> std::io::Result<()> {
        let connections = TaskTracker::new();
        let stop = self.state.shutdown.clone();
        loop {
            let accepted = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    self.state.metrics.error("accept");
                    if let Some(held_back) = ACCEPT_LOG.allow() {
                        tracing::warn!(error = %e, held_back, "accept failed");
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            connections.spawn(self.clone().connection(tcp, peer));
        }
        drop(listener);
        connections.close();
        if tokio::time::timeout(DRAIN, connections.wait())
            .await
            .is_err()
        {
            tracing::info!("some HTTP exchanges were still open at shutdown");
        }
        Ok(())
    }

    async fn connection(self, tcp: TcpStream, peer: SocketAddr) {
        // No Nagle: the session writer batches frames itself and flushes once per batch.
        let _ = tcp.set_nodelay(true);
        let (slot, app, health_only) = match self.limits.admit(peer.ip()) {
            // The peer's address for handlers (federation ingress charges unsigned
            // frames to it).
            Admission::Full(slot) => (
                slot,
                self.app
                    .clone()
                    .layer(axum::Extension(axum::extract::ConnectInfo(peer))),
                false,
            ),
            Admission::HealthOnly(slot, limit) => {
                self.refused(limit, peer);
                (slot, self.health_app.clone(), true)
            }
            Admission::Refused(limit) => {
                self.refused(limit, peer);
                return;
            }
        };
        // Busy connections read 64 KiB per call, idle ones hold no read buffer.
        let io = Counted::new(ReadAhead::new(tcp), slot);
        let serve = async {
            match &self.tls {
                None => self.http(io, app, health_only).await,
                Some(tls) => {
                    let deadline = self.state.config.tls_handshake_timeout;
                    match tokio::time::timeout(deadline, tls.accept(io)).await {
                        Ok(Ok(stream)) => self.http(stream, app, health_only).await,
                        Ok(Err(e)) => {
                            self.state.metrics.error("tls_handshake");
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => self.timed_out("tls_timeout", peer),
                    }
                }
            }
        };
        if health_only {
            let _ = tokio::time::timeout(HEALTH_DEADLINE, serve).await;
        } else {
            serve.await;
        }
    }

    /// Serves HTTP/1.1 (with upgrades) on `io` until the client or shutdown ends it.
    async fn http<IO>(&self, io: IO, app: Router, health_only: bool)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.state.config.header_timeout)
            .keep_alive(!health_only);
        let conn = builder
            .serve_connection(TokioIo::new(io), TowerToHyperService::new(app))
            .with_upgrades();
        let mut conn = std::pin::pin!(conn);
        let stop: &CancellationToken = &self.state.shutdown;
        let result = tokio::select! {
            result = conn.as_mut() => result,
            _ = stop.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            if e.is_timeout() {
                self.timed_out("header_timeout", None);
            } else {
                tracing::trace!(error = %e, "HTTP connection ended with an error");
            }
        }
    }

    fn refused(&self, limit: &'static str, peer: SocketAddr) {
        self.state.metrics.error(limit);
        if let Some(held_back) = LIMIT_LOG.allow() {
            tracing::info!(%peer, limit, held_back, "connection over the limits");
        }
    }

    fn timed_out(&self, kind: &'static str, peer: impl Into<Option<SocketAddr>>) {
        self.state.metrics.error(kind);
        if let Some(held_back) = TIMEOUT_LOG.allow() {
            tracing::debug!(peer = ?peer.into(), kind, held_back, "connection timed out");
        }
    }
}
