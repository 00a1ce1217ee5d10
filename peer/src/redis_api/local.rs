//! The local pump: what apps push to `msgbus.system.local` (client requests) and
//! `msgbus.system.reply` (service replies), taken off Redis and handed to the core.
//!
//! One connection blocks on `BRPOP msgbus.system.local msgbus.system.reply` as rmb-rs
//! does (requests win over replies). After each wake-up it drains up to [`DRAIN`] more
//! of each list in one atomic `LRANGE`+`LTRIM`, writes the backlogs of the whole batch in
//! one pipeline, then sends concurrently: one round trip per batch, not per message.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use rmb_proto::Address;
use rmb_proto::peer::Backlog;
use rmb_proto::time::unix_now;
use tokio_util::sync::CancellationToken;

use super::conn::RedisConn;
use super::json::JsonIncomingResponse;
use super::keys::{LOCAL, REPLY, backlog};
use super::pending::Route;
use super::validate::{LocalRequest, parse_reply, parse_request};
use super::writer::{Write, add_to_pipeline};
use super::{Counter, Shared};
use crate::core::OutgoingRequest;

/// Most messages taken from each list per round trip after a `BRPOP` wake-up.
pub const DRAIN: isize = 256;
/// Seconds one `BRPOP` blocks before the loop checks for shutdown (nothing is lost
/// by waking up: an item is only removed when it is returned).
const BLOCK_SECS: u64 = 1;

/// Runs until `shutdown`; reconnects to Redis as needed.
pub(super) async fn run(shared: Arc<Shared>, mut conn: RedisConn, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        let Some(mut c) = conn.get(&shutdown).await else {
            break;
        };
        let first: Option<(String, Vec<u8>)> = match redis::cmd("BRPOP")
            .arg(LOCAL)
            .arg(REPLY)
            .arg(BLOCK_SECS)
            .query_async(&mut c)
            .await
        {
            Ok(first) => first,
            Err(e) => {
                conn.failed(&e);
                continue;
            }
        };
        let Some((list, item)) = first else {
            continue;
        };
        let (mut requests, mut replies) = (Vec::new(), Vec::new());
        if list == LOCAL {
            requests.push(item);
        } else {
            replies.push(item);
        }
        match drain(&mut c).await {
            Ok((more_requests, more_replies)) => {
                requests.extend(more_requests);
                replies.extend(more_replies);
            }
            Err(e) => conn.failed(&e),
        }
        handle_requests(&shared, &mut conn, &shutdown, requests).await;
        handle_replies(&shared, replies).await;
    }
}

/// Takes up to [`DRAIN`] of the oldest entries of each list, oldest first.
async fn drain(
    c: &mut redis::aio::MultiplexedConnection,
) -> redis::RedisResult<(Vec<Vec<u8>>, Vec<Vec<u8>>)> {
    let mut pipe = redis::pipe();
    pipe.atomic();
    for list in [LOCAL, REPLY] {
        pipe.cmd("LRANGE").arg(list).arg(-DRAIN).arg(-1);
        pipe.cmd("LTRIM").arg(list).arg(0).arg(-DRAIN - 1).ignore();
    }
    let (mut requests, mut replies): (Vec<Vec<u8>>, Vec<Vec<u8>>) = pipe.query_async(c).await?;
    // LPUSH puts the newest first; RPOP order (oldest first) is the reverse.
    requests.reverse();
    replies.reverse();
    Ok((requests, replies))
}

/// Checks a batch of client requests, stores their backlogs, then sends them.
async fn handle_requests(
    shared: &Arc<Shared>,
    conn: &mut RedisConn,
    shutdown: &CancellationToken,
    raw: Vec<Vec<u8>>,
) {
    if raw.is_empty() {
        return;
    }
    let now = unix_now();
    let mut accepted = Vec::with_capacity(raw.len());
    for bytes in raw {
        match parse_request(&bytes, now) {
            Ok(req) => accepted.push((uuid::Uuid::new_v4().to_string(), req)),
            Err(rejection) => shared.reject_request(rejection, &bytes).await,
        }
    }
    if accepted.is_empty() {
        return;
    }
    let mut pipe = redis::pipe();
    {
        let started = Instant::now();
        let mut pending = shared.pending();
        for (uid, req) in &accepted {
            let entry = Backlog {
                uid: uid.clone(),
                reference: req.reference.clone(),
                reply_to: req.reply_to.clone(),
                module: String::new(),
                ttl: req.backlog_ttl,
            };
            add_to_pipeline(
                &mut pipe,
                &Write::SetEx {
                    key: backlog(uid),
                    value: prost::Message::encode_to_vec(&entry),
                    secs: req.backlog_ttl,
                },
            );
            let deadline = req.timestamp.saturating_add(req.expiration);
            let left = Duration::from_secs(deadline.saturating_sub(now));
            pending.insert(
                uid.clone(),
                Route {
                    reference: req.reference.clone(),
                    reply_to: req.reply_to.clone(),
                },
                req.destinations.clone(),
                started + left,
            );
        }
    }
    // The backlogs must exist before any response can come back.
    loop {
        let Some(mut c) = conn.get(shutdown).await else {
            tracing::error!(
                requests = accepted.len(),
                "shutting down without redis: requests not sent"
            );
            return;
        };
        match pipe.query_async::<()>(&mut c).await {
            Ok(()) => break,
            Err(e) => conn.failed(&e),
        }
    }
    Counter::bump(&shared.counters.requests_accepted, accepted.len());
    for (uid, req) in accepted {
        let permit = shared.send_permit().await;
        let shared = Arc::clone(shared);
        tokio::spawn(async move {
            send_request(&shared, uid, req).await;
            drop(permit);
        });
    }
}

/// Sends one envelope per destination (same uid); failures reach the client's `ret`.
async fn send_request(shared: &Shared, uid: String, req: LocalRequest) {
    let sends = req.destinations.iter().map(|&twin| {
        let out = OutgoingRequest {
            uid: uid.clone(),
            destination: Address::twin(twin),
            command: req.command.clone(),
            payload: req.payload.clone(),
            schema: req.schema.clone(),
            tags: req.tags.clone(),
            timestamp: req.timestamp,
            expiration: req.expiration,
        };
        async move { (twin, shared.peer.send_request(out).await) }
    });
    for (twin, result) in join_all(sends).await {
        let Err(e) = result else { continue };
        tracing::debug!(%uid, twin, error = %e, "request undeliverable");
        shared.pending().failed(&uid, twin);
        Counter::bump(&shared.counters.undeliverable, 1);
        let response =
            JsonIncomingResponse::local_error(req.reference.clone(), e.code(), e.to_string());
        shared.push_json(req.reply_to.clone(), &response).await;
    }
}

/// Sends services' replies; unusable ones are logged (and answered with an error when
/// the caller can be named).
async fn handle_replies(shared: &Arc<Shared>, raw: Vec<Vec<u8>>) {
    for bytes in raw {
        let response = match parse_reply(&bytes) {
            Ok(response) => response,
            Err(problem) => {
                Counter::bump(&shared.counters.replies_rejected, 1);
                tracing::warn!(
                    error = %problem.message,
                    reply = %String::from_utf8_lossy(&bytes[..bytes.len().min(256)]),
                    "bad service reply on {REPLY}"
                );
                match problem.fallback {
                    Some(fallback) => *fallback,
                    None => continue,
                }
            }
        };
        let permit = shared.send_permit().await;
        let shared = Arc::clone(shared);
        tokio::spawn(async move {
            let (uid, dst) = (response.uid.clone(), response.destination.clone());
            match shared.peer.send_response(response).await {
                Ok(()) => Counter::bump(&shared.counters.replies_sent, 1),
                Err(e) => {
                    Counter::bump(&shared.counters.replies_failed, 1);
                    tracing::warn!(%uid, %dst, error = %e, "service reply could not be sent");
                }
            }
            drop(permit);
        });
    }
}
