//! Replay protection: each (source twin, uid, request-or-reply) is accepted once while
//! its envelope is valid.
//!
//! Signatures prove who made an envelope, not that it is new: anyone who saw it pass
//! (a relay, a network observer of a plain `ws://` link) could deliver it again, and
//! relays themselves deliver at least once. The receive pipeline therefore asks a
//! [`ReplayStore`] about every verified envelope and drops repeats.
//!
//! An entry lives until its envelope's deadline (`timestamp + expiration`): after that
//! the envelope is refused as expired anyway, so forgetting it is safe. Memory is
//! bounded: when full, the entry closest to its deadline makes room (the least useful
//! one to keep, and the first to become harmless).
//!
//! An entry can also hold the bytes of the reply sent for a request
//! ([`ReplayStore::remember_reply`]); a repeat then reports them ([`Admission::Repeat`])
//! so the peer sends that reply again instead of running the handler twice (see
//! [`resend`](super::resend)). Those bytes have their own budget
//! ([`DEFAULT_REPLY_BUDGET`]): other twins choose how many requests we answer, and so
//! how much we would keep. Past the budget a reply is not kept, and a repeat of its
//! request is dropped like one not answered yet. The trait is async so a Redis-backed
//! store can share the state between peer restarts or replicas.
//!
//! [`ReplayCache`] is the pure state machine (time is an input); [`MemoryReplayStore`]
//! shards it behind short locks.

use std::cmp::Reverse;
use std::collections::hash_map::Entry as MapEntry;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use tokio_tungstenite::tungstenite::Bytes;

/// What an envelope is, for replay purposes: a request, or a reply (response or error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReplayKind {
    Request,
    Reply,
}

/// Identifies one envelope for replay purposes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplayKey {
    /// The twin that signed it.
    pub source: u32,
    pub uid: String,
    pub kind: ReplayKind,
}

/// The store's answer for an envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Not seen before (or seen so long ago that it expired): process it.
    First,
    /// Seen already; `reply` holds the reply sent for it, if one was remembered.
    Repeat { reply: Option<Bytes> },
}

/// Why the store could not answer (a remote store being down). The pipeline then
/// refuses the envelope: failing closed is the only safe choice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("replay store unavailable: {0}")]
pub struct ReplayError(pub String);

/// Where seen envelopes are remembered.
#[async_trait]
pub trait ReplayStore: Send + Sync + 'static {
    /// Records `key` as seen until `deadline` (unix s) and says whether it was seen before.
    async fn admit(
        &self,
        key: &ReplayKey,
        deadline: u64,
        now: u64,
    ) -> Result<Admission, ReplayError>;

    /// Keeps `reply` (an encoded envelope) with the still-live entry of `key`.
    async fn remember_reply(
        &self,
        key: &ReplayKey,
        reply: Bytes,
        now: u64,
    ) -> Result<(), ReplayError>;
}

#[derive(Debug)]
struct Entry {
    deadline: u64,
    reply: Option<Bytes>,
}

/// A uid as the cache holds it: in the canonical UUID form (lower-case hex with hyphens,
/// what rmb peers, rmb-rs and the TS client send) as its 16 bytes, so that remembering
/// it allocates nothing; any other uid as its text. The mapping is one-to-one: only the
/// canonical spelling of a UUID becomes a number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Uid {
    Uuid(u128),
    Text(Box<str>),
}

/// A [`ReplayKey`] as the cache holds it (twice: in the map and in the deadline heap).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Slot {
    source: u32,
    kind: ReplayKind,
    uid: Uid,
}

impl Slot {
    fn of(key: &ReplayKey) -> Slot {
        let canonical = key.uid.len() == 36 && !key.uid.bytes().any(|b| b.is_ascii_uppercase());
        let uid = match uuid::Uuid::try_parse(&key.uid) {
            Ok(uuid) if canonical => Uid::Uuid(uuid.as_u128()),
            _ => Uid::Text(key.uid.as_str().into()),
        };
        Slot {
            source: key.source,
            kind: key.kind,
            uid,
        }
    }
}

/// The in-memory replay state, as a pure function of its inputs.
#[derive(Debug)]
pub struct ReplayCache {
    entries: HashMap<Slot, Entry>,
    /// Deadlines, earliest first; may hold stale pairs whose entry was replaced.
    by_deadline: BinaryHeap<Reverse<(u64, Slot)>>,
    capacity: usize,
    reply_bytes: usize,
}

impl ReplayCache {
    /// A cache holding at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        ReplayCache {
            entries: HashMap::new(),
            by_deadline: BinaryHeap::new(),
            capacity: capacity.max(1),
            reply_bytes: 0,
        }
    }

    /// Number of live entries (after the last purge).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// See [`ReplayStore::admit`].
    pub fn admit(&mut self, key: &ReplayKey, deadline: u64, now: u64) -> Admission {
        self.purge(now);
        let slot = Slot::of(key);
        if let Some(entry) = self.entries.get(&slot) {
            return Admission::Repeat {
                reply: entry.reply.clone(),
            };
        }
        if deadline <= now {
            // Already expired: nothing to remember, the pipeline refuses it anyway.
            return Admission::First;
        }
        while self.entries.len() >= self.capacity {
            if !self.evict_earliest() {
                break;
            }
        }
        self.by_deadline.push(Reverse((deadline, slot.clone())));
        self.entries.insert(
            slot,
            Entry {
                deadline,
                reply: None,
            },
        );
        Admission::First
    }

    /// See [`ReplayStore::remember_reply`]; does nothing when the entry is gone.
    pub fn remember_reply(&mut self, key: &ReplayKey, reply: Bytes, now: u64) {
        self.purge(now);
        if let Some(entry) = self.entries.get_mut(&Slot::of(key)) {
            self.reply_bytes += reply.len();
            if let Some(old) = entry.reply.replace(reply) {
                self.reply_bytes -= old.len();
            }
        }
    }

    /// Bytes of the replies held.
    pub fn reply_bytes(&self) -> usize {
        self.reply_bytes
    }

    /// Forgets every entry whose deadline has passed at `now`.
    pub fn purge(&mut self, now: u64) {
        while let Some(Reverse((deadline, _))) = self.by_deadline.peek() {
            if *deadline > now {
                break;
            }
            self.evict_earliest();
        }
    }

    /// Removes the entry with the earliest deadline; false when there is none.
    fn evict_earliest(&mut self) -> bool {
        while let Some(Reverse((deadline, slot))) = self.by_deadline.pop() {
            if let MapEntry::Occupied(entry) = self.entries.entry(slot)
                && entry.get().deadline == deadline
            {
                if let Some(reply) = entry.remove().reply {
                    self.reply_bytes -= reply.len();
                }
                return true;
            }
        }
        false
    }
}

/// Replay entries kept in memory by default (about 100 bytes each).
pub const DEFAULT_CAPACITY: usize = 200_000;
/// Bytes of cached replies kept in memory by default.
pub const DEFAULT_REPLY_BUDGET: usize = 64 << 20;
const SHARDS: usize = 16;

/// A [`ReplayStore`] in process memory: [`ReplayCache`] split into shards so that
/// concurrent receive workers rarely meet on a lock.
#[derive(Debug)]
pub struct MemoryReplayStore {
    shards: Vec<Mutex<ReplayCache>>,
    hasher: RandomState,
    /// Reply bytes held by all shards, and the most they may hold.
    reply_bytes: AtomicUsize,
    reply_budget: usize,
}

impl MemoryReplayStore {
    /// A store of at most about `capacity` entries and [`DEFAULT_REPLY_BUDGET`] bytes
    /// of replies.
    pub fn new(capacity: usize) -> Self {
        Self::with_reply_budget(capacity, DEFAULT_REPLY_BUDGET)
    }

    /// A store of at most about `capacity` entries and `reply_budget` bytes of replies.
    pub fn with_reply_budget(capacity: usize, reply_budget: usize) -> Self {
        let per_shard = capacity.div_ceil(SHARDS).max(1);
        MemoryReplayStore {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(ReplayCache::new(per_shard)))
                .collect(),
            hasher: RandomState::new(),
            reply_bytes: AtomicUsize::new(0),
            reply_budget,
        }
    }

    /// Runs `op` on the shard of `key`, keeping the total of reply bytes up to date.
    fn with_shard<T>(&self, key: &ReplayKey, op: impl FnOnce(&mut ReplayCache) -> T) -> T {
        let mut shard = self.shard(key);
        let before = shard.reply_bytes();
        let out = op(&mut shard);
        let after = shard.reply_bytes();
        if after >= before {
            self.reply_bytes
                .fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.reply_bytes
                .fetch_sub(before - after, Ordering::Relaxed);
        }
        out
    }

    /// Bytes of cached replies held now.
    pub fn reply_bytes(&self) -> usize {
        self.reply_bytes.load(Ordering::Relaxed)
    }

    fn shard(&self, key: &ReplayKey) -> std::sync::MutexGuard<'_, ReplayCache> {
        let shard = &self.shards[self.hasher.hash_one(key) as usize % SHARDS];
        shard.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for MemoryReplayStore {
    fn default() -> Self {
        MemoryReplayStore::new(DEFAULT_CAPACITY)
    }
}

#[async_trait]
impl ReplayStore for MemoryReplayStore {
    async fn admit(
        &self,
        key: &ReplayKey,
        deadline: u64,
        now: u64,
    ) -> Result<Admission, ReplayError> {
        Ok(self.with_shard(key, |shard| shard.admit(key, deadline, now)))
    }

    async fn remember_reply(
        &self,
        key: &ReplayKey,
        reply: Bytes,
        now: u64,
    ) -> Result<(), ReplayError> {
        let budget = self.reply_budget;
        let total = self.reply_bytes();
        self.with_shard(key, |shard| {
            shard.purge(now);
            if total + reply.len() > budget {
                tracing::debug!(uid = %key.uid, total, "reply cache full: this reply is not kept");
            } else {
                shard.remember_reply(key, reply, now);
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(source: u32, uid: &str, kind: ReplayKind) -> ReplayKey {
        ReplayKey {
            source,
            uid: uid.into(),
            kind,
        }
    }

    const FIRST: Admission = Admission::First;
    const REPEAT: Admission = Admission::Repeat { reply: None };

    #[test]
    fn a_key_is_admitted_once_until_its_deadline() {
        let mut c = ReplayCache::new(10);
        let k = key(1, "u", ReplayKind::Request);
        assert_eq!(c.admit(&k, 100, 50), FIRST);
        assert_eq!(c.admit(&k, 100, 60), REPEAT);
        assert_eq!(c.admit(&k, 100, 99), REPEAT);
        // At the deadline the envelope is expired; the entry is forgotten.
        assert_eq!(c.admit(&k, 200, 100), FIRST);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn source_uid_and_kind_all_distinguish() {
        let mut c = ReplayCache::new(10);
        assert_eq!(c.admit(&key(1, "u", ReplayKind::Request), 100, 0), FIRST);
        assert_eq!(c.admit(&key(1, "u", ReplayKind::Reply), 100, 0), FIRST);
        assert_eq!(c.admit(&key(2, "u", ReplayKind::Reply), 100, 0), FIRST);
        assert_eq!(c.admit(&key(1, "v", ReplayKind::Request), 100, 0), FIRST);
        assert_eq!(c.admit(&key(2, "u", ReplayKind::Reply), 100, 0), REPEAT);
    }

    #[test]
    fn uuids_are_held_as_numbers_and_only_their_canonical_spelling_matches() {
        let uid = "0f8a4c2e-7b1d-4e5f-9a3b-2c6d8e0f1a2b";
        let k = key(1, uid, ReplayKind::Request);
        assert!(matches!(Slot::of(&k).uid, Uid::Uuid(_)));
        let mut c = ReplayCache::new(10);
        assert_eq!(c.admit(&k, 100, 0), FIRST);
        assert_eq!(c.admit(&k, 100, 0), REPEAT);
        // Other spellings of the same UUID are other uids, held as text.
        for other in [
            uid.to_uppercase(),
            uid.replace('-', ""),
            format!("{{{uid}}}"),
            format!("urn:uuid:{uid}"),
        ] {
            let o = key(1, &other, ReplayKind::Request);
            assert!(matches!(Slot::of(&o).uid, Uid::Text(_)), "{other}");
            assert_eq!(c.admit(&o, 100, 0), FIRST, "{other}");
            assert_eq!(c.admit(&o, 100, 0), REPEAT, "{other}");
        }
    }

    #[test]
    fn expired_envelopes_are_not_remembered() {
        let mut c = ReplayCache::new(10);
        let k = key(1, "u", ReplayKind::Request);
        assert_eq!(c.admit(&k, 50, 50), FIRST);
        assert!(c.is_empty());
    }

    #[test]
    fn when_full_the_entry_closest_to_its_deadline_goes() {
        let mut c = ReplayCache::new(3);
        let (a, b, d, e) = (
            key(1, "a", ReplayKind::Request),
            key(1, "b", ReplayKind::Request),
            key(1, "d", ReplayKind::Request),
            key(1, "e", ReplayKind::Request),
        );
        c.admit(&a, 300, 0);
        c.admit(&b, 100, 0);
        c.admit(&d, 200, 0);
        assert_eq!(c.admit(&e, 400, 0), FIRST);
        assert_eq!(c.len(), 3);
        assert_eq!(
            c.admit(&b, 100, 0),
            FIRST,
            "b (earliest deadline) was evicted"
        );
        assert_eq!(c.admit(&a, 300, 0), REPEAT);
        assert_eq!(c.admit(&e, 400, 0), REPEAT);
    }

    #[test]
    fn purge_drops_only_expired_entries_and_stale_heap_pairs() {
        let mut c = ReplayCache::new(10);
        let k = key(1, "k", ReplayKind::Request);
        c.admit(&k, 10, 0);
        // Re-admitted after expiry with a later deadline: the old heap pair must not
        // remove the new entry.
        assert_eq!(c.admit(&k, 50, 10), FIRST);
        c.admit(&key(1, "other", ReplayKind::Request), 20, 10);
        c.purge(30);
        assert_eq!(c.len(), 1);
        assert_eq!(c.admit(&k, 50, 30), REPEAT);
        c.purge(50);
        assert!(c.is_empty());
    }

    #[test]
    fn replies_are_remembered_with_live_entries() {
        let mut c = ReplayCache::new(10);
        // A uid as peers send them (held as a number).
        let k = key(
            7,
            "5b0e3c1a-9d2f-4a6b-8c7e-1f2a3b4c5d6e",
            ReplayKind::Request,
        );
        c.admit(&k, 100, 0);
        c.remember_reply(&k, Bytes::from_static(b"reply"), 1);
        assert_eq!(
            c.admit(&k, 100, 2),
            Admission::Repeat {
                reply: Some(Bytes::from_static(b"reply"))
            }
        );
        // Nothing is stored for an unknown (or expired) key.
        let gone = key(7, "gone", ReplayKind::Request);
        c.remember_reply(&gone, Bytes::from_static(b"x"), 3);
        assert_eq!(c.admit(&gone, 100, 3), FIRST);
    }

    #[test]
    fn reply_bytes_are_counted_until_their_entry_goes() {
        let mut c = ReplayCache::new(10);
        let (a, b) = (
            key(1, "a", ReplayKind::Request),
            key(1, "b", ReplayKind::Request),
        );
        c.admit(&a, 10, 0);
        c.admit(&b, 20, 0);
        c.remember_reply(&a, Bytes::from_static(b"12345"), 0);
        c.remember_reply(&b, Bytes::from_static(b"123"), 0);
        c.remember_reply(&b, Bytes::from_static(b"1234567"), 0);
        assert_eq!(c.reply_bytes(), 12);
        c.purge(10);
        assert_eq!(c.reply_bytes(), 7);
        c.purge(20);
        assert_eq!(c.reply_bytes(), 0);
    }

    #[tokio::test]
    async fn replies_past_the_budget_are_not_kept() {
        let store = MemoryReplayStore::with_reply_budget(100, 10);
        let (a, b) = (
            key(1, "a", ReplayKind::Request),
            key(1, "b", ReplayKind::Request),
        );
        store.admit(&a, 100, 0).await.unwrap();
        store.admit(&b, 50, 0).await.unwrap();
        store
            .remember_reply(&a, Bytes::from_static(b"12345678"), 0)
            .await
            .unwrap();
        store
            .remember_reply(&b, Bytes::from_static(b"123"), 0)
            .await
            .unwrap();
        assert_eq!(store.reply_bytes(), 8);
        assert_eq!(
            store.admit(&b, 50, 1).await.unwrap(),
            REPEAT,
            "still a repeat, without its reply"
        );
        assert_eq!(
            store.admit(&a, 100, 1).await.unwrap(),
            Admission::Repeat {
                reply: Some(Bytes::from_static(b"12345678"))
            }
        );
    }

    #[tokio::test]
    async fn the_memory_store_shards_without_losing_entries() {
        let store = MemoryReplayStore::new(1000);
        for i in 0..500 {
            let k = key(i, &format!("u{i}"), ReplayKind::Request);
            assert_eq!(store.admit(&k, 100, 0).await.unwrap(), FIRST);
        }
        for i in 0..500 {
            let k = key(i, &format!("u{i}"), ReplayKind::Request);
            assert_eq!(store.admit(&k, 100, 1).await.unwrap(), REPEAT);
        }
    }
}
