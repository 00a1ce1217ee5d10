//! [`RelayState`]: what every connection and request handler of one relay shares,
//! including the supervisor of its background tasks ([`RelayState::tasks`]).

use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};

use rmb_identity::registry::Registry;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::federation::Federator;
use crate::limiter::{Limited, Limiter};
use crate::logins::UsedLogins;
use crate::metrics::Metrics;
use crate::queue::{MemoryQueues, Queues};
use crate::registry::HostedRegistry;
use crate::replicas::ReplicaLinks;
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
    /// Links to the other replicas of this relay, once started (`--redis`;
    /// [`crate::server::replicas::start`]).
    pub replicas: OnceLock<Arc<ReplicaLinks>>,
    pub metrics: Metrics,
    pub limiter: Mutex<Limiter>,
    /// `--limit` for unsigned envelopes from other relays (connection frames, topic
    /// pushes), per (claimed twin, posting address): nobody here can prove they are the twin's, so they must not
    /// spend its own budget ([`RelayState::rate_limit_unsigned`]).
    pub unsigned_limiter: Mutex<Limiter<(u32, IpAddr)>>,
    pub federator: Federator,
    /// Login tokens accepted recently, so none is accepted twice: in Redis beside the
    /// queues when they are there (every replica refuses a token any of them accepted),
    /// else in memory.
    pub used_logins: UsedLogins,
    /// Cancelled on shutdown; every connection holds a child token.
    pub shutdown: CancellationToken,
    /// Every session's task, so shutdown can wait for them to put back what they held.
    pub sessions: TaskTracker,
    /// The supervisor of every other task (sweeps, hand-over, federation sends, error
    /// replies): each watches [`RelayState::shutdown`], and shutdown waits for them.
    pub tasks: TaskTracker,
}

impl RelayState {
    /// Builds the state for `config`, with offline queues in memory.
    pub fn new(
        config: Config,
        registry: Arc<dyn Registry>,
        hosted: Option<Arc<HostedRegistry>>,
    ) -> Arc<Self> {
        let queue = Arc::new(MemoryQueues::with_limits(config.queue_limits()));
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
        let metrics = Metrics::with_twin_labels(config.metrics_twin_labels);
        metrics.watch_twin_cache(Arc::clone(&registry));
        let tasks = TaskTracker::new();
        let federator = Federator::new(
            &config,
            metrics.batch_counters(),
            metrics.rmb_rs.federation(),
            tasks.clone(),
            shutdown.clone(),
        );
        let used_logins = match queue.shared_store() {
            Some((conn, prefix)) => UsedLogins::in_redis(conn, &prefix),
            None => UsedLogins::in_memory(config.login_memory),
        };
        Arc::new(RelayState {
            used_logins,
            switch: Switch::new(config.sessions_per_twin),
            queue,
            replicas: OnceLock::new(),
            metrics,
            limiter: Mutex::new(Limiter::new(config.limits, LIMITER_CAPACITY)),
            unsigned_limiter: Mutex::new(Limiter::new(config.limits, LIMITER_CAPACITY)),
            federator,
            shutdown,
            sessions: TaskTracker::new(),
            tasks,
            registry,
            hosted,
            config,
        })
    }

    /// Checks `--limit` for `twin` sending `bytes` now.
    pub fn rate_limit(&self, twin: u32, bytes: usize, now: u64) -> Result<(), Limited> {
        // Runs for every frame: without --limit, do not touch the shared lock at all.
        if self.config.limits.is_none() {
            return Ok(());
        }
        let mut limiter = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
        limiter.check(twin, bytes as u64, now)
    }

    /// Checks `--limit` for an unsigned envelope claiming `twin`, posted by
    /// `from`: charged to that pair, so envelopes forged elsewhere in a twin's name spend
    /// only their poster's budget, never the twin's (or another poster's).
    pub fn rate_limit_unsigned(
        &self,
        twin: u32,
        from: IpAddr,
        bytes: usize,
        now: u64,
    ) -> Result<(), Limited> {
        if self.config.limits.is_none() {
            return Ok(());
        }
        let mut limiter = self
            .unsigned_limiter
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        limiter.check((twin, from), bytes as u64, now)
    }

    /// Updates the gauges of queued envelopes and bytes (for `/metrics` and the sweeper).
    pub fn refresh_gauges(&self) {
        if let Some(depth) = self.queue.depth() {
            self.metrics.queue_depth.set(depth as i64);
        }
        if let Some(bytes) = self.queue.bytes() {
            self.metrics.queue_bytes.set(bytes as i64);
        }
    }
}
