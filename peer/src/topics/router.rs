//! Splits the peer's inbound messages: `rmb.topic.*` requests go to the owner or the
//! subscriber task, answers to requests the topics layer sent go to whoever waits for
//! them, and everything else goes on to the Redis API unchanged.
//!
//! The router never waits on a topic task: when one is full, the request gets a
//! "busy" error reply (code 503) and the sender tries again later.
//!
//! Message pushes mostly skip the router: [`MessageTap`] hands them from the peer's
//! receive pipeline straight to the subscriber task; only those that find it full come
//! here (and get "busy" if it still is).

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use super::counters::Counters;
use super::owner;
use super::pending::Waiter;
use super::reply::reply_error;
use super::shared::Shared;
use super::sub_input::Input;
use super::wire::{self, AckMode, codes};
use crate::core::tap::InboundTap;
use crate::core::{Inbound, InboundRequest, InboundResponse, Reason};

/// Takes message pushes ([`wire::MESSAGE`]) from the receive pipeline to the subscriber
/// task while it has room ([`crate::core::tap`]).
pub(crate) struct MessageTap {
    pub(crate) sub_events: mpsc::Sender<Input>,
}

impl InboundTap for MessageTap {
    fn take(&self, inbound: Inbound) -> Option<Inbound> {
        match inbound {
            Inbound::Request(request) if request.command == wire::MESSAGE => {
                to_subscriber(&self.sub_events, request).map(Inbound::Request)
            }
            other => Some(other),
        }
    }
}

/// Hands a message push to the subscriber task without waiting; gives it back (`Some`)
/// when the task has no room (or stopped).
fn to_subscriber(
    sub_events: &mpsc::Sender<Input>,
    request: InboundRequest,
) -> Option<InboundRequest> {
    match sub_events.try_send(Input::Message(request)) {
        Err(TrySendError::Full(Input::Message(r)) | TrySendError::Closed(Input::Message(r))) => {
            Some(r)
        }
        // Only messages are sent here.
        Ok(()) | Err(_) => None,
    }
}

/// Runs until the peer's inbound channel closes (the peer stopped).
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut inbound: mpsc::Receiver<Inbound>,
    owner_tx: mpsc::Sender<owner::Input>,
    app: mpsc::Sender<Inbound>,
) {
    while let Some(message) = inbound.recv().await {
        match message {
            Inbound::Request(request) if request.command.starts_with(wire::PREFIX) => {
                dispatch(&shared, &owner_tx, request).await
            }
            Inbound::Response(response) if shared.pending.contains(&response.uid) => {
                answer(&shared, &owner_tx, response)
            }
            other => {
                if app.send(other).await.is_err() {
                    tracing::debug!("the Redis API stopped; dropping an inbound message");
                }
            }
        }
    }
}

async fn dispatch(
    shared: &Arc<Shared>,
    owner_tx: &mpsc::Sender<owner::Input>,
    request: InboundRequest,
) {
    let full = match request.command.as_str() {
        wire::MESSAGE => match to_subscriber(&shared.sub_events, request) {
            None => return,
            Some(r) => r,
        },
        wire::ACK => return acknowledged(shared, &request).await,
        wire::PUBLISH | wire::SUBSCRIBE | wire::UNSUBSCRIBE | wire::PULL => {
            match owner_tx.try_send(owner::Input::Request(request)) {
                Ok(()) => return,
                Err(
                    TrySendError::Full(owner::Input::Request(r))
                    | TrySendError::Closed(owner::Input::Request(r)),
                ) => r,
                Err(_) => return,
            }
        }
        other => {
            let message = format!("unknown topic command {other:?}");
            return reply_error(
                shared,
                &request,
                "unknown_command",
                codes::BAD_REQUEST,
                message,
            )
            .await;
        }
    };
    reply_error(
        shared,
        &full,
        "busy",
        codes::UNAVAILABLE,
        "the topic owner is busy; try again".into(),
    )
    .await;
}

/// Hands an answer to its waiter; a subscriber that says it is not subscribed (404)
/// is dropped from the topic.
fn answer(shared: &Shared, owner_tx: &mpsc::Sender<owner::Input>, response: InboundResponse) {
    match shared.pending.take(&response.uid) {
        Some(Waiter::Call(tx)) => {
            let _ = tx.send(response);
        }
        Some(Waiter::Push { topic, twin }) => match response.reply {
            Ok(body) => {
                if response.source.twin == twin {
                    shared.lock_leases().answered(&topic, twin);
                }
                // A subscriber that can acknowledge cumulatively says so in its answer.
                if let Ok(answer) = serde_json::from_slice::<wire::PushAnswer>(&body)
                    && answer.acks == AckMode::Cumulative
                    && response.source.twin == twin
                    && shared
                        .lock_subscribers()
                        .get(&topic)
                        .is_some_and(|subs| subs.contains(&twin))
                {
                    shared.lock_progress().learn(&topic, twin, answer.acks);
                }
            }
            Err(e) if e.code == codes::NOT_FOUND && response.source.twin == twin => {
                tracing::debug!(twin, %topic, "subscriber says it is not subscribed; dropping it");
                owner::drop_subscriber(owner_tx, &topic, twin);
            }
            Err(e) => {
                Counters::bump(&shared.counters.push_failures);
                if shared
                    .peer
                    .log_allowed(u64::from(twin), Reason::InvalidMessage)
                {
                    tracing::debug!(twin, %topic, error = %e, "a subscriber refused a message");
                }
            }
        },
        None => {}
    }
}

/// A subscriber's cumulative acknowledgement ([`wire::ACK`]): noted, never answered.
/// One that cannot be read is refused with an error reply; one from a twin that is no
/// subscriber of the topic is dropped (counted as `ack_not_subscribed`).
async fn acknowledged(shared: &Shared, request: &InboundRequest) {
    let ack: wire::AckRequest = match serde_json::from_slice(&request.payload) {
        Ok(ack) => ack,
        Err(e) => {
            let message = format!("{} body is not valid: {e}", wire::ACK);
            return reply_error(shared, request, "bad_request", codes::BAD_REQUEST, message).await;
        }
    };
    let twin = request.source.twin;
    // Only own topics' subscribers (looked up only for topics that exist: a name made
    // up adds nothing to the caches).
    let subscribed = wire::check_name(&ack.topic).is_ok()
        && matches!(shared.config(&ack.topic).await, Ok(Some(_)))
        && shared
            .subscribers(&ack.topic)
            .await
            .is_ok_and(|subs| subs.contains(&twin));
    if !subscribed {
        shared.counters.refuse("ack_not_subscribed");
        return;
    }
    let mut progress = shared.lock_progress();
    // After a restart of ours, its acknowledgement is how we learn it acknowledges so.
    progress.learn(&ack.topic, twin, AckMode::Cumulative);
    progress.acked(&ack.topic, twin, ack.last, Instant::now());
    drop(progress);
    shared.lock_leases().acked(&ack.topic, twin, ack.last);
    Counters::bump(&shared.counters.acks_received);
}
