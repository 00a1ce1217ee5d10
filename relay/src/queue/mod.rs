//! Offline queues and session presence, behind one interface.
//!
//! An envelope for a twin that lives on this relay but has no connection *here* goes into
//! its session's queue, and comes out when the session connects. Two implementations:
//!
//! - [`MemoryQueues`] (the default): everything in this process. A single relay needs
//!   nothing else; a crash loses what was queued (peers resend, issue #7).
//! - [`RedisQueues`] (`--redis`): queues and presence live in Redis, so several relay
//!   processes behind one domain act as one relay, and a restart loses nothing queued.
//!   An envelope queued by one replica for a session connected to another wakes that
//!   replica, which hands it over ([`handoff`]).
//!
//! Both keep envelopes until their own deadline and are bounded ([`QueueLimits`]): in
//! count and bytes per session, in bytes per twin and (in memory) in total, and in the
//! number of distinct session ids per twin. A bound that is hit is an error the sender
//! hears about ([`QueueError`]), never a silent drop.

pub mod handoff;
pub mod memory;
pub mod redis;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use crate::switch::{Outgoing, SessionId};

pub use memory::MemoryQueues;
pub use redis::{RedisQueues, SetupError, WaitPolicy};

/// Default cap of queued envelopes per session (rmb-rs trims at about 10 000).
pub const DEFAULT_PER_SESSION: usize = 10_000;

/// Default bytes queued per session (`--queue-bytes-per-session`).
pub const DEFAULT_SESSION_BYTES: usize = 16 << 20;
/// Default bytes queued per twin, all its sessions together (`--queue-bytes-per-twin`).
pub const DEFAULT_TWIN_BYTES: usize = 64 << 20;
/// Default bytes queued in all (`--queue-bytes-total`, memory queues).
pub const DEFAULT_TOTAL_BYTES: usize = 1 << 30;
/// Default distinct session ids per twin (`--sessions-per-twin`).
pub const DEFAULT_SESSIONS_PER_TWIN: usize = 16;

/// The bounds of the offline queues. Bytes are counted as envelope length plus
/// [`ENTRY_OVERHEAD`](crate::switch::ENTRY_OVERHEAD) each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Most envelopes per session.
    pub per_session: usize,
    /// Most bytes per session.
    pub session_bytes: usize,
    /// Most bytes per twin, all its session ids together.
    pub twin_bytes: usize,
    /// Most bytes in all queues (memory queues; Redis is bounded by its own maxmemory).
    pub total_bytes: usize,
    /// Most distinct session ids a twin may have queues for.
    pub sessions_per_twin: usize,
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits {
            per_session: DEFAULT_PER_SESSION,
            session_bytes: DEFAULT_SESSION_BYTES,
            twin_bytes: DEFAULT_TWIN_BYTES,
            total_bytes: DEFAULT_TOTAL_BYTES,
            sessions_per_twin: DEFAULT_SESSIONS_PER_TWIN,
        }
    }
}

impl QueueLimits {
    /// The defaults with `per_session` envelopes per session.
    pub fn with_count(per_session: usize) -> Self {
        QueueLimits {
            per_session,
            ..QueueLimits::default()
        }
    }
}

/// Why an envelope could not be queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The session's queue is at its cap of envelopes.
    #[error("destination queue is full ({0} envelopes waiting)")]
    Full(usize),
    /// The session's queue is at its cap of bytes.
    #[error("destination queue is full (at most {limit} bytes per session)")]
    SessionBytes {
        /// `--queue-bytes-per-session`.
        limit: usize,
    },
    /// The twin's queues together are at their cap of bytes.
    #[error("destination queue is full (at most {limit} bytes per twin)")]
    TwinBytes {
        /// `--queue-bytes-per-twin`.
        limit: usize,
    },
    /// All queues of this relay together are at their cap of bytes.
    #[error("relay queues are full (at most {limit} bytes in all)")]
    TotalBytes {
        /// `--queue-bytes-total`.
        limit: usize,
    },
    /// The destination twin already has queues for the most session ids allowed.
    #[error("too many session ids queued for twin {twin} (at most {limit})")]
    TooManySessions {
        /// The destination twin.
        twin: u32,
        /// `--sessions-per-twin`.
        limit: usize,
    },
    /// `fail-fast` was asked and no replica holds a connection for the session.
    #[error("destination offline")]
    Offline,
    /// `--redis-wait-replicas`: fewer Redis replicas than asked acknowledged the envelope
    /// in time. It is queued on the master but a failover could lose it, so it is not
    /// counted as accepted: the sender may send it again (receivers drop duplicates by
    /// uid).
    #[error(
        "queue store could not replicate the envelope ({acked} of {wanted} redis replicas acknowledged); it may or may not be delivered"
    )]
    NotReplicated {
        /// `--redis-wait-replicas`.
        wanted: u32,
        /// Replicas that acknowledged within `--redis-wait-timeout-ms`.
        acked: u32,
    },
    /// The queue store (Redis) failed.
    #[error("queue store unavailable: {0}")]
    Unavailable(String),
}

impl QueueError {
    /// Short label for the `relay_errors_total{kind}` metric.
    pub fn kind(&self) -> &'static str {
        match self {
            QueueError::Full(_) => "queue_full",
            QueueError::SessionBytes { .. } => "queue_session_bytes",
            QueueError::TwinBytes { .. } => "queue_twin_bytes",
            QueueError::TotalBytes { .. } => "queue_total_bytes",
            QueueError::TooManySessions { .. } => "sessions_per_twin",
            QueueError::Offline => "destination_offline",
            QueueError::NotReplicated { .. } => "queue_not_replicated",
            QueueError::Unavailable(_) => "queue_unavailable",
        }
    }
}

/// Where envelopes wait for sessions that are not connected to this process, and who
/// knows which process a session is connected to.
#[async_trait]
pub trait Queues: Send + Sync + 'static {
    /// Appends an envelope to `session`'s queue. With `fail_fast`, refuses with
    /// [`QueueError::Offline`] unless some replica holds the session (it is then woken).
    async fn push(
        &self,
        session: &SessionId,
        item: Outgoing,
        now: u64,
        fail_fast: bool,
    ) -> Result<(), QueueError>;

    /// Puts envelopes back at the front, in order (a connection ended with them unsent).
    async fn push_front(&self, session: &SessionId, items: Vec<Outgoing>);

    /// Removes and returns the session's envelopes still valid at `now`, oldest first, at
    /// most about `max_bytes` of them (at least one if any waits).
    async fn take(&self, session: &SessionId, now: u64, max_bytes: usize) -> Vec<Outgoing>;

    /// Records that `session` is connected to this process (before its queue is taken).
    async fn attach(&self, session: &SessionId);

    /// Records that this process no longer holds `session` (unless another took it over).
    async fn detach(&self, session: &SessionId);

    /// Renews the presence of sessions connected here (called periodically).
    async fn refresh(&self, sessions: Vec<SessionId>);

    /// Drops expired envelopes; returns how many (stores that expire by themselves: 0).
    async fn sweep(&self, now: u64) -> usize;

    /// Envelopes waiting, when cheap to know (`None` for shared stores).
    fn depth(&self) -> Option<usize>;

    /// Bytes waiting (as counted against the limits), when cheap to know.
    fn bytes(&self) -> Option<usize> {
        None
    }

    /// A short description for logs and `/health`.
    fn describe(&self) -> String;

    /// Sessions connected here that another replica queued envelopes for (taken once;
    /// `None` for stores without replicas). See [`handoff`].
    fn wakeups(&self) -> Option<mpsc::Receiver<SessionId>> {
        None
    }

    /// The task that feeds [`wakeups`](Queues::wakeups) (taken once; `None` for stores
    /// without replicas). The server runs it under its supervisor, so shutdown waits for
    /// it like for every other background task.
    fn wakeup_listener(&self) -> Option<BoxFuture<'static, ()>> {
        None
    }

    /// The Redis connection and key prefix the replicas of this relay share (`None` for
    /// stores in memory), so other state every replica must see alike (the login tokens
    /// already used, [`crate::logins`]) lives beside the queues.
    ///
    /// Only on a single Redis: on a cluster or a Sentinel set this is `None`; use
    /// [`shared_store`](Queues::shared_store), which covers all three.
    fn shared_redis(&self) -> Option<(::redis::aio::ConnectionManager, String)> {
        None
    }

    /// The connection (single Redis, cluster or Sentinel set) and key prefix the replicas
    /// of this relay share (`None` for stores in memory). Other shared state (login
    /// tokens, presence changes) uses it and its publish/subscribe.
    fn shared_store(&self) -> Option<(crate::redis_conn::RedisConn, String)> {
        None
    }
}
