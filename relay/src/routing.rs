//! Routing one envelope: deliver here, queue for an offline twin that lives here, or
//! forward to the destination's relay.
//!
//! ```text
//! from a session: source must equal the session          → else "message wrong source"
//! ping                                                   → pong to the sender
//! destination missing / twin 0                           → "message with missing destination"
//! expired                                                → "message has expired" (rmb-rs queues it anyway)
//! deadline past now + --max-lifetime                     → "message lifetime too long"
//! destination session connected here                     → deliver (outbox over its bound: spill to its queue)
//! destination session held by another replica (--redis)  → hand to it over the replica link
//! destination twin unknown / no relays                   → error
//! destination lives here (relay list ∩ --domain)         → fail-fast: "destination offline"; else queue
//! otherwise, from a session                              → federate (error comes back if all relays fail)
//! otherwise, from federation                             → refused (never re-forwarded: no loops)
//! ```

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use prost::Message as _;
use rmb_proto::{Envelope, Message, MessageKind, Pong, TimeError};

use crate::errors::{RouteError, error_envelope};
use crate::federation::FederationError;
use crate::federation::outbound::{FirstTry, Outgoing};
use crate::queue::QueueError;
use crate::queue::handoff::hand_over;
use crate::state::RelayState;
use crate::switch::{Delivery, Outgoing as Queued, SessionId};

/// Where an envelope came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A client connected to this relay, authenticated as this session.
    Session(SessionId),
    /// Another relay (`POST /`), already signature-checked.
    Federation,
}

/// Routes `env` (whose encoding is `bytes`) at `now`.
pub async fn route(
    state: &Arc<RelayState>,
    origin: &Origin,
    bytes: Bytes,
    mut env: Envelope,
    now: u64,
) -> Result<(), RouteError> {
    let started = Instant::now();
    let result = route_inner(state, origin, bytes, &mut env, now).await;
    state
        .metrics
        .route_seconds
        .observe(started.elapsed().as_secs_f64());
    if let Err(e) = &result {
        state.metrics.error(e.kind());
    }
    result
}

async fn route_inner(
    state: &Arc<RelayState>,
    origin: &Origin,
    bytes: Bytes,
    env: &mut Envelope,
    now: u64,
) -> Result<(), RouteError> {
    if let Origin::Session(session) = origin {
        let source = env.source.as_ref().map(SessionId::of);
        if source.as_ref() != Some(session) {
            return Err(RouteError::WrongSource);
        }
        if env.kind() == MessageKind::Ping {
            answer_ping(state, session, env);
            return Ok(());
        }
    }
    let Some(destination) = env.destination.as_ref().map(SessionId::of) else {
        return Err(RouteError::MissingDestination);
    };
    if destination.twin == 0 {
        return Err(RouteError::MissingDestination);
    }
    match env.check_time(now, state.config.max_lifetime) {
        Ok(()) => {}
        Err(TimeError::Expired(_)) => return Err(RouteError::Expired),
        Err(e) => return Err(RouteError::TooFar(e)),
    }
    let deadline = env.deadline();
    let mut bytes = match deliver(state, &destination, bytes, deadline, now).await? {
        None => return Ok(()),
        Some(bytes) => bytes,
    };
    if let Some(links) = state.replicas.get() {
        match links.forward(destination.clone(), (bytes, deadline)).await {
            Ok(()) => return Ok(()),
            Err((back, _)) => bytes = back,
        }
    }

    let twin = state
        .registry
        .get_twin(destination.twin)
        .await?
        .ok_or(RouteError::UnknownTwin)?;
    if twin.relays.is_empty() {
        return Err(RouteError::NoRelays);
    }
    if state.config.serves(&twin.relays) {
        let size = bytes.len();
        return match state
            .queue
            .push(&destination, (bytes, deadline), now, env.is_fail_fast())
            .await
        {
            Ok(()) => {
                state.metrics.queued.inc();
                state.metrics.rmb_rs.accepted(destination.twin, size);
                // The session may have connected while this envelope was being routed
                // (the registry lookup above can take a while), after it took its queue:
                // tell it to take its queue again, or the envelope would wait for a
                // reconnect.
                hand_over(state, &destination);
                Ok(())
            }
            Err(QueueError::Offline) => Err(RouteError::DestinationOffline),
            Err(e) => Err(RouteError::QueueFull(e)),
        };
    }
    let Origin::Session(sender) = origin else {
        return Err(RouteError::Federation(FederationError::NotHere(
            destination.twin,
        )));
    };
    // Forwarded without waiting here; the sender hears about a failure (or a shutdown
    // that came first) by error envelope.
    let forwarding = Arc::new(Forwarding {
        state: Arc::clone(state),
        sender: sender.clone(),
        uid: env.uid.clone(),
        kind: env.kind(),
        destination: twin.id,
        relays: twin.relays,
        deadline,
        // Like an offline twin here, an unreachable relay there only delays the
        // envelope, unless the sender asked for fail-fast errors.
        keep_trying: !env.is_fail_fast(),
    });
    // Queued for its relay here, in routing order. In the common case nothing waits for
    // the answer: the lane hears it and only a failure starts a task (for retries).
    let then = {
        let (forwarding, bytes) = (Arc::clone(&forwarding), bytes.clone());
        move |first: FirstTry| {
            if first.taken() {
                forwarding.state.metrics.federated_out.inc();
            } else {
                forwarding.spawn(FirstStep::Answered(bytes, first));
            }
        }
    };
    let relays = &forwarding.relays;
    if let Err(outgoing) = state
        .federator
        .start_then(bytes, forwarding.destination, relays, then)
    {
        Arc::clone(&forwarding).spawn(FirstStep::NotQueued(outgoing));
    }
    Ok(())
}

/// An envelope being forwarded to another relay, for as long as something is left to do.
struct Forwarding {
    state: Arc<RelayState>,
    sender: SessionId,
    uid: String,
    kind: MessageKind,
    destination: u32,
    relays: BTreeSet<String>,
    deadline: u64,
    keep_trying: bool,
}

/// Where a [`Forwarding`] task starts.
enum FirstStep {
    /// No lane took it: the whole delivery.
    NotQueued(Outgoing),
    /// Its first try was answered, not taken: the rest.
    Answered(Bytes, FirstTry),
}

impl Forwarding {
    /// Goes on from `step` in a task under the supervisor, within the forwarding budget;
    /// past it the sender hears at once that nothing was sent.
    fn spawn(self: Arc<Self>, step: FirstStep) {
        let bytes = match &step {
            FirstStep::NotQueued(outgoing) => outgoing.size(),
            FirstStep::Answered(bytes, _) => bytes.len(),
        };
        let permit = self.state.federator.forwarding_permit(bytes);
        let tasks = self.state.tasks.clone();
        tasks.spawn(async move {
            match permit {
                Some(_held) => self.run(step).await,
                None => {
                    self.failed(RouteError::Federation(FederationError::Overloaded))
                        .await
                }
            }
        });
    }

    async fn run(&self, step: FirstStep) {
        let state = &self.state;
        let federator = &state.federator;
        let (relays, deadline, keep_trying) = (&self.relays, self.deadline, self.keep_trying);
        let sending = async {
            match step {
                FirstStep::NotQueued(outgoing) => {
                    federator
                        .deliver(outgoing, relays, deadline, keep_trying)
                        .await
                }
                FirstStep::Answered(bytes, first) => {
                    let destination = self.destination;
                    federator
                        .finish(
                            bytes,
                            destination,
                            Some(first),
                            relays,
                            deadline,
                            keep_trying,
                        )
                        .await
                }
            }
        };
        let sent = tokio::select! {
            biased;
            _ = state.shutdown.cancelled() => {
                // Not sent yet, and this relay keeps nothing for other relays' twins: the
                // sender is told to send it again (its error envelope is queued for it).
                Err(RouteError::ShuttingDown)
            }
            sent = sending => sent.map_err(RouteError::Federation),
        };
        match sent {
            Ok(relay) => {
                state.metrics.federated_out.inc();
                tracing::debug!(%relay, twin = self.destination, "federated");
            }
            Err(error) => self.failed(error).await,
        }
    }

    /// Tells the sender the envelope was not forwarded (counted by kind).
    async fn failed(&self, error: RouteError) {
        let state = &self.state;
        state.metrics.error(error.kind());
        tracing::debug!(sender = %self.sender, twin = self.destination, %error, "federation failed");
        let now = rmb_proto::time::unix_now();
        reply_error(state, &self.sender, &self.uid, self.kind, &error, now).await;
    }
}

/// Hands `bytes` to a session connected here without waiting on it: an outbox over its
/// bound spills the envelope to the session's offline queue (bounded; the sender hears
/// when that is full). Returns the bytes if the session is not connected here.
async fn deliver(
    state: &RelayState,
    session: &SessionId,
    bytes: Bytes,
    deadline: u64,
    now: u64,
) -> Result<Option<Bytes>, RouteError> {
    let size = bytes.len();
    let item = match state.switch.deliver(session, (bytes, deadline)) {
        Delivery::Sent => {
            state.metrics.rmb_rs.accepted(session.twin, size);
            return Ok(None);
        }
        Delivery::NotConnected((bytes, _)) => return Ok(Some(bytes)),
        Delivery::Full(item) => item,
    };
    state.queue.push(session, item, now, false).await?;
    state.metrics.queued.inc();
    state.metrics.rmb_rs.accepted(session.twin, size);
    // Taken back by the session once it has written what its outbox holds.
    state.switch.poke(session);
    Ok(None)
}

/// Queues an envelope a replica link gave back (the session was not on the replica the
/// link leads to, or the link broke): as routing would have queued it, the sender
/// hearing of a refusal (fail-fast and offline, or a full queue).
pub async fn requeue(state: &RelayState, session: &SessionId, item: Queued) {
    let now = rmb_proto::time::unix_now();
    let env = Envelope::decode(&item.0[..]).ok();
    let fail_fast = env.as_ref().is_some_and(Envelope::is_fail_fast);
    let size = item.0.len();
    let error = match state.queue.push(session, item, now, fail_fast).await {
        Ok(()) => {
            state.metrics.queued.inc();
            state.metrics.rmb_rs.accepted(session.twin, size);
            hand_over(state, session);
            return;
        }
        Err(QueueError::Offline) => RouteError::DestinationOffline,
        Err(e) => RouteError::QueueFull(e),
    };
    state.metrics.error(error.kind());
    if let Some(env) = env
        && let Some(sender) = env.source.as_ref().map(SessionId::of)
    {
        reply_error(state, &sender, &env.uid, env.kind(), &error, now).await;
    }
}

/// Answers an app-level ping with a pong from the relay.
fn answer_ping(state: &RelayState, session: &SessionId, ping: &Envelope) {
    let pong = Envelope {
        uid: ping.uid.clone(),
        timestamp: ping.timestamp,
        expiration: ping.expiration,
        source: ping.destination.clone(),
        destination: ping.source.clone(),
        message: Some(Message::Pong(Pong {})),
        ..Default::default()
    };
    let deadline = pong.deadline();
    let item = (Bytes::from(pong.encode_to_vec()), deadline);
    let size = item.0.len();
    if matches!(state.switch.deliver(session, item), Delivery::Sent) {
        state.metrics.rmb_rs.accepted(session.twin, size);
    } else {
        // Its own outbox is full: the client is not reading, a pong would not help.
        state.metrics.error("pong_dropped");
    }
}

/// Sends the sender of a refused envelope an error envelope (requests and responses
/// only: errors about errors or pongs could loop).
pub async fn reply_error(
    state: &RelayState,
    sender: &SessionId,
    uid: &str,
    kind: MessageKind,
    error: &RouteError,
    now: u64,
) {
    if !matches!(kind, MessageKind::Request | MessageKind::Response) {
        return;
    }
    let envelope = error_envelope(uid, sender, &error.to_string(), now);
    let deadline = envelope.deadline();
    let bytes = Bytes::from(envelope.encode_to_vec());
    let size = bytes.len();
    match state.switch.deliver(sender, (bytes, deadline)) {
        Delivery::Sent => state.metrics.rmb_rs.accepted(sender.twin, size),
        Delivery::NotConnected(item) | Delivery::Full(item) => {
            match state.queue.push(sender, item, now, false).await {
                Ok(()) => {
                    state.metrics.rmb_rs.accepted(sender.twin, size);
                    state.switch.poke(sender);
                }
                Err(e) => {
                    // The sender's own queue is full (it floods and does not read):
                    // count it; logging each one would let it flood the log.
                    state.metrics.error("error_reply_dropped");
                    tracing::debug!(%sender, %uid, error = %e, "error envelope for an unreachable sender dropped");
                }
            }
        }
    }
}
