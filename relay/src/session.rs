//! One client connection: the session actor.
//!
//! After login the connection is registered in the [`Switch`](crate::switch::Switch)
//! (replacing any older connection of the same session, refused past
//! `--sessions-per-twin`), and then one task runs one biased `select!` over:
//!
//! 1. **shutdown** (or replacement by a newer connection);
//! 2. **the write in flight**: a batch of envelopes from the outbox, written and flushed
//!    under `--write-timeout`; a write that does not finish in time ends the connection;
//! 3. **the frame being routed**: routing may wait on the registry or Redis, but only
//!    this session waits, and meanwhile it keeps writing and keeping alive (it reads its
//!    next frame when routing is done: back-pressure on the sender alone);
//! 4. **the next incoming frame**: decoded (size-limited), rate-limited, routed;
//!    refusals go back to the sender as error envelopes and the connection stays up;
//! 5. **the outbox** having something to write (or its offline queue to take back);
//! 6. **a keep-alive tick**: a WS ping after `--ping-interval` without reading anything;
//!    closed after `--read-timeout` without reading anything (pongs count); closed when
//!    the outbox has stayed over its bound for `--slow-reader-timeout`.
//!
//! Other sessions never wait on this one: an envelope for it that does not fit its
//! outbox spills to its offline queue, which this task takes back, a bounded amount at a
//! time, once it has written what it holds. Whatever is unwritten when the connection ends
//! goes back to the front of the offline queue, so a dropped connection loses nothing the
//! relay still held. An idle session holds no batch, no routing state and no write
//! future: those are boxed only while busy.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use rmb_proto::{DecodeError, Envelope};
use tokio::time::Instant;

use crate::errors::RouteError;
use crate::rmb_rs_metrics::Eviction;
use crate::routing::{Origin, reply_error, route};
use crate::state::RelayState;
use crate::switch::{Next, Outbox, Outgoing, SessionId};
use crate::throttle::LogThrottle;

/// Most envelopes written before one flush.
const BATCH: usize = 64;

/// At most one log line per this interval per session for floods a client can cause
/// (malformed frames); the rest are counted in `/metrics` and summarised in the next line.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// WebSocket close code for "policy violation" (RFC 6455).
const CLOSE_POLICY: u16 = 1008;

type Sink = SplitSink<WebSocket, WsMessage>;
type Busy<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
type Writing = Pin<Box<dyn Future<Output = (Sink, Result<(), WriteError>)> + Send>>;

/// Why a write to the client failed.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error("write did not finish within {0:?}")]
    Timeout(Duration),
    #[error("write failed: {0}")]
    Socket(#[from] axum::Error),
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Relay shutdown, or replaced by a newer connection of the same session.
    Cancelled,
    /// The client closed the connection (or sent a text frame, as rmb-rs closes then).
    Closed,
    /// Reading failed (including a frame over the size limit).
    ReadFailed,
    /// Nothing was read for `--read-timeout`.
    Silent,
    /// The outbox stayed over its bound for `--slow-reader-timeout`.
    SlowReader,
    /// A write failed.
    WriteFailed,
    /// A write missed `--write-timeout`.
    WriteTimedOut,
}

impl Ended {
    /// The `relay_errors_total{kind}` label, for endings that are the client's fault.
    fn kind(self) -> Option<&'static str> {
        match self {
            Ended::Silent => Some("read_timeout"),
            Ended::SlowReader => Some("slow_reader"),
            Ended::WriteFailed | Ended::WriteTimedOut => Some("write_timeout"),
            _ => None,
        }
    }

    /// The reason rmb-rs gives for it (`relay_session_evictions_total{reason}`).
    fn eviction(self) -> Eviction {
        match self {
            Ended::Cancelled | Ended::Closed | Ended::ReadFailed | Ended::Silent => {
                Eviction::Cancelled
            }
            Ended::WriteFailed => Eviction::Closed,
            Ended::SlowReader | Ended::WriteTimedOut => Eviction::BackPressureTimeout,
        }
    }
}

/// Serves an authenticated WebSocket for `session` until it ends.
pub async fn serve(mut socket: WebSocket, session: SessionId, state: Arc<RelayState>) {
    let cancel = state.shutdown.child_token();
    let config = &state.config;
    let outbox = Arc::new(Outbox::with_items(config.outbox_bytes, config.send_queue));
    let connection = match state
        .switch
        .register(&session, Arc::clone(&outbox), cancel.clone())
    {
        Ok(connection) => connection,
        Err(e) => {
            state.metrics.error("sessions_per_twin");
            tracing::debug!(%session, error = %e, "session refused");
            let close = CloseFrame {
                code: CLOSE_POLICY,
                reason: e.to_string().into(),
            };
            let _ = tokio::time::timeout(
                config.write_timeout,
                socket.send(WsMessage::Close(Some(close))),
            )
            .await;
            return;
        }
    };
    set_sessions(&state);
    tracing::debug!(%session, connection, "session connected");

    // Announce first, then take: an envelope queued meanwhile by another replica wakes us.
    state.queue.attach(&session).await;
    if let Some(links) = state.replicas.get() {
        links.announce(&session).await;
    }
    outbox.poke();
    let (ended, mut leftovers) = run(socket, &session, &outbox, &state, &cancel).await;
    cancel.cancel();
    leftovers.extend(outbox.close());
    if let Some(kind) = ended.kind() {
        state.metrics.error(kind);
        tracing::info!(%session, connection, reason = kind, unsent = leftovers.len(), "session disconnected; its envelopes are queued");
    }
    state.queue.push_front(&session, leftovers).await;
    if state.switch.unregister(&session, connection) {
        state.queue.detach(&session).await;
    } else {
        // Replaced by a newer connection here, which keeps the session's claim and
        // takes what this one could not write.
        crate::queue::handoff::hand_over(&state, &session);
    }
    set_sessions(&state);
    state.metrics.rmb_rs.evicted(ended.eviction());
    tracing::debug!(%session, connection, ?ended, "session ended");
}

/// Sets the gauges of connected sessions (ours and rmb-rs's).
fn set_sessions(state: &RelayState) {
    let sessions = state.switch.len();
    state.metrics.sessions.set(sessions as i64);
    state.metrics.rmb_rs.sessions(sessions);
}

/// The actor's loop; returns why it ended and what it took out of the outbox unwritten.
async fn run(
    socket: WebSocket,
    session: &SessionId,
    outbox: &Arc<Outbox>,
    state: &Arc<RelayState>,
    cancel: &tokio_util::sync::CancellationToken,
) -> (Ended, Vec<Outgoing>) {
    let config = &state.config;
    let origin = Origin::Session(session.clone());
    let (sink, mut stream) = socket.split();
    let mut sink = Some(sink);
    // Taken from the outbox and being written; back to the queue if the write fails.
    let mut in_flight: Vec<Outgoing> = Vec::new();
    let mut writing: Option<Writing> = None;
    let mut routing: Option<Busy<'_>> = None;
    let period = (config.ping_interval.min(config.read_timeout) / 4)
        .clamp(Duration::from_millis(100), Duration::from_secs(5));
    let mut tick = tokio::time::interval_at(Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_read = Instant::now();
    let mut last_ping = Instant::now();
    let mut ping_due = false;
    // Per session: one flooding client cannot silence the others' lines.
    let malformed = LogThrottle::new(LOG_EVERY);

    let ended = loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break Ended::Cancelled,
            (back, result) = async { writing.as_mut().expect("guarded").await }, if writing.is_some() => {
                writing = None;
                if let Err(e) = result {
                    tracing::debug!(%session, error = %e, "write to the client failed");
                    break match e {
                        WriteError::Timeout(_) => Ended::WriteTimedOut,
                        WriteError::Socket(_) => Ended::WriteFailed,
                    };
                }
                sink = Some(back);
                let bytes: usize = in_flight.iter().map(|(b, _)| b.len()).sum();
                state.metrics.messages_out.inc_by(in_flight.len() as u64);
                state.metrics.bytes_out.inc_by(bytes as u64);
                state.metrics.rmb_rs.written(in_flight.len(), bytes);
                outbox.written(&in_flight);
                in_flight = Vec::new();
            }
            _ = async { routing.as_mut().expect("guarded").await }, if routing.is_some() => {
                routing = None;
                // Not reading while routing was the relay's choice, not the client's silence.
                last_read = Instant::now();
            }
            frame = stream.next(), if routing.is_none() => {
                last_read = Instant::now();
                match frame {
                    Some(Ok(WsMessage::Binary(bytes))) => {
                        if let Some(env) = decode(state, session, &bytes, &malformed) {
                            // Boxed: routing's state machine is large, and an idle session
                            // should not carry it around between frames.
                            routing = Some(Box::pin(handle_frame(state, &origin, session, bytes, env)));
                        }
                    }
                    Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => {}
                    Some(Ok(WsMessage::Text(_))) => {
                        tracing::debug!(%session, "text frame received; closing as rmb-rs does");
                        break Ended::Closed;
                    }
                    Some(Ok(WsMessage::Close(_))) | None => break Ended::Closed,
                    Some(Err(e)) => {
                        if is_oversize(&e) {
                            state.metrics.error("oversize");
                        }
                        tracing::debug!(%session, error = %e, "connection read failed");
                        break Ended::ReadFailed;
                    }
                }
            }
            _ = outbox.ready(), if writing.is_none() => {}
            _ = tick.tick() => {
                let now = Instant::now();
                let silent = now.duration_since(last_read);
                if silent >= config.read_timeout {
                    break Ended::Silent;
                }
                if outbox.full_for().is_some_and(|d| d >= config.slow_reader_timeout) {
                    break Ended::SlowReader;
                }
                if silent >= config.ping_interval && now.duration_since(last_ping) >= config.ping_interval {
                    ping_due = true;
                    last_ping = now;
                }
            }
        }
        if writing.is_none()
            && let Some(idle) = sink.take()
        {
            match next_batch(state, session, outbox).await {
                Some(batch) => {
                    in_flight = batch;
                    let frames: Vec<WsMessage> = std::mem::take(&mut ping_due)
                        .then(|| WsMessage::Ping(Bytes::new()))
                        .into_iter()
                        .chain(in_flight.iter().map(|(b, _)| WsMessage::Binary(b.clone())))
                        .collect();
                    writing = Some(Box::pin(write(idle, frames, config.write_timeout)));
                }
                None if std::mem::take(&mut ping_due) => {
                    writing = Some(Box::pin(write(
                        idle,
                        vec![WsMessage::Ping(Bytes::new())],
                        config.write_timeout,
                    )));
                }
                None => sink = Some(idle),
            }
        }
    };
    // A write in flight is abandoned: what it held may or may not have reached the
    // client; it is queued again (at-least-once, receivers drop duplicates by uid).
    drop(writing);
    drop(routing);
    if let Some(mut sink) = sink {
        let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
    }
    (ended, in_flight)
}

/// The next envelopes to write: from the outbox, or taken back from the offline queue
/// (charged to the outbox) when the outbox spilled there.
async fn next_batch(
    state: &RelayState,
    session: &SessionId,
    outbox: &Outbox,
) -> Option<Vec<Outgoing>> {
    loop {
        match outbox.next(BATCH) {
            Next::Write(batch) => return Some(batch),
            Next::Idle => return None,
            Next::TakeQueue(budget) => {
                let now = rmb_proto::time::unix_now();
                let taken = state.queue.take(session, now, budget).await;
                outbox.charge(&taken);
                if !taken.is_empty() {
                    return Some(taken);
                }
                // The queue was empty: the outbox is no longer spilled; look again.
            }
        }
    }
}

/// Writes `frames` and flushes, within `timeout`; gives the sink back.
async fn write(
    mut sink: Sink,
    frames: Vec<WsMessage>,
    timeout: Duration,
) -> (Sink, Result<(), WriteError>) {
    let written = tokio::time::timeout(timeout, async {
        for frame in frames {
            sink.feed(frame).await?;
        }
        sink.flush().await
    })
    .await;
    let result = match written {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(WriteError::Socket(e)),
        Err(_) => Err(WriteError::Timeout(timeout)),
    };
    (sink, result)
}

/// True if a read error is a frame over the size limit.
fn is_oversize(error: &axum::Error) -> bool {
    let text = error.to_string();
    text.contains("Space limit exceeded") || text.contains("too long") || text.contains("too big")
}

/// Decodes what routing needs of a frame; counts and (rate-limited) logs what cannot be.
fn decode(
    state: &RelayState,
    session: &SessionId,
    bytes: &Bytes,
    malformed: &LogThrottle,
) -> Option<Envelope> {
    state.metrics.messages_in.inc();
    state.metrics.bytes_in.inc_by(bytes.len() as u64);
    // Routing needs neither signature nor payload: skip them instead of copying them.
    match Envelope::decode_routing(bytes, state.config.max_envelope_size) {
        Ok(env) => Some(env),
        Err(e) => {
            // Nothing to answer to (no uid): count it, and log it now and then.
            let kind = match e {
                DecodeError::TooLarge { .. } => "oversize",
                _ => "malformed",
            };
            state.metrics.error(kind);
            if let Some(suppressed) = malformed.allow() {
                tracing::info!(%session, error = %e, suppressed, "undecodable envelope refused");
            }
            None
        }
    }
}

async fn handle_frame(
    state: &Arc<RelayState>,
    origin: &Origin,
    session: &SessionId,
    bytes: Bytes,
    env: Envelope,
) {
    let now = rmb_proto::time::unix_now();
    let (uid, kind) = (env.uid.clone(), env.kind());
    if let Err(limited) = state.rate_limit(session.twin, bytes.len(), now) {
        let error = RouteError::RateLimited(limited);
        state.metrics.error(error.kind());
        reply_error(state, session, &uid, kind, &error, now).await;
        return;
    }
    if let Err(error) = route(state, origin, bytes, env, now).await {
        tracing::debug!(%session, %uid, %error, "envelope refused");
        reply_error(state, session, &uid, kind, &error, now).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floods_log_once_per_interval_and_say_how_many_were_not() {
        let limit = LogThrottle::new(LOG_EVERY);
        let start = 1_000;
        assert_eq!(limit.allow_at(start), Some(0));
        for _ in 0..1000 {
            assert_eq!(limit.allow_at(start + 1), None);
        }
        assert_eq!(limit.allow_at(start + LOG_EVERY.as_secs()), Some(1000));
    }
}
