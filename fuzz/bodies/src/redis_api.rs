//! The Redis JSON API (rmb-rs compatible): what local apps push (a client's request to
//! `msgbus.system.local`, a service's reply to `msgbus.system.reply`) and the other
//! documents a peer or the `rmb` CLI reads back from Redis.

use prost::Message as _;
use rmb_peer::core::OutgoingResponse;
use rmb_peer::redis_api::json::{
    JsonError, JsonIncomingRequest, JsonIncomingResponse, JsonOutgoingRequest,
    JsonOutgoingResponse, VERSION, decode_dat, encode_dat,
};
use rmb_peer::redis_api::validate::{parse_reply, parse_request};
use rmb_proto::peer::Backlog;
use rmb_proto::{Address, DEFAULT_MAX_ENVELOPE_SIZE};
use serde_json::Value;

use crate::{alloc, json_round_trip, select};

/// "Now" of the targets (a fixed time, so a run is reproducible).
pub const NOW: u64 = 1_700_000_000;

/// Any bytes as a client's request: no panic, bounded allocations. A refusal names the
/// request's `ret` whenever the document reads as a request or is an object with a
/// string `ret` (the client is told, not left waiting). An accepted request has distinct destinations, a
/// payload an envelope can hold and time left; read again at the same "now" (what a
/// restarted peer does with the outbox's copy of the document) it is the same request.
pub fn redis_request(data: &[u8]) {
    let parsed = alloc::bounded("parse_request", alloc::limit(data.len()), || {
        parse_request(data, NOW)
    });
    let req = match parsed {
        Ok(req) => req,
        Err(rejection) => {
            // The request's own `ret` when it is UTF-8 and reads as a request (refused for
            // what it says), else a string `ret` of any JSON object.
            let ret = std::str::from_utf8(data)
                .ok()
                .and_then(|text| serde_json::from_str::<JsonOutgoingRequest>(text).ok())
                .map(|req| req.ret)
                .or_else(|| {
                    serde_json::from_slice::<Value>(data)
                        .ok()
                        .and_then(|v| v.get("ret").and_then(Value::as_str).map(str::to_string))
                });
            assert_eq!(
                rejection.reply_to, ret,
                "a refusal goes to the readable ret"
            );
            return;
        }
    };
    assert!(!req.destinations.is_empty());
    let mut seen = req.destinations.clone();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(
        seen.len(),
        req.destinations.len(),
        "destinations are distinct"
    );
    assert!(req.payload.len() <= DEFAULT_MAX_ENVELOPE_SIZE);
    assert!(req.timestamp == NOW && req.expiration > 0 && req.backlog_ttl > 0);
    assert_eq!(parse_request(data, NOW), Ok(req));
}

/// Any bytes as a service's reply: no panic, bounded allocations. An accepted reply
/// names its request and, written back as a document, is read as the same reply; a
/// refused one with a fallback carries an error for a named request.
pub fn redis_reply(data: &[u8]) {
    let parsed = alloc::bounded("parse_reply", alloc::limit(data.len()), || {
        parse_reply(data)
    });
    let resp = match parsed {
        Ok(resp) => resp,
        Err(problem) => {
            if let Some(fallback) = problem.fallback {
                assert!(!fallback.uid.is_empty() && fallback.reply.is_err());
            }
            return;
        }
    };
    assert!(!resp.uid.is_empty());
    let (dat, err) = match &resp.reply {
        Ok(payload) => (encode_dat(payload), None),
        Err(e) => (
            String::new(),
            Some(JsonError {
                code: e.code,
                message: e.message.clone(),
            }),
        ),
    };
    let again = JsonOutgoingResponse {
        ver: VERSION,
        reference: Some(resp.uid.clone()),
        dat,
        dst: resp.destination.to_string(),
        shm: resp.schema.clone(),
        now: resp.timestamp,
        err,
    };
    let bytes = serde_json::to_vec(&again).expect("documents serialize");
    let back: OutgoingResponse = parse_reply(&bytes).expect("a written reply is read back");
    assert_eq!(back, resp);
}

/// The other documents, by the first byte: a request a peer took back from a service
/// list (`unserved`), a response the CLI pops from its `ret` list, a backlog entry
/// (protobuf), and a bare `dat` field. No panic; each round-trips.
pub fn redis_documents(data: &[u8]) {
    let Some((which, rest)) = select(data, 4) else {
        return;
    };
    let limit = alloc::limit(rest.len());
    match which {
        0 => {
            let req = alloc::bounded("JsonIncomingRequest", limit, || {
                json_round_trip::<JsonIncomingRequest>(rest)
            });
            if let Some(req) = req
                && let Ok(src) = req.src.parse::<Address>()
            {
                assert_eq!(src.to_string().parse::<Address>(), Ok(src));
            }
        }
        1 => {
            alloc::bounded("JsonIncomingResponse", limit, || {
                json_round_trip::<JsonIncomingResponse>(rest)
            });
        }
        2 => {
            let Ok(backlog) = alloc::bounded("Backlog", limit, || Backlog::decode(rest)) else {
                return;
            };
            let again = Backlog::decode(backlog.encode_to_vec().as_slice());
            assert_eq!(again, Ok(backlog));
        }
        _ => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            let Ok(payload) = alloc::bounded("decode_dat", limit, || decode_dat(text)) else {
                return;
            };
            assert!(payload.len() <= text.len());
            assert_eq!(decode_dat(&encode_dat(&payload)), Ok(payload));
        }
    }
}
