//! The core [`Peer`]: one twin on the network, independent of how applications reach it.
//!
//! It knows nothing of Redis or JSON. Applications' APIs ([`redis_api`](crate::redis_api),
//! [`client`](crate::client)) are thin layers that turn their requests into
//! [`OutgoingRequest`]/[`OutgoingResponse`] and consume [`Inbound`] messages.
//!
//! - [`Peer::start`]: resolves the own twin, publishes its relays and encryption key when
//!   they differ, connects to every relay ([`links`](crate::links)) and starts the receive
//!   pipeline ([`receive`]).
//! - [`Peer::send_request`] / [`Peer::send_response`] ([`send`]): encrypt to the
//!   destination's published key, stamp, sign, hand to a relay. Bulk traffic between rmb
//!   peers may go without a signature, authenticated by its encryption ([`unsigned`]).
//! - Everything received is checked ([`checks`], [`receive`], [`replay`]) before it
//!   reaches the application as a plain [`Inbound`].
//! - Delivery guarantees ([`resend`]): requests are sent again until answered, a repeated
//!   request is answered from the reply cache instead of reaching the application twice.

pub mod checks;
pub mod errors;
pub mod receive;
pub mod refusals;
pub mod repeats;
pub mod replay;
pub mod resend;
pub mod rmb_twins;
pub mod rtt;
pub mod send;
pub mod senders;
pub mod status;
pub mod tap;
pub mod types;
pub mod unsigned;
pub mod unsolicited;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmb_identity::registry::{Registry, RegistryError, RegistryKind, Twin, TwinUpdate};
use rmb_identity::{E2eScheme, Identity};
use rmb_proto::Address;
use rmb_proto::time::unix_now;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::links::{Links, Login, RelayUrl};

pub use errors::{PeerError, Refusal, SendError, codes};
pub use refusals::{Reason, UNPROVEN_SOURCE};
pub use replay::{Admission, MemoryReplayStore, ReplayError, ReplayKey, ReplayKind, ReplayStore};
pub use status::{LinkStatus, PeerStatus};
pub use types::{
    ConnFrame, Inbound, InboundRequest, InboundResponse, OutgoingRequest, OutgoingResponse,
    RemoteError, RequestAuth, clamp_expiration,
};

use refusals::{LogLimiter, RefusalCounters};
use resend::Resends;
use status::Counters;

/// The command the core answers itself with its version (rmb-rs tooling asks it).
pub const VERSION_COMMAND: &str = "rmb.version";
/// The one command whose requests may arrive unsigned: connection data frames, which
/// the connection's AEAD authenticates (signing each frame again would cost an MD5 of
/// the payload and an ed25519 signature per frame at both ends). See
/// [`checks::precheck`] and docs/protocol.md §10.
pub use rmb_proto::CONN_DATA_COMMAND;
/// Most relays a peer connects to (as rmb-rs).
pub const MAX_RELAYS: usize = 4;
/// Inbound messages queued for the application before the pipeline waits.
pub const INBOUND_CAPACITY: usize = 1024;

/// How to start a [`Peer`].
#[derive(Clone)]
pub struct PeerConfig {
    pub identity: Arc<Identity>,
    /// `ws://` or `wss://` relay URLs (rmb-rs `--relay`), at most [`MAX_RELAYS`].
    pub relays: Vec<String>,
    /// Where twins are looked up, already cached by the caller (`CachedRegistry`).
    pub registry: Arc<dyn Registry>,
    /// Session id: `None` for an rmb-peer (as rmb-rs), a name for direct clients.
    pub sid: Option<String>,
    /// Which encryption key we publish, and so which scheme senders use to write to us.
    /// `None` chooses as rmb-rs users need it ([`choose_scheme`]): secp256k1 on tfchain,
    /// x25519 on the embedded registry, and never replacing a published secp256k1 key.
    pub e2e: Option<E2eScheme>,
    /// Publish relays and key when they differ from the registry (false = `--no-update`).
    pub update_twin: bool,
    /// Resend unanswered requests and answer repeats from the reply cache ([`resend`]).
    /// Off gives rmb-rs's at-most-once behaviour (for comparison and benchmarks).
    pub reliable: bool,
    /// The application keeps its own durable record of the requests it was given and
    /// their replies (the Redis API does): a repeated request the core cannot answer
    /// from memory (its reply is not cached here) is handed to it rather than dropped,
    /// so it can answer from that record. Off for applications that would run it again.
    pub app_dedupes: bool,
    /// Envelopes whose deadline is further ahead than this many seconds are refused
    /// (rmb-peer `--max-lifetime`; [`rmb_proto::DEFAULT_MAX_LIFETIME_SECS`] by default).
    pub max_lifetime: u64,
    /// How many destination twins' answers to "do you run rmb?" are kept, and how long
    /// ([`rmb_twins`]; rmb-peer `--rmb-twins`, `--rmb-twin-ttl`): they decide which
    /// destinations get timed resends.
    pub rmb_twins: rmb_twins::Limits,
    /// Send requests and answers without a signature to peers that take them, and say
    /// we take them ([`unsigned`]; false = rmb-peer `--no-unsigned-rpc`). Unsigned RPCs
    /// that arrive are accepted either way: their encryption authenticates them.
    pub unsigned_rpc: bool,
}

/// Shared state of a running peer.
pub(crate) struct Inner {
    identity: Arc<Identity>,
    account_ss58: String,
    twin: u32,
    sid: Option<String>,
    /// Our address as written in envelopes we send.
    source: Address,
    e2e: E2eScheme,
    registry: Arc<dyn Registry>,
    links: Links,
    replay: Arc<dyn ReplayStore>,
    /// Requests waiting for an answer (empty unless `reliable`).
    resends: Mutex<Resends>,
    /// Which destinations proved they run rmb (timed resends, when `reliable`) and
    /// which take unsigned RPCs.
    rmb_twins: Mutex<rmb_twins::RmbTwins>,
    /// Wakes the resend task when a probe of [`rmb_twins`] is queued.
    probes_queued: tokio::sync::Notify,
    /// Destinations looked up in the last second (see [`senders`]).
    destinations: Mutex<senders::Senders>,
    /// Unsigned requests whose unsigned answers we accept ([`unsigned`]).
    awaited_unsigned: unsigned::Awaited,
    reliable: bool,
    /// [`PeerConfig::unsigned_rpc`].
    unsigned_rpc: bool,
    app_dedupes: bool,
    max_lifetime: u64,
    started_at: u64,
    counters: Counters,
    /// Round trips of answered requests sent once (`--metrics-listen`).
    rpc_seconds: prometheus::Histogram,
    refusals: RefusalCounters,
    log_limiter: LogLimiter,
    repeats: Mutex<repeats::RepeatLimiter>,
    shutdown: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Takes some requests before the inbound channel ([`tap`]).
    tap: std::sync::OnceLock<Arc<dyn tap::InboundTap>>,
}

/// A running peer. Cheap to clone; the peer stops when the last clone is dropped or
/// [`shutdown`](Peer::shutdown) is called.
#[derive(Clone)]
pub struct Peer {
    inner: Arc<Inner>,
    _guard: Arc<DropGuard>,
}

impl Peer {
    /// Resolves the own twin by account ([`PeerError::NoTwin`] naming the SS58 account
    /// when there is none), publishes relays and encryption key when they differ (unless
    /// `update_twin` is off), connects to every relay and starts the receive pipeline.
    ///
    /// Returns at once; links connect in the background (see [`Peer::wait_connected`]).
    /// Verified messages for the application arrive on the returned receiver.
    pub async fn start(config: PeerConfig) -> Result<(Peer, mpsc::Receiver<Inbound>), PeerError> {
        Self::start_with_replay_store(config, Arc::new(MemoryReplayStore::default())).await
    }

    /// [`start`](Peer::start) with a given replay store (e.g. one shared through Redis).
    pub async fn start_with_replay_store(
        config: PeerConfig,
        replay: Arc<dyn ReplayStore>,
    ) -> Result<(Peer, mpsc::Receiver<Inbound>), PeerError> {
        let relays = parse_relays(&config.relays)?;
        let account = config.identity.signer().account();
        let twin = config
            .registry
            .twin_id_by_account(&account)
            .await
            .map_err(PeerError::Registry)?
            .ok_or_else(|| PeerError::NoTwin {
                account_ss58: account.to_string(),
            })?;
        let current = config
            .registry
            .get_twin(twin)
            .await
            .map_err(PeerError::Registry)?;
        let published = current.as_ref().and_then(|t| t.pk.as_deref());
        let e2e = choose_scheme(config.e2e, config.registry.kind(), published);
        if config.update_twin {
            publish_if_changed(&config, e2e, current.as_ref(), &relays).await?;
        }

        let (incoming_tx, incoming_rx) = mpsc::channel(INBOUND_CAPACITY);
        let login = Login {
            identity: Arc::clone(&config.identity),
            twin,
            sid: config.sid.clone(),
        };
        let shutdown = CancellationToken::new();
        let links = Links::start(&relays, login, incoming_tx, shutdown.child_token());
        let source = match &config.sid {
            Some(sid) => Address::session(twin, sid.clone()),
            None => Address::twin(twin),
        };
        let inner = Arc::new(Inner {
            identity: config.identity,
            account_ss58: account.to_string(),
            twin,
            sid: config.sid,
            source,
            e2e,
            registry: config.registry,
            links,
            replay,
            resends: Mutex::new(Resends::default()),
            rmb_twins: Mutex::new(rmb_twins::RmbTwins::new(config.rmb_twins)),
            probes_queued: tokio::sync::Notify::new(),
            destinations: Mutex::new(senders::Senders::default()),
            awaited_unsigned: unsigned::Awaited::default(),
            reliable: config.reliable,
            unsigned_rpc: config.unsigned_rpc,
            app_dedupes: config.app_dedupes,
            max_lifetime: config.max_lifetime,
            started_at: unix_now(),
            counters: Counters::default(),
            rpc_seconds: status::rpc_histogram(),
            refusals: RefusalCounters::default(),
            log_limiter: LogLimiter::default(),
            repeats: Mutex::new(repeats::RepeatLimiter::default()),
            shutdown: shutdown.clone(),
            tasks: Mutex::new(Vec::new()),
            tap: std::sync::OnceLock::new(),
        });
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_CAPACITY);
        let mut tasks = receive::spawn(&inner, incoming_rx, inbound_tx);
        tasks.push(tokio::spawn(probe_loop(Arc::clone(&inner))));
        if inner.reliable {
            tasks.push(tokio::spawn(resend_loop(Arc::clone(&inner))));
        }
        *inner.tasks.lock().unwrap_or_else(|e| e.into_inner()) = tasks;

        // The last handle's drop cancels `shutdown`, which stops the links; their end
        // closes the pipeline, whose tasks hold `inner` (not the guard).
        let guard = Arc::new(shutdown.drop_guard());
        tracing::info!(twin, account = %inner.account_ss58, sid = ?inner.sid, relays = relays.len(), e2e = %e2e, "peer started");
        Ok((
            Peer {
                inner,
                _guard: guard,
            },
            inbound_rx,
        ))
    }

    /// Installs the one [`tap`] that takes some requests before the inbound channel;
    /// false when one is installed already (it stays).
    pub fn set_inbound_tap(&self, tap: Arc<dyn tap::InboundTap>) -> bool {
        self.inner.tap.set(tap).is_ok()
    }

    /// Our twin id.
    pub fn twin_id(&self) -> u32 {
        self.inner.twin
    }

    /// Our address as it appears in envelopes we send (twin, and session if any).
    pub fn address(&self) -> &Address {
        &self.inner.source
    }

    /// Our keys.
    pub fn identity(&self) -> &Arc<Identity> {
        &self.inner.identity
    }

    /// The encryption scheme of the key we publish (chosen at start, see [`choose_scheme`]).
    pub fn e2e_scheme(&self) -> E2eScheme {
        self.inner.e2e
    }

    /// True when the peer resends and answers repeats from its reply cache
    /// ([`PeerConfig::reliable`]); applications then keep their own records crash-safe.
    pub fn is_reliable(&self) -> bool {
        self.inner.reliable
    }

    /// Counts a repeated message an application layer dropped (one the core's memory did
    /// not know, e.g. received before a restart), so [`PeerStatus::duplicates`] sees it.
    pub fn count_duplicate(&self) {
        Counters::bump(&self.inner.counters.duplicates);
    }

    /// Counts a refusal made by an application layer (an oversized request, a full
    /// command queue…) with the core's, so [`PeerStatus::rejected`] and
    /// [`PeerStatus::rejected_by`] see every refusal.
    pub fn count_refusal(&self, reason: Reason) {
        self.inner.count_refusal(reason);
    }

    /// True when a log line about `reason` caused by `source` (a twin id, or any number
    /// naming the party) may be written now: at most one per 10 s per pair, so remote
    /// parties cannot flood the log.
    pub fn log_allowed(&self, source: u64, reason: Reason) -> bool {
        self.inner
            .log_limiter
            .allow(source, reason, std::time::Instant::now())
    }

    /// The longest lifetime accepted for a received envelope, in seconds.
    pub fn max_lifetime(&self) -> u64 {
        self.inner.max_lifetime
    }

    /// True when at least one relay link is up now.
    pub fn any_connected(&self) -> bool {
        self.inner.links.any_connected()
    }

    /// Waits until at least one relay link is up (or `timeout` passes); true if one is.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        self.inner.links.wait_connected(timeout).await
    }

    /// Snapshot for logs and `rmb status`.
    pub fn status(&self) -> PeerStatus {
        let c = &self.inner.counters;
        PeerStatus {
            twin: self.inner.twin,
            account: self.inner.account_ss58.clone(),
            sid: self.inner.sid.clone(),
            started_at: self.inner.started_at,
            relays: self.inner.links.status(),
            sent: Counters::read(&c.sent),
            received: Counters::read(&c.received),
            rejected: Counters::read(&c.rejected),
            rejected_by: self.inner.refusals.snapshot(),
            resent: Counters::read(&c.resent),
            duplicates: Counters::read(&c.duplicates),
            replayed: Counters::read(&c.replayed),
            awaiting: self.inner.resends().len() as u64,
            unanswered: Counters::read(&c.unanswered),
            sent_unsigned: Counters::read(&c.sent_unsigned),
            received_unsigned: Counters::read(&c.received_unsigned),
        }
    }

    /// The round trips of this peer's requests answered without a resend (shared: the
    /// peer keeps observing into it), for `/metrics`.
    pub fn rpc_seconds(&self) -> prometheus::Histogram {
        self.inner.rpc_seconds.clone()
    }

    /// Makes the relay links stop reconnecting, because the process is shutting down:
    /// connections that are up stay up (to flush what is being sent), but one that drops
    /// is not made again. Otherwise a peer in its shutdown could log in again and
    /// displace the session of the peer started to replace it.
    pub fn stop_reconnecting(&self) {
        self.inner.links.stop_reconnecting();
    }

    /// Asks the peer to stop (links close, the inbound channel ends) without waiting.
    pub fn close(&self) {
        self.inner.shutdown.cancel();
    }

    /// Stops the peer: closes every relay connection and waits for its tasks to end.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.links.shutdown().await;
        let tasks =
            std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
    }
}

impl Inner {
    fn count_refusal(&self, reason: Reason) {
        Counters::bump(&self.counters.rejected);
        self.refusals.bump(reason);
    }

    fn resends(&self) -> std::sync::MutexGuard<'_, Resends> {
        self.resends.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn rmb_twins(&self) -> std::sync::MutexGuard<'_, rmb_twins::RmbTwins> {
        self.rmb_twins.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How often the resend table is looked at.
const RESEND_TICK: Duration = Duration::from_millis(250);

/// Sends the probes [`rmb_twins`] queues (for timed resends and unsigned RPCs).
async fn probe_loop(inner: Arc<Inner>) {
    loop {
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            _ = inner.probes_queued.notified() => send_probes(&inner),
        }
    }
}

/// Sends again what is due ([`resend`]); a link that connects makes everything due.
async fn resend_loop(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(RESEND_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut connected = inner.links.subscribe_connected();
    loop {
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            _ = tick.tick() => {}
            changed = connected.changed() => {
                if changed.is_err() {
                    return;
                }
                inner.resends().all_due(tokio::time::Instant::now().into_std());
            }
        }
        let now = tokio::time::Instant::now().into_std();
        let due = inner.resends().take_due(now, unix_now());
        for item in due {
            match inner.links.try_send(item.bytes.clone(), item.deadline) {
                Ok(_) => {
                    Counters::bump(&inner.counters.resent);
                    tracing::debug!(uid = %item.uid, twin = item.twin, "sent again");
                }
                // No relay took it: a request stays scheduled anyway; a one-shot
                // entry is put back and tried again on the next tick.
                Err(_) => {
                    let mut resends = inner.resends();
                    if !resends.contains(&item.uid, item.twin) {
                        // Past the budget it is dropped; the requester asks again.
                        resends.track_once(item, now);
                    }
                }
            }
        }
    }
}

/// Sends each queued probe ([`rmb_twins`]) on a task of its own: signed, never resent,
/// answered by the destination's core. One that fails is asked again after it expired.
fn send_probes(inner: &Arc<Inner>) {
    let probes = inner.rmb_twins().take_probes();
    for (twin, uid) in probes {
        let inner = Arc::clone(inner);
        tokio::spawn(async move {
            if let Err(e) = inner.send_probe(twin, uid).await {
                tracing::debug!(twin, error = %e, "could not ask a twin whether it runs rmb");
            }
        });
    }
}

/// Checks the relay list: 1 to [`MAX_RELAYS`] valid `ws(s)://` URLs, duplicates dropped.
pub fn parse_relays(urls: &[String]) -> Result<Vec<RelayUrl>, PeerError> {
    if urls.is_empty() {
        return Err(PeerError::NoRelays);
    }
    if urls.len() > MAX_RELAYS {
        return Err(PeerError::TooManyRelays(urls.len()));
    }
    let mut relays: Vec<RelayUrl> = Vec::with_capacity(urls.len());
    for url in urls {
        let relay = RelayUrl::parse(url)?;
        if !relays.contains(&relay) {
            relays.push(relay);
        }
    }
    Ok(relays)
}

/// The encryption scheme a peer uses (and publishes a key for).
///
/// An explicit `--e2e` always wins. Otherwise a published secp256k1 key is kept (replacing
/// it would cut off every rmb-rs peer and SDK that writes to this twin), and a twin with
/// no key or an x25519 key gets the registry's default: secp256k1 on tfchain, where
/// rmb-rs peers and ThreeFold's SDKs read the key and understand only that scheme;
/// x25519 on the embedded registry, which only rmb peers read.
pub fn choose_scheme(
    explicit: Option<E2eScheme>,
    kind: RegistryKind,
    published: Option<&[u8]>,
) -> E2eScheme {
    if let Some(scheme) = explicit {
        return scheme;
    }
    if published.map(E2eScheme::of_public_key) == Some(Ok(E2eScheme::Secp256k1)) {
        return E2eScheme::Secp256k1;
    }
    match kind {
        RegistryKind::Tfchain => E2eScheme::Secp256k1,
        RegistryKind::Embedded => E2eScheme::X25519,
    }
}

/// Publishes the relay names and our encryption key when the registry differs.
///
/// A registry that refuses the update (tfchain refusing a relay name, say) does not stop
/// the peer: it still reaches the relays it connects to, so it logs which flag fixes the
/// entry and carries on. A registry that cannot be reached is an error.
async fn publish_if_changed(
    config: &PeerConfig,
    e2e: E2eScheme,
    current: Option<&Twin>,
    relays: &[RelayUrl],
) -> Result<(), PeerError> {
    let kind = config.registry.kind();
    let update = TwinUpdate {
        relays: relays.iter().map(|r| r.name(kind)).collect::<BTreeSet<_>>(),
        pk: Some(config.identity.e2e_public_key(e2e)),
        create: false,
    };
    if current.is_some_and(|t| t.matches(&update)) {
        return Ok(());
    }
    match config
        .registry
        .publish(config.identity.signer(), &update)
        .await
    {
        Ok(twin) => {
            tracing::info!(twin = twin.id, relays = ?update.relays, e2e = %e2e, "published the twin's relays and encryption key");
            Ok(())
        }
        Err(RegistryError::Refused(reason)) => {
            tracing::error!(
                relays = ?update.relays,
                e2e = %e2e,
                %reason,
                "the registry refused the twin's relays and encryption key; the peer runs on \
                 with the entry as it was. Fix: give --relay URLs whose host is a public \
                 domain name of at least 10 characters (tfchain refuses IP addresses, ports \
                 and short names), or keep the entry as it is with --no-update"
            );
            Ok(())
        }
        Err(e) => Err(PeerError::Publish(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_lists_are_checked() {
        let urls = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(matches!(parse_relays(&[]), Err(PeerError::NoRelays)));
        let five = urls(&["ws://a", "ws://b", "ws://c", "ws://d", "ws://e"]);
        assert_eq!(
            parse_relays(&five).unwrap_err().to_string(),
            "the number of relays should not exceed 4 (got 5)"
        );
        let parsed = parse_relays(&urls(&["ws://a:1", "ws://a:1/", "wss://b"])).unwrap();
        let names: Vec<_> = parsed
            .iter()
            .map(|r| r.name(RegistryKind::Embedded))
            .collect();
        assert_eq!(names, ["a:1", "b"]);
        assert!(parse_relays(&urls(&["http://a"])).is_err());
    }

    #[test]
    fn the_scheme_follows_the_registry_and_never_drops_a_published_secp256k1_key() {
        let identity = Identity::from_secret("//Alice", rmb_identity::KeyType::Sr25519).unwrap();
        let secp = identity.e2e_public_key(E2eScheme::Secp256k1);
        let x25519 = identity.e2e_public_key(E2eScheme::X25519);
        use E2eScheme::{Secp256k1, X25519};
        use RegistryKind::{Embedded, Tfchain};
        for (explicit, kind, published, chosen) in [
            (None, Tfchain, None, Secp256k1),
            (None, Tfchain, Some(&x25519), Secp256k1),
            (None, Tfchain, Some(&secp), Secp256k1),
            (None, Embedded, None, X25519),
            (None, Embedded, Some(&x25519), X25519),
            (None, Embedded, Some(&secp), Secp256k1),
            (Some(X25519), Tfchain, Some(&secp), X25519),
            (Some(Secp256k1), Embedded, Some(&x25519), Secp256k1),
        ] {
            assert_eq!(
                choose_scheme(explicit, kind, published.map(Vec::as_slice)),
                chosen,
                "{explicit:?} {kind:?} {:?}",
                published.map(Vec::len)
            );
        }
    }

    /// A registry that holds one twin and answers every publish with `refusal`.
    struct RefusingRegistry {
        twin: Twin,
        refusal: RegistryError,
    }

    #[async_trait::async_trait]
    impl Registry for RefusingRegistry {
        async fn get_twin(&self, id: u32) -> Result<Option<Twin>, RegistryError> {
            Ok((id == self.twin.id).then(|| self.twin.clone()))
        }
        async fn twin_id_by_account(
            &self,
            account: &rmb_identity::AccountId,
        ) -> Result<Option<u32>, RegistryError> {
            Ok((*account == self.twin.account).then_some(self.twin.id))
        }
        async fn publish(
            &self,
            _: &rmb_identity::Signer,
            _: &TwinUpdate,
        ) -> Result<Twin, RegistryError> {
            Err(self.refusal.clone())
        }
        fn describe(&self) -> String {
            "refusing".into()
        }
        fn kind(&self) -> RegistryKind {
            RegistryKind::Tfchain
        }
    }

    async fn start_against(refusal: RegistryError) -> Result<Peer, PeerError> {
        let identity =
            Arc::new(Identity::from_secret("//Alice", rmb_identity::KeyType::Ed25519).unwrap());
        let registry = Arc::new(RefusingRegistry {
            twin: Twin {
                id: 7,
                account: identity.signer().account(),
                relays: BTreeSet::from(["old-relay.example".to_string()]),
                pk: None,
            },
            refusal,
        });
        let config = PeerConfig {
            identity,
            // Nothing listens there: links retry in the background.
            relays: vec!["ws://127.0.0.1:9/".into()],
            registry,
            sid: None,
            e2e: None,
            update_twin: true,
            reliable: true,
            app_dedupes: false,
            max_lifetime: rmb_proto::DEFAULT_MAX_LIFETIME_SECS,
            rmb_twins: Default::default(),
            unsigned_rpc: true,
        };
        Peer::start(config).await.map(|(peer, _inbound)| peer)
    }

    #[tokio::test]
    async fn a_refused_publish_does_not_stop_the_peer_but_an_unreachable_registry_does() {
        let refused = RegistryError::Refused("TfgridModule.InvalidRelayAddress".into());
        let peer = start_against(refused).await.expect("the peer runs on");
        assert_eq!(peer.twin_id(), 7);
        assert_eq!(peer.e2e_scheme(), E2eScheme::Secp256k1, "tfchain's default");
        peer.shutdown().await;

        let down = RegistryError::Unavailable("connection refused".into());
        let err = start_against(down)
            .await
            .err()
            .expect("a registry that cannot be reached");
        assert!(matches!(err, PeerError::Publish(_)), "{err}");
    }
}
