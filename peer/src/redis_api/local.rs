//! The local pumps: what apps push to `msgbus.system.local` (client requests) and
//! `msgbus.system.reply` (service replies), taken off Redis and handed to the core.
//!
//! Each list has its own pump, and nothing is lost if the peer dies at any point:
//!
//! ```text
//! script CLAIM: up to DRAIN items list → claimed list   (or what a crashed run left there;
//!                RENAME when the whole list fits)
//!   nothing? BLMOVE list → claimed list                   one item wakes the pump
//! check the batch; in one MULTI: record it, push errors, DEL claimed
//! send                                   requests after the record exists,
//!                                        replies while it is written
//! ```
//!
//! A lone request costs the pump two round trips (the `BLMOVE` that wakes it, the
//! `MULTI`); under load, one `CLAIM` takes what piled up meanwhile.
//!
//! A batch is taken from the app's list into the peer's claimed list in one atomic step,
//! and the claimed list is only emptied in the transaction that records the batch (the
//! [`outbox`](super::outbox) entries of requests, which also say where their answers
//! go; the sealed replies in the requests' `seen` markers, which answer repeats). A peer
//! that dies before that transaction finds the batch in the claimed list when it starts
//! again; one that dies after it finds requests in the outbox and replies in the
//! markers. Requests are sent only once recorded: a response never arrives before its
//! route exists, and a request sent and then claimed again by the next start (under a
//! new uid) would run twice. Replies go while they are recorded: one sent again by the
//! next start is a repeat the caller drops.
//!
//! An at-most-once peer (`--at-most-once`) keeps only backlog entries
//! (`msgbus.backlog.<uid>`: where the answers go), as rmb-rs does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use redis::aio::MultiplexedConnection;
use rmb_proto::Address;
use rmb_proto::peer::Backlog;
use rmb_proto::time::unix_now;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::conn::{QueryError, RedisConn, is_permanent};
use super::json::JsonIncomingResponse;
use super::keys::{LOCAL, LOCAL_CLAIMED, REPLY, REPLY_CLAIMED, backlog, seen};
use super::pending::Route;
use super::scripts::CLAIM;
use super::validate::{LocalRequest, parse_reply, parse_request};
use super::writer::{Write, add_to_pipeline};
use super::{Counter, Shared, outbox};
use crate::core::send::Sealed;
use crate::core::{OutgoingRequest, OutgoingResponse, Reason, SendError};

/// Most messages taken from a list per batch.
pub const DRAIN: usize = 256;
/// Seconds one `BLMOVE` blocks before the loop checks for shutdown.
const BLOCK_SECS: f64 = 1.0;

/// Which of the two app lists a pump serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pump {
    Requests,
    Replies,
}

impl Pump {
    fn lists(self) -> (&'static str, &'static str) {
        match self {
            Pump::Requests => (LOCAL, LOCAL_CLAIMED),
            Pump::Replies => (REPLY, REPLY_CLAIMED),
        }
    }
}

/// Runs one pump until `shutdown`; reconnects to Redis as needed.
pub(super) async fn run(
    shared: Arc<Shared>,
    pump: Pump,
    mut conn: RedisConn,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        let Some(mut c) = conn.get(&shutdown).await else {
            break;
        };
        let batch = match claim(&mut c, pump).await {
            Ok(batch) => batch,
            Err(e) => {
                conn.failed(&e);
                continue;
            }
        };
        if batch.is_empty() {
            continue;
        }
        match pump {
            Pump::Requests => handle_requests(&shared, &mut conn, &shutdown, batch).await,
            Pump::Replies => handle_replies(&shared, &mut conn, &shutdown, batch).await,
        }
    }
}

/// The next batch, oldest first: what a previous run left claimed, else what the app
/// pushed meanwhile, else the next item it pushes (waiting up to a second for it).
async fn claim(c: &mut MultiplexedConnection, pump: Pump) -> redis::RedisResult<Vec<Vec<u8>>> {
    let (list, claimed) = pump.lists();
    let mut batch: Vec<Vec<u8>> = CLAIM
        .key(list)
        .key(claimed)
        .arg(DRAIN)
        .invoke_async(c)
        .await?;
    if !batch.is_empty() {
        // Newest first, as the apps pushed them.
        batch.reverse();
        return Ok(batch);
    }
    let first: Option<Vec<u8>> = redis::cmd("BLMOVE")
        .arg(list)
        .arg(claimed)
        .arg("RIGHT")
        .arg("RIGHT")
        .arg(BLOCK_SECS)
        .query_async(c)
        .await?;
    Ok(first.into_iter().collect())
}

/// How a [`commit`] ended.
#[derive(Debug, PartialEq, Eq)]
enum Commit {
    /// Applied (the batch is recorded, `claimed` is gone).
    Done,
    /// Shutting down without Redis: the claimed list keeps the batch for the next start.
    Stopped,
    /// Redis refused the transaction for good: the batch was dropped (claimed list
    /// deleted, so it is not claimed again forever) and counted.
    Refused,
}

/// Runs `pipe` (which ends by deleting `claimed`) as one transaction, retrying through
/// reconnects (with backoff). A transaction whose reply was lost may have applied: then
/// `claimed` is gone, and it is not run twice. One Redis refuses for good is dropped
/// ([`Commit::Refused`]) rather than retried forever.
async fn commit(
    shared: &Shared,
    conn: &mut RedisConn,
    shutdown: &CancellationToken,
    pipe: &mut redis::Pipeline,
    claimed: &str,
    items: usize,
) -> Commit {
    pipe.atomic();
    let mut retry = false;
    loop {
        let Some(mut c) = conn.get(shutdown).await else {
            return Commit::Stopped;
        };
        if retry {
            match redis::cmd("EXISTS")
                .arg(claimed)
                .query_async::<bool>(&mut c)
                .await
            {
                Ok(false) => return Commit::Done,
                Ok(true) => {}
                Err(e) => {
                    conn.failed(&e);
                    continue;
                }
            }
        }
        match pipe.query_async::<()>(&mut c).await {
            Ok(()) => return Commit::Done,
            Err(e) if is_permanent(&e) => {
                for _ in 0..items {
                    shared.peer.count_refusal(Reason::RedisError);
                }
                tracing::error!(error = %e, items, list = claimed, "redis refused to record a batch; dropped");
                let mut del = redis::pipe();
                del.cmd("DEL").arg(claimed).ignore();
                return match conn.query::<()>(&del, shutdown).await {
                    Ok(()) | Err(QueryError::Permanent(_)) => Commit::Refused,
                    Err(QueryError::Shutdown) => Commit::Stopped,
                };
            }
            Err(e) => {
                conn.failed(&e);
                retry = true;
            }
        }
    }
}

/// Checks a batch of client requests, records them, then sends them.
async fn handle_requests(
    shared: &Arc<Shared>,
    conn: &mut RedisConn,
    shutdown: &CancellationToken,
    raw: Vec<Vec<u8>>,
) {
    let now = unix_now();
    let mut pipe = redis::pipe();
    let mut accepted = Vec::with_capacity(raw.len());
    let mut rejected = 0;
    for bytes in raw {
        match parse_request(&bytes, now) {
            Ok(req) => accepted.push((uuid::Uuid::new_v4().to_string(), req, bytes)),
            Err(rejection) => {
                rejected += 1;
                if let Some(write) = shared.rejection(rejection, &bytes) {
                    add_to_pipeline(&mut pipe, &write);
                }
            }
        }
    }
    for (uid, req, bytes) in &accepted {
        if shared.durable {
            // The outbox entry holds the route too ([`inbound`](super::inbound)).
            outbox::record(&mut pipe, uid, req, bytes, now);
            continue;
        }
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
    }
    pipe.cmd("DEL").arg(LOCAL_CLAIMED).ignore();
    let items = accepted.len() + rejected;
    let accepted_count = accepted.len();
    // The signatures are made while Redis records the batch; nothing is sent before
    // the record exists (a batch not recorded stays claimed, and is never sent twice).
    let (recorded, wait) = watch::channel(None);
    for (uid, req, _) in accepted {
        spawn_send(shared, uid, req, wait.clone()).await;
    }
    let outcome = commit(shared, conn, shutdown, &mut pipe, LOCAL_CLAIMED, items).await;
    let _ = recorded.send(Some(outcome == Commit::Done));
    // Let the send tasks write their envelopes before this pump writes its next claim.
    tokio::task::yield_now().await;
    match outcome {
        Commit::Done => Counter::bump(&shared.counters.requests_accepted, accepted_count),
        Commit::Stopped => tracing::warn!(
            requests = items,
            "shutting down without redis: requests stay claimed for the next start"
        ),
        Commit::Refused => {}
    }
}

/// Sends a request recorded already (the outbox of a previous run).
pub(super) async fn send(shared: &Arc<Shared>, uid: String, req: LocalRequest) {
    spawn_send(shared, uid, req, watch::channel(Some(true)).1).await;
}

/// Seals the request for each destination in its own task (bounded by the send permits),
/// then, once `recorded` says the request is recorded, tracks it and sends it; gives up
/// if it was not.
async fn spawn_send(
    shared: &Arc<Shared>,
    uid: String,
    req: LocalRequest,
    mut recorded: watch::Receiver<Option<bool>>,
) {
    let permit = shared.send_permit().await;
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let sealed = seal_request(&shared, &uid, &req).await;
        let done = recorded.wait_for(Option::is_some).await.map(|r| *r);
        if !matches!(done, Ok(Some(true))) {
            return;
        }
        track(&shared, &uid, &req);
        send_request(&shared, uid, req, sealed).await;
        drop(permit);
    });
}

/// Remembers where the answers of a request go, and when its destinations time out.
fn track(shared: &Shared, uid: &str, req: &LocalRequest) {
    let left = Duration::from_secs((req.timestamp + req.expiration).saturating_sub(unix_now()));
    shared.pending().insert(
        uid.to_string(),
        Route {
            reference: req.reference.clone(),
            reply_to: req.reply_to.clone(),
        },
        req.destinations.clone(),
        Instant::now() + left,
    );
}

/// One envelope per destination (same uid), or why it cannot be made.
async fn seal_request(
    shared: &Shared,
    uid: &str,
    req: &LocalRequest,
) -> Vec<(u32, Result<Sealed, SendError>)> {
    let seals = req.destinations.iter().map(|&twin| {
        let out = OutgoingRequest {
            uid: uid.to_string(),
            destination: Address::twin(twin),
            command: req.command.clone(),
            payload: req.payload.clone(),
            schema: req.schema.clone(),
            tags: req.tags.clone(),
            timestamp: req.timestamp,
            expiration: req.expiration,
        };
        async move { (twin, shared.peer.seal_request(out).await) }
    });
    join_all(seals).await
}

/// Sends the envelopes of a request; failures reach the client's `ret`.
async fn send_request(
    shared: &Shared,
    uid: String,
    req: LocalRequest,
    sealed: Vec<(u32, Result<Sealed, SendError>)>,
) {
    let sends = sealed.into_iter().map(|(twin, sealed)| async move {
        match sealed {
            Ok(sealed) => (twin, shared.peer.send_sealed_request(sealed).await),
            Err(e) => (twin, Err(e)),
        }
    });
    for (twin, result) in join_all(sends).await {
        let Err(e) = result else { continue };
        if e == SendError::Closed && shared.durable {
            // Stopping: the outbox keeps it, the next start sends it.
            tracing::debug!(%uid, twin, "request left in the outbox for the next start");
            continue;
        }
        if matches!(e, SendError::TooLarge { .. }) {
            shared.peer.count_refusal(Reason::Oversize);
        }
        tracing::debug!(%uid, twin, error = %e, "request undeliverable");
        shared.pending().failed(&uid, twin);
        Counter::bump(&shared.counters.undeliverable, 1);
        let response =
            JsonIncomingResponse::local_error(req.reference.clone(), e.code(), e.to_string());
        shared
            .answer(&uid, twin, req.reply_to.clone(), &response)
            .await;
    }
}

/// Seals services' replies, and sends them while storing them with their requests.
/// Unusable replies are logged (and answered with an error when the caller can be named).
async fn handle_replies(
    shared: &Arc<Shared>,
    conn: &mut RedisConn,
    shutdown: &CancellationToken,
    raw: Vec<Vec<u8>>,
) {
    let responses: Vec<OutgoingResponse> = raw
        .iter()
        .filter_map(|bytes| match parse_reply(bytes) {
            Ok(response) => Some(response),
            Err(problem) => {
                Counter::bump(&shared.counters.replies_rejected, 1);
                tracing::warn!(
                    error = %problem.message,
                    reply = %String::from_utf8_lossy(&bytes[..bytes.len().min(256)]),
                    "bad service reply on {REPLY}"
                );
                problem.fallback.map(|fallback| *fallback)
            }
        })
        .collect();
    let sealing = responses.into_iter().map(|response| async {
        let (uid, dst) = (response.uid.clone(), response.destination.clone());
        match shared.peer.seal_response(response).await {
            Ok(sealed) => Some(sealed),
            Err(e) => {
                Counter::bump(&shared.counters.replies_failed, 1);
                tracing::warn!(%uid, %dst, error = %e, "service reply could not be sent");
                None
            }
        }
    });
    let sealed: Vec<_> = join_all(sealing).await.into_iter().flatten().collect();
    let mut pipe = redis::pipe();
    if shared.durable {
        for reply in &sealed {
            // Only a request that was received (and is still valid) has a marker.
            pipe.cmd("SET")
                .arg(seen(reply.twin, &reply.uid))
                .arg(reply.bytes.as_ref())
                .arg("XX")
                .arg("KEEPTTL")
                .ignore();
        }
    }
    pipe.cmd("DEL").arg(REPLY_CLAIMED).ignore();
    let count = sealed.len();
    // Sent while the record is written: sending a reply twice is harmless (the caller
    // takes the first answer for a request and drops repeats by uid), so a reply need
    // not wait for its record. If the peer dies before the record exists, the claimed
    // list still holds the reply and the next start sends it again; a repeat of the
    // request arriving meanwhile finds the marker still empty and is dropped, as one
    // arriving before the service answered.
    for reply in sealed {
        let permit = shared.send_permit().await;
        let shared = Arc::clone(shared);
        tokio::spawn(async move {
            match shared.peer.send_sealed_reply(&reply).await {
                Ok(()) => Counter::bump(&shared.counters.replies_sent, 1),
                Err(e) => {
                    Counter::bump(&shared.counters.replies_failed, 1);
                    tracing::warn!(uid = %reply.uid, twin = reply.twin, error = %e, "service reply could not be sent");
                }
            }
            drop(permit);
        });
    }
    // Let them write their envelopes before the record is written.
    tokio::task::yield_now().await;
    match commit(shared, conn, shutdown, &mut pipe, REPLY_CLAIMED, count).await {
        Commit::Done | Commit::Refused => {}
        Commit::Stopped => tracing::warn!(
            replies = count,
            "shutting down without redis: replies stay claimed for the next start, which sends them again"
        ),
    }
}
