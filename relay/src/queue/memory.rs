//! [`MemoryQueues`]: offline queues kept in this process (the default).
//!
//! Each session holds at most a bounded number of envelopes, each until its own deadline.
//! Expired entries are skipped on delivery and swept periodically so memory stays
//! bounded. Presence needs no bookkeeping: with one process, a session is present exactly
//! when the [`Switch`](crate::switch::Switch) has it.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;
use axum::body::Bytes;

use super::{QueueError, Queues};
use crate::switch::{Outgoing, SessionId};

struct Queued {
    deadline: u64,
    bytes: Bytes,
}

/// Per-session queues of envelopes for offline sessions, in this process.
pub struct MemoryQueues {
    sessions: Mutex<HashMap<SessionId, VecDeque<Queued>>>,
    per_session: usize,
}

impl MemoryQueues {
    /// Empty queues holding at most `per_session` envelopes per session.
    pub fn new(per_session: usize) -> Self {
        MemoryQueues {
            sessions: Mutex::new(HashMap::new()),
            per_session: per_session.max(1),
        }
    }

    /// Appends `bytes` (valid until `deadline`, unix seconds) to the session's queue.
    pub fn push(
        &self,
        session: &SessionId,
        bytes: Bytes,
        deadline: u64,
        now: u64,
    ) -> Result<(), QueueError> {
        let mut sessions = self.lock();
        let queue = sessions.entry(session.clone()).or_default();
        if queue.len() >= self.per_session {
            queue.retain(|q| q.deadline > now);
            if queue.len() >= self.per_session {
                return Err(QueueError::Full(queue.len()));
            }
        }
        queue.push_back(Queued { deadline, bytes });
        Ok(())
    }

    /// Puts envelopes back at the front, in order (a connection died with them unsent).
    pub fn push_front(&self, session: &SessionId, items: Vec<Outgoing>) {
        if items.is_empty() {
            return;
        }
        let mut sessions = self.lock();
        let queue = sessions.entry(session.clone()).or_default();
        for (bytes, deadline) in items.into_iter().rev() {
            queue.push_front(Queued { deadline, bytes });
        }
    }

    /// Removes and returns the session's envelopes that are still valid at `now`, oldest first.
    pub fn take(&self, session: &SessionId, now: u64) -> Vec<Outgoing> {
        let queue = self.lock().remove(session).unwrap_or_default();
        queue
            .into_iter()
            .filter(|q| q.deadline > now)
            .map(|q| (q.bytes, q.deadline))
            .collect()
    }

    /// Drops expired envelopes and empty queues; returns how many envelopes were dropped.
    pub fn sweep(&self, now: u64) -> usize {
        let mut dropped = 0;
        self.lock().retain(|_, queue| {
            let before = queue.len();
            queue.retain(|q| q.deadline > now);
            dropped += before - queue.len();
            !queue.is_empty()
        });
        dropped
    }

    /// Envelopes waiting in all queues.
    pub fn len(&self) -> usize {
        self.lock().values().map(VecDeque::len).sum()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, VecDeque<Queued>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Queues for MemoryQueues {
    async fn push(
        &self,
        session: &SessionId,
        (bytes, deadline): Outgoing,
        now: u64,
        fail_fast: bool,
    ) -> Result<(), QueueError> {
        // Routing only queues for sessions not connected to this (the only) process.
        if fail_fast {
            return Err(QueueError::Offline);
        }
        MemoryQueues::push(self, session, bytes, deadline, now)
    }

    async fn push_front(&self, session: &SessionId, items: Vec<Outgoing>) {
        MemoryQueues::push_front(self, session, items)
    }

    async fn take(&self, session: &SessionId, now: u64) -> Vec<Outgoing> {
        MemoryQueues::take(self, session, now)
    }

    async fn attach(&self, _session: &SessionId) {}

    async fn detach(&self, _session: &SessionId) {}

    async fn refresh(&self, _sessions: Vec<SessionId>) {}

    async fn sweep(&self, now: u64) -> usize {
        MemoryQueues::sweep(self, now)
    }

    fn depth(&self) -> Option<usize> {
        Some(self.len())
    }

    fn describe(&self) -> String {
        format!("in memory, at most {} per session", self.per_session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(twin: u32) -> SessionId {
        SessionId { twin, sid: None }
    }

    fn b(text: &'static str) -> Bytes {
        Bytes::from_static(text.as_bytes())
    }

    #[test]
    fn delivers_in_order_and_skips_expired() {
        let queue = MemoryQueues::new(10);
        queue.push(&s(1), b("a"), 100, 0).unwrap();
        queue.push(&s(1), b("b"), 50, 0).unwrap();
        queue.push(&s(1), b("c"), 100, 0).unwrap();
        let got: Vec<Bytes> = queue.take(&s(1), 60).into_iter().map(|(b, _)| b).collect();
        assert_eq!(got, [b("a"), b("c")]);
        assert!(queue.take(&s(1), 60).is_empty());
    }

    #[test]
    fn full_queues_refuse_but_make_room_from_expired_entries() {
        let queue = MemoryQueues::new(2);
        queue.push(&s(1), b("a"), 10, 0).unwrap();
        queue.push(&s(1), b("b"), 100, 0).unwrap();
        assert_eq!(queue.push(&s(1), b("c"), 100, 5), Err(QueueError::Full(2)));
        queue.push(&s(1), b("c"), 100, 20).unwrap();
        assert_eq!(queue.len(), 2);
    }

    #[test]
    fn push_front_keeps_order_and_sweep_bounds_memory() {
        let queue = MemoryQueues::new(10);
        queue.push(&s(1), b("c"), 100, 0).unwrap();
        queue.push_front(&s(1), vec![(b("a"), 100), (b("b"), 5)]);
        assert_eq!(queue.sweep(10), 1);
        let got: Vec<Bytes> = queue.take(&s(1), 10).into_iter().map(|(b, _)| b).collect();
        assert_eq!(got, [b("a"), b("c")]);
        queue.push(&s(2), b("x"), 5, 0).unwrap();
        assert_eq!(queue.sweep(10), 1);
        assert!(queue.is_empty());
    }
}
