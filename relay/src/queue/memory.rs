//! [`MemoryQueues`]: offline queues kept in this process (the default).
//!
//! Each session's queue is bounded in count and bytes, each twin's queues together in
//! bytes and in distinct session ids, and all queues together in bytes ([`QueueLimits`]).
//! Every envelope is kept until its own deadline; expired entries are skipped on delivery
//! and swept periodically. Presence needs no bookkeeping: with one process, a session is
//! present exactly when the [`Switch`](crate::switch::Switch) has it.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;
use axum::body::Bytes;

use super::{QueueError, QueueLimits, Queues};
use crate::switch::{Outgoing, SessionId, cost};

struct Queued {
    deadline: u64,
    bytes: Bytes,
}

#[derive(Default)]
struct SessionQueue {
    items: VecDeque<Queued>,
    bytes: usize,
}

#[derive(Default)]
struct TwinUsage {
    bytes: usize,
    sessions: usize,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<SessionId, SessionQueue>,
    twins: HashMap<u32, TwinUsage>,
    bytes: usize,
    count: usize,
}

impl Inner {
    /// Drops the session's expired entries, releasing their bytes.
    fn drop_expired(&mut self, session: &SessionId, now: u64) -> usize {
        let Some(queue) = self.sessions.get_mut(session) else {
            return 0;
        };
        let (before, bytes_before) = (queue.items.len(), queue.bytes);
        queue.items.retain(|q| q.deadline > now);
        queue.bytes = queue.items.iter().map(|q| cost(&q.bytes)).sum();
        let (dropped, freed) = (before - queue.items.len(), bytes_before - queue.bytes);
        self.release(session.twin, dropped, freed);
        dropped
    }

    fn release(&mut self, twin: u32, count: usize, bytes: usize) {
        self.count = self.count.saturating_sub(count);
        self.bytes = self.bytes.saturating_sub(bytes);
        if let Some(usage) = self.twins.get_mut(&twin) {
            usage.bytes = usage.bytes.saturating_sub(bytes);
        }
    }

    /// Removes the session's queue if it is empty.
    fn forget_if_empty(&mut self, session: &SessionId) {
        if self
            .sessions
            .get(session)
            .is_some_and(|q| q.items.is_empty())
        {
            self.sessions.remove(session);
            if let Some(usage) = self.twins.get_mut(&session.twin) {
                usage.sessions = usage.sessions.saturating_sub(1);
                if usage.sessions == 0 {
                    self.twins.remove(&session.twin);
                }
            }
        }
    }

    /// The session's queue, created (and counted for its twin) if needed.
    fn queue(&mut self, session: &SessionId) -> &mut SessionQueue {
        if !self.sessions.contains_key(session) {
            self.twins.entry(session.twin).or_default().sessions += 1;
        }
        self.sessions.entry(session.clone()).or_default()
    }
}

/// Per-session queues of envelopes for offline sessions, in this process.
pub struct MemoryQueues {
    inner: Mutex<Inner>,
    limits: QueueLimits,
}

impl MemoryQueues {
    /// Empty queues holding at most `per_session` envelopes per session (other bounds at
    /// their defaults).
    pub fn new(per_session: usize) -> Self {
        Self::with_limits(QueueLimits::with_count(per_session))
    }

    /// Empty queues with the given bounds.
    pub fn with_limits(limits: QueueLimits) -> Self {
        MemoryQueues {
            inner: Mutex::new(Inner::default()),
            limits: QueueLimits {
                per_session: limits.per_session.max(1),
                sessions_per_twin: limits.sessions_per_twin.max(1),
                ..limits
            },
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
        let limits = &self.limits;
        let size = cost(&bytes);
        let mut inner = self.lock();
        let (count, session_bytes) = match inner.sessions.get(session) {
            Some(queue) => (queue.items.len(), queue.bytes),
            None => {
                let twin = inner.twins.get(&session.twin);
                if twin.is_some_and(|t| t.sessions >= limits.sessions_per_twin) {
                    return Err(QueueError::TooManySessions {
                        twin: session.twin,
                        limit: limits.sessions_per_twin,
                    });
                }
                (0, 0)
            }
        };
        let twin_bytes = inner.twins.get(&session.twin).map_or(0, |t| t.bytes);
        let over = count >= limits.per_session
            || session_bytes.saturating_add(size) > limits.session_bytes
            || twin_bytes.saturating_add(size) > limits.twin_bytes
            || inner.bytes.saturating_add(size) > limits.total_bytes;
        if over {
            inner.drop_expired(session, now);
        }
        self.push_locked(inner, session, bytes, deadline, size)
    }

    fn push_locked(
        &self,
        mut inner: std::sync::MutexGuard<'_, Inner>,
        session: &SessionId,
        bytes: Bytes,
        deadline: u64,
        size: usize,
    ) -> Result<(), QueueError> {
        let limits = &self.limits;
        let (count, session_bytes) = inner
            .sessions
            .get(session)
            .map_or((0, 0), |q| (q.items.len(), q.bytes));
        let twin_bytes = inner.twins.get(&session.twin).map_or(0, |t| t.bytes);
        if count >= limits.per_session {
            return Err(QueueError::Full(count));
        }
        if session_bytes.saturating_add(size) > limits.session_bytes {
            return Err(QueueError::SessionBytes {
                limit: limits.session_bytes,
            });
        }
        if twin_bytes.saturating_add(size) > limits.twin_bytes {
            return Err(QueueError::TwinBytes {
                limit: limits.twin_bytes,
            });
        }
        if inner.bytes.saturating_add(size) > limits.total_bytes {
            return Err(QueueError::TotalBytes {
                limit: limits.total_bytes,
            });
        }
        let queue = inner.queue(session);
        queue.items.push_back(Queued { deadline, bytes });
        queue.bytes += size;
        inner.twins.entry(session.twin).or_default().bytes += size;
        inner.bytes += size;
        inner.count += 1;
        Ok(())
    }

    /// Puts envelopes back at the front, in order (a connection died with them unsent).
    /// They were accepted before, so only the total bound applies: beyond it they are
    /// dropped (and counted by the caller as lost; peers resend).
    pub fn push_front(&self, session: &SessionId, items: Vec<Outgoing>) -> usize {
        if items.is_empty() {
            return 0;
        }
        let mut inner = self.lock();
        let mut kept: Vec<(Queued, usize)> = Vec::with_capacity(items.len());
        let mut room = self.limits.total_bytes.saturating_sub(inner.bytes);
        let mut dropped = 0;
        for (bytes, deadline) in items {
            let size = cost(&bytes);
            if size > room {
                dropped += 1;
                continue;
            }
            room -= size;
            kept.push((Queued { deadline, bytes }, size));
        }
        let added: usize = kept.iter().map(|(_, s)| s).sum();
        let n = kept.len();
        let queue = inner.queue(session);
        for (item, _) in kept.into_iter().rev() {
            queue.items.push_front(item);
        }
        queue.bytes += added;
        inner.twins.entry(session.twin).or_default().bytes += added;
        inner.bytes += added;
        inner.count += n;
        inner.forget_if_empty(session);
        dropped
    }

    /// Removes and returns the session's envelopes that are still valid at `now`, oldest
    /// first, about `max_bytes` of them (at least one if any).
    pub fn take(&self, session: &SessionId, now: u64, max_bytes: usize) -> Vec<Outgoing> {
        let mut inner = self.lock();
        let Some(queue) = inner.sessions.get_mut(session) else {
            return Vec::new();
        };
        let (mut taken, mut bytes, mut count) = (Vec::new(), 0usize, 0usize);
        while let Some(front) = queue.items.front() {
            let size = cost(&front.bytes);
            if !taken.is_empty() && bytes.saturating_add(size) > max_bytes {
                break;
            }
            let item = queue.items.pop_front().expect("front exists");
            queue.bytes = queue.bytes.saturating_sub(size);
            bytes += size;
            count += 1;
            if item.deadline > now {
                taken.push((item.bytes, item.deadline));
            }
        }
        inner.release(session.twin, count, bytes);
        inner.forget_if_empty(session);
        taken
    }

    /// Drops expired envelopes and empty queues; returns how many envelopes were dropped.
    pub fn sweep(&self, now: u64) -> usize {
        let mut inner = self.lock();
        let sessions: Vec<SessionId> = inner.sessions.keys().cloned().collect();
        let mut dropped = 0;
        for session in sessions {
            dropped += inner.drop_expired(&session, now);
            inner.forget_if_empty(&session);
        }
        dropped
    }

    /// Envelopes waiting in all queues.
    pub fn len(&self) -> usize {
        self.lock().count
    }

    /// Bytes waiting in all queues (as counted against the limits).
    pub fn total_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
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
        let dropped = MemoryQueues::push_front(self, session, items);
        if dropped > 0 {
            tracing::warn!(%session, dropped, "queues full: envelopes a connection could not write were dropped (peers resend)");
        }
    }

    async fn take(&self, session: &SessionId, now: u64, max_bytes: usize) -> Vec<Outgoing> {
        MemoryQueues::take(self, session, now, max_bytes)
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

    fn bytes(&self) -> Option<usize> {
        Some(self.total_bytes())
    }

    fn describe(&self) -> String {
        let l = &self.limits;
        format!(
            "in memory, at most {} envelopes and {} bytes per session, {} bytes and {} session ids per twin, {} bytes in all",
            l.per_session, l.session_bytes, l.twin_bytes, l.sessions_per_twin, l.total_bytes
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::switch::ENTRY_OVERHEAD;

    fn s(twin: u32) -> SessionId {
        SessionId { twin, sid: None }
    }

    fn b(text: &'static str) -> Bytes {
        Bytes::from_static(text.as_bytes())
    }

    fn all(queue: &MemoryQueues, session: &SessionId, now: u64) -> Vec<Bytes> {
        queue
            .take(session, now, usize::MAX)
            .into_iter()
            .map(|(b, _)| b)
            .collect()
    }

    #[test]
    fn delivers_in_order_and_skips_expired() {
        let queue = MemoryQueues::new(10);
        queue.push(&s(1), b("a"), 100, 0).unwrap();
        queue.push(&s(1), b("b"), 50, 0).unwrap();
        queue.push(&s(1), b("c"), 100, 0).unwrap();
        assert_eq!(all(&queue, &s(1), 60), [b("a"), b("c")]);
        assert!(queue.take(&s(1), 60, usize::MAX).is_empty());
        assert_eq!((queue.len(), queue.total_bytes()), (0, 0));
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
        assert_eq!(all(&queue, &s(1), 10), [b("a"), b("c")]);
        queue.push(&s(2), b("x"), 5, 0).unwrap();
        assert_eq!(queue.sweep(10), 1);
        assert!(queue.is_empty());
        assert_eq!(queue.total_bytes(), 0);
    }

    #[test]
    fn bytes_are_bounded_per_session_twin_and_in_total() {
        let one = 100 + ENTRY_OVERHEAD;
        let queue = MemoryQueues::with_limits(QueueLimits {
            per_session: 100,
            session_bytes: 2 * one,
            twin_bytes: 3 * one,
            total_bytes: 4 * one,
            sessions_per_twin: 8,
        });
        let x = || Bytes::from(vec![0u8; 100]);
        let sid = |twin, sid: &str| SessionId {
            twin,
            sid: Some(sid.into()),
        };
        queue.push(&sid(1, "a"), x(), 100, 0).unwrap();
        queue.push(&sid(1, "a"), x(), 100, 0).unwrap();
        assert!(matches!(
            queue.push(&sid(1, "a"), x(), 100, 0),
            Err(QueueError::SessionBytes { .. })
        ));
        queue.push(&sid(1, "b"), x(), 100, 0).unwrap();
        assert!(matches!(
            queue.push(&sid(1, "c"), x(), 100, 0),
            Err(QueueError::TwinBytes { .. })
        ));
        queue.push(&sid(2, "a"), x(), 100, 0).unwrap();
        assert!(matches!(
            queue.push(&sid(3, "a"), x(), 100, 0),
            Err(QueueError::TotalBytes { .. })
        ));
        assert_eq!(queue.total_bytes(), 4 * one);
        // Taking is bounded too, and frees the bytes.
        assert_eq!(queue.take(&sid(1, "a"), 0, one).len(), 1);
        assert_eq!(queue.total_bytes(), 3 * one);
        queue.push(&sid(3, "a"), x(), 100, 0).unwrap();
    }

    #[test]
    fn session_ids_per_twin_are_capped() {
        let queue = MemoryQueues::with_limits(QueueLimits {
            sessions_per_twin: 2,
            ..QueueLimits::default()
        });
        let sid = |sid: &str| SessionId {
            twin: 1,
            sid: Some(sid.into()),
        };
        queue.push(&sid("a"), b("x"), 100, 0).unwrap();
        queue.push(&sid("b"), b("x"), 100, 0).unwrap();
        queue.push(&sid("a"), b("x"), 100, 0).unwrap();
        assert_eq!(
            queue.push(&sid("c"), b("x"), 100, 0),
            Err(QueueError::TooManySessions { twin: 1, limit: 2 })
        );
        all(&queue, &sid("b"), 0);
        queue.push(&sid("c"), b("x"), 100, 0).unwrap();
    }
}
