//! Making and ending a subscription to another twin's topic: the owner is asked
//! (`rmb.topic.subscribe` / `rmb.topic.unsubscribe`), the subscription is recorded in
//! Redis, and the [`subscriber`](super::subscriber) task is told. What the task then
//! does with pushes is in that module.

use super::error::{TopicError, parse};
use super::shared::Shared;
use super::sub_input::Input;
use super::wire::{self, AckMode, TopicName};

/// Subscribes with the owner, records the subscription, and hands it to the task.
/// Returns the position apps start after.
pub(crate) async fn subscribe(
    shared: &Shared,
    topic: &TopicName,
    since: Option<u64>,
    list: bool,
) -> Result<u64, TopicError> {
    shared.lock_subscribing().insert(topic.clone());
    let result = record_subscription(shared, topic, since, list).await;
    // On success the task clears the mark when it takes the subscription (messages
    // queued before it are still kept).
    if result.is_err() {
        shared.lock_subscribing().remove(topic);
    }
    result
}

async fn record_subscription(
    shared: &Shared,
    topic: &TopicName,
    since: Option<u64>,
    list: bool,
) -> Result<u64, TopicError> {
    let body = wire::SubscribeRequest {
        topic: topic.name.clone(),
        acks: AckMode::Cumulative,
    };
    let bytes = shared
        .call(
            topic.owner,
            wire::SUBSCRIBE,
            serde_json::to_vec(&body).expect("a request serialises"),
            shared.options.timeout,
        )
        .await?;
    let answer: wire::Subscribed = parse(topic.owner, &bytes)?;
    let existing = shared
        .store
        .subscriptions()
        .await?
        .into_iter()
        .find(|s| &s.topic == topic);
    let last = match existing {
        // A subscription keeps its position: moving it would hand messages over twice.
        // (What is handed over may be ahead of the record for a moment.)
        Some(s) => s.last.max(shared.unrecorded.last(topic).unwrap_or(0)),
        None => {
            let start = since.unwrap_or(answer.last_id).min(answer.last_id);
            shared.store.deliver(topic, 0, start, None, None).await?
        }
    };
    shared.store.add_subscription(topic, list).await?;
    let added = Input::Added {
        topic: topic.clone(),
        last,
        list,
        owner_last: answer.last_id,
        lease: answer.lease,
    };
    shared
        .sub_events
        .send(added)
        .await
        .map_err(|_| TopicError::Closed)?;
    Ok(last)
}

/// Ends a subscription: the owner is told (when reachable), the local state goes.
pub(crate) async fn unsubscribe(shared: &Shared, topic: &TopicName) -> Result<(), TopicError> {
    if let Err(e) = tell_owner_unsubscribed(shared, topic).await {
        // Its next push gets "not subscribed" and the owner drops us then.
        tracing::info!(%topic, error = %e, "the owner was not told of the unsubscription");
    }
    shared.store.remove_subscription(topic).await?;
    shared
        .sub_events
        .send(Input::Removed(topic.clone()))
        .await
        .map_err(|_| TopicError::Closed)
}

/// Asks `topic`'s owner to stop pushing to us.
pub(crate) async fn tell_owner_unsubscribed(
    shared: &Shared,
    topic: &TopicName,
) -> Result<(), TopicError> {
    let body = wire::SubscribeRequest {
        topic: topic.name.clone(),
        acks: AckMode::Each,
    };
    shared
        .call(
            topic.owner,
            wire::UNSUBSCRIBE,
            serde_json::to_vec(&body).expect("a request serialises"),
            shared.options.timeout,
        )
        .await
        .map(drop)
}
