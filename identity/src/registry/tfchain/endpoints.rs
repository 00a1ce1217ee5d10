//! [`Endpoints`]: several node URLs, one connection at a time, failover between them.
//!
//! A peer or relay runs for months while nodes restart, so the registry must recover by
//! itself: when a call fails and the node no longer answers, the connection is dropped
//! and the call is retried on the next URL in turn. Attempts are bounded (two rounds over
//! all URLs) so a caller gets a clear [`RegistryError::Unavailable`] instead of a hang,
//! and the next call starts over, which is how the registry comes back with the chain.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::super::RegistryError;
use super::connection::{Connection, RpcBackend};

/// How one operation on a connection failed.
#[derive(Debug)]
pub enum OpError {
    /// A definite answer (refused, not registered, bad data): returned as is, no retry.
    Final(RegistryError),
    /// Something failed on the way to the node; whether the node is gone is decided by
    /// probing the connection.
    Suspect(String),
}

impl From<RegistryError> for OpError {
    fn from(e: RegistryError) -> Self {
        OpError::Final(e)
    }
}

/// The URLs, the connection in use and how to open new ones.
pub struct Endpoints {
    urls: Vec<String>,
    backend: RpcBackend,
    connect_timeout: Duration,
    state: Mutex<State>,
    /// Held while connecting so that concurrent callers share one new connection.
    connecting: tokio::sync::Mutex<()>,
}

struct State {
    /// Index of the URL in use, or to try next.
    current: usize,
    live: Option<Arc<Connection>>,
}

impl Endpoints {
    /// Endpoints over `urls` (not empty), none connected yet.
    pub fn new(urls: Vec<String>, backend: RpcBackend, connect_timeout: Duration) -> Self {
        assert!(!urls.is_empty(), "Endpoints needs at least one URL");
        Endpoints {
            urls,
            backend,
            connect_timeout,
            state: Mutex::new(State {
                current: 0,
                live: None,
            }),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    /// The URL in use (or to be tried next), for `describe()`.
    pub fn current_url(&self) -> String {
        let state = self.state.lock().expect("endpoints lock");
        self.urls[state.current].clone()
    }

    /// The live connection, or a new one to the current URL: one attempt, which on
    /// failure moves on to the next URL and says why as `"<url>: <error>"`.
    async fn connection(&self) -> Result<Arc<Connection>, String> {
        if let Some(live) = self.live() {
            return Ok(live);
        }
        let _gate = self.connecting.lock().await;
        if let Some(live) = self.live() {
            return Ok(live);
        }
        let url = self.current_url();
        let opened =
            tokio::time::timeout(self.connect_timeout, Connection::open(&url, self.backend))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.connect_timeout)));
        let mut state = self.state.lock().expect("endpoints lock");
        match opened {
            Ok(connection) => {
                tracing::info!(url = %url, "connected to tfchain");
                let connection = Arc::new(connection);
                state.live = Some(Arc::clone(&connection));
                Ok(connection)
            }
            Err(e) => {
                tracing::warn!(url = %url, error = %e, "cannot connect to tfchain");
                state.current = (state.current + 1) % self.urls.len();
                Err(format!("{url}: {e}"))
            }
        }
    }

    fn live(&self) -> Option<Arc<Connection>> {
        self.state.lock().expect("endpoints lock").live.clone()
    }

    /// Drops `connection` (if still the one in use) and moves on to the next URL.
    fn discard(&self, connection: &Arc<Connection>) {
        let mut state = self.state.lock().expect("endpoints lock");
        if state
            .live
            .as_ref()
            .is_some_and(|live| Arc::ptr_eq(live, connection))
        {
            tracing::warn!(url = %connection.url(), "tfchain connection lost");
            state.live = None;
            state.current = (state.current + 1) % self.urls.len();
        }
    }

    /// A connection, trying each URL at most `rounds` times.
    pub async fn acquire(&self, rounds: usize) -> Result<Arc<Connection>, RegistryError> {
        let mut failures = Vec::new();
        for _ in 0..rounds * self.urls.len() {
            match self.connection().await {
                Ok(connection) => return Ok(connection),
                Err(e) => failures.push(e),
            }
        }
        Err(unreachable(&failures))
    }

    /// Called when a long-running use of `connection` (a block stream) failed: drops it
    /// if the node is gone, so the next use reconnects.
    pub async fn report_failure(&self, connection: &Arc<Connection>) {
        if !connection.is_alive().await {
            self.discard(connection);
        }
    }

    /// Runs `op` on a connection within `limit`, failing over to the next URL when the
    /// node is gone, at most two rounds over all URLs.
    ///
    /// `op` may run more than once, so it must be safe to repeat (ours re-read the chain
    /// before writing).
    pub async fn run<R, F, Fut>(&self, limit: Duration, op: F) -> Result<R, RegistryError>
    where
        F: Fn(Arc<Connection>) -> Fut,
        Fut: Future<Output = Result<R, OpError>>,
    {
        let mut failures = Vec::new();
        for _ in 0..2 * self.urls.len() {
            let connection = match self.connection().await {
                Ok(connection) => connection,
                Err(e) => {
                    failures.push(e);
                    continue;
                }
            };
            let error = match tokio::time::timeout(limit, op(Arc::clone(&connection))).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(OpError::Final(e))) => return Err(e),
                Ok(Err(OpError::Suspect(e))) => e,
                Err(_) => format!("no answer within {limit:?}"),
            };
            let failure = format!("{}: {error}", connection.url());
            if connection.is_alive().await {
                // The node is there but could not do it; another node is unlikely to do
                // better, and repeating a half-done write is not worth the risk.
                return Err(RegistryError::Unavailable(failure));
            }
            self.discard(&connection);
            failures.push(failure);
        }
        Err(unreachable(&failures))
    }
}

fn unreachable(failures: &[String]) -> RegistryError {
    RegistryError::Unavailable(format!("tfchain unreachable: {}", failures.join("; ")))
}
