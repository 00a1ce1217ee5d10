//! The owner's fan-out: each new message of an own topic goes to every subscriber the
//! topic's access list allows, as its own request encrypted for that subscriber (and
//! signed unless the encryption authenticates it, [`core::unsigned`](crate::core::unsigned)).
//! Messages that queued while the previous sends ran go together, one envelope per
//! subscriber per topic; pushes a cumulative subscriber left unacknowledged are sent again
//! ([`progress`](super::progress)). Pushes are best effort: a subscriber that misses one
//! pulls it. Answering subscribers' requests is [`owner`](super::owner)'s part.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{Either, join_all};
use rmb_proto::Address;
use rmb_proto::time::unix_now;
use tokio::sync::mpsc;

use super::counters::Counters;
use super::pending::Waiter;
use super::progress::Resend;
use super::shared::{REQUEST_EXPIRATION, Shared};
use super::wire::{self, AckMode, MessageJson, TopicName};
use crate::core::{OutgoingRequest, Reason, SendError};

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
