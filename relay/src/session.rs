//! One client connection: the per-connection actor.
//!
//! After login the connection is registered in the [`Switch`](crate::switch::Switch)
//! (replacing any older connection of the same session), is sent what was queued for it
//! while offline, and then runs two halves until either ends or the relay shuts down:
//!
//! - the **reader** decodes binary frames (size-limited), applies `--limit`, and routes;
//!   refusals go back to the sender as error envelopes and the connection stays up;
//! - the **writer** drains the connection's bounded outbox; a write that stalls longer
//!   than the slow-reader timeout ends the connection.
//!
//! Whatever was still in the outbox when the connection ends goes back to the front of
//! the offline queue, so a dropped connection loses nothing the relay still held.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::ws::{Message as WsMessage, WebSocket};
use futures_util::{SinkExt, StreamExt};
use rmb_proto::Envelope;
use tokio::sync::mpsc;

use crate::errors::RouteError;
use crate::routing::{Origin, reply_error, route};
use crate::state::RelayState;
use crate::switch::{Outgoing, SessionId};

/// Serves an authenticated WebSocket for `session` until it ends.
pub async fn serve(socket: WebSocket, session: SessionId, state: Arc<RelayState>) {
    let cancel = state.shutdown.child_token();
    let (outbox, inbox) = mpsc::channel::<Outgoing>(state.config.send_queue);
    let connection = state.switch.register(&session, outbox, cancel.clone());
    state.metrics.sessions.set(state.switch.len() as i64);
    tracing::debug!(%session, connection, "session connected");

    // Announce first, then take: an envelope queued meanwhile by another replica wakes us.
    state.queue.attach(&session).await;
    let queued = state
        .queue
        .take(&session, rmb_proto::time::unix_now())
        .await;
    let (sink, mut stream) = socket.split();
    let writer = tokio::spawn(write_loop(
        sink,
        inbox,
        queued,
        cancel.clone(),
        Arc::clone(&state),
    ));

    let origin = Origin::Session(session.clone());
    loop {
        let frame = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            frame = stream.next() => frame,
        };
        match frame {
            Some(Ok(WsMessage::Binary(bytes))) => {
                // Boxed: routing's state machine is large, and an idle session should not
                // carry it around between frames.
                Box::pin(handle_frame(&state, &origin, &session, bytes)).await
            }
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => {}
            Some(Ok(WsMessage::Text(_))) => {
                tracing::debug!(%session, "text frame received; closing as rmb-rs does");
                break;
            }
            Some(Ok(WsMessage::Close(_))) | None => break,
            Some(Err(e)) => {
                tracing::debug!(%session, error = %e, "connection read failed");
                break;
            }
        }
    }
    cancel.cancel();
    let leftovers = writer.await.unwrap_or_default();
    if state.switch.unregister(&session, connection) {
        state.queue.push_front(&session, leftovers).await;
        state.queue.detach(&session).await;
    } else {
        // Replaced by a newer connection here, which keeps the session's claim and
        // gets what this one could not write.
        state.queue.push_front(&session, leftovers).await;
        crate::queue::handoff::hand_over(&state, &session).await;
    }
    state.metrics.sessions.set(state.switch.len() as i64);
    tracing::debug!(%session, connection, "session ended");
}

async fn handle_frame(state: &Arc<RelayState>, origin: &Origin, session: &SessionId, bytes: Bytes) {
    let now = rmb_proto::time::unix_now();
    state.metrics.messages_in.inc();
    state.metrics.bytes_in.inc_by(bytes.len() as u64);
    // Routing needs neither signature nor payload: skip them instead of copying them.
    let env = match Envelope::decode_routing(&bytes, state.config.max_envelope_size) {
        Ok(env) => env,
        Err(e) => {
            // Nothing to answer to (no uid): count it and log it.
            state.metrics.error("malformed");
            tracing::info!(%session, error = %e, "undecodable envelope refused");
            return;
        }
    };
    let (uid, kind) = (env.uid.clone(), env.kind());
    if let Err(reason) = state.rate_limit(session.twin, bytes.len(), now) {
        state.metrics.rate_limited.inc();
        let error = RouteError::RateLimited(reason);
        state.metrics.error(error.kind());
        reply_error(state, session, &uid, kind, &error, now).await;
        return;
    }
    if let Err(error) = route(state, origin, bytes, env, now).await {
        tracing::debug!(%session, %uid, %error, "envelope refused");
        reply_error(state, session, &uid, kind, &error, now).await;
    }
}

/// Most envelopes written before one flush.
const BATCH: usize = 64;

/// Writes queued then routed envelopes, a batch per flush; returns what it could not write.
async fn write_loop(
    mut sink: futures_util::stream::SplitSink<WebSocket, WsMessage>,
    mut inbox: mpsc::Receiver<Outgoing>,
    queued: Vec<Outgoing>,
    cancel: tokio_util::sync::CancellationToken,
    state: Arc<RelayState>,
) -> Vec<Outgoing> {
    let timeout = state.config.slow_reader_timeout;
    let mut pending: std::collections::VecDeque<Outgoing> = queued.into();
    let mut leftovers = Vec::new();
    // Grows on first use: an idle session holds no batch memory.
    let mut batch: Vec<Outgoing> = Vec::new();
    loop {
        let first = match pending.pop_front() {
            Some(item) => item,
            None => tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                item = inbox.recv() => match item {
                    Some(item) => item,
                    None => break,
                },
            },
        };
        batch.push(first);
        while batch.len() < BATCH {
            match pending
                .pop_front()
                .map(Ok)
                .unwrap_or_else(|| inbox.try_recv())
            {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let write = async {
            for (bytes, _) in &batch {
                sink.feed(WsMessage::Binary(bytes.clone())).await?;
            }
            sink.flush().await
        };
        if !matches!(tokio::time::timeout(timeout, write).await, Ok(Ok(()))) {
            // Some may have been written: at-least-once, receivers drop duplicates by uid.
            leftovers.append(&mut batch);
            cancel.cancel();
            break;
        }
        state.metrics.messages_out.inc_by(batch.len() as u64);
        let bytes: usize = batch.iter().map(|(b, _)| b.len()).sum();
        state.metrics.bytes_out.inc_by(bytes as u64);
        batch.clear();
    }
    leftovers.extend(pending);
    inbox.close();
    while let Ok(item) = inbox.try_recv() {
        leftovers.push(item);
    }
    let _ = sink.close().await;
    leftovers
}
