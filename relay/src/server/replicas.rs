//! Starting a replica's links ([`crate::replicas`]) with this relay's own delivery and
//! fallback: envelopes from other replicas go to the sessions connected here, and what
//! a link gives back goes to the offline queue as routing would have queued it.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::queue::{Queues, RedisQueues};
use crate::replicas::directory::Directory;
use crate::replicas::link::Forward;
use crate::replicas::{Deliver, Evict, Holds, Hooks, LinkSettings, ReplicaLinks};
use crate::routing::requeue;
use crate::state::RelayState;
use crate::switch::Delivery;

/// Envelopes given back by links that may wait for the offline queue at once.
const RETURNED_BACKLOG: usize = 65_536;

/// How long the fallback keeps draining after shutdown once nothing more comes.
const DRAIN_QUIET: Duration = Duration::from_millis(500);

/// Starts the links of the replica `queues` belongs to and makes routing use them.
pub async fn start(
    state: &Arc<RelayState>,
    queues: &RedisQueues,
    settings: LinkSettings,
) -> std::io::Result<Arc<ReplicaLinks>> {
    let directory = Directory::new(
        queues
            .shared_store()
            .map(|(conn, _)| conn)
            .ok_or_else(|| std::io::Error::other("redis queues without a connection"))?,
        queues.prefix(),
    );
    // Weak: the state owns the links, which must not keep the state alive.
    let weak: Weak<RelayState> = Arc::downgrade(state);
    let evict: Evict = {
        let weak = weak.clone();
        Arc::new(move |session| {
            weak.upgrade()
                .is_some_and(|state| state.switch.cancel(session))
        })
    };
    let holds: Holds = {
        let weak = weak.clone();
        Arc::new(move |session| {
            weak.upgrade()
                .is_some_and(|state| state.switch.contains(session))
        })
    };
    let deliver: Deliver = Arc::new(move |session, item| match weak.upgrade() {
        // Counted in rmb-rs's relay_message_rx here, where the session is (not on the
        // replica that routed it, whose link may still give it back).
        Some(state) => {
            let size = item.0.len();
            match state.switch.deliver(&session, item) {
                Delivery::Sent => {
                    state.metrics.rmb_rs.accepted(session.twin, size);
                    true
                }
                Delivery::NotConnected(_) | Delivery::Full(_) => false,
            }
        }
        None => false,
    });
    let (returned, rx) = mpsc::channel(RETURNED_BACKLOG);
    state.tasks.spawn(fall_back(Arc::clone(state), rx));
    let links = ReplicaLinks::start(
        queues.replica().to_string(),
        directory,
        settings,
        Hooks {
            deliver,
            evict,
            holds,
            returned,
        },
        state.metrics.replicas.clone(),
        state.tasks.clone(),
        state.shutdown.clone(),
    )
    .await?;
    if state.replicas.set(Arc::clone(&links)).is_err() {
        return Err(std::io::Error::other("replica links started twice"));
    }
    Ok(links)
}

/// Queues what links give back, until shutdown and then until nothing more comes.
async fn fall_back(state: Arc<RelayState>, mut returned: mpsc::Receiver<Forward>) {
    loop {
        let next = tokio::select! {
            biased;
            next = returned.recv() => next,
            _ = state.shutdown.cancelled() => break,
        };
        let Some((session, item)) = next else { return };
        requeue(&state, &session, item).await;
    }
    while let Ok(Some((session, item))) = tokio::time::timeout(DRAIN_QUIET, returned.recv()).await {
        requeue(&state, &session, item).await;
    }
}
