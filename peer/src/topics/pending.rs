//! Requests the topics layer (and `POST /call`) sent and whose answers it waits for,
//! by uid, so the router can tell their responses from the Redis API's.
//!
//! Entries end when answered or at their deadline ([`Pending::expire`]), so a twin that
//! never answers leaves nothing behind.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::oneshot;

use crate::core::InboundResponse;

/// Most requests waited for at once; past it new ones are refused.
pub const MAX_PENDING: usize = 100_000;

/// Who gets an answer.
#[derive(Debug)]
pub enum Waiter {
    /// A caller awaiting it.
    Call(oneshot::Sender<InboundResponse>),
    /// A message pushed to a subscriber: the answer is only looked at for refusals.
    Push { topic: String, twin: u32 },
}

/// The table.
#[derive(Debug, Default)]
pub struct Pending {
    map: Mutex<HashMap<String, (Instant, Waiter)>>,
}

/// The table is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many requests waiting for an answer ({MAX_PENDING})")]
pub struct Full;

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Waiter)>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for the answer to `uid` until `deadline`.
    pub fn insert(&self, uid: String, deadline: Instant, waiter: Waiter) -> Result<(), Full> {
        let mut map = self.lock();
        if map.len() >= MAX_PENDING {
            return Err(Full);
        }
        map.insert(uid, (deadline, waiter));
        Ok(())
    }

    /// Takes the waiter of `uid`, if it is ours.
    pub fn take(&self, uid: &str) -> Option<Waiter> {
        self.lock().remove(uid).map(|(_, w)| w)
    }

    /// True when `uid` is ours.
    pub fn contains(&self, uid: &str) -> bool {
        self.lock().contains_key(uid)
    }

    /// Forgets what is past its deadline (callers time out by themselves).
    pub fn expire(&self, now: Instant) {
        self.lock().retain(|_, (deadline, _)| *deadline > now);
    }

    /// How many are waited for.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when none is.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}
