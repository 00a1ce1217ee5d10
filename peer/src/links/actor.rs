//! The per-relay actor: one task that keeps one logged-in WebSocket to one relay.
//!
//! ```text
//! loop:  connect (fresh JWT as the query) ─ok─▶ session ─lost─▶ rescue queued envelopes
//!          │ failed                                              │
//!          └──────────── wait (backoff with jitter) ◀────────────┘
//! session: read frames → shared incoming channel (tagged with the link index)
//!          outbox → feed a batch, flush once
//!          every 5 s: WS ping when a direction was idle 20 s; reconnect after 40 s of silence
//! ```
//!
//! WebSocket pings from the relay are answered by tungstenite itself while we read.
//! Envelopes still queued for this link when its connection drops are handed to another
//! connected link, or kept for this one's reconnect, until they expire.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use rmb_identity::{Identity, Token};
use rmb_proto::time::unix_now;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::health::LinkHealth;
use super::tokens::TokenTimes;
use super::url::RelayUrl;
use super::{Frame, Shared};

/// Lifetime of the login token made for each connection (rmb-rs uses 5 minutes); a
/// second less for each further token made in the same second ([`super::tokens`]).
pub const TOKEN_TTL: u64 = 300;
/// Longest wait for TCP + TLS + WebSocket handshake + login.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A WS ping is sent when nothing was sent or received for this long.
pub const PING_AFTER: Duration = Duration::from_secs(20);
/// The connection is considered dead when nothing was received for this long.
pub const READ_TIMEOUT: Duration = Duration::from_secs(40);
/// How often the keepalive rules are checked.
const TICK: Duration = Duration::from_secs(5);
/// Most envelopes written before one flush.
const MAX_BATCH: usize = 256;
/// tungstenite zero-fills this much of its read buffer before *every* read (128 KiB by
/// default, a few µs each), and a read takes at most this much. With small envelopes
/// the zeroing was 5% of a busy peer's CPU (topic-bench: 80 µs per delivery at 16 KiB,
/// 106 at 64 KiB). Smaller is not free: at 4 KiB topics at 100 subscribers got 3–4%
/// faster (p50 1.43–1.49 ms against 1.51–1.59), but connections carrying big frames
/// needed more reads and lost about 7% of their throughput through one relay
/// (conn-bench medians 627 against 677 MB/s over six and five runs); 8 KiB was no better
/// than 16 for topics.
const READ_BUFFER: usize = 16 * 1024;
/// A connection that lived this long resets the backoff.
const STABLE: Duration = Duration::from_secs(10);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One envelope on its way to a relay.
#[derive(Debug)]
pub struct Outgoing {
    /// The encoded, signed envelope.
    pub bytes: Bytes,
    /// Unix seconds after which it is useless (the envelope's deadline).
    pub deadline: u64,
}

/// Who logs in: the twin, its session id, and the key that signs the token.
pub struct Login {
    pub identity: Arc<Identity>,
    pub twin: u32,
    pub sid: Option<String>,
}

/// State of one link's task.
pub(super) struct Actor {
    pub index: usize,
    pub url: RelayUrl,
    pub login: Arc<Login>,
    /// Issue and expiry times of login tokens, shared by the peer's links.
    pub token_times: Arc<TokenTimes>,
    pub shared: Arc<Shared>,
    pub health: Arc<LinkHealth>,
    pub outbox: mpsc::Receiver<Outgoing>,
    pub incoming: mpsc::Sender<Frame>,
    pub shutdown: CancellationToken,
    /// Cancelled when the peer's shutdown begins: the link connects no more.
    pub no_reconnect: CancellationToken,
}

impl Actor {
    /// Connects, serves, reconnects, until shutdown.
    pub async fn run(mut self) {
        let mut backoff = Backoff::default();
        let mut carry = VecDeque::new();
        let mut failures = 0u32;
        loop {
            if self.no_reconnect.is_cancelled() {
                return self.idle_until_shutdown(&mut carry).await;
            }
            let attempt = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = self.no_reconnect.cancelled() => continue,
                attempt = self.connect() => attempt,
            };
            match attempt {
                Ok((ws, routes_unsigned_rpc)) => {
                    failures = 0;
                    self.health.set_up(unix_now(), routes_unsigned_rpc);
                    self.shared.notify_connected();
                    tracing::info!(relay = %self.url, "connected to relay");
                    let started = Instant::now();
                    let Some(reason) = self.session(ws, &mut carry).await else {
                        return;
                    };
                    self.health.set_down(unix_now(), reason.clone(), true);
                    if self.no_reconnect.is_cancelled() {
                        tracing::info!(relay = %self.url, %reason, "relay connection lost during shutdown");
                    } else {
                        tracing::warn!(relay = %self.url, %reason, "relay connection lost; reconnecting");
                    }
                    if started.elapsed() >= STABLE {
                        backoff.reset();
                    }
                }
                Err(reason) => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(relay = %self.url, %reason, "cannot connect to relay; retrying with backoff");
                    } else {
                        tracing::debug!(relay = %self.url, %reason, failures, "relay connect failed");
                    }
                    self.health.set_down(unix_now(), reason, false);
                }
            }
            self.rescue(&mut carry);
            let delay = backoff.next_delay(rand::random());
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = self.no_reconnect.cancelled() => {}
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// The link is down and the peer is shutting down: stays down (what is queued here
    /// goes to a link still connected) until the actors stop.
    async fn idle_until_shutdown(&mut self, carry: &mut VecDeque<Outgoing>) {
        tracing::info!(relay = %self.url, "relay link down; not reconnecting: the peer is shutting down");
        self.health.set_down(
            unix_now(),
            "not reconnecting: the peer is shutting down".to_string(),
            false,
        );
        self.rescue(carry);
        self.shutdown.cancelled().await;
    }

    /// Connects and logs in; also whether the relay routes unsigned RPCs (its
    /// [`rmb_proto::RELAY_CAPABILITIES_HEADER`]).
    async fn connect(&self) -> Result<(Ws, bool), String> {
        ensure_crypto_provider();
        // Relays refuse a token seen before: never make the same one twice.
        let (iat, ttl) = self.token_times.next(unix_now());
        let token = Token::create(
            self.login.identity.signer(),
            self.login.twin,
            self.login.sid.as_deref(),
            iat,
            ttl,
        );
        let request = format!("{}?{}", self.url.as_str(), token);
        let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
        // wss:// trusts the roots of `rmb_identity::trust` (system store, SSL_CERT_FILE,
        // --relay-ca), not only the built-in web roots.
        let tls = tokio_tungstenite::Connector::Rustls(rmb_identity::trust::client_config());
        let connecting = tokio_tungstenite::connect_async_tls_with_config(
            request,
            Some(config),
            true,
            Some(tls),
        );
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Err(_) => Err(format!(
                "no connection within {} s",
                CONNECT_TIMEOUT.as_secs()
            )),
            Ok(Err(tungstenite::Error::Http(response))) => {
                let body = response
                    .body()
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                Err(format!(
                    "relay refused the login: HTTP {}: {}",
                    response.status(),
                    body.trim()
                ))
            }
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok((ws, response))) => {
                let routes_unsigned_rpc = response
                    .headers()
                    .get(rmb_proto::RELAY_CAPABILITIES_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| {
                        v.split(',')
                            .any(|c| c.trim() == rmb_proto::ROUTES_UNSIGNED_RPC)
                    });
                Ok((ws, routes_unsigned_rpc))
            }
        }
    }

    /// Serves one connection; `None` on shutdown, else why it ended.
    async fn session(&mut self, ws: Ws, carry: &mut VecDeque<Outgoing>) -> Option<String> {
        let (mut sink, mut stream) = ws.split();
        if let Err(e) = self.write_carry(&mut sink, carry).await {
            return Some(e);
        }
        let mut last_rx = Instant::now();
        let mut last_tx = Instant::now();
        let mut last_ping = Instant::now();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Made once per session rather than in every turn (one per frame).
        let shutdown = self.shutdown.clone().cancelled_owned();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => {
                    let _ = sink.send(Message::Close(None)).await;
                    return None;
                }
                frame = stream.next() => {
                    last_rx = Instant::now();
                    if let Some(end) = self.on_frame(frame).await {
                        return end;
                    }
                }
                item = self.outbox.recv() => {
                    let item = item?;
                    match self.write_batch(&mut sink, item).await {
                        Ok(n) => self.health.add_sent(n),
                        Err(e) => return Some(e),
                    }
                    last_tx = Instant::now();
                }
                _ = tick.tick() => {
                    if last_rx.elapsed() >= READ_TIMEOUT {
                        return Some(format!("nothing received for {} s", READ_TIMEOUT.as_secs()));
                    }
                    let idle = last_rx.elapsed() >= PING_AFTER || last_tx.elapsed() >= PING_AFTER;
                    if idle && last_ping.elapsed() >= PING_AFTER {
                        if let Err(e) = sink.send(Message::Ping(Bytes::new())).await {
                            return Some(format!("keepalive ping failed: {e}"));
                        }
                        last_ping = Instant::now();
                        last_tx = last_ping;
                    }
                }
            }
        }
    }

    /// Handles one read result; `Some(end)` ends the session (`Some(None)` = shutdown).
    async fn on_frame(
        &self,
        frame: Option<Result<Message, tungstenite::Error>>,
    ) -> Option<Option<String>> {
        match frame {
            Some(Ok(Message::Binary(bytes))) => {
                self.health.add_received();
                let frame = Frame {
                    link: self.index,
                    bytes,
                };
                if self.incoming.send(frame).await.is_err() {
                    // The receive pipeline is gone: the peer is shutting down.
                    return Some(None);
                }
                None
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => None,
            Some(Ok(Message::Text(_))) => {
                tracing::debug!(relay = %self.url, "ignoring a text frame from the relay");
                None
            }
            Some(Ok(Message::Close(close))) => Some(Some(match close {
                Some(c) if !c.reason.is_empty() => {
                    format!("relay closed the connection: {}", c.reason)
                }
                _ => "relay closed the connection".to_string(),
            })),
            None => Some(Some("connection closed".to_string())),
            Some(Err(e)) => Some(Some(format!("read failed: {e}"))),
        }
    }

    /// Feeds `first` and whatever else is queued (up to a batch), then flushes once.
    async fn write_batch(
        &mut self,
        sink: &mut SplitSink<Ws, Message>,
        first: Outgoing,
    ) -> Result<u64, String> {
        let mut written = 0u64;
        let mut next = Some(first);
        while let Some(item) = next {
            sink.feed(Message::Binary(item.bytes))
                .await
                .map_err(|e| format!("write failed: {e}"))?;
            written += 1;
            if written as usize >= MAX_BATCH {
                break;
            }
            next = self.outbox.try_recv().ok();
        }
        sink.flush()
            .await
            .map_err(|e| format!("write failed: {e}"))?;
        Ok(written)
    }

    /// Writes what was kept from the previous connection, skipping what expired meanwhile.
    async fn write_carry(
        &mut self,
        sink: &mut SplitSink<Ws, Message>,
        carry: &mut VecDeque<Outgoing>,
    ) -> Result<(), String> {
        let now = unix_now();
        let mut written = 0;
        while let Some(item) = carry.pop_front() {
            if item.deadline <= now {
                continue;
            }
            sink.feed(Message::Binary(item.bytes))
                .await
                .map_err(|e| format!("write failed: {e}"))?;
            written += 1;
        }
        if written > 0 {
            sink.flush()
                .await
                .map_err(|e| format!("write failed: {e}"))?;
            self.health.add_sent(written);
        }
        Ok(())
    }

    /// Moves envelopes queued on this (now disconnected) link to a connected one; keeps
    /// the rest for this link's reconnect. Expired ones are dropped.
    fn rescue(&mut self, carry: &mut VecDeque<Outgoing>) {
        while let Ok(item) = self.outbox.try_recv() {
            carry.push_back(item);
        }
        if carry.is_empty() {
            return;
        }
        let now = unix_now();
        let (mut moved, mut expired) = (0, 0);
        let mut kept = VecDeque::new();
        for item in carry.drain(..) {
            if item.deadline <= now {
                expired += 1;
                continue;
            }
            match self.shared.forward(self.index, item) {
                Ok(()) => moved += 1,
                Err(item) => kept.push_back(item),
            }
        }
        tracing::debug!(relay = %self.url, moved, expired, kept = kept.len(), "rescued queued envelopes");
        *carry = kept;
    }
}

/// rustls needs a process-wide crypto provider; ours is ring (as the relay's).
fn ensure_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Fails only if another part of the program installed one first, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
