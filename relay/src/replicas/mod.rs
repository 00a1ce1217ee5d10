//! Replica-to-replica delivery: replicas of one relay (`--redis`) hand envelopes for
//! sessions connected to another replica straight to it, over a long-lived,
//! authenticated, batched TCP link, instead of through the Redis queue.
//!
//! Redis still keeps *where* each session is (the queues' presence keys, with leases)
//! and the offline queues; this module adds, per replica:
//!
//! - [`presence`]: a cache of which replica holds which session, filled from Redis on a
//!   miss and emptied by the `moves` announcements every replica publishes when a
//!   session connects to it ([`directory`]), so the steady state costs Redis nothing per
//!   envelope;
//! - [`link`]: one outbound link per other replica, reached at the address it advertises
//!   in Redis; [`inbound`]: the listener taking the others' links;
//! - [`wire`] and [`transport`]: the frames and the handshake (an HMAC under a secret
//!   the replicas share through Redis).
//!
//! Anything a link cannot deliver (the session is not there any more, the link is down
//! or over its window, the other replica died) comes back to the caller's fallback —
//! the offline queue, which wakes whichever replica holds the session — so nothing is
//! lost. The module knows nothing of routing: delivery here and the fallback are
//! closures given by the server ([`crate::server::replicas`]).

pub mod directory;
pub mod inbound;
pub mod link;
pub mod presence;
pub mod transport;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::ReplicaCounters;
use crate::switch::{Outgoing, SessionId};
use directory::{ADDRESS_TTL, Directory, Move};
use link::{Forward, LinkHandle, Links};
use presence::{Known, PresenceCache};

/// Default bytes in flight per link before envelopes go to the offline queue instead
/// (`--replica-window`).
pub const DEFAULT_WINDOW: usize = 16 << 20;

/// Default sessions whose replica is remembered (`--replica-presence-cache`).
pub const DEFAULT_PRESENCE_ENTRIES: usize = 1_000_000;

/// Hands an envelope to the session connected here; false if it cannot take it.
pub type Deliver = Arc<dyn Fn(SessionId, Outgoing) -> bool + Send + Sync>;

/// Ends the connection of a session here because it connected to another replica.
pub type Evict = Arc<dyn Fn(&SessionId) -> bool + Send + Sync>;

/// Whether a session is connected here.
pub type Holds = Arc<dyn Fn(&SessionId) -> bool + Send + Sync>;

/// What the links do with what they cannot handle themselves: given by the server.
pub struct Hooks {
    /// Delivery to the sessions connected here.
    pub deliver: Deliver,
    /// Ending a connection here whose session connected to another replica.
    pub evict: Evict,
    /// Whether a session is connected here.
    pub holds: Holds,
    /// Where envelopes a link could not deliver go (the offline queue).
    pub returned: mpsc::Sender<Forward>,
}

/// How the links of one replica are set up.
#[derive(Debug, Clone)]
pub struct LinkSettings {
    /// Where the link listener binds.
    pub listen: SocketAddr,
    /// `host:port` other replicas connect to (default: the bound address).
    pub advertise: Option<String>,
    /// Bytes in flight per link.
    pub window: usize,
    /// Sessions remembered by the presence cache.
    pub presence_entries: usize,
    /// Largest frame taken from another replica.
    pub max_frame: usize,
    /// Longest a write to another replica may take.
    pub write_timeout: Duration,
}

impl LinkSettings {
    /// The defaults for a relay with `config`, links taken at `listen` and advertised
    /// as bound: frames up to an envelope plus 2 MiB of batching, the relay's write
    /// timeout.
    pub fn new(listen: SocketAddr, config: &crate::config::Config) -> Self {
        LinkSettings {
            listen,
            advertise: None,
            window: DEFAULT_WINDOW,
            presence_entries: DEFAULT_PRESENCE_ENTRIES,
            max_frame: config.max_envelope_size.saturating_add(2 << 20),
            write_timeout: config.write_timeout,
        }
    }
}

/// What the links, the listener and the background tasks of one replica share.
pub struct Shared {
    /// This replica's id (the value of the presence keys it owns).
    pub id: String,
    pub directory: Directory,
    pub settings: LinkSettings,
    pub presence: PresenceCache,
    links: Links,
    /// Delivery to the sessions connected here.
    pub deliver: Deliver,
    /// Ends a session's connection here when it connected to another replica.
    pub evict: Evict,
    /// Whether a session is connected here.
    pub holds: Holds,
    /// Where envelopes a link could not deliver go (the offline queue).
    pub returned: mpsc::Sender<Forward>,
    pub counters: ReplicaCounters,
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
}

impl Shared {
    /// Removes `handle` from the table if it is still the link to `peer`.
    fn remove_link(&self, peer: &str, handle: &Arc<LinkHandle>) {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        if links.get(peer).is_some_and(|h| Arc::ptr_eq(h, handle)) {
            links.remove(peer);
        }
    }

    /// The link to `peer`, started if there is none.
    fn link(self: &Arc<Self>, peer: &str) -> Arc<LinkHandle> {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(handle) = links.get(peer) {
            return Arc::clone(handle);
        }
        let (handle, actor) = link::new(peer.to_string(), Arc::clone(self));
        links.insert(peer.to_string(), Arc::clone(&handle));
        self.tasks.spawn(actor.run());
        handle
    }
}

/// The replica links of one replica: what routing asks to forward an envelope.
pub struct ReplicaLinks {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    advertised: String,
}

impl ReplicaLinks {
    /// Binds the link listener, advertises it in Redis and starts the listener, the
    /// advertisement's renewal and the `moves` follower under `tasks`.
    pub async fn start(
        id: String,
        directory: Directory,
        settings: LinkSettings,
        hooks: Hooks,
        counters: ReplicaCounters,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> std::io::Result<Arc<Self>> {
        let listener = TcpListener::bind(settings.listen).await?;
        let local_addr = listener.local_addr()?;
        let advertised = match &settings.advertise {
            Some(address) => address.clone(),
            None if local_addr.ip().is_unspecified() => {
                return Err(std::io::Error::other(format!(
                    "--replica-listen {local_addr} binds every address: give --replica-advertise HOST:PORT, the address other replicas reach this one at"
                )));
            }
            None => local_addr.to_string(),
        };
        directory
            .advertise(&id, &advertised)
            .await
            .map_err(std::io::Error::other)?;
        let shared = Arc::new(Shared {
            id,
            directory,
            presence: PresenceCache::new(settings.presence_entries),
            settings,
            links: Links::default(),
            deliver: hooks.deliver,
            evict: hooks.evict,
            holds: hooks.holds,
            returned: hooks.returned,
            counters,
            tasks: tasks.clone(),
            shutdown,
        });
        tasks.spawn(inbound::accept(listener, Arc::clone(&shared)));
        tasks.spawn(advertise(Arc::clone(&shared), advertised.clone()));
        tasks.spawn(follow_moves(Arc::clone(&shared)));
        tracing::info!(id = %shared.id, listen = %local_addr, advertised = %advertised, "replica links");
        Ok(Arc::new(ReplicaLinks {
            shared,
            local_addr,
            advertised,
        }))
    }

    /// Hands `item` for `session` (not connected here) to the replica holding it, if
    /// another one does and its link takes it; otherwise gives it back.
    pub async fn forward(&self, session: SessionId, item: Outgoing) -> Result<(), Outgoing> {
        let shared = &self.shared;
        let now = Instant::now();
        let known = match shared.presence.get(&session, now) {
            Some(known) => known,
            None => {
                let epoch = shared.presence.epoch();
                shared.counters.lookups.inc();
                let owner = match shared.directory.owner(&session).await {
                    Ok(owner) => owner,
                    Err(_) => return Err(item),
                };
                let known = match owner {
                    Some(owner) => Known::At(owner.into()),
                    None => Known::Nowhere,
                };
                shared
                    .presence
                    .insert(epoch, session.clone(), known.clone(), now);
                known
            }
        };
        let Known::At(owner) = known else {
            return Err(item);
        };
        if *owner == *shared.id {
            // Claimed here but not connected: it just left (its queue is the place).
            return Err(item);
        }
        shared
            .link(&owner)
            .offer((session, item))
            .map_err(|(_, item)| item)
    }

    /// Tells every replica that `session` just connected here (after claiming it): they
    /// forget where it was, and one still holding an older connection of it ends that.
    pub async fn announce(&self, session: &SessionId) {
        let shared = &self.shared;
        if let Err(e) = shared.directory.announce_move(&shared.id, session).await {
            tracing::warn!(%session, error = %e, "announcing a session's move failed; other replicas' caches catch up within their entry lifetime");
        }
    }

    /// This replica's id.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// Where the link listener is bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// What other replicas connect to.
    pub fn advertised(&self) -> &str {
        &self.advertised
    }

    /// Sessions in the presence cache (for `/health`).
    pub fn cached_sessions(&self) -> usize {
        self.shared.presence.len()
    }
}

/// Keeps this replica's address in Redis until shutdown, then withdraws it.
async fn advertise(shared: Arc<Shared>, address: String) {
    let mut tick = tokio::time::interval(ADDRESS_TTL / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            _ = tick.tick() => {
                if let Err(e) = shared.directory.advertise(&shared.id, &address).await {
                    tracing::warn!(error = %e, "renewing this replica's link address in redis failed");
                }
            }
        }
    }
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        shared.directory.withdraw(&shared.id),
    )
    .await;
}

/// Empties presence cache entries as sessions move (all of them after a gap), and ends
/// the connection here of a session that connected to another replica (as a second
/// connection of a session on one replica replaces the first).
async fn follow_moves(shared: Arc<Shared>) {
    let (tx, mut rx) = mpsc::channel(4096);
    let follower = {
        let shared = Arc::clone(&shared);
        async move {
            let directory = shared.directory.clone();
            directory.follow_moves(tx, shared.shutdown.clone()).await
        }
    };
    shared.tasks.spawn(follower);
    while let Some(moved) = rx.recv().await {
        match moved {
            Move::Session { replica, session } => {
                shared.presence.forget(&session);
                // Only if that replica holds the claim now: an announcement can arrive
                // after a newer connection of the same session was made here.
                if replica != shared.id
                    && (shared.holds)(&session)
                    && shared
                        .directory
                        .owner(&session)
                        .await
                        .ok()
                        .flatten()
                        .as_deref()
                        == Some(replica.as_str())
                    && (shared.evict)(&session)
                {
                    shared.counters.evicted.inc();
                    tracing::info!(%session, to = %replica, "session connected to another replica; its connection here ends");
                }
            }
            Move::Gap => shared.presence.clear(),
        }
    }
}
