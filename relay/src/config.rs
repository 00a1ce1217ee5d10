//! [`Config`]: everything that shapes one relay's behaviour, separate from how it is
//! started (the binary's flags map onto it; tests build it directly).

use std::collections::BTreeSet;
use std::time::Duration;

use rmb_identity::JwtPolicy;
use rmb_identity::registry::RelayResolver;

use crate::limiter::Limits;

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
    /// Envelopes buffered per connection before the sender has to wait.
    pub send_queue: usize,
    /// How long a send to a slow reader may wait before that reader is disconnected.
    pub slow_reader_timeout: Duration,
    /// `--limit`: per-twin messages and bytes per minute.
    pub limits: Option<Limits>,
    /// `--ranker-period`: window (seconds) of federation failures used to order relays.
    pub ranker_period: u64,
    /// Federate over plain `http://` (test networks only) instead of `https://`.
    pub federation_http: bool,
    /// `--resolve` overrides for relay names.
    pub resolver: RelayResolver,
    /// Login token rules.
    pub jwt: JwtPolicy,
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
        }
    }
}

impl Config {
    /// True if a twin with this relay list lives on this relay.
    pub fn serves(&self, relays: &BTreeSet<String>) -> bool {
        relays.iter().any(|r| self.domains.contains(r))
    }
}
