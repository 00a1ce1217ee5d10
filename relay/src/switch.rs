//! [`Switch`]: which sessions are connected here, and handing envelopes to them.
//!
//! A session is `(twin, sid)`. At most one connection serves a session: a new one
//! replaces the old, which is cancelled. Every registration gets a process-unique
//! [`ConnectionId`], and removal compares it, so the exit of a replaced connection can
//! never remove its successor (rmb-rs's relay has exactly that bug). A twin may hold at
//! most `--sessions-per-twin` distinct sessions here.
//!
//! Each connection has an [`Outbox`] bounded in bytes. Handing an envelope to it never
//! waits: when the outbox is over its bound the envelope comes back ([`Delivery::Full`])
//! and the caller spills it to the offline queue; the outbox then stays *spilled*
//! (refusing everything, so order is kept) until its session has written what it holds
//! and taken its queue back.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use rmb_proto::Address;
use tokio::sync::Notify;
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

/// Bytes charged per envelope on top of its length (its bookkeeping), so that a flood of
/// tiny envelopes is bounded by the same byte limits as a flood of large ones.
pub const ENTRY_OVERHEAD: usize = 64;

/// What holding `bytes` costs against a byte limit.
pub fn cost(bytes: &[u8]) -> usize {
    bytes.len().saturating_add(ENTRY_OVERHEAD)
}

/// What happened to an envelope handed to [`Switch::deliver`].
#[derive(Debug)]
pub enum Delivery {
    /// Queued on the session's connection.
    Sent,
    /// No connection here for that session; the envelope comes back.
    NotConnected(Outgoing),
    /// The connection's outbox is over its byte bound (slow reader) or spilled; the
    /// envelope comes back, to go to the offline queue.
    Full(Outgoing),
}

#[derive(Default)]
struct OutboxInner {
    items: VecDeque<Outgoing>,
    /// Bytes charged for what is queued here plus what the session is writing.
    bytes: usize,
    /// The offline queue may hold envelopes for this session: refuse new ones (order)
    /// and take the queue once what is here has been written.
    spilled: bool,
    /// Since when the outbox has been refusing for being over its bound.
    full_since: Option<Instant>,
    /// The connection ended: nothing is accepted any more.
    closed: bool,
}

/// One connection's envelopes waiting to be written, bounded in bytes.
pub struct Outbox {
    inner: Mutex<OutboxInner>,
    ready: Notify,
    limit: usize,
    max_items: usize,
}

impl Outbox {
    /// An empty outbox holding at most `limit` bytes (one envelope always fits when empty).
    pub fn new(limit: usize) -> Self {
        Self::with_items(limit, usize::MAX)
    }

    /// An empty outbox holding at most `limit` bytes and `max_items` envelopes.
    pub fn with_items(limit: usize, max_items: usize) -> Self {
        Outbox {
            inner: Mutex::new(OutboxInner::default()),
            ready: Notify::new(),
            limit,
            max_items: max_items.max(1),
        }
    }

    /// Queues `item` unless the outbox is closed, spilled or over its bound.
    pub fn offer(&self, item: Outgoing) -> Delivery {
        let mut inner = self.lock();
        if inner.closed {
            return Delivery::NotConnected(item);
        }
        let cost = cost(&item.0);
        let over = inner.bytes > 0 && inner.bytes.saturating_add(cost) > self.limit;
        if inner.spilled || over || inner.items.len() >= self.max_items {
            inner.spilled = true;
            inner.full_since.get_or_insert_with(Instant::now);
            return Delivery::Full(item);
        }
        inner.bytes += cost;
        inner.items.push_back(item);
        drop(inner);
        self.ready.notify_one();
        Delivery::Sent
    }

    /// Tells the session that its offline queue holds envelopes for it.
    pub fn poke(&self) {
        self.lock().spilled = true;
        self.ready.notify_one();
    }

    /// Waits until something was offered or poked.
    pub async fn ready(&self) {
        self.ready.notified().await
    }

    /// The next envelopes to write (at most `max`), or, when none wait and the outbox is
    /// spilled, [`Next::TakeQueue`] with how many bytes may be taken from the queue.
    pub fn next(&self, max: usize) -> Next {
        let mut inner = self.lock();
        if !inner.items.is_empty() {
            let n = inner.items.len().min(max);
            return Next::Write(inner.items.drain(..n).collect());
        }
        if inner.spilled {
            inner.spilled = false;
            return Next::TakeQueue(self.limit.saturating_sub(inner.bytes).max(1));
        }
        Next::Idle
    }

    /// Charges envelopes taken from the offline queue, which the session writes next.
    pub fn charge(&self, items: &[Outgoing]) {
        let bytes: usize = items.iter().map(|(b, _)| cost(b)).sum();
        let mut inner = self.lock();
        inner.bytes = inner.bytes.saturating_add(bytes);
        if !items.is_empty() {
            // More may wait in the queue: take again once these are written.
            inner.spilled = true;
        }
    }

    /// Releases the bytes of envelopes written; the outbox stops counting as full once
    /// half of its bound is free again.
    pub fn written(&self, items: &[Outgoing]) {
        let bytes: usize = items.iter().map(|(b, _)| cost(b)).sum();
        let mut inner = self.lock();
        inner.bytes = inner.bytes.saturating_sub(bytes);
        if inner.bytes <= self.limit / 2 {
            inner.full_since = None;
        }
    }

    /// How long the outbox has been refusing envelopes for being over its bound.
    pub fn full_for(&self) -> Option<Duration> {
        self.lock().full_since.map(|since| since.elapsed())
    }

    /// Closes the outbox and returns what it still held.
    pub fn close(&self) -> Vec<Outgoing> {
        let mut inner = self.lock();
        inner.closed = true;
        inner.bytes = 0;
        inner.items.drain(..).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutboxInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a session should do next with its outbox.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Write these.
    Write(Vec<Outgoing>),
    /// Take up to this many bytes from the offline queue, then write them.
    TakeQueue(usize),
    /// Nothing to do.
    Idle,
}

/// Why a connection could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// The twin already holds the maximum number of distinct sessions here.
    #[error("twin {twin} already has {limit} sessions connected")]
    TooManySessions {
        /// The twin.
        twin: u32,
        /// `--sessions-per-twin`.
        limit: usize,
    },
}

struct Entry {
    connection: ConnectionId,
    outbox: Arc<Outbox>,
    cancel: CancellationToken,
}

#[derive(Default)]
struct Sessions {
    entries: HashMap<SessionId, Entry>,
    /// Connected sessions per twin (for `--sessions-per-twin`).
    per_twin: HashMap<u32, usize>,
}

/// The sessions connected to this relay process.
pub struct Switch {
    sessions: Mutex<Sessions>,
    next_id: AtomicU64,
    sessions_per_twin: usize,
}

impl Default for Switch {
    fn default() -> Self {
        Switch::new(usize::MAX)
    }
}

impl Switch {
    /// An empty switch allowing `sessions_per_twin` distinct sessions per twin.
    pub fn new(sessions_per_twin: usize) -> Self {
        Switch {
            sessions: Mutex::new(Sessions::default()),
            next_id: AtomicU64::new(0),
            sessions_per_twin: sessions_per_twin.max(1),
        }
    }

    /// Registers a new connection for `session`, cancelling any previous one of the same
    /// session; refuses a new session of a twin that has too many.
    pub fn register(
        &self,
        session: &SessionId,
        outbox: Arc<Outbox>,
        cancel: CancellationToken,
    ) -> Result<ConnectionId, RegisterError> {
        let connection = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let mut sessions = self.lock();
        let replacing = sessions.entries.contains_key(session);
        let count = sessions.per_twin.get(&session.twin).copied().unwrap_or(0);
        if !replacing && count >= self.sessions_per_twin {
            return Err(RegisterError::TooManySessions {
                twin: session.twin,
                limit: self.sessions_per_twin,
            });
        }
        let previous = sessions.entries.insert(
            session.clone(),
            Entry {
                connection,
                outbox,
                cancel,
            },
        );
        if !replacing {
            *sessions.per_twin.entry(session.twin).or_default() += 1;
        }
        drop(sessions);
        if let Some(old) = previous {
            tracing::info!(%session, old = old.connection, new = connection, "session replaced by a new connection");
            old.cancel.cancel();
        }
        Ok(connection)
    }

    /// Removes `session` only if `connection` still owns it.
    pub fn unregister(&self, session: &SessionId, connection: ConnectionId) -> bool {
        let mut sessions = self.lock();
        if sessions
            .entries
            .get(session)
            .is_none_or(|e| e.connection != connection)
        {
            return false;
        }
        sessions.entries.remove(session);
        if let Some(count) = sessions.per_twin.get_mut(&session.twin) {
            *count -= 1;
            if *count == 0 {
                sessions.per_twin.remove(&session.twin);
            }
        }
        true
    }

    /// Hands an envelope to the session's connection without waiting.
    pub fn deliver(&self, session: &SessionId, item: Outgoing) -> Delivery {
        match self.outbox(session) {
            Some(outbox) => outbox.offer(item),
            None => Delivery::NotConnected(item),
        }
    }

    /// Tells a connected session that its offline queue holds envelopes for it; false if
    /// it is not connected here.
    pub fn poke(&self, session: &SessionId) -> bool {
        match self.outbox(session) {
            Some(outbox) => {
                outbox.poke();
                true
            }
            None => false,
        }
    }

    fn outbox(&self, session: &SessionId) -> Option<Arc<Outbox>> {
        self.lock()
            .entries
            .get(session)
            .map(|e| Arc::clone(&e.outbox))
    }

    /// True if the session is connected to this process.
    pub fn is_connected(&self, session: &SessionId) -> bool {
        self.lock().entries.contains_key(session)
    }

    /// The sessions connected here.
    pub fn sessions(&self) -> Vec<SessionId> {
        self.lock().entries.keys().cloned().collect()
    }

    /// Number of connected sessions.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// True when no session is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Cancels every connection (shutdown).
    /// Whether a connection serves `session` here.
    pub fn contains(&self, session: &SessionId) -> bool {
        self.lock().entries.contains_key(session)
    }

    /// Ends the connection serving `session` here, if any (it connected to another
    /// replica since); true if there was one.
    pub fn cancel(&self, session: &SessionId) -> bool {
        match self.lock().entries.get(session) {
            Some(entry) => {
                entry.cancel.cancel();
                true
            }
            None => false,
        }
    }

    pub fn cancel_all(&self) {
        for entry in self.lock().entries.values() {
            entry.cancel.cancel();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(twin: u32) -> SessionId {
        SessionId { twin, sid: None }
    }

    fn sid(twin: u32, sid: &str) -> SessionId {
        SessionId {
            twin,
            sid: Some(sid.into()),
        }
    }

    fn x(n: usize) -> Outgoing {
        (Bytes::from(vec![b'x'; n]), 9)
    }

    #[test]
    fn a_replaced_connection_cannot_remove_its_successor() {
        let switch = Switch::default();
        let (o1, o2) = (Arc::new(Outbox::new(1000)), Arc::new(Outbox::new(1000)));
        let (c1, c2) = (CancellationToken::new(), CancellationToken::new());
        let old = switch.register(&session(1), o1, c1.clone()).unwrap();
        let new = switch
            .register(&session(1), Arc::clone(&o2), c2.clone())
            .unwrap();
        assert!(c1.is_cancelled() && !c2.is_cancelled());
        assert!(
            !switch.unregister(&session(1), old),
            "old exit must not remove the new"
        );
        assert!(matches!(
            switch.deliver(&session(1), (Bytes::from_static(b"x"), 9)),
            Delivery::Sent
        ));
        assert_eq!(
            o2.next(10),
            Next::Write(vec![(Bytes::from_static(b"x"), 9)])
        );
        assert!(switch.unregister(&session(1), new));
        assert!(switch.is_empty());
    }

    #[test]
    fn full_outboxes_spill_until_their_queue_is_taken_back() {
        let switch = Switch::default();
        let outbox = Arc::new(Outbox::new(2 * (100 + ENTRY_OVERHEAD)));
        switch
            .register(&session(1), Arc::clone(&outbox), CancellationToken::new())
            .unwrap();
        assert!(matches!(
            switch.deliver(&session(1), x(100)),
            Delivery::Sent
        ));
        assert!(matches!(
            switch.deliver(&session(1), x(100)),
            Delivery::Sent
        ));
        assert!(matches!(
            switch.deliver(&session(1), x(1)),
            Delivery::Full(_)
        ));
        assert!(outbox.full_for().is_some());
        let Next::Write(batch) = outbox.next(64) else {
            panic!("expected a batch")
        };
        assert_eq!(batch.len(), 2);
        // Spilled: even with room, new envelopes go to the queue behind the spilled one.
        outbox.written(&batch);
        assert!(outbox.full_for().is_none());
        assert!(matches!(
            switch.deliver(&session(1), x(1)),
            Delivery::Full(_)
        ));
        assert!(matches!(outbox.next(64), Next::TakeQueue(_)));
        assert!(matches!(switch.deliver(&session(1), x(1)), Delivery::Sent));
        assert!(matches!(
            switch.deliver(&session(2), x(1)),
            Delivery::NotConnected(_)
        ));
        assert_eq!(outbox.close().len(), 1);
        assert!(matches!(
            switch.deliver(&session(1), x(1)),
            Delivery::NotConnected(_)
        ));
    }

    #[test]
    fn one_large_envelope_fits_an_empty_outbox() {
        let outbox = Outbox::new(10);
        assert!(matches!(outbox.offer(x(1000)), Delivery::Sent));
        assert!(matches!(outbox.offer(x(1)), Delivery::Full(_)));
    }

    #[test]
    fn sessions_per_twin_are_capped_but_replacing_one_is_fine() {
        let switch = Switch::new(2);
        let reg =
            |s: &SessionId| switch.register(s, Arc::new(Outbox::new(10)), CancellationToken::new());
        let a = reg(&sid(1, "a")).unwrap();
        reg(&sid(1, "b")).unwrap();
        assert_eq!(
            reg(&sid(1, "c")),
            Err(RegisterError::TooManySessions { twin: 1, limit: 2 })
        );
        reg(&sid(1, "b")).unwrap();
        reg(&sid(2, "c")).unwrap();
        assert!(switch.unregister(&sid(1, "a"), a));
        reg(&sid(1, "c")).unwrap();
    }

    #[test]
    fn session_ids_follow_address_text() {
        let id = SessionId::of(&Address::session(5, "web"));
        assert_eq!(id.to_string(), "5:web");
        assert_eq!(SessionId::of(&Address::session(5, "")), session(5));
        assert_eq!(id.address(), Address::session(5, "web"));
    }
}
