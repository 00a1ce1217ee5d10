//! The peer's local HTTP API (`rmb-peer --http 127.0.0.1:PORT`), beside the Redis API:
//! topics (publish with one POST, pull as JSON lines, live subscribe over a JSON stream,
//! SSE or a WebSocket, list/create/configure) and `POST /call` for plain requests, so an
//! app needs only curl. Shapes follow ntfy's (`id`, `topic`, `time`, `message`,
//! `?since=`, `?poll=1`). See docs/topics.md.
//!
//! It has no authentication: it listens on loopback unless told otherwise, like the
//! Redis the Redis API uses.

pub mod error;
pub mod feed;
pub mod routes;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::topics::Topics;

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpApiError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A running HTTP API.
pub struct HttpApi {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl HttpApi {
    /// Listens on `addr` and serves.
    pub async fn start(addr: SocketAddr, topics: Topics) -> Result<HttpApi, HttpApiError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| HttpApiError::Bind { addr, source })?;
        let addr = listener.local_addr().unwrap_or(addr);
        if !addr.ip().is_loopback() {
            tracing::warn!(%addr, "the HTTP API has no authentication and listens beyond loopback: anyone who reaches it acts as this twin");
        }
        let stop = CancellationToken::new();
        let app = routes::router(topics, stop.clone());
        let shutdown = stop.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the HTTP API stopped");
            }
        });
        tracing::info!(%addr, "http api serving topics and /call");
        Ok(HttpApi { addr, stop, task })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops taking connections, ends live streams and waits (at most `grace`) for
    /// requests in progress.
    pub async fn shutdown(self, grace: Duration) {
        self.stop.cancel();
        let mut task = self.task;
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            task.abort();
            let _ = task.await;
        }
    }
}
