//! The accepting side of replica links: a listener that takes links from the other
//! replicas of this relay and hands each envelope to the session connected here.
//!
//! One task per link reads a frame (under `--read-timeout`-like deadlines and a size
//! bound), delivers its envelopes without waiting on any session, and answers with one
//! acknowledgement naming those it could not deliver (the session is not connected
//! here, or its outbox is over its bound); the sending replica queues those itself.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::Shared;
use super::link::PING_EVERY;
use super::transport::{LinkError, read_frame, server_handshake};
use super::wire::{self, Frame};
use crate::throttle::LogThrottle;

/// A link that sends nothing (not even a ping) for this long is closed.
const READ_IDLE: Duration = PING_EVERY.saturating_mul(4);

/// Most links taken at once (the relay has a handful of replicas).
const MAX_LINKS: usize = 256;

/// Refused or failed links are logged at most once per this interval.
static LOG: LogThrottle = LogThrottle::new(Duration::from_secs(10));

/// Accepts links until shutdown, each served under the relay's supervisor.
pub async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(MAX_LINKS));
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, from) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                if let Some(held_back) = LOG.allow() {
                    tracing::warn!(error = %e, held_back, "accepting a replica link failed");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            shared
                .counters
                .refused
                .with_label_values(&["too_many"])
                .inc();
            continue;
        };
        let shared = Arc::clone(&shared);
        shared.tasks.clone().spawn(async move {
            let _slot = slot;
            if let Err(e) = serve(stream, &shared).await {
                let kind = match e {
                    LinkError::Wire(wire::WireError::BadProof) => "bad_proof",
                    LinkError::HandshakeTimeout => "handshake_timeout",
                    _ => "failed",
                };
                shared.counters.refused.with_label_values(&[kind]).inc();
                if let Some(held_back) = LOG.allow() {
                    tracing::info!(%from, error = %e, held_back, "replica link ended");
                }
            }
        });
    }
}

async fn serve(mut stream: TcpStream, shared: &Shared) -> Result<(), LinkError> {
    stream.set_nodelay(true)?;
    let peer = server_handshake(&mut stream, &shared.id, &shared.directory).await?;
    tracing::debug!(%peer, "replica link accepted");
    let (mut read, mut write) = stream.into_split();
    let max = shared.settings.max_frame;
    let write_timeout = shared.settings.write_timeout;
    let mut out = Vec::new();
    let mut refused = Vec::new();
    loop {
        let body = tokio::select! {
            _ = shared.shutdown.cancelled() => return Ok(()),
            body = tokio::time::timeout(READ_IDLE, read_frame(&mut read, max)) => {
                body.map_err(|_| LinkError::Other("nothing heard from the other replica"))??
            }
        };
        let Some(body) = body else { return Ok(()) };
        out.clear();
        match wire::decode(body)? {
            Frame::Batch { first, items } => {
                if items.is_empty() {
                    continue;
                }
                refused.clear();
                let count = items.len() as u64;
                for (i, item) in items.into_iter().enumerate() {
                    if !(shared.deliver)(item.session, item.item) {
                        refused.push(first + i as u64);
                    }
                }
                shared
                    .counters
                    .received
                    .inc_by(count - refused.len() as u64);
                wire::encode_ack(&mut out, first + count - 1, &refused);
            }
            Frame::Ping => wire::encode_ping(&mut out),
            Frame::Ack { .. } => {
                return Err(LinkError::Other("unexpected ack from the connecting side"));
            }
        }
        tokio::time::timeout(write_timeout, write.write_all(&out))
            .await
            .map_err(|_| LinkError::Other("write timed out"))??;
    }
}
