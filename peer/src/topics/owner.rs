//! The owner's side of topics: answers `rmb.topic.publish|subscribe|unsubscribe|pull`
//! from other twins (access lists checked first) and gives ids; sending each new message
//! to every subscriber is [`fanout`](super::fanout)'s.
//!
//! A publish is answered only once the message is in Redis ([`Store::append`]); the
//! publisher's peer resends an unanswered publish (same uid), and the uid is
//! remembered, so a crash anywhere loses no acknowledged message and gives no message
//! two ids.
//!
//! Subscriptions are leases ([`leases`](super::leases)): the owner task drops, every
//! [`SWEEP_EVERY`], subscribers that did not renew in time or left too many pushes
//! unacknowledged, and admits new subscribers at a bounded pace per relay.
//!
//! [`Store::append`]: super::store::Store::append

use std::sync::Arc;
use std::time::Duration;

use rmb_proto::time::unix_now;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::config::TopicConfig;
use super::counters::Counters;
use super::error::TopicError;
use super::info::TopicInfo;
use super::leases::Gone;
use super::reply::{reply, reply_error};
use super::shared::Shared;
use super::wire::{self, Draft, MessageJson, TopicName, codes};
use crate::core::{InboundRequest, Reason};

pub use super::options::MAX_SUBSCRIBERS;

/// How often the owner task drops subscribers whose lease ended or who stay silent.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Longest wait for the registry when admitting a new subscriber (the sender's twin is
/// usually cached already: its envelope was checked against it).
const RELAYS_LOOKUP: Duration = Duration::from_secs(2);

/// What the owner task handles.
#[derive(Debug)]
pub(crate) enum Input {
    /// A topic request from another twin.
    Request(InboundRequest),
    /// A subscriber said it is not subscribed (anymore): stop sending to it.
    Drop { topic: String, twin: u32 },
}

/// Queues the removal of a subscriber that answered "not subscribed".
pub(crate) fn drop_subscriber(owner: &mpsc::Sender<Input>, topic: &str, twin: u32) {
    let _ = owner.try_send(Input::Drop {
        topic: topic.to_string(),
        twin,
    });
}

/// The owner task: one request at a time, in arrival order; between them, drops the
/// subscribers that are gone ([`sweep`]).
pub(crate) async fn serve(shared: Arc<Shared>, mut input: mpsc::Receiver<Input>) {
    announce_tails(&shared).await;
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next = tokio::select! {
            next = input.recv() => next,
            _ = tick.tick() => {
                sweep(&shared).await;
                continue;
            }
            _ = shared.stop.cancelled() => return,
        };
        match next {
            None => return,
            Some(Input::Request(request)) => handle(&shared, request).await,
            Some(Input::Drop { topic, twin }) => remove(&shared, &topic, twin).await,
        }
    }
}

/// Takes `twin` off own topic `topic`'s subscribers, everywhere they are kept.
async fn remove(shared: &Shared, topic: &str, twin: u32) {
    if let Some(subs) = shared.lock_subscribers().get_mut(topic) {
        subs.remove(&twin);
    }
    shared.lock_progress().forget(topic, twin);
    shared.lock_leases().forget(topic, twin);
    if let Err(e) = shared.store.remove_subscriber(topic, twin).await
        && shared.peer.log_allowed(0, Reason::InvalidMessage)
    {
        // Many may fail at once (a sweep while Redis is down): one line per 10 s.
        tracing::warn!(%topic, twin, error = %e, "cannot remove a subscriber (it comes back with the owner's next start)");
    }
}

/// Drops the subscribers whose lease ended or whose pushes went unacknowledged, and
/// counts them. A real subscriber dropped while unreachable subscribes again when it
/// renews, and pulls what it missed.
async fn sweep(shared: &Shared) {
    let gone = shared.lock_leases().sweep(unix_now());
    for (topic, twin, why) in gone {
        let counter = match why {
            Gone::Expired => &shared.counters.leases_expired,
            Gone::Silent => &shared.counters.silent_dropped,
        };
        Counters::bump(counter);
        if shared
            .peer
            .log_allowed(u64::from(twin), Reason::InvalidMessage)
        {
            tracing::debug!(%topic, twin, ?why, "dropped a subscriber (logged once per 10 s per twin)");
        }
        remove(shared, &topic, twin).await;
    }
}

/// After a (re)start, sends each subscriber the newest message of each topic: one whose
/// push was lost in a crash is then seen as a gap and pulled.
async fn announce_tails(shared: &Shared) {
    let names = match shared.store.topics().await {
        Ok(names) => names,
        Err(e) => return tracing::warn!(error = %e, "cannot list own topics"),
    };
    for name in names {
        let Ok(Some(config)) = shared.config(&name).await else {
            continue;
        };
        // Read now, so the subscribers kept in Redis hold leases that can end.
        if let Err(e) = shared.subscribers(&name).await {
            tracing::warn!(topic = %name, error = %e, "cannot read the subscribers");
        }
        let last = match shared.store.pull(&name, &config, 0, 0, unix_now()).await {
            Ok(slice) => slice.last_id,
            Err(_) => continue,
        };
        if last == 0 {
            continue;
        }
        if let Ok(slice) = shared
            .store
            .pull(&name, &config, last - 1, 1, unix_now())
            .await
            && let Some(message) = slice.messages.into_iter().next()
        {
            let _ = shared.fanout.send(message).await;
        }
    }
}

/// A request body that is not the JSON its command expects.
#[derive(Debug, thiserror::Error)]
#[error("{command} body is not valid: {source}")]
struct BadBody {
    command: String,
    source: serde_json::Error,
}

fn body<T: DeserializeOwned>(request: &InboundRequest) -> Result<T, BadBody> {
    serde_json::from_slice(&request.payload).map_err(|source| BadBody {
        command: request.command.clone(),
        source,
    })
}

async fn handle(shared: &Shared, request: InboundRequest) {
    let twin = request.source.twin;
    let (name, result) = match request.command.as_str() {
        wire::PUBLISH => match body::<wire::PublishRequest>(&request) {
            Ok(b) => {
                let name = b.topic.clone();
                (name, remote_publish(shared, &request, b).await)
            }
            Err(e) => {
                let message = e.to_string();
                return reply_error(shared, &request, "bad_request", codes::BAD_REQUEST, message)
                    .await;
            }
        },
        wire::SUBSCRIBE | wire::UNSUBSCRIBE => match body::<wire::SubscribeRequest>(&request) {
            Ok(b) => {
                let r = subscription(shared, &request, &b).await;
                (b.topic, r)
            }
            Err(e) => {
                let message = e.to_string();
                return reply_error(shared, &request, "bad_request", codes::BAD_REQUEST, message)
                    .await;
            }
        },
        wire::PULL => match body::<wire::PullRequest>(&request) {
            Ok(b) => {
                let r = remote_pull(shared, twin, &b).await;
                (b.topic, r)
            }
            Err(e) => {
                let message = e.to_string();
                return reply_error(shared, &request, "bad_request", codes::BAD_REQUEST, message)
                    .await;
            }
        },
        _ => return,
    };
    match result {
        Ok(bytes) => reply(shared, &request, Ok(bytes)).await,
        Err(refusal) => {
            let topic = format!("{}/{name}", shared.peer.twin_id());
            let message = refusal.message(twin, &topic, &request.command);
            reply_error(shared, &request, refusal.reason(), refusal.code(), message).await
        }
    }
}

/// Why a remote topic request was refused.
enum Refusal {
    BadRequest(String),
    NoTopic,
    Access,
    Full(usize),
    Crowded(String),
    Unavailable(String),
}

impl Refusal {
    fn code(&self) -> u32 {
        match self {
            Refusal::BadRequest(_) => codes::BAD_REQUEST,
            Refusal::NoTopic => codes::NOT_FOUND,
            Refusal::Access => codes::REFUSED,
            Refusal::Full(_) => codes::UNAVAILABLE,
            Refusal::Crowded(_) => codes::TOO_MANY,
            Refusal::Unavailable(_) => codes::UNAVAILABLE,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Refusal::BadRequest(_) => "bad_request",
            Refusal::NoTopic => "no_topic",
            Refusal::Access => "access",
            Refusal::Full(_) => "too_many_subscribers",
            Refusal::Crowded(_) => "too_many_new_subscriptions",
            Refusal::Unavailable(_) => "unavailable",
        }
    }

    fn message(&self, twin: u32, topic: &str, command: &str) -> String {
        match self {
            Refusal::BadRequest(e) => e.clone(),
            Refusal::NoTopic => format!("no topic {topic}"),
            Refusal::Access => {
                let verb = match command {
                    wire::PUBLISH => "publish to",
                    _ => "subscribe to",
                };
                format!("twin {twin} may not {verb} {topic}")
            }
            Refusal::Full(max) => format!("{topic} has {max} subscribers already"),
            Refusal::Crowded(why) => format!("{topic} takes no new subscriber now: {why}"),
            Refusal::Unavailable(e) => format!("the owner cannot serve {topic} now: {e}"),
        }
    }
}

impl From<TopicError> for Refusal {
    fn from(e: TopicError) -> Self {
        match e {
            TopicError::NotFound(_) => Refusal::NoTopic,
            TopicError::Draft(_) | TopicError::Name(_) => Refusal::BadRequest(e.to_string()),
            other => Refusal::Unavailable(other.to_string()),
        }
    }
}

/// The topic and its configuration, or why not.
async fn topic_config(shared: &Shared, name: &str) -> Result<(TopicName, TopicConfig), Refusal> {
    let topic = TopicName::new(shared.peer.twin_id(), name)
        .map_err(|e| Refusal::BadRequest(e.to_string()))?;
    let config = shared
        .config(name)
        .await
        .map_err(|e| Refusal::Unavailable(e.to_string()))?
        .ok_or(Refusal::NoTopic)?;
    Ok((topic, config))
}

async fn remote_publish(
    shared: &Shared,
    request: &InboundRequest,
    body: wire::PublishRequest,
) -> Result<Vec<u8>, Refusal> {
    let (topic, config) = topic_config(shared, &body.topic).await?;
    let twin = request.source.twin;
    if !config.publish.allows(twin, topic.owner) {
        return Err(Refusal::Access);
    }
    body.draft
        .check()
        .map_err(|e| Refusal::BadRequest(e.to_string()))?;
    let published = publish(shared, &topic, body.draft, twin, Some(&request.uid)).await?;
    Ok(serde_json::to_vec(&published).expect("an answer serialises"))
}

async fn subscription(
    shared: &Shared,
    request: &InboundRequest,
    body: &wire::SubscribeRequest,
) -> Result<Vec<u8>, Refusal> {
    let name = body.topic.as_str();
    let (topic, config) = topic_config(shared, name).await?;
    let twin = request.source.twin;
    if request.command == wire::UNSUBSCRIBE {
        if let Some(subs) = shared.lock_subscribers().get_mut(name) {
            subs.remove(&twin);
        }
        shared.lock_progress().forget(name, twin);
        shared.lock_leases().forget(name, twin);
        shared
            .store
            .remove_subscriber(name, twin)
            .await
            .map_err(|e| Refusal::Unavailable(e.to_string()))?;
        return Ok(b"{}".to_vec());
    }
    if !config.subscribe.allows(twin, topic.owner) {
        return Err(Refusal::Access);
    }
    let subs = shared
        .subscribers(name)
        .await
        .map_err(|e| Refusal::Unavailable(e.to_string()))?;
    let max = shared.options.max_subscribers;
    if !subs.contains(&twin) {
        if subs.len() >= max {
            return Err(Refusal::Full(max));
        }
        let relays = source_relays(shared, twin).await;
        shared
            .lock_leases()
            .admit(&relays, unix_now())
            .map_err(|why| Refusal::Crowded(why.to_string()))?;
    }
    let now = unix_now();
    shared
        .store
        .add_subscriber(name, twin, now)
        .await
        .map_err(|e| Refusal::Unavailable(e.to_string()))?;
    shared.lock_leases().renew(name, twin, now);
    shared
        .lock_subscribers()
        .entry(name.to_string())
        .or_default()
        .insert(twin);
    shared.lock_progress().learn(name, twin, body.acks);
    let slice = shared
        .store
        .pull(name, &config, 0, 0, unix_now())
        .await
        .map_err(|e| Refusal::Unavailable(e.to_string()))?;
    let answer = wire::Subscribed {
        first_id: slice.first_id,
        last_id: slice.last_id,
        lease: Some(shared.options.leases.lease_secs),
    };
    Ok(serde_json::to_vec(&answer).expect("an answer serialises"))
}

/// The relays `twin` is registered on (none when the registry does not say: such twins
/// share one count of new subscriptions).
async fn source_relays(shared: &Shared, twin: u32) -> Vec<String> {
    let Some(registry) = &shared.options.registry else {
        return Vec::new();
    };
    match tokio::time::timeout(RELAYS_LOOKUP, registry.get_twin(twin)).await {
        Ok(Ok(Some(found))) => found.relays.into_iter().collect(),
        _ => Vec::new(),
    }
}

async fn remote_pull(
    shared: &Shared,
    twin: u32,
    body: &wire::PullRequest,
) -> Result<Vec<u8>, Refusal> {
    let (topic, config) = topic_config(shared, &body.topic).await?;
    if !config.subscribe.allows(twin, topic.owner) {
        return Err(Refusal::Access);
    }
    let limit = body.limit.clamp(1, wire::MAX_PULL);
    let slice = shared
        .store
        .pull(&body.topic, &config, body.since, limit, unix_now())
        .await
        .map_err(|e| Refusal::Unavailable(e.to_string()))?;
    // Contiguous and within an envelope: stop before the byte budget.
    let mut bytes = 0;
    let messages: Vec<MessageJson> = slice
        .messages
        .into_iter()
        .take_while(|m| {
            bytes += m.size();
            bytes <= wire::PULL_BYTES
        })
        .collect();
    let answer = wire::Pulled {
        first_id: slice.first_id,
        last_id: slice.last_id,
        messages,
    };
    Ok(serde_json::to_vec(&answer).expect("an answer serialises"))
}

/// Stores a message of own topic `topic` from `publisher` (`uid`: the publish request,
/// whose repeats get the same id), tells local apps and queues it for subscribers.
pub(crate) async fn publish(
    shared: &Shared,
    topic: &TopicName,
    draft: Draft,
    publisher: u32,
    uid: Option<&str>,
) -> Result<wire::Published, TopicError> {
    let config = shared
        .config(&topic.name)
        .await?
        .ok_or_else(|| TopicError::NotFound(topic.to_string()))?;
    let time = unix_now();
    let mut message = draft.into_message(topic, 0, time, publisher);
    let (id, repeat) = shared
        .store
        .append(topic, &config, &message, uid.map(|u| (publisher, u)), time)
        .await?;
    message.id = id;
    if !repeat {
        Counters::bump(&shared.counters.published);
        shared.announce(
            topic,
            id,
            serde_json::to_string(&message).expect("a message serialises"),
        );
        if shared.fanout.send(message).await.is_err() {
            return Err(TopicError::Closed);
        }
    }
    Ok(wire::Published {
        id,
        topic: topic.to_string(),
        time,
    })
}

/// Creates or reconfigures own topic `name`.
pub(crate) async fn configure(
    shared: &Shared,
    name: &str,
    config: TopicConfig,
) -> Result<(), TopicError> {
    shared.store.set_config(name, &config).await?;
    shared.lock_configs().insert(name.to_string(), config);
    Ok(())
}

/// An own topic's state.
pub(crate) async fn info(shared: &Shared, name: &str) -> Result<TopicInfo, TopicError> {
    let topic = TopicName::new(shared.peer.twin_id(), name)?;
    let config = shared
        .config(name)
        .await?
        .ok_or_else(|| TopicError::NotFound(topic.to_string()))?;
    let slice = shared.store.pull(name, &config, 0, 0, unix_now()).await?;
    let subscribers = shared.subscribers(name).await?.into_iter().collect();
    Ok(TopicInfo {
        topic: topic.to_string(),
        config,
        first_id: slice.first_id,
        last_id: slice.last_id,
        subscribers,
    })
}
