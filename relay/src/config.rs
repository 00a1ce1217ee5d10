//! [`Config`]: everything that shapes one relay's behaviour, separate from how it is
//! started (the binary's flags map onto it; tests build it directly).

use std::collections::BTreeSet;
use std::time::Duration;

use rmb_identity::JwtPolicy;
use rmb_identity::registry::RelayResolver;

use crate::federation::{AllowEntry, BatchSettings};
use crate::limiter::Limits;
use crate::queue::QueueLimits;

/// A relay's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The names this relay answers to; a twin whose relay list holds one of them "lives
    /// here" and is queued for while offline.
    pub domains: BTreeSet<String>,
    /// Largest envelope accepted, over WebSocket or federation.
    pub max_envelope_size: usize,
    /// Most sessions connected at once; more are refused with 503.
    pub max_sessions: usize,
    /// Most envelopes queued per offline session.
    pub queue_per_session: usize,
    /// Most envelopes buffered per connection (besides `outbox_bytes`).
    pub send_queue: usize,
    /// `--slow-reader-timeout`: how long a session's outbox may stay over its bound before
    /// that reader is disconnected.
    pub slow_reader_timeout: Duration,
    /// `--limit`: per-twin messages and bytes per minute.
    pub limits: Option<Limits>,
    /// `--ranker-period`: window (seconds) of federation failures used to order relays.
    pub ranker_period: u64,
    /// Federate over plain `http://` (test networks only) instead of `https://`.
    pub federation_http: bool,
    /// `--resolve` overrides for relay names.
    pub resolver: RelayResolver,
    /// Login token rules: `--login-max-lifetime`, `--login-max-age`, `--login-clock-skew`.
    pub jwt: JwtPolicy,
    /// `--login-memory`: login tokens remembered at once (in memory; with Redis they are
    /// kept there) so none is accepted twice; when full, logins are refused (503).
    pub login_memory: usize,

    // --- sessions and bounded memory (issue #12: session actor, bounded relay memory) ---
    /// `--max-lifetime`: envelopes whose deadline is further ahead are refused.
    pub max_lifetime: u64,
    /// `--ping-interval`: a session that sent nothing for this long gets a WS ping.
    pub ping_interval: Duration,
    /// `--read-timeout`: a session that sent nothing (not even a pong) for this long is closed.
    pub read_timeout: Duration,
    /// `--write-timeout`: longest write of one batch of envelopes to a session.
    pub write_timeout: Duration,
    /// `--outbox-bytes`: bytes waiting to be written to one session before further
    /// envelopes for it spill to its offline queue.
    pub outbox_bytes: usize,
    /// `--queue-bytes-per-session`.
    pub queue_bytes_per_session: usize,
    /// `--queue-bytes-per-twin`.
    pub queue_bytes_per_twin: usize,
    /// `--queue-bytes-total` (memory queues).
    pub queue_bytes_total: usize,
    /// `--sessions-per-twin`: distinct session ids a twin may hold connected, and
    /// (separately) have queues for.
    pub sessions_per_twin: usize,
    // Connection limits, deadlines and federation targets (issue #12).
    /// `--header-timeout`: a request's headers (also the first byte of a new connection,
    /// and the next request on an idle keep-alive connection) must arrive within this.
    pub header_timeout: Duration,
    /// `--body-timeout`: a federation POST's body must arrive within this.
    pub body_timeout: Duration,
    /// `--tls-handshake-timeout`: a TLS handshake must finish within this.
    pub tls_handshake_timeout: Duration,
    /// `--login-timeout`: checking a login (token, registry lookup) must finish within this.
    pub login_timeout: Duration,
    /// `--max-connections`: most connections open at once (all kinds, sessions included).
    pub max_connections: usize,
    /// `--max-connections-per-ip`: most connections open at once from one address
    /// (0: no per-address limit, e.g. behind a reverse proxy).
    pub max_connections_per_ip: usize,
    /// `--health-connections`: connections over the limits still served `/health` and
    /// `/metrics` (with a short deadline), so monitoring sees a full relay as full.
    pub health_connections: usize,
    /// `--federation-allow`: federation targets allowed beyond public domain names.
    pub federation_allow: Vec<AllowEntry>,
    /// `--federation-batch`, `--federation-batch-bytes`,
    /// `--federation-batch-envelope-bytes`, `--federation-lanes-per-relay`: how
    /// envelopes for one relay are sent together.
    pub federation_batch: BatchSettings,
    /// `--registry-register-rate`: new twins the hosted registry registers per minute per
    /// client address (IPv6: per /64); 0 for no limit (e.g. behind a reverse proxy).
    pub registry_register_rate: u32,
    /// `--metrics-twin-labels`: distinct twins counted apart in rmb-rs's
    /// `relay_message_rx_twin{twin}` (0: the metric is off; past the cap twins count
    /// under `twin="other"`), since a label per twin grows `/metrics` with the network.
    pub metrics_twin_labels: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            domains: BTreeSet::new(),
            max_envelope_size: rmb_proto::DEFAULT_MAX_ENVELOPE_SIZE,
            max_sessions: 500_000,
            queue_per_session: crate::queue::DEFAULT_PER_SESSION,
            send_queue: 512,
            slow_reader_timeout: Duration::from_secs(30),
            limits: None,
            ranker_period: 3600,
            federation_http: false,
            resolver: RelayResolver::default(),
            jwt: JwtPolicy::default(),
            login_memory: crate::logins::DEFAULT_CAPACITY,
            max_lifetime: rmb_proto::DEFAULT_MAX_LIFETIME_SECS,
            ping_interval: Duration::from_secs(20),
            read_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
            outbox_bytes: DEFAULT_OUTBOX_BYTES,
            queue_bytes_per_session: crate::queue::DEFAULT_SESSION_BYTES,
            queue_bytes_per_twin: crate::queue::DEFAULT_TWIN_BYTES,
            queue_bytes_total: crate::queue::DEFAULT_TOTAL_BYTES,
            sessions_per_twin: crate::queue::DEFAULT_SESSIONS_PER_TWIN,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            login_timeout: Duration::from_secs(10),
            max_connections: 500_000,
            max_connections_per_ip: 1_000,
            health_connections: 64,
            federation_allow: Vec::new(),
            federation_batch: BatchSettings::default(),
            registry_register_rate: crate::registry::register_limit::DEFAULT_REGISTER_RATE,
            metrics_twin_labels: 0,
        }
    }
}

/// Default of `--outbox-bytes`: one envelope of the largest size.
pub const DEFAULT_OUTBOX_BYTES: usize = rmb_proto::DEFAULT_MAX_ENVELOPE_SIZE;

impl Config {
    /// The bounds of the offline queues.
    pub fn queue_limits(&self) -> QueueLimits {
        QueueLimits {
            per_session: self.queue_per_session,
            session_bytes: self.queue_bytes_per_session,
            twin_bytes: self.queue_bytes_per_twin,
            total_bytes: self.queue_bytes_total,
            sessions_per_twin: self.sessions_per_twin,
        }
    }

    /// True if a twin with this relay list lives on this relay.
    pub fn serves(&self, relays: &BTreeSet<String>) -> bool {
        relays.iter().any(|r| self.domains.contains(r))
    }
}
