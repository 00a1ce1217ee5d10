//! Topics: end-to-end encrypted publish/subscribe with sequence ids, hosted by the
//! owner twin's peer (issue #14; the protocol is in docs/protocol.md, the guide in
//! docs/topics.md).
//!
//! - [`wire`]: the `rmb.topic.*` request bodies and the message document;
//! - [`config`]: a topic's access lists and retention;
//! - [`store`]: what is kept in Redis, with the scripts that give ids atomically;
//! - [`owner`]: the owner's side: publish, subscribe, pull, and fan-out of each new
//!   message to every subscriber as a signed request encrypted for it;
//! - [`subscriber`]: the subscriber's side: hands messages to apps exactly once and in
//!   order, buffers what comes early, pulls gaps, reports what retention lost;
//!   [`subscription`]: making and ending a subscription with the owner;
//! - [`counters`]: what the layer did, by kind and refusal reason;
//! - [`progress`]: how far each subscriber that acknowledges cumulatively has got, and
//!   what to push to it again;
//! - [`leases`]: subscriptions as leases, subscribers dropped when their pushes go
//!   unacknowledged, and the pace at which new subscriptions are admitted;
//! - [`pending`]: requests waiting for an answer; [`router`]: splits the peer's inbound
//!   messages between topics and the Redis API;
//! - [`since`]: where a reader starts (ids, `latest`, durations, unix times).
//!
//! What the tasks share sits below all of them, so no task module imports another for
//! it: `shared` (the state and the calls to other twins), [`error`], [`info`],
//! [`options`], `reply` (answers to other twins' requests) and `sub_input` (what the
//! subscriber task is handed). The graph of `use`s has no cycle: this file, the handle,
//! is the only module that sees them all.
//!
//! [`Topics`] is the handle the HTTP API and the benchmark use.

mod alarm;
pub mod config;
pub mod counters;
pub mod error;
mod fanout;
mod handover;
pub mod info;
pub mod leases;
pub mod options;
pub mod owner;
pub mod pending;
pub mod progress;
mod reply;
pub mod router;
mod shared;
pub mod since;
pub mod store;
mod sub_input;
pub mod subscriber;
pub mod subscription;
mod unrecorded;
pub mod wire;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmb_proto::Address;
use rmb_proto::time::unix_now;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::core::{Inbound, InboundResponse, Peer};
use config::TopicConfig;
pub use counters::{Counters, CountersSnapshot};
pub use error::TopicError;
pub use info::{Listing, SubscriptionInfo, TopicInfo};
use leases::Leases;
pub use options::{DEFAULT_RECORD_DELAY_MS, TopicsOptions};
use pending::Pending;
use progress::Progress;
use shared::Shared;
pub use shared::{Event, REQUEST_EXPIRATION};
use since::{Since, TimeSearch};
use store::{Store, StoreError};
use wire::{Draft, MessageJson, TopicName};

/// Topic requests queued for the owner (or subscriber) task before new ones are
/// refused with a "busy" error reply.
pub const QUEUE: usize = 4096;
/// Events kept for slow live subscribers of the local API (they replay from Redis when
/// they fall further behind).
pub const EVENTS: usize = 8192;

/// Why topics could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot use redis at {url} for topics: {source}")]
    Redis {
        url: String,
        #[source]
        source: StoreError,
    },
}

/// The running topics layer. Stop it with [`Topics::shutdown`].
#[derive(Clone)]
pub struct Topics {
    shared: Arc<Shared>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Topics {
    /// Connects to Redis, takes the peer's inbound messages (those for topics and our
    /// own calls stay here; the rest come out of the returned receiver, for the Redis
    /// API), and starts the owner, fan-out and subscriber tasks.
    pub async fn start(
        peer: Peer,
        inbound: mpsc::Receiver<Inbound>,
        options: TopicsOptions,
    ) -> Result<(Topics, mpsc::Receiver<Inbound>), StartError> {
        let store = Store::connect(&options.redis_url, &options.prefix)
            .await
            .map_err(|source| StartError::Redis {
                url: options.redis_url.clone(),
                source,
            })?;
        let (fanout_tx, fanout_rx) = mpsc::channel(QUEUE);
        let (sub_tx, sub_rx) = mpsc::channel(QUEUE);
        let (owner_tx, owner_rx) = mpsc::channel(QUEUE);
        let (app_tx, app_rx) = mpsc::channel(crate::core::INBOUND_CAPACITY);
        let stop = CancellationToken::new();
        let leases = Leases::new(options.leases.clone());
        let shared = Arc::new(Shared {
            peer,
            store,
            pending: Pending::default(),
            events: broadcast::channel(EVENTS).0,
            counters: Counters::default(),
            options,
            configs: Mutex::new(HashMap::new()),
            subscribers: Mutex::new(HashMap::new()),
            progress: Mutex::new(Progress::default()),
            leases: Mutex::new(leases),
            fanout: fanout_tx,
            sub_events: sub_tx,
            subscribing: Mutex::new(HashSet::new()),
            unrecorded: Default::default(),
            stop: stop.clone(),
        });
        // Message pushes go straight to the subscriber task (a peer with another tap
        // keeps it: its pushes then come through the router).
        shared.peer.set_inbound_tap(Arc::new(router::MessageTap {
            sub_events: shared.sub_events.clone(),
        }));
        let tasks = vec![
            tokio::spawn(router::run(Arc::clone(&shared), inbound, owner_tx, app_tx)),
            tokio::spawn(owner::serve(Arc::clone(&shared), owner_rx)),
            tokio::spawn(fanout::fanout(Arc::clone(&shared), fanout_rx)),
            tokio::spawn(subscriber::run(Arc::clone(&shared), sub_rx)),
            tokio::spawn(sweep(Arc::clone(&shared))),
        ];
        Ok((
            Topics {
                shared,
                tasks: Arc::new(Mutex::new(tasks)),
            },
            app_rx,
        ))
    }

    /// Our twin id (the owner part of our topics).
    pub fn twin(&self) -> u32 {
        self.shared.peer.twin_id()
    }

    /// The peer underneath.
    pub fn peer(&self) -> &Peer {
        &self.shared.peer
    }

    /// Live events for local apps (subscribe before replaying, then skip what was
    /// replayed).
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.shared.events.subscribe()
    }

    /// The counters.
    pub fn counters(&self) -> CountersSnapshot {
        self.shared.counters.snapshot()
    }

    /// Creates own topic `name`, or changes its configuration.
    pub async fn configure(
        &self,
        name: &str,
        config: TopicConfig,
    ) -> Result<TopicInfo, TopicError> {
        wire::check_name(name)?;
        config.check()?;
        owner::configure(&self.shared, name, config).await?;
        self.show(&TopicName::new(self.twin(), name)?).await
    }

    /// An own topic's configuration and state.
    pub async fn show(&self, topic: &TopicName) -> Result<TopicInfo, TopicError> {
        if topic.owner != self.twin() {
            return Err(TopicError::NotOwner {
                topic: topic.to_string(),
                owner: topic.owner,
            });
        }
        owner::info(&self.shared, &topic.name).await
    }

    /// Own topics, subscriptions and counters.
    pub async fn list(&self) -> Result<Listing, TopicError> {
        let mut topics = Vec::new();
        for name in self.shared.store.topics().await? {
            topics.push(owner::info(&self.shared, &name).await?);
        }
        let subscriptions = self
            .shared
            .store
            .subscriptions()
            .await?
            .into_iter()
            .map(|s| self.subscription_info(s))
            .collect();
        Ok(Listing {
            twin: self.twin(),
            topics,
            subscriptions,
            counters: self.counters(),
        })
    }

    /// The subscription to `topic`, if any.
    pub async fn subscription(
        &self,
        topic: &TopicName,
    ) -> Result<Option<SubscriptionInfo>, TopicError> {
        let all = self.shared.store.subscriptions().await?;
        Ok(all
            .into_iter()
            .find(|s| &s.topic == topic)
            .map(|s| self.subscription_info(s)))
    }

    /// A subscription as shown: its position is the last id handed over, which may be
    /// ahead of the recorded one for a moment ([`unrecorded`]).
    fn subscription_info(&self, record: store::SubRecord) -> SubscriptionInfo {
        let handed = self.shared.unrecorded.last(&record.topic).unwrap_or(0);
        SubscriptionInfo {
            redis_list: record
                .list
                .then(|| self.shared.store.list_key(&record.topic)),
            topic: record.topic.to_string(),
            last_id: record.last.max(handed),
        }
    }

    /// Publishes to `topic`: stored here when it is ours, else sent to its owner. With
    /// [`TopicsOptions::auto_create`], an own topic that does not exist yet is created
    /// with the default settings first.
    pub async fn publish(
        &self,
        topic: &TopicName,
        draft: Draft,
    ) -> Result<wire::Published, TopicError> {
        draft.check()?;
        if topic.owner == self.twin() {
            if self.shared.options.auto_create && self.shared.config(&topic.name).await?.is_none() {
                owner::configure(&self.shared, &topic.name, TopicConfig::default()).await?;
                tracing::info!(%topic, "created a topic by publishing to it (--topic-auto-create)");
            }
            return owner::publish(&self.shared, topic, draft, self.twin(), None).await;
        }
        let body = wire::PublishRequest {
            topic: topic.name.clone(),
            draft,
        };
        let answer = self
            .shared
            .call(
                topic.owner,
                wire::PUBLISH,
                serde_json::to_vec(&body).expect("a request serialises"),
                self.shared.options.timeout,
            )
            .await
            .map_err(|e| refused(e, topic))?;
        serde_json::from_slice(&answer).map_err(|e| TopicError::BadAnswer {
            twin: topic.owner,
            detail: e.to_string(),
        })
    }

    /// Messages of `topic` after `since` (at most `limit`): own topics from the log,
    /// subscribed ones from the local copy, others asked of the owner.
    pub async fn pull(
        &self,
        topic: &TopicName,
        since: u64,
        limit: u32,
    ) -> Result<Vec<MessageJson>, TopicError> {
        let limit = limit.clamp(1, wire::MAX_PULL);
        if topic.owner == self.twin() {
            let config = self
                .shared
                .config(&topic.name)
                .await?
                .ok_or_else(|| TopicError::NotFound(topic.to_string()))?;
            let slice = self
                .shared
                .store
                .pull(&topic.name, &config, since, limit, unix_now())
                .await?;
            return Ok(slice.messages);
        }
        if self.subscription(topic).await?.is_some() {
            // What is handed over but not recorded yet is read first: one recorded in
            // between is then in the local copy read after it.
            let unrecorded = self.shared.unrecorded.after(topic, since, limit as usize);
            let last = self.shared.store.last_delivered(topic).await?;
            let mut messages = self.shared.store.replica(topic, since, last, limit).await?;
            let mut have = messages.last().map_or(since, |m| m.id);
            for (id, json) in unrecorded {
                if id <= have || messages.len() >= limit as usize {
                    continue;
                }
                match serde_json::from_str::<MessageJson>(&json) {
                    Ok(message) => {
                        have = id;
                        messages.push(message);
                    }
                    // A gap event: not a message, and its records are written at once.
                    Err(_) => continue,
                }
            }
            return Ok(messages);
        }
        let pulled = subscriber::pull_remote(&self.shared, topic, since, limit)
            .await
            .map_err(|e| refused(e, topic))?;
        Ok(pulled.messages)
    }

    /// The id a reader of `topic` starts after for `since` ([`since`]): `latest` is
    /// the newest id less one; a time is searched for in what is kept (the own log, the
    /// local copy of a subscription, or the owner's log), a few reads at most.
    pub async fn position(&self, topic: &TopicName, since: Since) -> Result<u64, TopicError> {
        if let Since::Id(id) = since {
            return Ok(id);
        }
        let newest = self.newest(topic).await?;
        if since == Since::Latest {
            return Ok(newest.saturating_sub(1));
        }
        let Some(cutoff) = since.cutoff(newest, unix_now()) else {
            return Ok(match since {
                Since::Number(id) => id,
                _ => newest,
            });
        };
        let mut search = TimeSearch::new(newest, cutoff);
        while let Some(after) = search.probe() {
            let first = self.pull(topic, after, 1).await?.into_iter().next();
            search.found(after, first.map(|m| (m.id, m.time)));
        }
        Ok(search.answer())
    }

    /// The newest id of `topic` this peer can tell: an own topic's, a subscription's
    /// position, else what its owner says.
    async fn newest(&self, topic: &TopicName) -> Result<u64, TopicError> {
        if topic.owner == self.twin() {
            return Ok(self.show(topic).await?.last_id);
        }
        if let Some(sub) = self.subscription(topic).await? {
            return Ok(sub.last_id);
        }
        let pulled = subscriber::pull_remote(&self.shared, topic, 0, 1)
            .await
            .map_err(|e| refused(e, topic))?;
        Ok(pulled.last_id)
    }

    /// Subscribes to another twin's `topic` (kept across restarts): messages after
    /// `since` (default: the newest, so only new ones) reach local apps in order. A
    /// subscription that exists keeps its position. With `redis_list`, messages are
    /// also pushed to a Redis list.
    pub async fn subscribe(
        &self,
        topic: &TopicName,
        since: Option<u64>,
        redis_list: bool,
    ) -> Result<SubscriptionInfo, TopicError> {
        if topic.owner == self.twin() {
            // Own topics need no subscription: their messages are local events already.
            owner::info(&self.shared, &topic.name).await?;
            return Ok(SubscriptionInfo {
                topic: topic.to_string(),
                last_id: since.unwrap_or(0),
                redis_list: None,
            });
        }
        let state = subscription::subscribe(&self.shared, topic, since, redis_list)
            .await
            .map_err(|e| refused(e, topic))?;
        Ok(SubscriptionInfo {
            topic: topic.to_string(),
            last_id: state,
            redis_list: redis_list.then(|| self.shared.store.list_key(topic)),
        })
    }

    /// Ends a subscription (tells the owner; forgets the local copy).
    pub async fn unsubscribe(&self, topic: &TopicName) -> Result<(), TopicError> {
        if self.subscription(topic).await?.is_none() {
            return Err(TopicError::NotSubscribed(topic.to_string()));
        }
        subscription::unsubscribe(&self.shared, topic).await
    }

    /// A plain request/response call to any twin (the Redis API's, for `POST /call`).
    pub async fn call(
        &self,
        destination: Address,
        command: &str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<InboundResponse, TopicError> {
        self.shared
            .call_raw(destination, command, payload, timeout)
            .await
    }

    /// Stops the tasks and waits for them (call after the peer stopped, so the router
    /// has handed everything on).
    pub async fn shutdown(&self) {
        self.shared.stop.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
    }
}

/// An owner's "refused" answer, as its own error.
fn refused(e: TopicError, topic: &TopicName) -> TopicError {
    match e {
        TopicError::Remote { error, .. } if error.code == wire::codes::REFUSED => {
            TopicError::Refused(error.message)
        }
        TopicError::Remote { error, .. } if error.code == wire::codes::NOT_FOUND => {
            TopicError::NotFound(topic.to_string())
        }
        other => other,
    }
}

/// How often expired pending entries are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Drops pending entries past their deadline.
async fn sweep(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => shared.pending.expire(Instant::now()),
            _ = shared.stop.cancelled() => return,
        }
    }
}
