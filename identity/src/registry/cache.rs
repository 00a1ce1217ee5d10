//! [`CachedRegistry`]: answers repeated lookups from memory.
//!
//! Entries live for a TTL (rmb-rs peers use 5 minutes). Where the backend can signal
//! changes (chain events, the embedded registry's change feed), [`CachedRegistry::spawn_follower`]
//! applies them as they happen, so a relay sees an updated relay list or key at once.
//! Only found twins are cached: a twin registered a moment ago is found on the next lookup.
//!
//! When the backend cannot be reached (the relay hosting the embedded registry restarting,
//! a chain node down), the last known version of a twin is used instead of failing: a
//! registry outage must not stop traffic between twins that were talking a moment ago.
//! Those entries are only a fallback; whenever the backend answers, its answer wins.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use moka::sync::Cache;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{CacheStats, Change, Registry, RegistryError, RegistryKind, Twin, TwinUpdate};
use crate::account::AccountId;
use crate::signer::Signer;

/// How long rmb-rs peers keep a twin; our default too.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);
/// Most twins kept in memory.
pub const DEFAULT_CAPACITY: u64 = 100_000;

/// A registry with a memory cache in front.
pub struct CachedRegistry {
    inner: Arc<dyn Registry>,
    twins: Cache<u32, Twin>,
    ids: Cache<AccountId, u32>,
    /// Last known versions, used only while the backend fails.
    known_twins: Cache<u32, Twin>,
    known_ids: Cache<AccountId, u32>,
    following: AtomicBool,
    /// `get_twin` answered from `twins`, or not; `Reset`s applied (for [`CacheStats`]).
    hits: AtomicU64,
    misses: AtomicU64,
    flushes: AtomicU64,
}

/// How long a last known twin may stand in for an unreachable backend.
pub const FALLBACK_TTL: Duration = Duration::from_secs(24 * 3600);

impl CachedRegistry {
    /// Wraps `inner` with a cache of `capacity` twins that each live `ttl`.
    pub fn new(inner: Arc<dyn Registry>, ttl: Duration, capacity: u64) -> Arc<Self> {
        Arc::new(CachedRegistry {
            inner,
            twins: Cache::builder()
                .time_to_live(ttl)
                .max_capacity(capacity)
                .build(),
            ids: Cache::builder()
                .time_to_live(ttl)
                .max_capacity(capacity)
                .build(),
            known_twins: Cache::builder()
                .time_to_live(FALLBACK_TTL.max(ttl))
                .max_capacity(capacity)
                .build(),
            known_ids: Cache::builder()
                .time_to_live(FALLBACK_TTL.max(ttl))
                .max_capacity(capacity)
                .build(),
            following: AtomicBool::new(false),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
        })
    }

    /// Applies one change reported by the backend.
    pub fn apply(&self, change: Change) {
        match change {
            Change::Updated(twin) => {
                self.ids.insert(twin.account, twin.id);
                self.known_ids.insert(twin.account, twin.id);
                self.known_twins.insert(twin.id, twin.clone());
                self.twins.insert(twin.id, twin);
            }
            // The last known versions stay, as a fallback only.
            Change::Reset => {
                self.flushes.fetch_add(1, Ordering::Relaxed);
                self.twins.invalidate_all();
                self.ids.invalidate_all();
            }
        }
    }

    /// Drops one twin from the cache (e.g. after a failed delivery suggests it is stale).
    pub fn invalidate(&self, id: u32) {
        self.twins.invalidate(&id);
    }

    /// True while a change feed is being followed (for `rmb status` and logs).
    pub fn is_following(&self) -> bool {
        self.following.load(Ordering::Relaxed)
    }

    /// Follows the backend's changes in the background, reconnecting with back-off.
    ///
    /// Ends at once if the backend has no change feed (the TTL then does the work).
    pub fn spawn_follower(self: &Arc<Self>) -> JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(250);
            loop {
                let (tx, mut rx) = mpsc::channel(256);
                let cache = Arc::clone(&this);
                let applier = tokio::spawn(async move {
                    while let Some(change) = rx.recv().await {
                        cache.following.store(true, Ordering::Relaxed);
                        cache.apply(change);
                    }
                });
                let result = this.inner.follow(tx).await;
                let _ = applier.await;
                this.following.store(false, Ordering::Relaxed);
                match result {
                    Err(RegistryError::NoChangeFeed) => return,
                    Ok(()) => backoff = Duration::from_millis(250),
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "registry change feed lost");
                    }
                }
                // Changes may be missed while reconnecting: start clean.
                this.apply(Change::Reset);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        })
    }
}

#[async_trait]
impl Registry for CachedRegistry {
    async fn get_twin(&self, id: u32) -> Result<Option<Twin>, RegistryError> {
        if let Some(twin) = self.twins.get(&id) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(twin));
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let found = match self.inner.get_twin(id).await {
            Ok(found) => found,
            Err(e @ RegistryError::Unavailable(_)) => match self.known_twins.get(&id) {
                Some(twin) => {
                    tracing::debug!(id, error = %e, "registry unreachable: using the last known twin");
                    return Ok(Some(twin));
                }
                None => return Err(e),
            },
            Err(e) => return Err(e),
        };
        match &found {
            Some(twin) => self.apply(Change::Updated(twin.clone())),
            None => self.known_twins.invalidate(&id),
        }
        Ok(found)
    }

    async fn twin_id_by_account(&self, account: &AccountId) -> Result<Option<u32>, RegistryError> {
        if let Some(id) = self.ids.get(account) {
            return Ok(Some(id));
        }
        let found = match self.inner.twin_id_by_account(account).await {
            Ok(found) => found,
            Err(e @ RegistryError::Unavailable(_)) => match self.known_ids.get(account) {
                Some(id) => {
                    tracing::debug!(id, error = %e, "registry unreachable: using the last known twin id");
                    return Ok(Some(id));
                }
                None => return Err(e),
            },
            Err(e) => return Err(e),
        };
        if let Some(id) = found {
            self.ids.insert(*account, id);
            self.known_ids.insert(*account, id);
        }
        Ok(found)
    }

    async fn publish(&self, signer: &Signer, update: &TwinUpdate) -> Result<Twin, RegistryError> {
        let twin = self.inner.publish(signer, update).await?;
        self.apply(Change::Updated(twin.clone()));
        Ok(twin)
    }

    async fn follow(&self, sink: mpsc::Sender<Change>) -> Result<(), RegistryError> {
        self.inner.follow(sink).await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn kind(&self) -> RegistryKind {
        self.inner.kind()
    }

    fn cache_stats(&self) -> Option<CacheStats> {
        Some(CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
            entries: self.twins.entry_count(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::signer::KeyType;

    /// A backend that counts lookups and can be told to change.
    struct Counting {
        twins: Mutex<Vec<Twin>>,
        lookups: AtomicUsize,
        /// Lookups fail as if the backend were unreachable.
        down: AtomicBool,
    }

    impl Counting {
        fn check(&self) -> Result<(), RegistryError> {
            self.lookups.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                return Err(RegistryError::Unavailable("backend down".into()));
            }
            Ok(())
        }
    }

    #[async_trait]
    impl Registry for Counting {
        async fn get_twin(&self, id: u32) -> Result<Option<Twin>, RegistryError> {
            self.check()?;
            Ok(self
                .twins
                .lock()
                .unwrap()
                .iter()
                .find(|t| t.id == id)
                .cloned())
        }
        async fn twin_id_by_account(&self, a: &AccountId) -> Result<Option<u32>, RegistryError> {
            self.check()?;
            Ok(self
                .twins
                .lock()
                .unwrap()
                .iter()
                .find(|t| t.account == *a)
                .map(|t| t.id))
        }
        async fn publish(&self, s: &Signer, u: &TwinUpdate) -> Result<Twin, RegistryError> {
            let twin = Twin {
                id: 1,
                account: s.account(),
                relays: u.relays.clone(),
                pk: u.pk.clone(),
            };
            *self.twins.lock().unwrap() = vec![twin.clone()];
            Ok(twin)
        }
        fn describe(&self) -> String {
            "counting".into()
        }
        fn kind(&self) -> RegistryKind {
            RegistryKind::Embedded
        }
    }

    fn twin(id: u32, relay: &str) -> Twin {
        Twin {
            id,
            account: AccountId([id as u8; 32]),
            relays: [relay.to_string()].into(),
            pk: None,
        }
    }

    #[tokio::test]
    async fn repeated_lookups_hit_the_cache_and_changes_apply() {
        let backend = Arc::new(Counting {
            twins: Mutex::new(vec![twin(1, "a")]),
            lookups: AtomicUsize::new(0),
            down: AtomicBool::new(false),
        });
        let cache = CachedRegistry::new(backend.clone(), DEFAULT_TTL, 10);
        for _ in 0..3 {
            assert_eq!(cache.get_twin(1).await.unwrap(), Some(twin(1, "a")));
        }
        assert_eq!(backend.lookups.load(Ordering::SeqCst), 1);
        // Misses are not cached.
        assert_eq!(cache.get_twin(2).await.unwrap(), None);
        assert_eq!(cache.get_twin(2).await.unwrap(), None);
        assert_eq!(backend.lookups.load(Ordering::SeqCst), 3);

        cache.apply(Change::Updated(twin(1, "b")));
        assert_eq!(cache.get_twin(1).await.unwrap(), Some(twin(1, "b")));
        cache.apply(Change::Reset);
        assert_eq!(cache.get_twin(1).await.unwrap(), Some(twin(1, "a")));
        assert_eq!(backend.lookups.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn an_unreachable_backend_falls_back_to_the_last_known_twin() {
        let backend = Arc::new(Counting {
            twins: Mutex::new(vec![twin(1, "a")]),
            lookups: AtomicUsize::new(0),
            down: AtomicBool::new(false),
        });
        let cache = CachedRegistry::new(backend.clone(), Duration::from_millis(50), 10);
        assert_eq!(cache.get_twin(1).await.unwrap(), Some(twin(1, "a")));
        let account = twin(1, "a").account;
        assert_eq!(cache.twin_id_by_account(&account).await.unwrap(), Some(1));
        backend.down.store(true, Ordering::SeqCst);
        // Feed lost (reset) and TTL passed: the backend is asked, fails, the last
        // known version answers.
        cache.apply(Change::Reset);
        tokio::time::sleep(Duration::from_millis(120)).await;
        let before = backend.lookups.load(Ordering::SeqCst);
        assert_eq!(cache.get_twin(1).await.unwrap(), Some(twin(1, "a")));
        assert_eq!(cache.twin_id_by_account(&account).await.unwrap(), Some(1));
        assert_eq!(backend.lookups.load(Ordering::SeqCst), before + 2);
        // Never seen: the error stands.
        assert!(cache.get_twin(2).await.is_err());
        // Back up: its answer wins, including "gone".
        backend.down.store(false, Ordering::SeqCst);
        backend.twins.lock().unwrap().clear();
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(cache.get_twin(1).await.unwrap(), None);
        backend.down.store(true, Ordering::SeqCst);
        assert!(
            cache.get_twin(1).await.is_err(),
            "a removed twin is not resurrected"
        );
    }

    #[tokio::test]
    async fn entries_expire_after_the_ttl() {
        let backend = Arc::new(Counting {
            twins: Mutex::new(vec![twin(1, "a")]),
            lookups: AtomicUsize::new(0),
            down: AtomicBool::new(false),
        });
        let cache = CachedRegistry::new(backend.clone(), Duration::from_millis(50), 10);
        cache.get_twin(1).await.unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
        cache.get_twin(1).await.unwrap();
        assert_eq!(backend.lookups.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn publish_updates_the_cache_and_no_feed_ends_the_follower() {
        let backend = Arc::new(Counting {
            twins: Mutex::new(vec![]),
            lookups: AtomicUsize::new(0),
            down: AtomicBool::new(false),
        });
        let cache = CachedRegistry::new(backend.clone(), DEFAULT_TTL, 10);
        let signer = Signer::from_secret("//Alice", KeyType::Sr25519).unwrap();
        let update = TwinUpdate {
            relays: ["r".to_string()].into(),
            pk: None,
            create: true,
        };
        cache.publish(&signer, &update).await.unwrap();
        assert_eq!(
            cache.get_twin(1).await.unwrap().unwrap().relays,
            update.relays
        );
        assert_eq!(backend.lookups.load(Ordering::SeqCst), 0);
        cache.spawn_follower().await.unwrap();
        assert!(!cache.is_following());
    }
}
