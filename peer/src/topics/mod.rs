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
//!   messages between topics and the Redis API.
//!
//! [`Topics`] is the handle the HTTP API and the benchmark use.

mod alarm;
pub mod config;
pub mod counters;
mod fanout;
mod handover;
pub mod leases;
pub mod owner;
pub mod pending;
pub mod progress;
pub mod router;
pub mod since;
pub mod store;
pub mod subscriber;
pub mod subscription;
mod unrecorded;
pub mod wire;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmb_identity::registry::Registry;
use rmb_proto::Address;
use rmb_proto::time::unix_now;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::core::{Inbound, InboundResponse, OutgoingRequest, Peer, RemoteError, SendError};
use config::{ConfigError, TopicConfig};
pub use counters::{Counters, CountersSnapshot};
use leases::{LeaseSettings, Leases};
use pending::{Pending, Waiter};
use progress::Progress;
use since::{Since, TimeSearch};
use store::{Store, StoreError};
use wire::{Draft, DraftError, MessageJson, NameError, TopicName};

/// Topic requests queued for the owner (or subscriber) task before new ones are
/// refused with a "busy" error reply.
pub const QUEUE: usize = 4096;
/// Events kept for slow live subscribers of the local API (they replay from Redis when
/// they fall further behind).
pub const EVENTS: usize = 8192;
/// Seconds topic requests between peers stay valid.
pub const REQUEST_EXPIRATION: u64 = 120;

/// Default wait, in milliseconds, before handed-over messages are recorded
/// (`--topic-record-delay`). Each subscription's records cost one script call per wait,
/// and every subscription that got the same fan-out waits the same time, so their calls
/// land together: at 50 ms they were about a tenth of topic-bench's CPU at 100
/// subscribers (two runs sharing the machine; about half that share in a run alone).
/// After a crash, at most this much is pulled again.
pub const DEFAULT_RECORD_DELAY_MS: u64 = 250;

/// How to start [`Topics`].
#[derive(Clone)]
pub struct TopicsOptions {
    /// The peer's Redis.
    pub redis_url: String,
    /// Prefix of every key (`rmb.`).
    pub prefix: String,
    /// How often subscriptions are renewed with their owners (which also finds
    /// messages whose push was lost).
    pub renew: Duration,
    /// How long a request to another peer (publish, subscribe, pull) is waited for.
    /// Longer than the core's 30 s stall bound: a request whose copy died with a
    /// restarting owner is sent again at the latest then, and still answered in time.
    pub timeout: Duration,
    /// How long after handing messages over (to a subscription without a Redis list)
    /// their records are written, many at a time ([`unrecorded`]): longer costs less
    /// Redis work per message, and after a crash that much is pulled again.
    pub record_delay: Duration,
    /// Most subscribers of one own topic (`--topic-max-subscribers`).
    pub max_subscribers: usize,
    /// Leases, silent subscribers and the pace of new subscriptions of own topics
    /// (`--topic-lease`, `--topic-unanswered*`, `--topic-new-*`).
    pub leases: LeaseSettings,
    /// Where the relays of a twin that subscribes are looked up, to count new
    /// subscriptions per relay (`None`: all count as one unknown relay).
    pub registry: Option<Arc<dyn Registry>>,
    /// A local publish to an own topic that does not exist creates it with the default
    /// settings (`--topic-auto-create`), so an owner's scripts need no set-up step.
    /// Publishes from other twins never create a topic.
    pub auto_create: bool,
}

impl std::fmt::Debug for TopicsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicsOptions")
            .field("redis_url", &self.redis_url)
            .field("prefix", &self.prefix)
            .field("renew", &self.renew)
            .field("timeout", &self.timeout)
            .field("record_delay", &self.record_delay)
            .field("max_subscribers", &self.max_subscribers)
            .field("leases", &self.leases)
            .field("registry", &self.registry.as_ref().map(|r| r.describe()))
            .field("auto_create", &self.auto_create)
            .finish()
    }
}

impl TopicsOptions {
    /// The defaults for `redis_url`: prefix `rmb.`, renewal every 30 s, 60 s timeout,
    /// records written [`DEFAULT_RECORD_DELAY_MS`] after a hand-over,
    /// [`owner::MAX_SUBSCRIBERS`] subscribers per topic, the [`leases`] defaults, no
    /// registry, no topics created by publishing.
    pub fn new(redis_url: &str) -> Self {
        TopicsOptions {
            redis_url: redis_url.to_string(),
            prefix: "rmb.".into(),
            renew: Duration::from_secs(30),
            timeout: Duration::from_secs(60),
            record_delay: Duration::from_millis(DEFAULT_RECORD_DELAY_MS),
            max_subscribers: owner::MAX_SUBSCRIBERS,
            leases: LeaseSettings::default(),
            registry: None,
            auto_create: false,
        }
    }
}

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

/// Why a topic operation failed; each maps to an HTTP status in the local API.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Draft(#[from] DraftError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("no topic {0}")]
    NotFound(String),
    #[error("topic {topic} belongs to twin {owner}; only its owner can do that")]
    NotOwner { topic: String, owner: u32 },
    #[error("not subscribed to {0}")]
    NotSubscribed(String),
    #[error("refused by the topic's owner: {0}")]
    Refused(String),
    #[error("twin {twin} answered: {error}")]
    Remote { twin: u32, error: RemoteError },
    #[error("sending to twin {twin} failed: {error}")]
    Send { twin: u32, error: SendError },
    #[error("twin {twin} did not answer within {secs} s")]
    Timeout { twin: u32, secs: u64 },
    #[error("twin {twin} sent an answer that cannot be read: {detail}")]
    BadAnswer { twin: u32, detail: String },
    #[error("too many requests in flight; try again")]
    Busy,
    #[error("the topics store is unavailable: {0}")]
    Store(#[from] StoreError),
    #[error("the peer is shutting down")]
    Closed,
}

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

/// One own topic, as listed and shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicInfo {
    /// `<owner>/<name>`.
    pub topic: String,
    /// Access lists and retention.
    pub config: TopicConfig,
    /// Oldest id kept (`last_id + 1` when none).
    pub first_id: u64,
    /// Newest id given (0: none yet).
    pub last_id: u64,
    /// Twins subscribed.
    pub subscribers: Vec<u32>,
}

/// One subscription, as listed and shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionInfo {
    /// `<owner>/<name>`.
    pub topic: String,
    /// Last id handed to apps.
    pub last_id: u64,
    /// Also delivered to this Redis list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_list: Option<String>,
}

/// `GET /topics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    /// This peer's twin (the owner of its topics).
    pub twin: u32,
    /// Own topics.
    pub topics: Vec<TopicInfo>,
    /// Subscriptions to other twins' topics.
    pub subscriptions: Vec<SubscriptionInfo>,
    /// The counters.
    pub counters: CountersSnapshot,
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
    pub(crate) sub_events: mpsc::Sender<subscriber::Input>,
    /// Topics being subscribed to right now: a message for one of them that comes
    /// before the subscription is recorded is kept for it, not refused.
    pub(crate) subscribing: Mutex<HashSet<TopicName>>,
    /// Messages handed to apps whose records are not written yet.
    pub(crate) unrecorded: unrecorded::Unrecorded,
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
                Ok(Err(_)) => Err(TopicError::Closed),
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
            if self.shared.options.auto_create && self.shared.config(&topic.name).await?.is_none()
            {
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
