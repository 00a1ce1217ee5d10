//! Relay links: one WebSocket connection per relay, kept up by its own actor.
//!
//! [`Links::start`] spawns one [`actor`] per relay URL. Each logs in with a fresh token
//! (never the same twice: [`tokens`]),
//! keeps the connection alive (pings, read timeout) and reconnects with backoff and
//! jitter when it drops. Frames received on any link arrive on one channel as [`Frame`]s
//! tagged with the link index. [`Links::send`] hands an encoded envelope to a connected
//! link, preferring the one that worked last ([`select`]), failing over to the next
//! connected one, and waiting a bounded time when none is connected. [`Links::status`]
//! reports each link's [`LinkStatus`].

pub mod actor;
pub mod backoff;
pub mod health;
pub mod select;
pub mod tokens;
pub mod url;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rmb_proto::time::unix_now;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Bytes;
use tokio_util::sync::CancellationToken;

pub use actor::{Login, Outgoing};
pub use health::{LinkHealth, LinkStatus};
pub use url::{RelayUrl, RelayUrlError};

/// Envelopes queued per link before senders wait (back-pressure).
pub const OUTBOX_CAPACITY: usize = 1024;
/// Longest a sender waits for some relay to be connected (its envelope's expiry may cut it shorter).
pub const MAX_WAIT_FOR_RELAY: Duration = Duration::from_secs(30);

/// One binary frame received from a relay.
#[derive(Debug)]
pub struct Frame {
    /// Index of the link (in the order the relays were given) it came through.
    pub link: usize,
    /// The frame's bytes: an encoded envelope, not yet checked.
    pub bytes: Bytes,
}

/// Why an envelope could not be handed to a relay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("no relay connection available after waiting {waited_ms} ms ({detail})")]
    NoRelay { waited_ms: u64, detail: String },
    #[error("the envelope expired while waiting for a relay connection")]
    Expired,
    #[error("the relay links are shut down")]
    Closed,
}

struct Slot {
    health: Arc<LinkHealth>,
    outbox: mpsc::Sender<Outgoing>,
}

/// What the links' handle and actors share.
pub(crate) struct Shared {
    slots: Vec<Slot>,
    preferred: AtomicUsize,
    /// Bumped on every successful connect, so waiting senders wake up.
    connected: watch::Sender<u64>,
}

impl Shared {
    fn notify_connected(&self) {
        self.connected.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Queues `item` on a connected link other than `except`, without waiting.
    fn forward(&self, except: usize, item: Outgoing) -> Result<(), Outgoing> {
        let preferred = self.preferred.load(Ordering::Relaxed);
        let mut item = item;
        for i in select::candidates(self.slots.len(), preferred) {
            if i == except || !self.slots[i].health.is_connected() {
                continue;
            }
            match self.slots[i].outbox.try_send(item) {
                Ok(()) => return Ok(()),
                Err(e) => item = e.into_inner(),
            }
        }
        Err(item)
    }

    /// One attempt: queue on the first connected link with room. `Err` gives the item
    /// back with the index of a connected-but-full link, if there was one.
    fn try_place(&self, item: Outgoing) -> Result<usize, (Outgoing, Option<usize>)> {
        let preferred = self.preferred.load(Ordering::Relaxed);
        let mut item = item;
        let mut full = None;
        for i in select::candidates(self.slots.len(), preferred) {
            let slot = &self.slots[i];
            if !slot.health.is_connected() {
                continue;
            }
            match slot.outbox.try_send(item) {
                Ok(()) => {
                    if i != preferred {
                        self.preferred.store(i, Ordering::Relaxed);
                    }
                    return Ok(i);
                }
                Err(mpsc::error::TrySendError::Full(back)) => {
                    full.get_or_insert(i);
                    item = back;
                }
                Err(mpsc::error::TrySendError::Closed(back)) => item = back,
            }
        }
        Err((item, full))
    }

    fn describe_failures(&self) -> String {
        let parts: Vec<String> = self
            .slots
            .iter()
            .map(|s| {
                let st = s.health.snapshot();
                match st.last_error {
                    Some(e) => format!("{}: {e}", st.url),
                    None => format!("{}: connecting", st.url),
                }
            })
            .collect();
        parts.join("; ")
    }
}

/// Handle to all relay links of one peer.
pub struct Links {
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    /// Cancelled when shutdown begins: no link connects again.
    no_reconnect: CancellationToken,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl Links {
    /// Starts one actor per relay; received frames go to `incoming`. Cancelling
    /// `shutdown` (or [`shutdown`](Links::shutdown), or dropping the handle) stops them.
    pub fn start(
        relays: &[RelayUrl],
        login: Login,
        incoming: mpsc::Sender<Frame>,
        shutdown: CancellationToken,
    ) -> Links {
        let now = unix_now();
        let no_reconnect = CancellationToken::new();
        let login = Arc::new(login);
        let token_times = Arc::new(tokens::TokenTimes::default());
        let mut slots = Vec::with_capacity(relays.len());
        let mut receivers = Vec::with_capacity(relays.len());
        for relay in relays {
            let (tx, rx) = mpsc::channel(OUTBOX_CAPACITY);
            slots.push(Slot {
                health: Arc::new(LinkHealth::new(relay.as_str(), now)),
                outbox: tx,
            });
            receivers.push(rx);
        }
        let shared = Arc::new(Shared {
            slots,
            preferred: AtomicUsize::new(0),
            connected: watch::Sender::new(0),
        });
        let tasks = relays
            .iter()
            .zip(receivers)
            .enumerate()
            .map(|(index, (relay, outbox))| {
                let actor = actor::Actor {
                    index,
                    url: relay.clone(),
                    login: Arc::clone(&login),
                    token_times: Arc::clone(&token_times),
                    health: Arc::clone(&shared.slots[index].health),
                    shared: Arc::clone(&shared),
                    outbox,
                    incoming: incoming.clone(),
                    shutdown: shutdown.clone(),
                    no_reconnect: no_reconnect.clone(),
                };
                tokio::spawn(actor.run())
            })
            .collect();
        Links {
            shared,
            shutdown,
            no_reconnect,
            tasks: std::sync::Mutex::new(tasks),
        }
    }

    /// Queues an encoded envelope on a connected relay link.
    ///
    /// Prefers the link that last accepted a message and fails over in order. When no
    /// link is connected (or all are full), waits until one is, at most until `deadline`
    /// (unix seconds, the envelope's expiry) and never longer than [`MAX_WAIT_FOR_RELAY`].
    /// Success means "queued for writing", as in rmb-rs; the relay does not acknowledge.
    pub async fn send(&self, bytes: Bytes, deadline: u64) -> Result<usize, LinkError> {
        if self.shutdown.is_cancelled() {
            return Err(LinkError::Closed);
        }
        let mut item = Outgoing { bytes, deadline };
        // Fast path: a connected link with room.
        match self.shared.try_place(item) {
            Ok(i) => return Ok(i),
            Err((back, _)) => item = back,
        }
        let now = unix_now();
        if deadline <= now {
            return Err(LinkError::Expired);
        }
        let budget = Duration::from_secs(deadline - now).min(MAX_WAIT_FOR_RELAY);
        let started = tokio::time::Instant::now();
        let until = started + budget;
        let mut connected = self.shared.connected.subscribe();
        loop {
            connected.borrow_and_update();
            match self.shared.try_place(item) {
                Ok(i) => return Ok(i),
                Err((back, Some(full))) => {
                    // Connected but congested: wait for room on that link.
                    let slot = &self.shared.slots[full];
                    match tokio::time::timeout_at(until, slot.outbox.reserve()).await {
                        Ok(Ok(permit)) => {
                            permit.send(back);
                            return Ok(full);
                        }
                        Ok(Err(_)) => return Err(LinkError::Closed),
                        Err(_) => item = back,
                    }
                }
                Err((back, None)) => {
                    item = back;
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return Err(LinkError::Closed),
                        // No link is up and none will come back.
                        _ = self.no_reconnect.cancelled() => return Err(LinkError::Closed),
                        _ = connected.changed() => continue,
                        _ = tokio::time::sleep_until(until) => {}
                    }
                }
            }
            if tokio::time::Instant::now() >= until {
                if self.shutdown.is_cancelled() {
                    return Err(LinkError::Closed);
                }
                if unix_now() >= deadline {
                    return Err(LinkError::Expired);
                }
                return Err(LinkError::NoRelay {
                    waited_ms: started.elapsed().as_millis() as u64,
                    detail: self.shared.describe_failures(),
                });
            }
        }
    }

    /// Queues an encoded envelope on a connected link with room, without waiting;
    /// gives the bytes back when there is none.
    pub fn try_send(&self, bytes: Bytes, deadline: u64) -> Result<usize, Bytes> {
        if self.shutdown.is_cancelled() {
            return Err(bytes);
        }
        self.shared
            .try_place(Outgoing { bytes, deadline })
            .map_err(|(item, _)| item.bytes)
    }

    /// A receiver that changes every time a link connects (to resend what a dead relay
    /// may have lost).
    pub fn subscribe_connected(&self) -> watch::Receiver<u64> {
        self.shared.connected.subscribe()
    }

    /// True when at least one link is connected and every connected one's relay routes
    /// unsigned RPCs (so other peers may send us some, [`crate::core::unsigned`]).
    pub fn all_route_unsigned_rpc(&self) -> bool {
        let mut connected = self
            .shared
            .slots
            .iter()
            .filter(|s| s.health.is_connected())
            .peekable();
        connected.peek().is_some() && connected.all(|s| s.health.routes_unsigned_rpc())
    }

    /// True when at least one link is connected.
    pub fn any_connected(&self) -> bool {
        self.shared.slots.iter().any(|s| s.health.is_connected())
    }

    /// Waits until at least one link is connected, or `timeout` passes; returns whether one is.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut connected = self.shared.connected.subscribe();
        let wait = async {
            loop {
                connected.borrow_and_update();
                if self.any_connected() {
                    return;
                }
                if connected.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(timeout, wait).await;
        self.any_connected()
    }

    /// Each link's health, in the order the relays were given.
    pub fn status(&self) -> Vec<LinkStatus> {
        self.shared
            .slots
            .iter()
            .map(|s| s.health.snapshot())
            .collect()
    }

    /// Keeps the connections that are up but makes none again (shutdown has begun);
    /// envelopes that find no connected link fail at once instead of waiting for one.
    pub fn stop_reconnecting(&self) {
        self.no_reconnect.cancel();
    }

    /// Closes every connection and stops the actors.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
    }
}

impl Drop for Links {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
