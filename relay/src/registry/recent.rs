//! [`RecentTwins`]: the twins the hosted registry read from its store in the last
//! second, so the relay hosting it does not read and decode a stored record for every
//! envelope it routes or takes from another relay.
//!
//! A topic message fanned out to 100 subscribers on another relay costs that relay a
//! lookup of the destination per copy, and a lookup of the source per answer; reading
//! and decoding the record each time was a fifteenth of a relay's CPU.
//!
//! A twin published through this registry is forgotten at once (a lookup racing with
//! the publish may keep the old record, for at most the same second). One published through
//! another replica sharing the store (`--redis`) is seen here at most
//! [`REMEMBER_FOR_MS`] later, as relays using the registry remotely see changes late
//! too. Twins not found are never remembered, so a new twin is found at once.
//!
//! Time is an input (unix milliseconds), as in the other state machines here.

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use lru::LruCache;
use rmb_identity::registry::Twin;

/// How long a twin read from the store is answered from memory.
pub const REMEMBER_FOR_MS: u64 = 1000;
/// Most twins remembered; the least recently used is forgotten first.
pub const MAX_REMEMBERED: usize = 4096;

/// Twins read from the store recently, with when they were read.
pub struct RecentTwins {
    twins: Mutex<LruCache<u32, (Twin, u64)>>,
    /// Lookups answered from memory, and not (`/metrics`: `rmb_cache_hits_total`,
    /// `rmb_cache_misses_total`).
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Default for RecentTwins {
    fn default() -> Self {
        RecentTwins {
            twins: Mutex::new(LruCache::new(
                NonZeroUsize::new(MAX_REMEMBERED).expect("non-zero"),
            )),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }
}

impl RecentTwins {
    /// Twin `id`, if it was read less than [`REMEMBER_FOR_MS`] before `now_ms`.
    pub fn get(&self, id: u32, now_ms: u64) -> Option<Twin> {
        let mut twins = self.twins.lock().unwrap_or_else(|p| p.into_inner());
        let found = match twins.get(&id) {
            Some((twin, read_ms)) if now_ms.saturating_sub(*read_ms) < REMEMBER_FOR_MS => {
                Some(twin.clone())
            }
            Some(_) => {
                twins.pop(&id);
                None
            }
            None => None,
        };
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Hits, misses and twins held now (this cache is never flushed whole: a publish
    /// forgets one twin).
    pub fn stats(&self) -> rmb_identity::registry::CacheStats {
        let entries = self.twins.lock().unwrap_or_else(|p| p.into_inner()).len();
        rmb_identity::registry::CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            flushes: 0,
            entries: entries as u64,
        }
    }

    /// Remembers `twin`, read from the store at `now_ms`.
    pub fn remember(&self, twin: &Twin, now_ms: u64) {
        let mut twins = self.twins.lock().unwrap_or_else(|p| p.into_inner());
        twins.put(twin.id, (twin.clone(), now_ms));
    }

    /// Forgets twin `id` (it was just published).
    pub fn forget(&self, id: u32) {
        let mut twins = self.twins.lock().unwrap_or_else(|p| p.into_inner());
        twins.pop(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn twin(id: u32, relay: &str) -> Twin {
        Twin {
            id,
            account: rmb_identity::AccountId([1; 32]),
            relays: [relay.to_string()].into(),
            pk: None,
        }
    }

    #[test]
    fn a_twin_is_remembered_for_less_than_a_second_and_forgotten_when_published() {
        let recent = RecentTwins::default();
        recent.remember(&twin(7, "a"), 10_000);
        assert_eq!(recent.get(7, 10_999).unwrap().relays, twin(7, "a").relays);
        assert!(recent.get(7, 11_000).is_none(), "read again after a second");
        recent.remember(&twin(7, "b"), 20_000);
        recent.forget(7);
        assert!(recent.get(7, 20_001).is_none(), "published: read again");
        // A clock that went back does not make an entry live longer.
        recent.remember(&twin(8, "c"), 30_000);
        assert!(recent.get(8, 29_000).is_some());
    }

    #[test]
    fn a_flood_of_twins_stays_bounded() {
        let recent = RecentTwins::default();
        for id in 0..(3 * MAX_REMEMBERED as u32) {
            recent.remember(&twin(id, "a"), 1);
        }
        assert_eq!(recent.twins.lock().unwrap().len(), MAX_REMEMBERED);
        assert!(recent.get(0, 2).is_none());
        assert!(recent.get(3 * MAX_REMEMBERED as u32 - 1, 2).is_some());
    }
}
