//! [`RelayState`]: what every connection and request handler of one relay shares.

use std::sync::{Arc, Mutex};

use rmb_identity::registry::Registry;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::federation::Federator;
use crate::limiter::Limiter;
use crate::metrics::Metrics;
use crate::queue::{MemoryQueues, Queues};
use crate::registry::HostedRegistry;
use crate::switch::Switch;

/// Most twins the rate limiter tracks at once.
const LIMITER_CAPACITY: usize = 1_000_000;

/// Shared state of one relay.
pub struct RelayState {
    pub config: Config,
    /// Who twins are (cached remote registry, or the one hosted here).
    pub registry: Arc<dyn Registry>,
    /// Set when this relay hosts the embedded registry.
    pub hosted: Option<Arc<HostedRegistry>>,
    pub switch: Switch,
    /// Envelopes for sessions not connected here, and who holds which session.
    pub queue: Arc<dyn Queues>,
    pub metrics: Metrics,
    pub limiter: Mutex<Limiter>,
    pub federator: Federator,
    /// Cancelled on shutdown; every connection holds a child token.
    pub shutdown: CancellationToken,
    /// Every session's task, so shutdown can wait for them to put back what they held.
    pub sessions: TaskTracker,
}

impl RelayState {
    /// Builds the state for `config`, with offline queues in memory.
    pub fn new(
        config: Config,
        registry: Arc<dyn Registry>,
        hosted: Option<Arc<HostedRegistry>>,
    ) -> Arc<Self> {
        let queue = Arc::new(MemoryQueues::new(config.queue_per_session));
        Self::with_queues(config, registry, hosted, queue, CancellationToken::new())
    }

    /// Builds the state with the given queues (e.g. [`RedisQueues`](crate::queue::RedisQueues)),
    /// cancelling `shutdown` when the relay stops.
    pub fn with_queues(
        config: Config,
        registry: Arc<dyn Registry>,
        hosted: Option<Arc<HostedRegistry>>,
        queue: Arc<dyn Queues>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(RelayState {
            switch: Switch::default(),
            queue,
            metrics: Metrics::new(),
            limiter: Mutex::new(Limiter::new(config.limits, LIMITER_CAPACITY)),
            federator: Federator::new(&config),
            shutdown,
            sessions: TaskTracker::new(),
            registry,
            hosted,
            config,
        })
    }

    /// Checks `--limit` for `twin` sending `bytes` now.
    pub fn rate_limit(&self, twin: u32, bytes: usize, now: u64) -> Result<(), String> {
        // Runs for every frame: without --limit, do not touch the shared lock at all.
        if self.config.limits.is_none() {
            return Ok(());
        }
        let mut limiter = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
        limiter
            .check(twin, bytes as u64, now)
            .map_err(|e| e.to_string())
    }
}
