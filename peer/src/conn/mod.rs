//! Connections: ordered, reliable, end-to-end encrypted byte streams between two twins,
//! opened by protocol name (as MessagePasser's connections), carried in ordinary
//! request envelopes so relays (ours and rmb-rs's) route them unchanged.
//!
//! - [`wire`]: the open request, accept reply and frame layouts;
//! - [`crypto`]: the signed ephemeral x25519 handshake and per-connection keys;
//! - [`replay`]: the receiver's window of packet numbers seen (replays are dropped);
//! - [`state`]: the per-connection state machine (acks, retransmission, flow control,
//!   half-close, keep-alive), with time as an input;
//! - [`stream`]: the application's [`Stream`] and the task driving each connection;
//! - [`listener`]: the accepting side ([`Listener`], [`Incoming`]), and `accept`, which
//!   checks open requests and hands them to listeners;
//! - [`errors`]: the refusal codes on the wire and the error of each operation.
//!
//! [`Connections`] ties them to a [`Peer`]: `connect(twin, protocol)` on one side,
//! [`Connections::listen`] per protocol on the other. The layer that reads the peer's
//! inbound messages hands it every `rmb.conn.*` request, every unsigned data frame and
//! the replies to its open requests ([`Connections::handle_request`],
//! [`Connections::handle_frame`], [`Connections::handle_response`]); the direct client
//! and the rmb-peer binary do. See docs/connections.md.

mod accept;
pub mod crypto;
pub mod errors;
pub mod expose;
pub mod listener;
pub mod replay;
pub mod state;
pub mod stream;
pub mod version_1;
pub mod wire;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::RngCore;
use rmb_proto::Address;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use rmb_aead::Cipher;

use crate::core::{
    ConnFrame, InboundRequest, InboundResponse, OutgoingRequest, Peer, Reason, SendError,
    UNPROVEN_SOURCE,
};
use crypto::Ephemeral;
use errors::refusal;
pub use errors::{AcceptError, ConnectError, ListenError, codes};
pub use listener::{Incoming, ListenOptions, Listener};
pub use state::{Config as StreamConfig, Stats, StreamError};
use stream::{Conn, Received, drive};
pub use stream::{MAX_MESSAGE, MessageError, Stream};
use wire::{Accept, ConnId, Open};

/// Limits and timers of a peer's connections.
#[derive(Debug, Clone)]
pub struct ConnConfig {
    /// Per-connection tunables (window, keep-alive, retransmission).
    pub stream: StreamConfig,
    /// How long `connect` waits for the accept.
    pub open_timeout: Duration,
    /// Most open connections of this peer.
    pub max_connections: usize,
    /// Most open connections with one remote twin.
    pub max_per_twin: usize,
    /// Opens waiting for a listener's decision, per protocol; more are refused as busy.
    pub backlog: usize,
    /// Ciphers this peer offers when opening (in this order) and allows when accepting.
    /// Default: [`Cipher::preferred`] (AES-256-GCM first where the CPU runs it in
    /// hardware). Empty: behave as a peer from before the choice: open with version 1
    /// (ChaCha20-Poly1305) and refuse opens that offer ciphers as such a peer does (the
    /// opener then opens again with version 1).
    pub ciphers: Vec<Cipher>,
}

impl Default for ConnConfig {
    fn default() -> Self {
        ConnConfig {
            stream: StreamConfig::default(),
            open_timeout: Duration::from_secs(15),
            max_connections: 1024,
            max_per_twin: 256,
            backlog: 64,
            ciphers: Cipher::preferred(),
        }
    }
}

/// Refused opens and dropped frames, by reason (for status and tests).
#[derive(Debug, Default)]
pub struct ConnCounters {
    pub opened: AtomicU64,
    /// Opens sent again as version 1 after a version 2 open was refused as malformed
    /// (the other peer predates the cipher choice).
    pub opened_version_1: AtomicU64,
    /// Opens sent as version 1 at once, to a peer remembered as version 1 only
    /// ([`version_1`]).
    pub opened_version_1_remembered: AtomicU64,
    pub accepted: AtomicU64,
    pub refused_unknown_protocol: AtomicU64,
    pub refused_not_allowed: AtomicU64,
    pub refused_busy: AtomicU64,
    pub refused_bad_open: AtomicU64,
    pub refused_by_handler: AtomicU64,
    /// Frames for no known connection (or too short to name one).
    pub unknown_frames: AtomicU64,
    /// Frames that do not authenticate under their connection's key, or come from
    /// another address than the connection's: forged, altered or re-sourced.
    pub forged_frames: AtomicU64,
    /// Authentic frames whose packet number arrived before: replays.
    pub replayed_frames: AtomicU64,
}

/// A table entry: a connection being opened (frames that beat the accept reply wait
/// here, a few at most) or open.
enum Entry {
    Opening(Vec<(u64, Vec<u8>)>),
    Open(Arc<Conn>),
}

/// Frames kept for a connection whose accept reply is still being processed: at most
/// this many, and this many bytes in all.
const EARLY_FRAMES: usize = 16;
const EARLY_BYTES: usize = 1 << 20;

struct ListenerSlot {
    tx: mpsc::Sender<Incoming>,
    allow: Option<HashSet<u32>>,
    generation: u64,
}

struct Shared {
    peer: Peer,
    config: ConnConfig,
    conns: Mutex<HashMap<(u32, ConnId), Entry>>,
    listeners: Mutex<HashMap<String, ListenerSlot>>,
    opening: Mutex<HashMap<String, oneshot::Sender<InboundResponse>>>,
    version_1: Mutex<version_1::Version1Peers>,
    generation: AtomicU64,
    counters: ConnCounters,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A peer's connections: opening, listening, and routing their frames.
/// Cheap to clone.
#[derive(Clone)]
pub struct Connections {
    shared: Arc<Shared>,
}

impl Connections {
    /// Connections over `peer`; they all end when the peer shuts down.
    pub fn new(peer: Peer, config: ConnConfig) -> Connections {
        let shutdown = peer.shutdown_token().child_token();
        Connections {
            shared: Arc::new(Shared {
                peer,
                config,
                conns: Mutex::new(HashMap::new()),
                listeners: Mutex::new(HashMap::new()),
                opening: Mutex::new(HashMap::new()),
                version_1: Mutex::new(version_1::Version1Peers::default()),
                generation: AtomicU64::new(0),
                counters: ConnCounters::default(),
                tasks: TaskTracker::new(),
                shutdown,
            }),
        }
    }

    /// Counters of opens and stray frames.
    pub fn counters(&self) -> &ConnCounters {
        &self.shared.counters
    }

    /// The address other twins open this peer's listeners at.
    pub fn local_address(&self) -> Address {
        self.shared.peer.address().clone()
    }

    /// Open connections right now.
    pub fn open_count(&self) -> usize {
        lock(&self.shared.conns)
            .values()
            .filter(|e| matches!(e, Entry::Open(_)))
            .count()
    }

    /// Opens a connection to twin `twin`'s rmb-peer for `protocol`.
    pub async fn connect(&self, twin: u32, protocol: &str) -> Result<Stream, ConnectError> {
        self.connect_address(Address::twin(twin), protocol).await
    }

    /// Opens a connection to any address (e.g. a direct client's `twin:sid`).
    pub async fn connect_address(
        &self,
        to: Address,
        protocol: &str,
    ) -> Result<Stream, ConnectError> {
        wire::check_protocol(protocol)?;
        let offer: Vec<u8> = self.shared.config.ciphers.iter().map(|c| c.id()).collect();
        if offer.is_empty() {
            return self.open(to, protocol, offer).await;
        }
        // Version 1 means ChaCha20-Poly1305: only when it is allowed here.
        let (shared, counters) = (&self.shared, &self.shared.counters);
        let chacha = shared.config.ciphers.contains(&Cipher::ChaCha20Poly1305);
        if chacha && lock(&shared.version_1).remembers(&to, std::time::Instant::now()) {
            counters
                .opened_version_1_remembered
                .fetch_add(1, Ordering::Relaxed);
            return self.open(to, protocol, Vec::new()).await;
        }
        match self.open(to.clone(), protocol, offer).await {
            // A peer from before the cipher choice refuses a version 2 open as malformed:
            // open again as it expects (ChaCha20-Poly1305), and remember it. A refusal
            // for another reason comes back the same way the second time.
            Err(ConnectError::Remote { error, .. }) if error.code == codes::BAD_OPEN && chacha => {
                tracing::debug!(twin = to.twin, reason = %error.message, "open with a cipher offer refused; opening with version 1");
                counters.opened_version_1.fetch_add(1, Ordering::Relaxed);
                lock(&shared.version_1).note(&to, std::time::Instant::now());
                self.open(to, protocol, Vec::new()).await
            }
            done => done,
        }
    }

    /// One open request offering `offer` (cipher ids; empty: a version 1 open).
    async fn open(
        &self,
        to: Address,
        protocol: &str,
        offer: Vec<u8>,
    ) -> Result<Stream, ConnectError> {
        let shared = &self.shared;
        let twin = to.twin;
        let cfg = shared.config.stream.clamped();
        let eph = Ephemeral::generate();
        let mut id = [0u8; wire::ID_LEN];
        rand::thread_rng().fill_bytes(&mut id);
        let mut open = Open {
            id,
            ephemeral: eph.public,
            window: cfg.window,
            protocol: protocol.to_string(),
            offer,
            signature: [0; rmb_identity::SIGNATURE_LEN],
        };
        let me = shared.peer.twin_id();
        crypto::sign_open(shared.peer.identity(), &mut open, me, twin);
        let uid = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        self.reserve(twin, id)?;
        lock(&shared.opening).insert(uid.clone(), tx);
        let mut cleanup = Cleanup {
            shared,
            uid: &uid,
            key: Some((twin, id)),
        };
        let waited = shared.config.open_timeout;
        let request = OutgoingRequest {
            uid: uid.clone(),
            destination: to,
            command: wire::OPEN_COMMAND.to_string(),
            payload: open.encode(),
            schema: None,
            tags: None,
            timestamp: 0,
            // Validity is judged by the receiver's clock (protocol.md §2): an open that
            // lived only the open timeout (15 s) would be expired on arrival at a listener
            // whose clock runs that far ahead. It lives as long as a data frame, so a clock
            // offset the connection's frames survive does not stop it from opening; we
            // still give up waiting after `waited`.
            expiration: waited.as_secs().max(stream::FRAME_EXPIRATION),
        };
        let exchange = async {
            shared
                .peer
                .send_request(request)
                .await
                .map_err(|e| match e {
                    SendError::UnknownTwin(t) => ConnectError::UnknownTwin(t),
                    SendError::Closed => ConnectError::Closed,
                    other => ConnectError::Unreachable {
                        twin,
                        detail: other.to_string(),
                    },
                })?;
            rx.await.map_err(|_| ConnectError::Closed)
        };
        let reply = tokio::time::timeout(waited, exchange)
            .await
            .map_err(|_| ConnectError::Timeout { twin, waited })??;
        let body = match reply.reply {
            Ok(body) => body,
            Err(error) => return Err(refusal(twin, protocol, &reply.source, error)),
        };
        if reply.source.twin != twin {
            return Err(ConnectError::Unreachable {
                twin,
                detail: format!("the accept came from twin {}", reply.source.twin),
            });
        }
        let accept = Accept::decode(&body).map_err(ConnectError::BadReply)?;
        let responder = shared
            .peer
            .lookup_twin(twin)
            .await
            .map_err(|e| ConnectError::Unreachable {
                twin,
                detail: e.to_string(),
            })?
            .ok_or(ConnectError::UnknownTwin(twin))?;
        let keys = crypto::complete(eph, &open, &accept, me, &responder)?;
        let now = tokio::time::Instant::now().into_std();
        let state = state::State::new(cfg, now, accept.window);
        let conn = Conn::new(id, reply.source, protocol.to_string(), keys, state);
        cleanup.key = None;
        self.start(twin, conn.clone());
        shared.counters.opened.fetch_add(1, Ordering::Relaxed);
        Ok(Stream::new(conn))
    }

    /// Reserves a table slot for a connection being opened (limits checked).
    fn reserve(&self, twin: u32, id: ConnId) -> Result<(), ConnectError> {
        let mut conns = lock(&self.shared.conns);
        self.check_limits(&conns, twin)
            .map_err(ConnectError::TooMany)?;
        conns.insert((twin, id), Entry::Opening(Vec::new()));
        Ok(())
    }

    fn check_limits(&self, conns: &HashMap<(u32, ConnId), Entry>, twin: u32) -> Result<(), usize> {
        let cfg = &self.shared.config;
        if conns.len() >= cfg.max_connections {
            return Err(conns.len());
        }
        let with_twin = conns.keys().filter(|(t, _)| *t == twin).count();
        if with_twin >= cfg.max_per_twin {
            return Err(with_twin);
        }
        Ok(())
    }

    /// Puts an open connection in the table (replaying frames that came early) and
    /// starts its driver.
    fn start(&self, twin: u32, conn: Arc<Conn>) {
        let early = {
            let mut conns = lock(&self.shared.conns);
            match conns.insert((twin, conn.id), Entry::Open(conn.clone())) {
                Some(Entry::Opening(early)) => early,
                _ => Vec::new(),
            }
        };
        for (pn, mut cipher) in early {
            let received = conn.receive(pn, &mut cipher);
            self.count(&conn.remote, received);
        }
        let shared = Arc::clone(&self.shared);
        let key = (twin, conn.id);
        let forget = move || {
            let mut conns = lock(&shared.conns);
            if matches!(conns.get(&key), Some(Entry::Open(c)) if c.id == key.1) {
                conns.remove(&key);
            }
        };
        self.shared.tasks.spawn(drive(
            self.shared.peer.clone(),
            conn,
            self.shared.shutdown.clone(),
            forget,
        ));
    }

    /// Starts accepting connections for `protocol`. Opens for a protocol nobody listens
    /// to are refused as unknown; opens from twins outside `options.allow` as not
    /// allowed. Dropping the [`Listener`] stops listening.
    pub fn listen(&self, protocol: &str, options: ListenOptions) -> Result<Listener, ListenError> {
        wire::check_protocol(protocol)?;
        let mut listeners = lock(&self.shared.listeners);
        if listeners.get(protocol).is_some_and(|l| !l.tx.is_closed()) {
            return Err(ListenError::AlreadyListening(protocol.to_string()));
        }
        let (tx, rx) = mpsc::channel(self.shared.config.backlog.max(1));
        let generation = self.shared.generation.fetch_add(1, Ordering::Relaxed);
        listeners.insert(
            protocol.to_string(),
            ListenerSlot {
                tx,
                allow: options.allow,
                generation,
            },
        );
        Ok(Listener {
            rx,
            protocol: protocol.to_string(),
            generation,
            connections: self.clone(),
        })
    }

    /// Takes an inbound request if it belongs to connections (`rmb.conn.*`); gives it
    /// back otherwise. Never waits: a frame is applied at once, an open is checked in
    /// its own task.
    pub fn handle_request(&self, request: InboundRequest) -> Option<InboundRequest> {
        match request.command.as_str() {
            // A signed frame (rmb peers before unsigned frames): same checks.
            wire::DATA_COMMAND => {
                let mut request = request;
                self.on_packet(&request.source, &mut request.payload);
                None
            }
            wire::OPEN_COMMAND => {
                let this = self.clone();
                self.shared
                    .tasks
                    .spawn(async move { this.on_open(request).await });
                None
            }
            c if c.starts_with(wire::COMMAND_PREFIX) => {
                self.shared.peer.count_refusal(Reason::InvalidMessage);
                None
            }
            _ => Some(request),
        }
    }

    /// Takes an unsigned data frame ([`Inbound::ConnFrame`](crate::core::Inbound)): it
    /// is applied only if it authenticates under the keys of the connection its claimed
    /// source and id name, and its packet number is new; otherwise it is dropped and
    /// counted by reason ([`ConnCounters`]). Never waits.
    pub fn handle_frame(&self, mut frame: ConnFrame) {
        self.on_packet(&frame.source, &mut frame.payload);
    }

    /// Takes the reply to one of our open requests; gives back any other reply.
    pub fn handle_response(&self, response: InboundResponse) -> Option<InboundResponse> {
        let waiting = lock(&self.shared.opening).remove(&response.uid);
        match waiting {
            Some(tx) => {
                let _ = tx.send(response);
                None
            }
            None => Some(response),
        }
    }

    /// Applies a packet to its connection, decrypting `payload` in place.
    fn on_packet(&self, source: &Address, payload: &mut [u8]) {
        let counters = &self.shared.counters;
        let Ok((id, pn, cipher)) = wire::split_packet_mut(payload) else {
            counters.unknown_frames.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let key = (source.twin, id);
        let conn = {
            let mut conns = lock(&self.shared.conns);
            match conns.get_mut(&key) {
                Some(Entry::Open(conn)) => conn.clone(),
                Some(Entry::Opening(early)) => {
                    let held: usize = early.iter().map(|(_, c)| c.len()).sum();
                    if early.len() < EARLY_FRAMES && held + cipher.len() <= EARLY_BYTES {
                        early.push((pn, cipher.to_vec()));
                    }
                    return;
                }
                None => {
                    counters.unknown_frames.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        };
        let received = if conn.remote == *source {
            conn.receive(pn, cipher)
        } else {
            Received::Forged
        };
        self.count(source, received);
    }

    /// Counts a dropped frame by reason (forgeries are logged at most once per 10 s per
    /// claimed twin).
    fn count(&self, source: &Address, received: Received) {
        let counters = &self.shared.counters;
        match received {
            Received::Applied => {}
            Received::Replayed => {
                counters.replayed_frames.fetch_add(1, Ordering::Relaxed);
            }
            Received::Forged => {
                counters.forged_frames.fetch_add(1, Ordering::Relaxed);
                // Its source is only claimed: one line per interval for all of them.
                if self
                    .shared
                    .peer
                    .log_allowed(UNPROVEN_SOURCE, Reason::Crypto)
                {
                    tracing::warn!(claimed_source = %source, "dropping a connection frame that does not authenticate (logged once per 10 s)");
                }
            }
        }
    }

    /// Waits (at most `limit`) until every connection whose handle was dropped has
    /// closed and lingered, so the last acknowledgement of a finished exchange reaches the
    /// far side before the process goes; true when all did. Call it before
    /// [`shutdown`](Self::shutdown), which aborts whatever is still open.
    pub async fn drain(&self, limit: std::time::Duration) -> bool {
        self.shared.tasks.close();
        let drained = tokio::time::timeout(limit, self.shared.tasks.wait())
            .await
            .is_ok();
        self.shared.tasks.reopen();
        drained
    }

    /// Aborts every connection and waits for their tasks (the peer's shutdown does it
    /// too; this waits).
    pub async fn shutdown(&self) {
        self.shared.shutdown.cancel();
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
    }
}

/// Forgets an open attempt's table entries however `connect` ends.
struct Cleanup<'a> {
    shared: &'a Shared,
    uid: &'a str,
    key: Option<(u32, ConnId)>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        lock(&self.shared.opening).remove(self.uid);
        if let Some(key) = self.key {
            let mut conns = lock(&self.shared.conns);
            if matches!(conns.get(&key), Some(Entry::Opening(_))) {
                conns.remove(&key);
            }
        }
    }
}
