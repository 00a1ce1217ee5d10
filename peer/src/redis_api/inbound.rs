//! What the core received, delivered to local Redis lists.
//!
//! Requests go to `msgbus.<cmd>` for the service; responses to the `ret` of the client
//! that asked, found through the in-memory [`Pending`](super::pending::Pending) table or,
//! for requests sent before a restart, the `msgbus.backlog.<uid>` key. Messages are taken
//! in batches so a burst costs one `MGET` and one write pipeline, in arrival order.

use std::sync::Arc;

use prost::Message as _;
use rmb_proto::peer::Backlog;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::conn::RedisConn;
use super::json::{JsonError, JsonIncomingRequest, JsonIncomingResponse, VERSION, encode_dat};
use super::keys::{REPLY, backlog, command_queue};
use super::pending::Route;
use super::{Counter, Shared};
use crate::core::{Inbound, InboundRequest, InboundResponse};

/// Most inbound messages handled per batch.
const BATCH: usize = 256;

/// Runs until the core's inbound channel closes (the peer stopped).
pub(super) async fn run(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Inbound>,
    mut lookup: RedisConn,
    abort: CancellationToken,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let routes = resolve(&shared, &batch, &mut lookup, &abort).await;
        for (inbound, route) in batch.drain(..).zip(routes) {
            match inbound {
                Inbound::Request(req) => deliver_request(&shared, req).await,
                Inbound::Response(resp) => deliver_response(&shared, resp, route).await,
            }
        }
    }
}

/// The route of every response in `batch` (`None` for requests and unknown uids).
async fn resolve(
    shared: &Shared,
    batch: &[Inbound],
    lookup: &mut RedisConn,
    abort: &CancellationToken,
) -> Vec<Option<Route>> {
    let mut routes: Vec<Option<Route>> = {
        let mut pending = shared.pending();
        batch
            .iter()
            .map(|m| match m {
                Inbound::Response(r) => pending.answered(&r.uid, r.source.twin),
                Inbound::Request(_) => None,
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
    let keys: Vec<String> = misses
        .iter()
        .map(|&i| match &batch[i] {
            Inbound::Response(r) => backlog(&r.uid),
            Inbound::Request(_) => unreachable!("only responses are looked up"),
        })
        .collect();
    let found: Vec<Option<Vec<u8>>> = loop {
        let Some(mut c) = lookup.get(abort).await else {
            return routes;
        };
        match redis::cmd("MGET").arg(&keys).query_async(&mut c).await {
            Ok(found) => break found,
            Err(e) => lookup.failed(&e),
        }
    };
    for (i, value) in misses.into_iter().zip(found) {
        routes[i] = value.and_then(|bytes| match Backlog::decode(bytes.as_slice()) {
            Ok(b) => Some(Route {
                reference: b.reference,
                reply_to: b.reply_to,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "unreadable backlog entry");
                None
            }
        });
    }
    routes
}

/// `LPUSH msgbus.<cmd>` the request as a `JsonIncomingRequest`.
async fn deliver_request(shared: &Shared, req: InboundRequest) {
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
    Counter::bump(&shared.counters.requests_delivered, 1);
    shared.push_json(command_queue(&json.cmd), &json).await;
}

/// Pushes a response to its client's `ret`, or logs that nobody waits for it any more.
async fn deliver_response(shared: &Shared, resp: InboundResponse, route: Option<Route>) {
    let Some(route) = route else {
        Counter::bump(&shared.counters.responses_expired, 1);
        tracing::warn!(uid = %resp.uid, src = %resp.source, "received reply of an expired message");
        return;
    };
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
    Counter::bump(&shared.counters.responses_delivered, 1);
    shared.push_json(route.reply_to, &json).await;
}
