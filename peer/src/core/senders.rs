//! A short memory of the twins looked up: the receiving dispatcher's of its senders,
//! and the sending side's of its destinations.
//!
//! Every envelope needs its sender's twin (account for the signature, key for the
//! decryption), and every sealed one its destination's (key, scheme). The registry
//! cache answers that, but each answer is a clone of the twin (its relay set and key:
//! several allocations) plus a concurrent map's lookup, which at tens of thousands of
//! envelopes a second from a few senders was a few percent of a subscriber's CPU, and
//! as much again of a topic owner's, which seals one copy per subscriber. Both keep the
//! twins they looked up in the last [`SENDER_FRESH`] shared behind an `Arc`, so a
//! change the registry learns (a new key, new relays) is seen here at most that much
//! later.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rmb_identity::registry::{Registry, RegistryError, Twin};

/// How long a looked-up twin is used without asking the registry again.
pub const SENDER_FRESH: Duration = Duration::from_secs(1);

/// Most senders remembered (all are forgotten when it fills: a flood of made-up ids
/// cannot grow it).
pub const SENDERS_MAX: usize = 1024;

/// Twins looked up lately, by id.
#[derive(Default)]
pub struct Senders {
    twins: HashMap<u32, (Arc<Twin>, Instant)>,
}

impl Senders {
    /// Twin `id` from memory when looked up less than [`SENDER_FRESH`] before `now`,
    /// else from `registry` (only found twins are remembered).
    pub async fn get(
        &mut self,
        registry: &dyn Registry,
        id: u32,
        now: Instant,
    ) -> Result<Option<Arc<Twin>>, RegistryError> {
        if let Some(twin) = self.fresh(id, now) {
            return Ok(Some(twin));
        }
        let Some(twin) = registry.get_twin(id).await? else {
            self.twins.remove(&id);
            return Ok(None);
        };
        let twin = Arc::new(twin);
        self.remember(Arc::clone(&twin), now);
        Ok(Some(twin))
    }

    /// Twin `id` when looked up less than [`SENDER_FRESH`] before `now`. For callers
    /// that share one memory behind a lock and must not hold it while they ask the
    /// registry.
    pub fn fresh(&self, id: u32, now: Instant) -> Option<Arc<Twin>> {
        self.twins
            .get(&id)
            .filter(|(_, at)| now.saturating_duration_since(*at) < SENDER_FRESH)
            .map(|(twin, _)| Arc::clone(twin))
    }

    /// Remembers `twin`, as found in the registry at `now`.
    pub fn remember(&mut self, twin: Arc<Twin>, now: Instant) {
        if self.twins.len() >= SENDERS_MAX && !self.twins.contains_key(&twin.id) {
            self.twins.clear();
        }
        self.twins.insert(twin.id, (twin, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use rmb_identity::registry::{RegistryKind, TwinUpdate};
    use rmb_identity::{AccountId, Signer};
    use std::sync::Mutex;

    /// A registry that counts lookups: every id but 9 exists, and keys can change.
    #[derive(Default)]
    struct Counting {
        asked: Mutex<u32>,
        pk: Mutex<Option<Vec<u8>>>,
    }

    #[async_trait]
    impl Registry for Counting {
        async fn get_twin(&self, id: u32) -> Result<Option<Twin>, RegistryError> {
            *self.asked.lock().unwrap() += 1;
            Ok((id != 9).then(|| Twin {
                id,
                account: AccountId::from([7; 32]),
                relays: Default::default(),
                pk: self.pk.lock().unwrap().clone(),
            }))
        }
        async fn twin_id_by_account(&self, _: &AccountId) -> Result<Option<u32>, RegistryError> {
            Ok(None)
        }
        async fn publish(&self, _: &Signer, _: &TwinUpdate) -> Result<Twin, RegistryError> {
            Err(RegistryError::Unavailable("read-only".into()))
        }
        fn describe(&self) -> String {
            "counting".into()
        }
        fn kind(&self) -> RegistryKind {
            RegistryKind::Tfchain
        }
    }

    #[tokio::test]
    async fn remembers_a_sender_briefly_and_sees_a_new_key_after() {
        let registry = Counting::default();
        let mut senders = Senders::default();
        let t0 = Instant::now();
        assert!(senders.get(&registry, 1, t0).await.unwrap().is_some());
        let soon = t0 + SENDER_FRESH / 2;
        assert!(senders.get(&registry, 1, soon).await.unwrap().is_some());
        assert_eq!(*registry.asked.lock().unwrap(), 1);

        *registry.pk.lock().unwrap() = Some(vec![1; 32]);
        let later = senders.get(&registry, 1, t0 + SENDER_FRESH).await.unwrap();
        assert_eq!(later.unwrap().pk.as_deref(), Some(&[1u8; 32][..]));
        assert_eq!(*registry.asked.lock().unwrap(), 2);

        // Unknown twins are asked for every time and never remembered.
        assert!(senders.get(&registry, 9, t0).await.unwrap().is_none());
        assert!(senders.get(&registry, 9, t0).await.unwrap().is_none());
        assert_eq!(*registry.asked.lock().unwrap(), 4);
    }

    #[tokio::test]
    async fn a_flood_of_ids_cannot_grow_it() {
        let registry = Counting::default();
        let mut senders = Senders::default();
        let now = Instant::now();
        for id in 0..3 * SENDERS_MAX as u32 {
            senders.get(&registry, id + 10, now).await.unwrap();
            assert!(senders.twins.len() <= SENDERS_MAX);
        }
        // The newest is still remembered after a clear.
        let asked = *registry.asked.lock().unwrap();
        senders
            .get(&registry, 3 * SENDERS_MAX as u32 + 9, now)
            .await
            .unwrap();
        assert_eq!(*registry.asked.lock().unwrap(), asked);
    }
}
