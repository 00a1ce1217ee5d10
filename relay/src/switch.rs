//! [`Switch`]: which sessions are connected here, and handing envelopes to them.
//!
//! A session is `(twin, sid)`. At most one connection serves a session: a new one
//! replaces the old, which is cancelled. Every registration gets a process-unique
//! [`ConnectionId`], and removal compares it, so the exit of a replaced connection can
//! never remove its successor (rmb-rs's relay has exactly that bug).

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Bytes;
use rmb_proto::Address;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A session on this relay: a twin and its optional session id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId {
    pub twin: u32,
    pub sid: Option<String>,
}

impl SessionId {
    /// The session an address names (an empty sid counts as none).
    pub fn of(address: &Address) -> Self {
        SessionId {
            twin: address.twin,
            sid: address.sid().map(str::to_string),
        }
    }

    /// The address of this session.
    pub fn address(&self) -> Address {
        Address {
            twin: self.twin,
            connection: self.sid.clone(),
        }
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.sid {
            Some(sid) => write!(f, "{}:{}", self.twin, sid),
            None => write!(f, "{}", self.twin),
        }
    }
}

/// Process-unique id of one accepted connection.
pub type ConnectionId = u64;

/// An envelope on its way to a connection: its bytes and its deadline (unix seconds),
/// kept so that undelivered envelopes can go back to the offline queue.
pub type Outgoing = (Bytes, u64);

struct Entry {
    connection: ConnectionId,
    outbox: mpsc::Sender<Outgoing>,
    cancel: CancellationToken,
}

/// What happened to an envelope handed to [`Switch::deliver`].
#[derive(Debug)]
pub enum Delivery {
    /// Queued on the session's connection.
    Sent,
    /// No connection here for that session; the envelope comes back.
    NotConnected(Outgoing),
    /// The connection's outbox is full (slow reader); the envelope comes back.
    Full(Outgoing),
}

/// The sessions connected to this relay process.
#[derive(Default)]
pub struct Switch {
    sessions: Mutex<HashMap<SessionId, Entry>>,
    next_id: AtomicU64,
}

impl Switch {
    /// Registers a new connection for `session`, cancelling any previous one.
    pub fn register(
        &self,
        session: &SessionId,
        outbox: mpsc::Sender<Outgoing>,
        cancel: CancellationToken,
    ) -> ConnectionId {
        let connection = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let previous = self.lock().insert(
            session.clone(),
            Entry {
                connection,
                outbox,
                cancel,
            },
        );
        if let Some(old) = previous {
            tracing::info!(%session, old = old.connection, new = connection, "session replaced by a new connection");
            old.cancel.cancel();
        }
        connection
    }

    /// Removes `session` only if `connection` still owns it.
    pub fn unregister(&self, session: &SessionId, connection: ConnectionId) -> bool {
        let mut sessions = self.lock();
        if sessions
            .get(session)
            .is_some_and(|e| e.connection == connection)
        {
            sessions.remove(session);
            true
        } else {
            false
        }
    }

    /// Hands an envelope to the session's connection without waiting.
    pub fn deliver(&self, session: &SessionId, item: Outgoing) -> Delivery {
        let outbox = match self.lock().get(session) {
            Some(entry) => entry.outbox.clone(),
            None => return Delivery::NotConnected(item),
        };
        match outbox.try_send(item) {
            Ok(()) => Delivery::Sent,
            Err(mpsc::error::TrySendError::Full(item)) => Delivery::Full(item),
            Err(mpsc::error::TrySendError::Closed(item)) => Delivery::NotConnected(item),
        }
    }

    /// The outbox and cancel token of a session, for waiting sends.
    pub fn outbox(
        &self,
        session: &SessionId,
    ) -> Option<(mpsc::Sender<Outgoing>, CancellationToken)> {
        self.lock()
            .get(session)
            .map(|e| (e.outbox.clone(), e.cancel.clone()))
    }

    /// True if the session is connected to this process.
    pub fn is_connected(&self, session: &SessionId) -> bool {
        self.lock().contains_key(session)
    }

    /// The sessions connected here.
    pub fn sessions(&self) -> Vec<SessionId> {
        self.lock().keys().cloned().collect()
    }

    /// Number of connected sessions.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no session is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Cancels every connection (shutdown).
    pub fn cancel_all(&self) {
        for entry in self.lock().values() {
            entry.cancel.cancel();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Entry>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(twin: u32) -> SessionId {
        SessionId { twin, sid: None }
    }

    #[test]
    fn a_replaced_connection_cannot_remove_its_successor() {
        let switch = Switch::default();
        let (tx1, _rx1) = mpsc::channel(1);
        let (tx2, mut rx2) = mpsc::channel(1);
        let (c1, c2) = (CancellationToken::new(), CancellationToken::new());
        let old = switch.register(&session(1), tx1, c1.clone());
        let new = switch.register(&session(1), tx2, c2.clone());
        assert!(c1.is_cancelled() && !c2.is_cancelled());
        assert!(
            !switch.unregister(&session(1), old),
            "old exit must not remove the new"
        );
        assert!(matches!(
            switch.deliver(&session(1), (Bytes::from_static(b"x"), 9)),
            Delivery::Sent
        ));
        assert_eq!(rx2.try_recv().unwrap(), (Bytes::from_static(b"x"), 9));
        assert!(switch.unregister(&session(1), new));
        assert!(switch.is_empty());
    }

    #[test]
    fn full_and_missing_outboxes_return_the_bytes() {
        let switch = Switch::default();
        let (tx, _rx) = mpsc::channel(1);
        switch.register(&session(1), tx, CancellationToken::new());
        assert!(matches!(
            switch.deliver(&session(1), (Bytes::new(), 0)),
            Delivery::Sent
        ));
        assert!(matches!(
            switch.deliver(&session(1), (Bytes::new(), 0)),
            Delivery::Full(_)
        ));
        assert!(matches!(
            switch.deliver(&session(2), (Bytes::new(), 0)),
            Delivery::NotConnected(_)
        ));
    }

    #[test]
    fn session_ids_follow_address_text() {
        let id = SessionId::of(&Address::session(5, "web"));
        assert_eq!(id.to_string(), "5:web");
        assert_eq!(SessionId::of(&Address::session(5, "")), session(5));
        assert_eq!(id.address(), Address::session(5, "web"));
    }
}
