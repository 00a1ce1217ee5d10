//! Handing over envelopes that another replica queued for a session connected here.
//!
//! With [`RedisQueues`](super::RedisQueues), a replica that routes an envelope to a
//! session it does not hold queues it in Redis and wakes the replica that holds it. That
//! replica runs [`run`]: each wake-up pokes the session's outbox
//! ([`Switch::poke`](crate::switch::Switch::poke)), and the session's own task takes its
//! queue, a bounded amount at a time, when it has written what it holds. Nothing here
//! waits on a session.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::redis::{PRESENCE_TTL, WAKE_ALL};
use crate::state::RelayState;
use crate::switch::SessionId;

/// Runs until shutdown: pokes sessions on wake-ups, and renews the presence of the
/// sessions connected here well within [`PRESENCE_TTL`].
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
                        hand_over(&state, &session);
                    }
                }
                Some(session) => hand_over(&state, &session),
            },
        }
    }
}

/// Tells `session`, if it is connected here, that its queue holds envelopes for it.
pub fn hand_over(state: &RelayState, session: &SessionId) {
    state.switch.poke(session);
}
