//! [`PresenceCache`]: which replica holds a session, as this replica last learned it
//! from Redis, so that routing an envelope to a session on another replica costs Redis
//! nothing in the steady state.
//!
//! An entry is dropped when any replica announces that the session connected to it (the
//! `moves` channel, [`super::directory`]), when the replica it names refuses an envelope
//! for it, and after [`ENTRY_TTL`] in any case. A lookup that raced with an announcement
//! is not cached: [`PresenceCache::epoch`] is read before asking Redis and the answer is
//! kept only if no announcement came in between. A stale entry costs speed, never an
//! envelope: the replica it names refuses, or the offline queue wakes the real holder.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::switch::SessionId;

/// Longest an entry is trusted without news.
pub const ENTRY_TTL: Duration = Duration::from_secs(10);

/// What the cache knows about a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Known {
    /// Held by this replica id.
    At(Arc<str>),
    /// Held by no replica.
    Nowhere,
}

struct Entry {
    known: Known,
    at: Instant,
}

/// Sessions' replicas as last read, bounded in entries.
pub struct PresenceCache {
    entries: Mutex<HashMap<SessionId, Entry>>,
    epoch: AtomicU64,
    capacity: usize,
}

impl PresenceCache {
    /// An empty cache of at most `capacity` sessions (when full it starts over: an
    /// entry is only ever a shortcut).
    pub fn new(capacity: usize) -> Self {
        PresenceCache {
            entries: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            capacity: capacity.max(1),
        }
    }

    /// What is known of `session` at `now`, if anything still fresh.
    pub fn get(&self, session: &SessionId, now: Instant) -> Option<Known> {
        let entries = self.lock();
        let entry = entries.get(session)?;
        (now.duration_since(entry.at) < ENTRY_TTL).then(|| entry.known.clone())
    }

    /// The announcement count, read before a lookup in Redis and given back to
    /// [`insert`](Self::insert).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Keeps what a lookup started at `epoch` found, unless an announcement came since.
    pub fn insert(&self, epoch: u64, session: SessionId, known: Known, now: Instant) {
        let mut entries = self.lock();
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        if entries.len() >= self.capacity && !entries.contains_key(&session) {
            entries.clear();
        }
        entries.insert(session, Entry { known, at: now });
    }

    /// Drops what is known of `session` (it moved, or its replica refused it).
    pub fn forget(&self, session: &SessionId) {
        let mut entries = self.lock();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        entries.remove(session);
    }

    /// Drops everything (announcements may have been missed).
    pub fn clear(&self) {
        let mut entries = self.lock();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        entries.clear();
    }

    /// Sessions known.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(twin: u32) -> SessionId {
        SessionId { twin, sid: None }
    }

    #[test]
    fn entries_expire_and_are_forgotten() {
        let cache = PresenceCache::new(10);
        let t0 = Instant::now();
        cache.insert(cache.epoch(), s(1), Known::At("b".into()), t0);
        assert_eq!(cache.get(&s(1), t0), Some(Known::At("b".into())));
        assert_eq!(cache.get(&s(1), t0 + ENTRY_TTL), None);
        cache.forget(&s(1));
        assert_eq!(cache.get(&s(1), t0), None);
    }

    #[test]
    fn a_lookup_that_raced_an_announcement_is_not_kept() {
        let cache = PresenceCache::new(10);
        let now = Instant::now();
        let epoch = cache.epoch();
        // The session moved while Redis was being asked where it was.
        cache.forget(&s(2));
        cache.insert(epoch, s(2), Known::Nowhere, now);
        assert_eq!(cache.get(&s(2), now), None);
        cache.insert(cache.epoch(), s(2), Known::Nowhere, now);
        assert_eq!(cache.get(&s(2), now), Some(Known::Nowhere));
        cache.clear();
        assert!(cache.is_empty());
    }

    #[test]
    fn a_full_cache_starts_over() {
        let cache = PresenceCache::new(2);
        let now = Instant::now();
        for twin in 1..=3 {
            cache.insert(cache.epoch(), s(twin), Known::Nowhere, now);
        }
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get(&s(3), now), Some(Known::Nowhere));
    }
}
