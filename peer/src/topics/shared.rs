//! The state every topic task shares with the [`Topics`](super::Topics) handle
//! ([`Shared`]): the peer, the store, caches of own topics, the queues between the
//! tasks, and the requests the topics layer sends other twins; and [`Event`], what
//! local apps are told. Below every task module, so none imports another for it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmb_proto::Address;
use rmb_proto::time::unix_now;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::config::TopicConfig;
use super::counters::Counters;
use super::error::TopicError;
use super::leases::Leases;
use super::options::TopicsOptions;
use super::pending::{Pending, Waiter};
use super::progress::Progress;
use super::store::{Store, StoreError};
use super::sub_input::Input;
use super::unrecorded::Unrecorded;
use super::wire::{MessageJson, TopicName};
use crate::core::{InboundResponse, OutgoingRequest, Peer};

/// Seconds topic requests between peers stay valid.
pub const REQUEST_EXPIRATION: u64 = 120;

/// Something delivered to local apps: a message (own topic, or received from an owner)
/// or a gap report, as the JSON line apps get.
#[derive(Debug, Clone)]
pub struct Event {
    /// The topic it belongs to.
    pub topic: TopicName,
    /// The message id (for a gap: its last missing id).
    pub id: u64,
    /// `MessageJson` or `GapJson`.
    pub json: Arc<str>,
}

/// State shared by the topic tasks and the handle.
pub(crate) struct Shared {
    pub(crate) peer: Peer,
    pub(crate) store: Store,
    pub(crate) pending: Pending,
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) counters: Counters,
    pub(crate) options: TopicsOptions,
    /// Own topics' configurations (read on every publish), filled from Redis.
    pub(crate) configs: Mutex<HashMap<String, TopicConfig>>,
    /// Own topics' subscribers, filled from Redis.
    pub(crate) subscribers: Mutex<HashMap<String, BTreeSet<u32>>>,
    /// Own topics' cumulative subscribers: what they acknowledged.
    pub(crate) progress: Mutex<Progress>,
    /// Own topics' subscribers' leases and silence, and admissions of new ones.
    pub(crate) leases: Mutex<Leases>,
    pub(crate) fanout: mpsc::Sender<MessageJson>,
    pub(crate) sub_events: mpsc::Sender<Input>,
    /// Topics being subscribed to right now: a message for one of them that comes
    /// before the subscription is recorded is kept for it, not refused.
    pub(crate) subscribing: Mutex<HashSet<TopicName>>,
    /// Messages handed to apps whose records are not written yet.
    pub(crate) unrecorded: Unrecorded,
    pub(crate) stop: CancellationToken,
}

impl Shared {
    /// Sends a request to `twin` and waits for its answer (at most the timeout).
    pub(crate) async fn call(
        &self,
        twin: u32,
        command: &str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, TopicError> {
        let response = self
            .call_raw(Address::twin(twin), command, payload, timeout)
            .await?;
        response
            .reply
            .map_err(|error| TopicError::Remote { twin, error })
    }

    /// [`call`](Shared::call) to any address, returning the whole response.
    pub(crate) async fn call_raw(
        &self,
        destination: Address,
        command: &str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<InboundResponse, TopicError> {
        let twin = destination.twin;
        let uid = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        self.pending
            .insert(uid.clone(), Instant::now() + timeout, Waiter::Call(tx))
            .map_err(|_| TopicError::Busy)?;
        let request = OutgoingRequest {
            uid: uid.clone(),
            destination,
            command: command.to_string(),
            payload,
            schema: Some("application/json".into()),
            tags: None,
            timestamp: 0,
            expiration: timeout.as_secs().clamp(1, REQUEST_EXPIRATION),
        };
        if let Err(error) = self.peer.send_request(request).await {
            self.pending.take(&uid);
            return Err(TopicError::Send { twin, error });
        }
        tokio::select! {
            answer = tokio::time::timeout(timeout, rx) => match answer {
                Ok(Ok(response)) => Ok(response),
                // The waiter goes when its deadline passes (the sweep may come first)
                // or when the topics stop.
                Ok(Err(_)) if self.stop.is_cancelled() => Err(TopicError::Closed),
                Ok(Err(_)) => Err(TopicError::Timeout { twin, secs: timeout.as_secs() }),
                Err(_) => {
                    self.pending.take(&uid);
                    Err(TopicError::Timeout { twin, secs: timeout.as_secs() })
                }
            },
            _ = self.stop.cancelled() => Err(TopicError::Closed),
        }
    }

    /// The configuration of own topic `name` (cached).
    pub(crate) async fn config(&self, name: &str) -> Result<Option<TopicConfig>, StoreError> {
        if let Some(c) = self.lock_configs().get(name) {
            return Ok(Some(c.clone()));
        }
        let found = self.store.config(name).await?;
        if let Some(c) = &found {
            self.lock_configs().insert(name.to_string(), c.clone());
        }
        Ok(found)
    }

    pub(crate) fn lock_configs(&self) -> std::sync::MutexGuard<'_, HashMap<String, TopicConfig>> {
        self.configs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Subscribers of own topic `name` (cached).
    pub(crate) async fn subscribers(&self, name: &str) -> Result<BTreeSet<u32>, StoreError> {
        if let Some(s) = self.lock_subscribers().get(name) {
            return Ok(s.clone());
        }
        let found: BTreeSet<u32> = self.store.subscribers(name).await?.into_iter().collect();
        let mut cache = self.lock_subscribers();
        if let Some(s) = cache.get(name) {
            // Another task loaded them meanwhile (and may have changed them since).
            return Ok(s.clone());
        }
        cache.insert(name.to_string(), found.clone());
        // Subscribers read from Redis (after a restart) hold a lease from now: the
        // owner's own downtime does not count against them.
        let now = unix_now();
        let mut leases = self.lock_leases();
        for &twin in &found {
            leases.renew(name, twin, now);
        }
        Ok(found)
    }

    pub(crate) fn lock_subscribing(&self) -> std::sync::MutexGuard<'_, HashSet<TopicName>> {
        self.subscribing.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn lock_subscribers(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, BTreeSet<u32>>> {
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn lock_progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn lock_leases(&self) -> std::sync::MutexGuard<'_, Leases> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells local live subscribers.
    pub(crate) fn announce(&self, topic: &TopicName, id: u64, json: impl Into<Arc<str>>) {
        // No receiver is not an error: nobody listens live right now.
        let _ = self.events.send(Event {
            topic: topic.clone(),
            id,
            json: json.into(),
        });
    }
}
