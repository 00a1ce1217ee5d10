//! Handing over envelopes that another replica queued for a session connected here.
//!
//! With [`RedisQueues`](super::RedisQueues), a replica that routes an envelope to a
//! session it does not hold queues it in Redis and wakes the replica that holds it. That
//! replica runs [`run`]: for each wake-up it takes the session's queue and delivers it
//! through the [`Switch`](crate::switch::Switch); what cannot be delivered (the session
//! just left, or its outbox is full) goes back to the front of the queue.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::redis::{PRESENCE_TTL, WAKE_ALL};
use crate::state::RelayState;
use crate::switch::{Delivery, SessionId};

/// Runs until shutdown: delivers on wake-ups, and renews the presence of the sessions
/// connected here well within [`PRESENCE_TTL`].
pub async fn run(state: Arc<RelayState>, mut wakeups: mpsc::Receiver<SessionId>) {
    let mut renew = tokio::time::interval(PRESENCE_TTL / 3);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = renew.tick() => {
                state.queue.refresh(state.switch.sessions()).await;
            }
            wakeup = wakeups.recv() => match wakeup {
                None => return,
                Some(session) if session == WAKE_ALL => {
                    for session in state.switch.sessions() {
                        hand_over(&state, &session).await;
                    }
                }
                Some(session) => hand_over(&state, &session).await,
            },
        }
    }
}

/// Takes `session`'s queue and delivers it, if the session is connected here.
pub async fn hand_over(state: &RelayState, session: &SessionId) {
    if !state.switch.is_connected(session) {
        return;
    }
    let now = rmb_proto::time::unix_now();
    let mut items = state.queue.take(session, now).await.into_iter();
    let mut handed = 0usize;
    while let Some(item) = items.next() {
        match state.switch.deliver(session, item) {
            Delivery::Sent => handed += 1,
            Delivery::NotConnected(item) | Delivery::Full(item) => {
                let mut rest = vec![item];
                rest.extend(items);
                tracing::debug!(%session, back = rest.len(), "hand-over interrupted; envelopes requeued");
                state.queue.push_front(session, rest).await;
                // Requeueing woke us again (we still hold the session): let the outbox drain.
                tokio::time::sleep(Duration::from_millis(20)).await;
                break;
            }
        }
    }
    if handed > 0 {
        tracing::trace!(%session, handed, "queued envelopes handed over from redis");
    }
}
