//! Reading what local apps push: a client's request (`msgbus.system.local`) or a
//! service's reply (`msgbus.system.reply`), checked before anything is sent.
//!
//! rmb-rs only logs bad input, so the client waits for nothing (rmb-rs-protocol §8.3).
//! Here every rejection says where the error should go: a document that is not a valid
//! request is read again as untyped JSON, so a request whose `ret` is readable gets its
//! error there even when the rest is wrong. Pure functions of the bytes and "now",
//! tested without Redis.

use rmb_proto::time::{stamp, ttl};
use rmb_proto::{Address, DEFAULT_MAX_ENVELOPE_SIZE};
use serde_json::Value;

use super::json::{JsonOutgoingRequest, JsonOutgoingResponse, decode_dat};
use crate::core::codes;
use crate::core::types::{MAX_EXPIRATION, clamp_expiration};
use crate::core::{OutgoingResponse, Reason, RemoteError};

/// Expiration rmb-rs gives service replies (the core clamps it to 1800 s).
pub const REPLY_EXPIRATION: u64 = 3600;

/// A client request that passed every check, stamped at "now".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalRequest {
    /// The client's `ref`, echoed in every response.
    pub reference: Option<String>,
    /// The client's `ret` list.
    pub reply_to: String,
    pub destinations: Vec<u32>,
    pub command: String,
    pub payload: Vec<u8>,
    pub schema: Option<String>,
    pub tags: Option<String>,
    /// Stamped timestamp (unix s) and remaining validity, as the envelopes will carry.
    pub timestamp: u64,
    pub expiration: u64,
    /// Seconds the backlog entry lives: the remaining validity, at most 1800 (as rmb-rs).
    pub backlog_ttl: u64,
}

/// Why a client's request was refused, and where (if anywhere) to tell the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The request's `ret`, when it could be read; `None` means only a log line is possible.
    pub reply_to: Option<String>,
    pub reference: Option<String>,
    pub code: u32,
    pub message: String,
    /// The refusal counter it also counts under, if any (e.g. `oversize`).
    pub reason: Option<Reason>,
}

/// Reads and checks a client's `JsonOutgoingRequest` at unix time `now`.
///
/// A payload that cannot fit in an envelope is refused here, before anything is
/// recorded or sent (relays drop the link of a peer sending an oversized frame; the
/// exact encoded size is checked again when the envelope is sealed).
pub fn parse_request(bytes: &[u8], now: u64) -> Result<LocalRequest, Rejection> {
    // Typed first: a valid request (nearly all) is read once, without a JSON tree. The
    // whole document must be UTF-8 (reading it typed would skip unknown fields
    // unchecked), as the outbox keeps it as written and reads it back as text.
    let typed = std::str::from_utf8(bytes).map(serde_json::from_str::<JsonOutgoingRequest>);
    let req = match typed {
        Ok(Ok(req)) => req,
        Ok(Err(e)) => return Err(unreadable(bytes, e)),
        Err(e) => {
            return Err(Rejection {
                reply_to: None,
                reference: None,
                code: codes::INVALID_PAYLOAD,
                message: format!("request is not JSON: it is not UTF-8 ({e})"),
                reason: None,
            });
        }
    };
    let reject = |code: u32, message: String| Rejection {
        reply_to: Some(req.ret.clone()),
        reference: req.reference.clone(),
        code,
        message,
        reason: None,
    };
    let payload = decode_dat(&req.dat).map_err(|e| {
        reject(
            codes::INVALID_PAYLOAD,
            format!("invalid data base64 encoding: {e}"),
        )
    })?;
    if payload.len() > DEFAULT_MAX_ENVELOPE_SIZE {
        return Err(Rejection {
            reason: Some(Reason::Oversize),
            ..reject(
                codes::INVALID_PAYLOAD,
                format!(
                    "request too large: the payload is {} bytes, an envelope holds at most {}",
                    payload.len(),
                    DEFAULT_MAX_ENVELOPE_SIZE
                ),
            )
        });
    }
    if req.dst.is_empty() {
        return Err(reject(
            codes::INVALID_PAYLOAD,
            "request has no destination: dst is empty".into(),
        ));
    }
    // Receivers refuse a request without a command (its signature would also fit a
    // response): say so here rather than let it time out.
    if req.cmd.is_empty() {
        return Err(reject(
            codes::INVALID_PAYLOAD,
            "request has no command: cmd is empty".into(),
        ));
    }
    let (timestamp, expiration) = stamp(now, req.now, req.exp);
    let Some(left) = ttl(now, timestamp, expiration) else {
        return Err(reject(
            codes::VALIDATION,
            format!(
                "request has expired (exp {} s from now {} is not in the future)",
                req.exp, req.now
            ),
        ));
    };
    Ok(LocalRequest {
        reference: req.reference,
        reply_to: req.ret,
        destinations: distinct(req.dst),
        command: req.cmd,
        payload,
        schema: req.shm,
        tags: req.tag,
        timestamp,
        expiration,
        backlog_ttl: clamp_expiration(left.as_secs()).min(MAX_EXPIRATION),
    })
}

/// Why `bytes` are not a request (`typed`: what reading them as one said), with the
/// `ret` and `ref` they hold when they are JSON at all.
fn unreadable(bytes: &[u8], typed: serde_json::Error) -> Rejection {
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(value) => value,
        Err(e) => {
            return Rejection {
                reply_to: None,
                reference: None,
                code: codes::INVALID_PAYLOAD,
                message: format!("request is not JSON: {e}"),
                reason: None,
            };
        }
    };
    Rejection {
        reply_to: value.get("ret").and_then(Value::as_str).map(str::to_string),
        reference: value.get("ref").and_then(Value::as_str).map(str::to_string),
        code: codes::INVALID_PAYLOAD,
        message: format!("invalid request: {typed}"),
        reason: None,
    }
}

/// The twins of `dst`, each once, in order: a twin named twice would get two copies of
/// one uid, and the second is dropped as a repeat (rmb-rs would send both).
fn distinct(mut twins: Vec<u32>) -> Vec<u32> {
    let mut seen = std::collections::HashSet::new();
    twins.retain(|t| seen.insert(*t));
    twins
}

/// Why a service's reply could not be sent as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyProblem {
    pub message: String,
    /// When the reply names its request (`ref`, `dst`) but its body is unusable: an error
    /// reply to send instead, so the remote caller is told rather than left waiting.
    pub fallback: Option<Box<OutgoingResponse>>,
}

/// Reads a service's `JsonOutgoingResponse` into what the core sends.
pub fn parse_reply(bytes: &[u8]) -> Result<OutgoingResponse, ReplyProblem> {
    // Typed first: a usable reply (nearly all) is read once, without a JSON tree. Any
    // other document is read again as a tree, which finds what it lacks and, when it
    // names its request, the error to answer with.
    let typed = std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| serde_json::from_str::<JsonOutgoingResponse>(text).ok());
    if let Some(mut resp) = typed {
        let uid = resp.reference.take().filter(|uid| !uid.is_empty());
        if let (Some(uid), Ok(destination)) = (uid, resp.dst.parse::<Address>()) {
            return response(uid, destination, resp);
        }
    }
    let problem = |message: String| ReplyProblem {
        message,
        fallback: None,
    };
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| problem(format!("service reply is not JSON: {e}")))?;
    let uid = value.get("ref").and_then(Value::as_str).map(str::to_string);
    let destination = value
        .get("dst")
        .and_then(Value::as_str)
        .map(str::parse::<Address>);
    let (uid, destination) = match (uid, destination) {
        (Some(uid), Some(Ok(dst))) if !uid.is_empty() => (uid, dst),
        (_, Some(Err(e))) => return Err(problem(format!("service reply has a bad dst: {e}"))),
        _ => {
            return Err(problem(
                "service reply lacks `ref` or `dst` (copy them from the request's `ref` and `src`)"
                    .into(),
            ));
        }
    };
    let resp: JsonOutgoingResponse = serde_json::from_value(value)
        .map_err(|e| error_reply(&uid, &destination, format!("invalid service reply: {e}")))?;
    response(uid, destination, resp)
}

/// What a service's reply naming `uid` and `destination` sends: its payload or error.
fn response(
    uid: String,
    destination: Address,
    resp: JsonOutgoingResponse,
) -> Result<OutgoingResponse, ReplyProblem> {
    let reply = match resp.err {
        Some(err) => Err(RemoteError::new(err.code, err.message)),
        None => Ok(decode_dat(&resp.dat).map_err(|e| {
            error_reply(
                &uid,
                &destination,
                format!("service reply: invalid data base64 encoding: {e}"),
            )
        })?),
    };
    Ok(OutgoingResponse {
        uid,
        destination,
        reply,
        schema: resp.shm,
        timestamp: resp.now,
        expiration: REPLY_EXPIRATION,
    })
}

/// A reply that names its request but cannot be sent as it is: logged with `message`,
/// and the request answered with that error instead.
fn error_reply(uid: &str, destination: &Address, message: String) -> ReplyProblem {
    ReplyProblem {
        fallback: Some(Box::new(OutgoingResponse {
            uid: uid.to_string(),
            destination: destination.clone(),
            reply: Err(RemoteError::new(codes::INVALID_PAYLOAD, message.clone())),
            schema: None,
            timestamp: 0,
            expiration: REPLY_EXPIRATION,
        })),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn request(exp: u64, now: u64, dat: &str, dst: &str) -> String {
        format!(
            r#"{{"ver":1,"ref":"r-1","cmd":"calc.add","exp":{exp},"dat":"{dat}","tag":null,"dst":{dst},"ret":"ret-1","shm":"application/json","now":{now}}}"#
        )
    }

    #[test]
    fn a_good_request_is_stamped_and_decoded() {
        let req = parse_request(
            request(60, NOW - 10, "eyJ2IjoxfQ==", "[41,42]").as_bytes(),
            NOW,
        )
        .unwrap();
        assert_eq!(req.reference.as_deref(), Some("r-1"));
        assert_eq!(req.reply_to, "ret-1");
        assert_eq!(req.destinations, vec![41, 42]);
        assert_eq!(req.payload, br#"{"v":1}"#);
        assert_eq!(
            (req.timestamp, req.expiration, req.backlog_ttl),
            (NOW, 50, 50)
        );
        assert_eq!(req.schema.as_deref(), Some("application/json"));
    }

    #[test]
    fn long_validity_is_capped_in_the_backlog_and_zero_now_means_now() {
        let req = parse_request(request(7200, 0, "", "[1]").as_bytes(), NOW).unwrap();
        assert_eq!((req.timestamp, req.expiration), (NOW, 7200));
        assert_eq!(req.backlog_ttl, 1800);
    }

    #[test]
    fn refusals_go_to_ret_when_it_is_readable() {
        let cases = [
            (request(0, NOW, "", "[1]"), codes::VALIDATION, "expired"),
            (
                request(10, NOW - 10, "", "[1]"),
                codes::VALIDATION,
                "expired",
            ),
            (
                request(10, NOW, "!!", "[1]"),
                codes::INVALID_PAYLOAD,
                "base64",
            ),
            (
                request(10, NOW, "", "[]"),
                codes::INVALID_PAYLOAD,
                "dst is empty",
            ),
            (
                request(10, NOW, "", "[1]").replace("\"cmd\":\"calc.add\",", ""),
                codes::INVALID_PAYLOAD,
                "missing field `cmd`",
            ),
            (
                request(10, NOW, "", "\"7\""),
                codes::INVALID_PAYLOAD,
                "invalid request",
            ),
        ];
        for (text, code, needle) in cases {
            let r = parse_request(text.as_bytes(), NOW).unwrap_err();
            assert_eq!(r.reply_to.as_deref(), Some("ret-1"), "{text}");
            assert_eq!(r.reference.as_deref(), Some("r-1"));
            assert_eq!(r.code, code, "{text}");
            assert!(r.message.contains(needle), "{} lacks {needle}", r.message);
        }
    }

    #[test]
    fn a_document_that_is_not_utf8_is_refused_even_in_a_field_nobody_reads() {
        let text = request(60, 0, "", "[1]");
        let mut doc = text.as_bytes()[..text.len() - 1].to_vec();
        doc.extend_from_slice(b",\"x\":\"\xff\"}");
        let r = parse_request(&doc, NOW).unwrap_err();
        assert!(r.message.contains("not UTF-8"), "{}", r.message);
        assert_eq!(r.reply_to, None);
    }

    #[test]
    fn unreadable_json_has_nowhere_to_reply() {
        let r = parse_request(b"{not json", NOW).unwrap_err();
        assert_eq!(r.reply_to, None);
        let r = parse_request(br#"{"ret":7}"#, NOW).unwrap_err();
        assert_eq!(r.reply_to, None, "a non-string ret is not a list name");
    }

    #[test]
    fn service_replies_become_responses_or_errors() {
        let ok = br#"{"ver":1,"ref":"u-1","dat":"eyJ2IjoxfQ==","dst":"7:s","shm":"application/json","now":5,"err":null}"#;
        let resp = parse_reply(ok).unwrap();
        assert_eq!(resp.uid, "u-1");
        assert_eq!(resp.destination, Address::session(7, "s"));
        assert_eq!(resp.reply, Ok(br#"{"v":1}"#.to_vec()));
        assert_eq!((resp.timestamp, resp.expiration), (5, 3600));

        let err = br#"{"ver":1,"ref":"u-1","dat":"","dst":"7","shm":null,"now":0,"err":{"code":42,"message":"no"}}"#;
        assert_eq!(
            parse_reply(err).unwrap().reply,
            Err(RemoteError::new(42, "no"))
        );
    }

    #[test]
    fn a_bad_reply_body_becomes_an_error_for_the_caller() {
        let bad = br#"{"ver":1,"ref":"u-1","dat":"!!","dst":"7","shm":null,"now":0,"err":null}"#;
        let p = parse_reply(bad).unwrap_err();
        let fallback = p.fallback.unwrap();
        assert_eq!(
            (fallback.uid.as_str(), fallback.destination.twin),
            ("u-1", 7)
        );
        assert!(matches!(fallback.reply, Err(RemoteError { code: 101, .. })));
    }

    #[test]
    fn a_reply_read_typed_or_as_a_tree_says_the_same() {
        // A duplicated key fails the typed read; the tree keeps the last value, as
        // before the typed read existed.
        let dup = br#"{"ver":1,"ref":"u-1","dat":"AA==","dst":"7","dst":"8","shm":null,"now":0,"err":null}"#;
        assert_eq!(parse_reply(dup).unwrap().destination.twin, 8);
        // Unknown fields are ignored either way; invalid UTF-8 in one is refused.
        let extra = br#"{"ver":1,"ref":"u-1","dat":"AA==","dst":"7","x":[1,{"y":null}],"shm":null,"now":0,"err":null}"#;
        assert_eq!(parse_reply(extra).unwrap().reply, Ok(vec![0]));
        let mut bad_utf8 = br#"{"ver":1,"ref":"u-1","dat":"AA==","dst":"7","x":"??","shm":null,"now":0,"err":null}"#.to_vec();
        let at = bad_utf8.iter().position(|&b| b == b'?').unwrap();
        bad_utf8[at] = 0xff;
        assert_eq!(parse_reply(&bad_utf8).unwrap_err().fallback, None);
        // A missing field fails the typed read, and the tree names the request to answer.
        let no_dat = br#"{"ver":1,"ref":"u-1","dst":"7","shm":null,"now":0,"err":null}"#;
        assert_eq!(
            parse_reply(no_dat).unwrap_err().fallback.unwrap().uid,
            "u-1"
        );
    }

    #[test]
    fn an_unaddressed_reply_is_only_reported() {
        for text in [
            &br#"{"ver":1,"ref":null,"dat":"","dst":"7","shm":null,"now":0,"err":null}"#[..],
            br#"{"ver":1,"ref":"u","dat":"","dst":"x","shm":null,"now":0,"err":null}"#,
            b"[]",
            b"nope",
        ] {
            assert_eq!(parse_reply(text).unwrap_err().fallback, None);
        }
    }
}
