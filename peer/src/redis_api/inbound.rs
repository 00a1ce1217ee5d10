//! What the core received, delivered to local Redis lists.
//!
//! Requests go to `msgbus.<cmd>` for the service; responses to the `ret` of the client
//! that asked, found through the in-memory [`Pending`](super::pending::Pending) table or,
//! for requests sent before a restart, their outbox entry (durable) or
//! `msgbus.backlog.<uid>` key (at most once). Messages are taken in batches so a burst
//! costs one lookup pipeline and one write pipeline, in arrival order.
//!
//! A durable API (the default) delivers through [`scripts`](super::scripts): a request
//! reaches its service only if its `seen` marker did not exist (a repeat that was
//! answered already gets the stored reply again), an answer reaches its client only if
//! the request's outbox entry still waits for it. So neither a resend nor a peer
//! restart makes a service run a request twice or a client get an answer twice.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message as _;
use redis::Value;
use rmb_proto::peer::Backlog;
use rmb_proto::time::unix_now;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Bytes;
use tokio_util::sync::CancellationToken;

use super::admission::Verdict;
use super::conn::{QueryError, RedisConn};
use super::json::{JsonError, JsonIncomingRequest, JsonIncomingResponse, VERSION, encode_dat};
use super::keys::{REPLY, backlog, clamp_ttl, command_queue, outbox, outbox_waiting, seen};
use super::pending::Route;
use super::scripts::{
    Answer, QUEUE_FULL, Request, SHED, TOO_MANY_COMMANDS, deliver_answers, deliver_requests,
};
use super::writer::Write;
use super::{Counter, Limits, Shared, outbox as outbox_entry, unserved};
use crate::core::{Inbound, InboundRequest, InboundResponse, Reason, codes};
use rmb_proto::Address;

/// Most inbound messages handled per batch.
const BATCH: usize = 256;
/// How often the lengths of the lists holding requests the peer pushed are read, so
/// admission sees the services' progress while no request arrives.
const OBSERVE_EVERY: Duration = Duration::from_millis(100);

/// Runs until the core's inbound channel closes (the peer stopped).
pub(super) async fn run(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Inbound>,
    mut conn: RedisConn,
    abort: CancellationToken,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let routes = resolve(&shared, &batch, &mut conn, &abort).await;
        let mut documents = Vec::with_capacity(batch.len());
        for (inbound, route) in batch.drain(..).zip(routes) {
            documents.extend(document(&shared, inbound, route));
        }
        admit(&shared, &mut documents);
        if shared.durable {
            deliver_once(&shared, documents, &mut conn, &abort).await;
        } else {
            for doc in documents {
                let (list, json, counter) = match doc {
                    Document::Request {
                        list,
                        verdict,
                        uid,
                        source,
                        ..
                    } if verdict != Verdict::Admit => {
                        refuse(&shared, &list, verdict, uid, source);
                        continue;
                    }
                    Document::Request {
                        list, json, due, ..
                    } => {
                        if let Some(due) = due {
                            shared.unserved.note(&list, due);
                        }
                        // No length comes back from a plain push: the periodic
                        // `LLEN` keeps the bookkeeping.
                        shared.admission().pushed(&list, Instant::now(), u64::MAX);
                        (list, json, &shared.counters.requests_delivered)
                    }
                    Document::Response { list, json, .. } => {
                        (list, json, &shared.counters.responses_delivered)
                    }
                };
                Counter::bump(counter, 1);
                shared.writer.send(Write::Push { list, json }).await;
            }
        }
    }
}

/// The route of every response in `batch` (`None` for requests and unknown uids), and
/// whether it answers for its request's sole destination (known only while the request
/// is in memory; see [`Pending::answered`](super::pending::Pending::answered)).
async fn resolve(
    shared: &Shared,
    batch: &[Inbound],
    lookup: &mut RedisConn,
    abort: &CancellationToken,
) -> Vec<Option<(Route, bool)>> {
    let mut routes: Vec<Option<(Route, bool)>> = {
        let mut pending = shared.pending();
        batch
            .iter()
            .map(|m| match m {
                Inbound::Response(r) => pending.answered(&r.uid, r.source.twin),
                Inbound::Request(_) | Inbound::ConnFrame(_) => None,
            })
            .collect()
    };
    let misses: Vec<usize> = batch
        .iter()
        .enumerate()
        .filter(|(i, m)| matches!(m, Inbound::Response(_)) && routes[*i].is_none())
        .map(|(i, _)| i)
        .collect();
    if misses.is_empty() {
        return routes;
    }
    // A durable peer keeps the route in the outbox entry, an at-most-once one in the
    // backlog key; both are read, so a restart in the other mode still finds it.
    let mut lookups = redis::pipe();
    for &i in &misses {
        let Inbound::Response(r) = &batch[i] else {
            unreachable!("only responses are looked up")
        };
        lookups.cmd("GET").arg(backlog(&r.uid));
        lookups
            .cmd("HGET")
            .arg(outbox(&r.uid))
            .arg(outbox_entry::REQUEST_FIELD);
    }
    let found: Vec<Option<Vec<u8>>> = match lookup.query(&lookups, abort).await {
        Ok(found) => found,
        Err(QueryError::Shutdown) => return routes,
        Err(QueryError::Permanent(e)) => {
            tracing::error!(error = %e, "route lookup refused by redis");
            return routes;
        }
    };
    for (i, pair) in misses.into_iter().zip(found.chunks(2)) {
        routes[i] = match pair {
            [Some(bytes), _] => match Backlog::decode(bytes.as_slice()) {
                Ok(b) => Some((
                    Route {
                        reference: b.reference,
                        reply_to: b.reply_to,
                    },
                    false,
                )),
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable backlog entry");
                    None
                }
            },
            [None, Some(json)] => outbox_entry::route(json).map(|route| (route, false)),
            _ => None,
        };
    }
    routes
}

/// One JSON document to push, with what its delivery needs.
enum Document {
    Request {
        list: String,
        json: String,
        /// The `seen` marker of the request and how long it must live.
        marker: String,
        ttl: u64,
        /// When it is taken back if no service took it ([`unserved::due`]).
        due: Option<u64>,
        /// Who sent it and its uid, to answer with an error when it cannot be queued.
        uid: String,
        source: Address,
        /// The last unix second at which a service may start on it and still answer
        /// in time ([`unserved::due`], or its deadline when too short-lived for that).
        latest_start: u64,
        /// What [admission](super::admission) decided ([`admit`]).
        verdict: Verdict,
    },
    Response {
        list: String,
        json: String,
        uid: String,
        /// The answering twin (0: a relay's error report).
        twin: u32,
        /// It answers for its request's sole destination.
        sole: bool,
    },
}

/// The document for a message; `None` (logged) for a response nobody waits for.
fn document(shared: &Shared, inbound: Inbound, route: Option<(Route, bool)>) -> Option<Document> {
    match inbound {
        Inbound::Request(req) => Some(request_document(req)),
        // Only connections authenticate these (none are open without them).
        Inbound::ConnFrame(_) => None,
        Inbound::Response(resp) => {
            let Some(route) = route else {
                Counter::bump(&shared.counters.responses_expired, 1);
                // Any twin can send replies to uids we never used: rate-limited.
                if shared
                    .peer
                    .log_allowed(u64::from(resp.source.twin), Reason::Expired)
                {
                    tracing::warn!(uid = %resp.uid, src = %resp.source, "received reply of an expired message (logged once per 10 s per twin)");
                }
                return None;
            };
            Some(response_document(resp, route.0, route.1))
        }
    }
}

/// A request for `msgbus.<cmd>`, as a `JsonIncomingRequest`.
fn request_document(req: InboundRequest) -> Document {
    // The core refused deadlines beyond its maximum lifetime; clamp anyway so no value
    // from the network can reach `EX` unbounded.
    let ttl = clamp_ttl(req.deadline().saturating_sub(unix_now()));
    let marker = seen(req.source.twin, &req.uid);
    let (uid, source) = (req.uid.clone(), req.source.clone());
    let due = unserved::due(req.timestamp, req.expiration);
    let latest_start = due.unwrap_or_else(|| req.deadline());
    let json = JsonIncomingRequest {
        ver: VERSION,
        reference: Some(req.uid),
        src: req.source.to_string(),
        exp: req.expiration,
        dat: encode_dat(&req.payload),
        tag: req.tags,
        ret: REPLY.to_string(),
        shm: req.schema,
        now: req.timestamp,
        cmd: req.command,
    };
    Document::Request {
        list: command_queue(&json.cmd),
        json: serde_json::to_string(&json).expect("a request serialises"),
        marker,
        ttl,
        due,
        uid,
        source,
        latest_start,
        verdict: Verdict::Admit,
    }
}

/// A response for the client's `ret`, as a `JsonIncomingResponse`.
fn response_document(resp: InboundResponse, route: Route, sole: bool) -> Document {
    let (dat, err) = match resp.reply {
        Ok(body) => (encode_dat(&body), None),
        Err(e) => (
            String::new(),
            Some(JsonError {
                code: e.code,
                message: e.message,
            }),
        ),
    };
    let json = JsonIncomingResponse {
        ver: VERSION,
        reference: route.reference,
        dat,
        src: resp.source.to_string(),
        shm: resp.schema,
        now: resp.timestamp,
        err,
    };
    Document::Response {
        list: route.reply_to,
        json: serde_json::to_string(&json).expect("a response serialises"),
        uid: resp.uid,
        twin: resp.source.twin,
        sole,
    }
}

/// A pipeline that delivers `docs`: one [`deliver_requests`] run for the requests, then
/// one [`deliver_answers`] run for the responses (the scripts were loaded when the
/// connection was made, [`RedisConn`]). [`results_of`] takes its reply apart.
fn pipeline(docs: &[Document], limits: &Limits) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    let requests: Vec<Request> = docs
        .iter()
        .filter_map(|doc| match doc {
            Document::Request {
                list,
                json,
                marker,
                ttl,
                verdict,
                ..
            } => Some(Request {
                marker,
                list,
                json,
                ttl: *ttl,
                shed: *verdict != Verdict::Admit,
            }),
            Document::Response { .. } => None,
        })
        .collect();
    if !requests.is_empty() {
        pipe.invoke_script(&deliver_requests(
            limits.command_queue_bytes,
            limits.commands,
            unix_now(),
            requests,
        ));
    }
    // Each response with its outbox hash and waiting field; a relay's error names no
    // twin: it answers for any one still waited for.
    let responses: Vec<(&Document, String, String)> = docs
        .iter()
        .filter_map(|doc| match doc {
            Document::Response { uid, twin, .. } => Some((
                doc,
                outbox(uid),
                match twin {
                    0 => String::new(),
                    t => outbox_waiting(*t),
                },
            )),
            Document::Request { .. } => None,
        })
        .collect();
    if !responses.is_empty() {
        let answers = responses
            .iter()
            .filter_map(|(doc, outbox, field)| match doc {
                Document::Response {
                    list, json, sole, ..
                } => Some(Answer {
                    outbox,
                    list,
                    json,
                    field,
                    sole: *sole,
                }),
                Document::Request { .. } => None,
            });
        pipe.invoke_script(&deliver_answers(answers));
    }
    pipe
}

/// Delivers a batch in one pipeline of scripts, each delivering at most once; a repeat
/// of an answered request gets the stored reply sent again.
///
/// Connection failures are retried (with backoff, until shutdown). When Redis refuses
/// the pipeline for good, each document is tried alone, so only the one Redis refuses
/// is dropped (counted as `redis_error`; a request's sender gets an error reply) and
/// the rest are delivered: no single message can wedge the pipeline.
async fn deliver_once(
    shared: &Shared,
    documents: Vec<Document>,
    conn: &mut RedisConn,
    abort: &CancellationToken,
) {
    if documents.is_empty() {
        return;
    }
    // Retrying a pipeline that half-applied is safe: every script delivers once.
    let results: Vec<Option<Value>> = match conn
        .query(&pipeline(&documents, &shared.limits), abort)
        .await
    {
        Ok(results) => results_of(&documents, results),
        Err(QueryError::Shutdown) => return lost(documents.len()),
        Err(QueryError::Permanent(e)) => {
            tracing::warn!(error = %e, documents = documents.len(), "redis refused a delivery batch; delivering one by one");
            let mut results = Vec::with_capacity(documents.len());
            for doc in &documents {
                let one = std::slice::from_ref(doc);
                match conn
                    .query::<Vec<Value>>(&pipeline(one, &shared.limits), abort)
                    .await
                {
                    Ok(reply) => results.extend(results_of(one, reply)),
                    Err(QueryError::Shutdown) => return lost(documents.len() - results.len()),
                    Err(QueryError::Permanent(e)) => {
                        refused_by_redis(shared, doc, &e);
                        results.push(None);
                    }
                }
            }
            results
        }
    };
    for (doc, result) in documents.iter().zip(results) {
        let Some(result) = result else { continue };
        match (doc, result) {
            (Document::Request { list, due, .. }, Value::Int(len)) if len >= 1 => {
                if let Some(due) = due {
                    shared.unserved.note(list, *due);
                }
                shared
                    .admission()
                    .pushed(list, Instant::now(), len.unsigned_abs());
                Counter::bump(&shared.counters.requests_delivered, 1)
            }
            (
                Document::Request {
                    uid,
                    source,
                    list,
                    verdict,
                    ..
                },
                Value::Int(SHED),
            ) => refuse(shared, list, *verdict, uid.clone(), source.clone()),
            (
                Document::Request {
                    uid, source, list, ..
                },
                Value::Int(bound @ (QUEUE_FULL | TOO_MANY_COMMANDS)),
            ) => {
                let message = if bound == QUEUE_FULL {
                    format!(
                        "other: the queue {list} is full ({} bytes at most); try again later",
                        shared.limits.command_queue_bytes
                    )
                } else {
                    format!(
                        "other: too many commands have requests waiting ({} at most); {list} refused",
                        shared.limits.commands
                    )
                };
                shared.refuse_request(
                    uid.clone(),
                    source.clone(),
                    Reason::CommandLimit,
                    codes::OTHER,
                    message,
                );
            }
            (
                Document::Request {
                    marker,
                    uid,
                    source,
                    ..
                },
                Value::BulkString(reply),
            ) if !reply.is_empty() => {
                tracing::debug!(%marker, "a repeated request was answered already: sending the answer again");
                shared
                    .peer
                    .resend_reply(source.twin, uid, Bytes::from(reply));
            }
            (Document::Response { .. }, Value::Int(1)) => {
                Counter::bump(&shared.counters.responses_delivered, 1)
            }
            (Document::Request { marker, .. }, _) => {
                tracing::debug!(%marker, "dropping a repeated request (its service has it)");
                shared.peer.count_duplicate();
            }
            (Document::Response { uid, twin, .. }, _) => {
                tracing::debug!(%uid, twin, "dropping a repeated answer (delivered already)");
                shared.peer.count_duplicate();
            }
        }
    }
}

/// The result of each of `docs` in the reply of their [`pipeline`] (`None` where the
/// reply is short, which Redis never does: that document counts as not delivered).
fn results_of(docs: &[Document], reply: Vec<Value>) -> Vec<Option<Value>> {
    let any_request = docs.iter().any(|d| matches!(d, Document::Request { .. }));
    let mut runs = reply.into_iter().map(|run| match run {
        Value::Array(items) => items.into_iter(),
        _ => Vec::new().into_iter(),
    });
    let mut requests = if any_request {
        runs.next().unwrap_or_default()
    } else {
        Vec::new().into_iter()
    };
    let mut responses = runs.next().unwrap_or_default();
    docs.iter()
        .map(|doc| match doc {
            Document::Request { .. } => requests.next(),
            Document::Response { .. } => responses.next(),
        })
        .collect()
}

fn lost(n: usize) {
    tracing::error!(
        lost = n,
        "shutting down without redis; received messages are lost here (senders resend them)"
    );
}

/// Counts and logs (rate-limited) a message Redis refused for good; a request's
/// sender is told.
fn refused_by_redis(shared: &Shared, doc: &Document, e: &redis::RedisError) {
    match doc {
        Document::Request {
            uid, source, list, ..
        } => shared.refuse_request(
            uid.clone(),
            source.clone(),
            Reason::RedisError,
            codes::OTHER,
            format!("other: the request could not be queued for {list}: {e}"),
        ),
        Document::Response { uid, twin, .. } => {
            shared.peer.count_refusal(Reason::RedisError);
            if shared
                .peer
                .log_allowed(u64::from(*twin), Reason::RedisError)
            {
                tracing::error!(%uid, twin, error = %e, "redis refused a response; dropped (logged once per 10 s per twin)");
            }
        }
    }
}

/// Decides, for every request of a batch, whether admission lets it into its list.
fn admit(shared: &Shared, documents: &mut [Document]) {
    if !documents
        .iter()
        .any(|d| matches!(d, Document::Request { .. }))
    {
        return;
    }
    let (now, unix) = (Instant::now(), unix_now());
    let admission = shared.admission();
    for doc in documents {
        if let Document::Request {
            list,
            latest_start,
            verdict,
            ..
        } = doc
        {
            *verdict = admission.decide(list, now, unix, *latest_start);
        }
    }
}

/// Answers a request admission refused with an error envelope to its sender.
fn refuse(shared: &Shared, list: &str, verdict: Verdict, uid: String, source: Address) {
    let twin = shared.peer.twin_id();
    let (reason, message) = match verdict {
        Verdict::Late { wait } => (
            Reason::Late,
            format!(
                "other: {list} on twin {twin} is {:.1} s behind: the request would start after its deadline; try again later",
                wait.as_secs_f64()
            ),
        ),
        Verdict::Overloaded { wait } => (
            Reason::Overloaded,
            format!(
                "other: the service of {list} on twin {twin} is overloaded (its oldest request waited {:.1} s); try again later",
                wait.as_secs_f64()
            ),
        ),
        Verdict::Admit => return,
    };
    shared.refuse_request(uid, source, reason, codes::OTHER, message);
}

/// Reads the length of every list holding requests the peer pushed, every
/// [`OBSERVE_EVERY`] until `stop`, so admission sees the services' progress.
pub(super) async fn observe_lists(
    shared: Arc<Shared>,
    mut conn: RedisConn,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(OBSERVE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let lists = shared.admission().watched();
        if lists.is_empty() {
            continue;
        }
        let mut pipe = redis::pipe();
        for (list, _) in &lists {
            pipe.cmd("LLEN").arg(list);
        }
        let lengths: Vec<u64> = match conn.query(&pipe, &stop).await {
            Ok(lengths) => lengths,
            Err(QueryError::Shutdown) => return,
            Err(QueryError::Permanent(e)) => {
                tracing::warn!(error = %e, "cannot read the lengths of service lists");
                continue;
            }
        };
        let now = Instant::now();
        let mut admission = shared.admission();
        for ((list, pushes), len) in lists.iter().zip(lengths) {
            admission.observed(list, now, len, *pushes);
        }
    }
}
