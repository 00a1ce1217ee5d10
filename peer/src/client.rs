//! The direct client: a Rust library for programs that talk to relays themselves, like
//! rmb-sdk-go's direct client, with no rmb-peer or Redis in between.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use rmb_identity::registry::RegistryChoice;
//! use rmb_peer::{Client, ClientOptions, RemoteError};
//!
//! let registry = RegistryChoice::Embedded { url: "http://127.0.0.1:8080".into() };
//! let options = ClientOptions::new("<mnemonic>", "my-app", vec!["ws://127.0.0.1:8080".into()], registry);
//! let client = Client::connect(options).await?;
//! client.serve("echo", |req| async move { Ok::<_, RemoteError>(req.payload) });
//! let answer = client.call(7, "zos.system.version", b"", Duration::from_secs(10)).await?;
//! println!("{}", String::from_utf8_lossy(&answer.payload));
//! # Ok(()) }
//! ```
//!
//! It is built on the same [`Peer`] as the `rmb-peer` binary: the client adds a table of
//! pending calls (uid → waiting caller) and a table of handlers (command → async fn).
//! A client logs in with a session id, so several clients (and an rmb-peer) of one twin
//! can be online at once; callers reach it at `twin:sid` ([`Client::call_address`]).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rmb_identity::registry::cache::{DEFAULT_CAPACITY, DEFAULT_TTL};
use rmb_identity::registry::{CachedRegistry, Registry, RegistryChoice, RegistryError};
use rmb_identity::{E2eScheme, Identity, IdentityError, KeyType};
use rmb_proto::Address;
use rmb_proto::time::unix_now;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::conn::{ConnConfig, Connections};
use crate::core::{
    Inbound, InboundRequest, InboundResponse, OutgoingRequest, OutgoingResponse, Peer, PeerConfig,
    PeerError, PeerStatus, RemoteError, SendError, codes,
};

/// Where the client looks twins up.
pub enum RegistrySource {
    /// Connect to this backend and cache it (TTL cache that follows changes).
    Choice(RegistryChoice),
    /// Use this registry as it is (wrap it in a `CachedRegistry` yourself).
    Instance(Arc<dyn Registry>),
}

impl From<RegistryChoice> for RegistrySource {
    fn from(choice: RegistryChoice) -> Self {
        RegistrySource::Choice(choice)
    }
}

impl From<Arc<dyn Registry>> for RegistrySource {
    fn from(registry: Arc<dyn Registry>) -> Self {
        RegistrySource::Instance(registry)
    }
}

/// How to connect a [`Client`].
pub struct ClientOptions {
    /// Mnemonic or `0x` seed, optionally with a derivation path.
    pub secret: String,
    pub key_type: KeyType,
    /// Session id: names this connection so it does not replace others of the same twin.
    pub sid: String,
    /// `ws://` or `wss://` relay URLs, at most 4.
    pub relays: Vec<String>,
    pub registry: RegistrySource,
    /// Which encryption key to publish (when `update_twin`); `None` chooses by registry
    /// ([`choose_scheme`](crate::core::choose_scheme)).
    pub e2e: Option<E2eScheme>,
    /// Publish the relays and key when they differ from the registry. Turn it off when
    /// an rmb-peer of the same twin owns the twin's relay list.
    pub update_twin: bool,
    /// How long [`Client::connect`] waits for a first relay connection.
    pub connect_timeout: Duration,
    /// Resend unanswered calls and answer repeated requests from the reply cache
    /// (on by default; off is rmb-rs's at-most-once behaviour).
    pub reliable: bool,
    /// Limits and timers of connections ([`Client::connections`]).
    pub connections: ConnConfig,
}

impl ClientOptions {
    /// Options with the defaults: sr25519 keys, encryption chosen by registry, twin updated,
    /// 10 s to connect, reliable delivery.
    pub fn new(
        secret: impl Into<String>,
        sid: impl Into<String>,
        relays: Vec<String>,
        registry: impl Into<RegistrySource>,
    ) -> Self {
        ClientOptions {
            secret: secret.into(),
            key_type: KeyType::Sr25519,
            sid: sid.into(),
            relays,
            registry: registry.into(),
            e2e: None,
            update_twin: true,
            connect_timeout: Duration::from_secs(10),
            reliable: true,
            connections: ConnConfig::default(),
        }
    }
}

/// Why a client could not connect.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("a direct client needs a non-empty session id")]
    EmptySid,
    #[error("invalid secret: {0}")]
    Identity(#[from] IdentityError),
    #[error("twin registry: {0}")]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Peer(#[from] PeerError),
    #[error("no relay connection within {waited:?}: {detail}")]
    NotConnected { waited: Duration, detail: String },
}

/// Why a call did not produce a response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("unknown twin id '{0}'")]
    UnknownTwin(u32),
    #[error("{from} answered with an error: {error}")]
    Remote { from: Address, error: RemoteError },
    #[error("a relay could not deliver the request: {0}")]
    Relay(String),
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// The request would not fit in an envelope (encrypted and signed); nothing was sent.
    #[error("request too large: {size} bytes encoded, the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("sending failed: {0}")]
    Send(SendError),
    #[error("the client is closed")]
    Closed,
}

impl From<SendError> for CallError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::UnknownTwin(twin) => CallError::UnknownTwin(twin),
            SendError::Closed => CallError::Closed,
            SendError::TooLarge { size, limit } => CallError::TooLarge { size, limit },
            other => CallError::Send(other),
        }
    }
}

/// A successful reply to [`Client::call`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Who answered.
    pub source: Address,
    pub payload: Vec<u8>,
    pub schema: Option<String>,
    /// When the responder stamped it (unix s).
    pub timestamp: u64,
}

type HandlerFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>, RemoteError>> + Send>>;
type Handler = Arc<dyn Fn(InboundRequest) -> HandlerFuture + Send + Sync>;

struct Waiting {
    destination: u32,
    reply: oneshot::Sender<InboundResponse>,
}

#[derive(Default)]
struct Tables {
    pending: Mutex<HashMap<String, Waiting>>,
    handlers: RwLock<HashMap<String, Handler>>,
}

/// A connected direct client. Dropping it closes its relay connections.
pub struct Client {
    peer: Peer,
    tables: Arc<Tables>,
    connections: Connections,
    follower: Option<JoinHandle<()>>,
}

impl Client {
    /// Builds the identity, resolves the twin, connects to the relays, and waits (up to
    /// `connect_timeout`) until at least one relay connection is up.
    pub async fn connect(options: ClientOptions) -> Result<Client, ClientError> {
        if options.sid.is_empty() {
            return Err(ClientError::EmptySid);
        }
        let identity = Arc::new(Identity::from_secret(&options.secret, options.key_type)?);
        let (registry, follower): (Arc<dyn Registry>, _) = match options.registry {
            RegistrySource::Instance(registry) => (registry, None),
            RegistrySource::Choice(choice) => {
                let backend = rmb_identity::registry::connect(&choice).await?;
                let cached = CachedRegistry::new(backend, DEFAULT_TTL, DEFAULT_CAPACITY);
                let follower = cached.spawn_follower();
                (cached, Some(follower))
            }
        };
        let config = PeerConfig {
            identity,
            relays: options.relays,
            registry,
            sid: Some(options.sid),
            e2e: options.e2e,
            update_twin: options.update_twin,
            reliable: options.reliable,
            app_dedupes: false,
            max_lifetime: rmb_proto::DEFAULT_MAX_LIFETIME_SECS,
            rmb_twins: Default::default(),
            unsigned_rpc: true,
        };
        let (peer, inbound) = match Peer::start(config).await {
            Ok(started) => started,
            Err(e) => {
                if let Some(f) = follower {
                    f.abort();
                }
                return Err(e.into());
            }
        };
        let tables = Arc::new(Tables::default());
        let connections = Connections::new(peer.clone(), options.connections);
        let client = Client {
            peer: peer.clone(),
            tables: Arc::clone(&tables),
            connections: connections.clone(),
            follower,
        };
        tokio::spawn(dispatch(peer, tables, connections, inbound));
        if !client.peer.wait_connected(options.connect_timeout).await {
            let detail = client
                .peer
                .status()
                .relays
                .iter()
                .map(|l| {
                    format!(
                        "{}: {}",
                        l.url,
                        l.last_error.as_deref().unwrap_or("connecting")
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            client.peer.shutdown().await;
            return Err(ClientError::NotConnected {
                waited: options.connect_timeout,
                detail,
            });
        }
        Ok(client)
    }

    /// Calls `command` on twin `destination` (its rmb-peer, session-less) and waits for
    /// the reply, at most `timeout` (which is also the request's expiration).
    pub async fn call(
        &self,
        destination: u32,
        command: &str,
        payload: impl Into<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Response, CallError> {
        self.call_address(Address::twin(destination), command, payload, timeout)
            .await
    }

    /// Like [`call`](Client::call), to any address, e.g. another direct client's `twin:sid`.
    pub async fn call_address(
        &self,
        destination: Address,
        command: &str,
        payload: impl Into<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Response, CallError> {
        let uid = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        let twin = destination.twin;
        self.tables.lock_pending().insert(
            uid.clone(),
            Waiting {
                destination: twin,
                reply: tx,
            },
        );
        let _forget = Forget {
            tables: &self.tables,
            uid: &uid,
        };
        let request = OutgoingRequest {
            uid: uid.clone(),
            destination,
            command: command.to_string(),
            payload: payload.into(),
            schema: None,
            tags: None,
            timestamp: 0,
            expiration: (timeout.as_secs_f64().ceil() as u64).max(1),
        };
        let exchange = async {
            self.peer.send_request(request).await?;
            rx.await.map_err(|_| CallError::Closed)
        };
        let reply = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| CallError::Timeout(timeout))??;
        match reply.reply {
            Ok(payload) => Ok(Response {
                source: reply.source,
                payload,
                schema: reply.schema,
                timestamp: reply.timestamp,
            }),
            Err(error) if reply.source.twin == 0 => Err(CallError::Relay(error.message)),
            Err(error) => Err(CallError::Remote {
                from: reply.source,
                error,
            }),
        }
    }

    /// Serves `command`: each request runs `handler` in its own task and its result goes
    /// back as a response (`Ok`) or an error envelope (`Err`). Replaces an earlier
    /// handler of the same command. Requests for commands without a handler get an
    /// error reply (code 0) instead of silence.
    pub fn serve<F, Fut>(&self, command: impl Into<String>, handler: F)
    where
        F: Fn(InboundRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<u8>, RemoteError>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |req| Box::pin(handler(req)));
        self.tables
            .handlers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(command.into(), handler);
    }

    /// Our twin id.
    pub fn twin_id(&self) -> u32 {
        self.peer.twin_id()
    }

    /// Our address (`twin:sid`), where other twins reach this client.
    pub fn address(&self) -> &Address {
        self.peer.address()
    }

    /// Relay links and counters.
    pub fn status(&self) -> PeerStatus {
        self.peer.status()
    }

    /// The core peer underneath.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// Streams to and from other twins: `connections().connect(twin, protocol)`, and
    /// `connections().listen(protocol, options)` to accept them.
    pub fn connections(&self) -> &Connections {
        &self.connections
    }

    /// Closes the relay connections and waits for the client's tasks to end.
    pub async fn shutdown(&self) {
        self.connections.shutdown().await;
        self.peer.shutdown().await;
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.peer.close();
        if let Some(follower) = &self.follower {
            follower.abort();
        }
    }
}

impl Tables {
    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, Waiting>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Removes a call's pending entry however the call ends (reply, timeout, cancel).
struct Forget<'a> {
    tables: &'a Tables,
    uid: &'a str,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.tables.lock_pending().remove(self.uid);
    }
}

/// Routes what the peer receives: replies to waiting calls, requests to handlers.
/// Connection traffic (`rmb.conn.*` and open replies) goes to `connections` first.
async fn dispatch(
    peer: Peer,
    tables: Arc<Tables>,
    connections: Connections,
    mut inbound: mpsc::Receiver<Inbound>,
) {
    while let Some(message) = inbound.recv().await {
        match message {
            Inbound::Response(response) => {
                if let Some(response) = connections.handle_response(response) {
                    deliver_reply(&tables, response)
                }
            }
            Inbound::ConnFrame(frame) => connections.handle_frame(frame),
            Inbound::Request(request) => {
                let Some(request) = connections.handle_request(request) else {
                    continue;
                };
                let handler = tables
                    .handlers
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&request.command)
                    .cloned();
                tokio::spawn(handle(peer.clone(), handler, request));
            }
        }
    }
}

fn deliver_reply(tables: &Tables, response: InboundResponse) {
    let mut pending = tables.lock_pending();
    let expected = pending
        .get(&response.uid)
        .map(|w| w.destination == response.source.twin || response.source.twin == 0);
    match expected {
        Some(true) => {
            if let Some(waiting) = pending.remove(&response.uid) {
                let _ = waiting.reply.send(response);
            }
        }
        Some(false) => tracing::warn!(
            uid = %response.uid, source = %response.source,
            "ignoring a reply from a twin the request was not sent to"
        ),
        None => {
            tracing::debug!(uid = %response.uid, "reply for no pending call (late or duplicate)")
        }
    }
}

async fn handle(peer: Peer, handler: Option<Handler>, request: InboundRequest) {
    let (uid, source, deadline) = (
        request.uid.clone(),
        request.source.clone(),
        request.deadline(),
    );
    let reply = match handler {
        Some(handler) => handler(request).await,
        None => Err(RemoteError::new(
            codes::HANDLING,
            format!("no handler for command '{}'", request.command),
        )),
    };
    let remaining = deadline.saturating_sub(unix_now());
    if remaining == 0 {
        tracing::debug!(%uid, %source, "request expired before its handler finished; no reply");
        return;
    }
    let response = OutgoingResponse {
        uid,
        destination: source,
        reply,
        schema: None,
        timestamp: 0,
        expiration: remaining,
    };
    if let Err(e) = peer.send_response(response).await {
        tracing::warn!(error = %e, "could not send a reply");
    }
}
