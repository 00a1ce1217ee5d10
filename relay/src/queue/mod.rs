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
//! Both keep at most a bounded number of envelopes per session, each until its own
//! deadline; a full queue is an error the sender hears about, never a silent drop.

pub mod handoff;
pub mod memory;
pub mod redis;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::switch::{Outgoing, SessionId};

pub use memory::MemoryQueues;
pub use redis::RedisQueues;

/// Default cap of queued envelopes per session (rmb-rs trims at about 10 000).
pub const DEFAULT_PER_SESSION: usize = 10_000;

/// Why an envelope could not be queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The session's queue is at its cap.
    #[error("destination queue is full ({0} envelopes waiting)")]
    Full(usize),
    /// `fail-fast` was asked and no replica holds a connection for the session.
    #[error("destination offline")]
    Offline,
    /// The queue store (Redis) failed.
    #[error("queue store unavailable: {0}")]
    Unavailable(String),
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

    /// Removes and returns the session's envelopes still valid at `now`, oldest first.
    async fn take(&self, session: &SessionId, now: u64) -> Vec<Outgoing>;

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

    /// A short description for logs and `/health`.
    fn describe(&self) -> String;

    /// Sessions connected here that another replica queued envelopes for (taken once;
    /// `None` for stores without replicas). See [`handoff`].
    fn wakeups(&self) -> Option<mpsc::Receiver<SessionId>> {
        None
    }
}
