//! The accepting side: a [`Listener`] per protocol hands out [`Incoming`] open requests,
//! which the application accepts (a [`Stream`]) or refuses (the opener learns why).

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use rmb_proto::Address;
use tokio::sync::mpsc;

use super::errors::{AcceptError, codes};
use super::stream::{Conn, Stream};
use super::wire::Open;
use super::{Connections, crypto, lock, state};
use crate::core::RemoteError;

/// Who may open a protocol.
#[derive(Debug, Clone, Default)]
pub struct ListenOptions {
    /// Twins allowed to open it; `None` allows every twin.
    pub allow: Option<HashSet<u32>>,
}

impl ListenOptions {
    /// Only these twins may open the protocol.
    pub fn allow(twins: impl IntoIterator<Item = u32>) -> ListenOptions {
        ListenOptions {
            allow: Some(twins.into_iter().collect()),
        }
    }
}

/// Incoming connections for one protocol.
pub struct Listener {
    pub(super) rx: mpsc::Receiver<Incoming>,
    pub(super) protocol: String,
    pub(super) generation: u64,
    pub(super) connections: Connections,
}

impl Listener {
    /// The next open request (verified, allowed); `None` once the peer shut down.
    pub async fn next(&mut self) -> Option<Incoming> {
        tokio::select! {
            incoming = self.rx.recv() => incoming,
            _ = self.connections.shared.shutdown.cancelled() => None,
        }
    }

    /// Accepts the next connection; `None` once the peer shut down.
    pub async fn accept(&mut self) -> Option<Result<Stream, AcceptError>> {
        Some(self.next().await?.accept().await)
    }

    pub fn protocol(&self) -> &str {
        &self.protocol
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let mut listeners = lock(&self.connections.shared.listeners);
        if listeners
            .get(&self.protocol)
            .is_some_and(|l| l.generation == self.generation)
        {
            listeners.remove(&self.protocol);
        }
    }
}

/// An open request waiting for the application's decision. Dropping it refuses it.
pub struct Incoming {
    pub(super) connections: Connections,
    /// The open request's uid and deadline, until answered.
    pub(super) request: Option<(String, u64)>,
    pub(super) source: Address,
    pub(super) open: Open,
}

impl Incoming {
    /// Who opens (twin, and session for a direct client).
    pub fn remote(&self) -> &Address {
        &self.source
    }

    pub fn protocol(&self) -> &str {
        &self.open.protocol
    }

    /// Accepts: answers with our signed ephemeral key and returns the stream.
    pub async fn accept(mut self) -> Result<Stream, AcceptError> {
        let (uid, deadline) = self.request.take().expect("an Incoming is answered once");
        let connections = self.connections.clone();
        let shared = &connections.shared;
        let cfg = shared.config.stream.clamped();
        let me = shared.peer.twin_id();
        let key = (self.source.twin, self.open.id);
        let (accept, keys) = match crypto::respond(
            shared.peer.identity(),
            &self.open,
            self.source.twin,
            me,
            cfg.window,
            &shared.config.ciphers,
        ) {
            Ok(done) => done,
            Err(e) => {
                connections.unreserve(key);
                return Err(e.into());
            }
        };
        let now = tokio::time::Instant::now().into_std();
        let state = state::State::new(cfg, now, self.open.window);
        let conn = Conn::new(
            self.open.id,
            self.source.clone(),
            self.open.protocol.clone(),
            keys,
            state,
        );
        connections.start(self.source.twin, conn.clone());
        let stream = Stream::new(conn);
        connections
            .reply(uid, self.source.clone(), deadline, Ok(accept.encode()))
            .await?;
        shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
        Ok(stream)
    }

    /// Refuses with a reason the opener sees.
    pub async fn refuse(mut self, reason: &str) {
        if let Some((uid, deadline)) = self.request.take() {
            self.connections.unreserve((self.source.twin, self.open.id));
            let shared = &self.connections.shared;
            shared
                .counters
                .refused_by_handler
                .fetch_add(1, Ordering::Relaxed);
            let error = RemoteError::new(codes::REFUSED, reason);
            let _ = self
                .connections
                .reply(uid, self.source.clone(), deadline, Err(error))
                .await;
        }
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        let Some((uid, deadline)) = self.request.take() else {
            return;
        };
        let connections = self.connections.clone();
        connections.unreserve((self.source.twin, self.open.id));
        let to = self.source.clone();
        let tasks = connections.shared.tasks.clone();
        connections
            .shared
            .counters
            .refused_by_handler
            .fetch_add(1, Ordering::Relaxed);
        tasks.spawn(async move {
            let error = RemoteError::new(codes::REFUSED, "the connection was not accepted");
            let _ = connections.reply(uid, to, deadline, Err(error)).await;
        });
    }
}
