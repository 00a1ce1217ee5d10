//! The owner's side of topics: answers `rmb.topic.publish|subscribe|unsubscribe|pull`
//! from other twins (access lists checked first), gives ids, and sends each new message
//! to every subscriber as its own request, encrypted for that subscriber (and signed
//! unless the encryption authenticates it, [`core::unsigned`](crate::core::unsigned)).
//!
//! A publish is answered only once the message is in Redis ([`Store::append`]); the
//! publisher's peer resends an unanswered publish (same uid), and the uid is
//! remembered, so a crash anywhere loses no acknowledged message and gives no message
//! two ids. Pushes are best effort: a subscriber that misses one pulls it.
//!
//! Subscriptions are leases ([`leases`](super::leases)): the owner task drops, every
//! [`SWEEP_EVERY`], subscribers that did not renew in time or left too many pushes
//! unacknowledged, and admits new subscribers at a bounded pace per relay.
//!
//! [`Store::append`]: super::store::Store::append

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{Either, join_all};
use rmb_proto::Address;
use rmb_proto::time::unix_now;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::config::TopicConfig;
use super::leases::Gone;
use super::pending::Waiter;
use super::progress::Resend;
use super::router::{reply, reply_error};
use super::wire::{self, AckMode, Draft, MessageJson, TopicName, codes};
use super::{Counters, REQUEST_EXPIRATION, Shared, TopicError, TopicInfo};
use crate::core::{InboundRequest, OutgoingRequest, Reason, SendError};

/// Default of `--topic-max-subscribers`: most subscribers of one topic.
pub const MAX_SUBSCRIBERS: usize = 10_000;

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

/// How often the fan-out task looks for unacknowledged pushes to send again.
const RESEND_TICK: Duration = Duration::from_millis(250);

/// The fan-out task: new messages to every subscriber allowed by the topic's access
/// list, all subscribers at once. What queued up while the previous sends ran goes
/// together, one envelope per subscriber per topic ([`wire::Batch`]). Its tick sends
/// again what cumulative subscribers left unacknowledged ([`progress`](super::progress)).
pub(crate) async fn fanout(shared: Arc<Shared>, mut messages: mpsc::Receiver<MessageJson>) {
    let mut queued = Vec::with_capacity(wire::MAX_BATCH);
    let mut tick = tokio::time::interval(RESEND_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let n = tokio::select! {
            n = messages.recv_many(&mut queued, wire::MAX_BATCH) => n,
            _ = tick.tick() => {
                let due = shared.lock_progress().due(Instant::now());
                join_all(due.into_iter().map(|r| resend(&shared, r))).await;
                continue;
            }
            _ = shared.stop.cancelled() => return,
        };
        if n == 0 {
            return;
        }
        for batch in batches(std::mem::take(&mut queued)) {
            send_batch(&shared, batch).await;
        }
    }
}

/// Splits messages into runs of one topic within [`wire::BATCH_BYTES`], each in id order.
fn batches(messages: Vec<MessageJson>) -> Vec<Vec<MessageJson>> {
    let mut out: Vec<Vec<MessageJson>> = Vec::new();
    let mut bytes = 0;
    for m in messages {
        let size = m.size();
        match out.last_mut() {
            Some(batch) if batch[0].topic == m.topic && bytes + size <= wire::BATCH_BYTES => {
                bytes += size;
                batch.push(m);
            }
            _ => {
                bytes = size;
                out.push(vec![m]);
            }
        }
    }
    for batch in &mut out {
        batch.sort_by_key(|m| m.id);
    }
    out
}

/// One batch, encoded for each way of acknowledging it.
struct Encoded {
    /// For subscribers that answer each push.
    each: Vec<u8>,
    /// For subscribers that acknowledge cumulatively (encoded when one is there).
    cumulative: Option<Vec<u8>>,
    count: u64,
    last: u64,
}

async fn send_batch(shared: &Shared, batch: Vec<MessageJson>) {
    let Ok(topic) = batch[0].topic.parse::<TopicName>() else {
        return;
    };
    let (subs, config) = match (
        shared.subscribers(&topic.name).await,
        shared.config(&topic.name).await,
    ) {
        (Ok(subs), Ok(Some(config))) => (subs, config),
        (Err(e), _) | (_, Err(e)) => {
            // Subscribers find the messages when they renew and pull.
            tracing::warn!(%topic, error = %e, "cannot read the subscribers; messages not pushed");
            return;
        }
        (_, Ok(None)) => return,
    };
    let me = shared.peer.twin_id();
    let targets: Vec<(u32, AckMode)> = {
        let progress = shared.lock_progress();
        subs.into_iter()
            .filter(|&twin| twin != me && config.subscribe.allows(twin, me))
            .map(|twin| (twin, progress.mode(&topic.name, twin)))
            .collect()
    };
    shared.lock_leases().pushed(
        &topic.name,
        targets.iter().map(|&(twin, _)| twin),
        unix_now(),
    );
    let count = batch.len() as u64;
    let last = batch.last().map_or(0, |m| m.id);
    let mut body = wire::Batch {
        messages: batch,
        acks: AckMode::Each,
        last: None,
    };
    let each = serde_json::to_vec(&body).expect("a batch serialises");
    let cumulative = targets
        .iter()
        .any(|(_, mode)| *mode == AckMode::Cumulative)
        .then(|| {
            body.acks = AckMode::Cumulative;
            serde_json::to_vec(&body).expect("a batch serialises")
        });
    let encoded = Encoded {
        each,
        cumulative,
        count,
        last,
    };
    // A few subscribers at a time, yielding in between: the link then writes each
    // group while the next is encrypted, so the relay starts forwarding after the first
    // group rather than after the last (at 100 subscribers the first copy reached the
    // relay only after all 100 were sealed, about 0.4 ms on this machine).
    for group in targets.chunks(FANOUT_GROUP) {
        let sends = group.iter().map(|&(twin, mode)| match mode {
            AckMode::Each => Either::Left(push(shared, &topic, twin, encoded.each.clone(), count)),
            AckMode::Cumulative => Either::Right(push_one_way(shared, &topic, twin, &encoded)),
        });
        join_all(sends).await;
        if group.len() == FANOUT_GROUP {
            tokio::task::yield_now().await;
        }
    }
}

/// Subscribers a batch is sealed for between two writes of the link (see [`send_batch`]).
const FANOUT_GROUP: usize = 8;

/// Sends a batch to a subscriber that acknowledges cumulatively: no answer is waited
/// for; [`progress`](super::progress) notes what it should acknowledge.
async fn push_one_way(shared: &Shared, topic: &TopicName, twin: u32, encoded: &Encoded) {
    let payload = encoded
        .cumulative
        .clone()
        .unwrap_or_else(|| encoded.each.clone());
    let sent = send_push(shared, twin, payload).await;
    // A push no relay took is sent again like a lost one.
    shared
        .lock_progress()
        .pushed(&topic.name, twin, encoded.last, Instant::now());
    match sent {
        Ok(()) => Counters::add(&shared.counters.pushed, encoded.count),
        Err(e) => push_failed(shared, topic, twin, &e),
    }
}

/// Sends again, from the store, what `due` left unacknowledged (at most one batch; the
/// batch says how far the topic got, so the subscriber pulls the rest).
async fn resend(shared: &Shared, due: Resend) {
    let Ok(topic) = TopicName::new(shared.peer.twin_id(), &due.topic) else {
        return;
    };
    let Ok(Some(config)) = shared.config(&due.topic).await else {
        return;
    };
    let slice = match shared
        .store
        .pull(
            &due.topic,
            &config,
            due.after,
            wire::MAX_BATCH as u32,
            unix_now(),
        )
        .await
    {
        Ok(slice) => slice,
        Err(e) => {
            tracing::debug!(%topic, error = %e, "cannot read messages to send again");
            return;
        }
    };
    let mut bytes = 0;
    let messages: Vec<MessageJson> = slice
        .messages
        .into_iter()
        .filter(|m| m.id <= due.last)
        .take_while(|m| {
            bytes += m.size();
            bytes <= wire::BATCH_BYTES
        })
        .collect();
    if messages.is_empty() {
        // Retention dropped them: the subscriber learns of the gap when it renews.
        return;
    }
    Counters::bump(&shared.counters.resent);
    shared
        .lock_leases()
        .pushed(&due.topic, [due.twin], unix_now());
    let count = messages.len() as u64;
    let body = wire::Batch {
        messages,
        acks: AckMode::Cumulative,
        last: Some(due.last),
    };
    let payload = serde_json::to_vec(&body).expect("a batch serialises");
    match send_push(shared, due.twin, payload).await {
        Ok(()) => Counters::add(&shared.counters.pushed, count),
        Err(e) => push_failed(shared, &topic, due.twin, &e),
    }
}

/// Sends a push that expects no answer.
async fn send_push(shared: &Shared, twin: u32, payload: Vec<u8>) -> Result<(), SendError> {
    let request = push_request(twin, payload);
    shared.peer.send_one_way(request).await
}

/// A push request to `twin` (uid fresh).
fn push_request(twin: u32, payload: Vec<u8>) -> OutgoingRequest {
    OutgoingRequest {
        uid: uuid::Uuid::new_v4().to_string(),
        destination: Address::twin(twin),
        command: wire::MESSAGE.into(),
        payload,
        schema: Some("application/json".into()),
        tags: None,
        timestamp: 0,
        expiration: REQUEST_EXPIRATION,
    }
}

/// Counts and (rate-limited) logs a push that did not go out.
fn push_failed(shared: &Shared, topic: &TopicName, twin: u32, e: &SendError) {
    Counters::bump(&shared.counters.push_failures);
    if shared
        .peer
        .log_allowed(u64::from(twin), Reason::InvalidMessage)
    {
        tracing::debug!(twin, %topic, error = %e, "could not push a message (the subscriber pulls it later)");
    }
}

/// Sends one batch (of `count` messages) to a subscriber that answers each push; the
/// core resends it until the answer comes.
async fn push(shared: &Shared, topic: &TopicName, twin: u32, payload: Vec<u8>, count: u64) {
    let request = push_request(twin, payload);
    let uid = request.uid.clone();
    let deadline = Instant::now() + Duration::from_secs(REQUEST_EXPIRATION);
    let waiter = Waiter::Push {
        topic: topic.name.clone(),
        twin,
    };
    if shared
        .pending
        .insert(uid.clone(), deadline, waiter)
        .is_err()
    {
        Counters::bump(&shared.counters.push_failures);
        return;
    }
    // Unsigned when the subscriber publishes our scheme (its encryption authenticates
    // it; `core::unsigned`), signed otherwise.
    match shared.peer.send_unsigned_request(request).await {
        Ok(()) => Counters::add(&shared.counters.pushed, count),
        Err(e) => {
            shared.pending.take(&uid);
            push_failed(shared, topic, twin, &e);
        }
    }
}
