//! Health of one relay link: shared between its actor (which updates it) and status
//! readers (`rmb status`, logs), without locks on the message path.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::Serialize;

/// A snapshot of one link, as shown by `rmb status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct LinkStatus {
    /// The relay URL as configured.
    pub url: String,
    /// True while a logged-in WebSocket is open.
    pub connected: bool,
    /// Unix seconds of the last change of `connected` (or of the link's start).
    pub since: u64,
    /// Envelopes written to this relay.
    pub sent: u64,
    /// Envelopes received from this relay.
    pub received: u64,
    /// Connections lost (each followed by a reconnect attempt).
    pub reconnects: u64,
    /// Why the last connection attempt or connection failed, if one did.
    pub last_error: Option<String>,
}

/// Live counters of one link.
#[derive(Debug)]
pub struct LinkHealth {
    url: String,
    connected: AtomicBool,
    since: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    reconnects: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// The relay said at the last connect that it routes unsigned RPCs.
    routes_unsigned_rpc: AtomicBool,
}

impl LinkHealth {
    /// A link to `url`, not connected yet, as of `now` (unix seconds).
    pub fn new(url: &str, now: u64) -> Self {
        LinkHealth {
            url: url.to_string(),
            connected: AtomicBool::new(false),
            since: AtomicU64::new(now),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            last_error: Mutex::new(None),
            routes_unsigned_rpc: AtomicBool::new(false),
        }
    }

    /// True when the relay of the current (or last) connection routes unsigned RPCs.
    pub fn routes_unsigned_rpc(&self) -> bool {
        self.routes_unsigned_rpc.load(Ordering::Relaxed)
    }

    /// True while the link can take envelopes.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// The connection is up; `routes_unsigned_rpc`: the relay said it passes unsigned
    /// RPCs on ([`rmb_proto::ROUTES_UNSIGNED_RPC`]).
    pub fn set_up(&self, now: u64, routes_unsigned_rpc: bool) {
        self.routes_unsigned_rpc
            .store(routes_unsigned_rpc, Ordering::Relaxed);
        self.since.store(now, Ordering::Relaxed);
        self.connected.store(true, Ordering::Release);
    }

    /// The connection went down (or an attempt failed) because of `error`.
    pub fn set_down(&self, now: u64, error: String, was_up: bool) {
        if was_up {
            self.connected.store(false, Ordering::Release);
            self.since.store(now, Ordering::Relaxed);
            self.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
    }

    /// `n` envelopes were written.
    pub fn add_sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
    }

    /// One envelope was received.
    pub fn add_received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
    }

    /// The last error, for messages that explain why nothing could be sent.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A consistent-enough copy for display.
    pub fn snapshot(&self) -> LinkStatus {
        LinkStatus {
            url: self.url.clone(),
            connected: self.is_connected(),
            since: self.since.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            last_error: self.last_error(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_changes_are_recorded() {
        let h = LinkHealth::new("ws://r/", 10);
        assert!(!h.is_connected());
        h.set_down(11, "refused".into(), false);
        let s = h.snapshot();
        assert_eq!((s.connected, s.since, s.reconnects), (false, 10, 0));
        assert_eq!(s.last_error.as_deref(), Some("refused"));
        h.set_up(12, false);
        h.add_sent(3);
        h.add_received();
        let s = h.snapshot();
        assert_eq!((s.connected, s.since, s.sent, s.received), (true, 12, 3, 1));
        h.set_down(20, "reset".into(), true);
        let s = h.snapshot();
        assert_eq!((s.connected, s.since, s.reconnects), (false, 20, 1));
    }
}
