//! The outbox: requests this peer sent and that still wait for an answer, kept in Redis
//! so that a peer restarted after a crash sends them again (same uid) instead of
//! leaving their clients without an answer.
//!
//! One hash per request, `msgbus.outbox.<uid>`: field `req` holds `@<unix time>\n`
//! followed by the request as the client wrote it (read again "at" that time, it gets
//! the same stamped timestamp and validity, so nothing is encoded again per request),
//! and one field `d:<twin>` per destination that has not answered. A `req` that starts
//! with `{` (written by an earlier version) holds the request as stamped.
//!
//! Delivering an answer removes its twin's field in the same step as the push to the
//! client ([`DELIVER_ONCE`](super::scripts::DELIVER_ONCE)), so an answer is delivered
//! once even if it arrives twice. The hash outlives the request by [`GRACE_SECS`], so
//! that the timeout error a client gets for a twin that never answered is delivered once
//! as well.

use redis::Pipeline;
use redis::aio::MultiplexedConnection;

use super::conn::scan_keys;
use super::keys::{OUTBOX_PREFIX, outbox, outbox_waiting};
use super::pending::Route;
use super::validate::{LocalRequest, Rejection, parse_request};
use crate::core::codes;

/// The field holding the request itself.
pub const REQUEST_FIELD: &str = "req";
/// Seconds an outbox entry lives after its request expired.
pub const GRACE_SECS: u64 = 120;
/// Outbox entries read per pipeline when reloading.
const LOAD_BATCH: usize = 1000;

/// Adds the writes recording request `uid` to `pipe`: `req`, read from the client's
/// document `raw` at unix time `read_at`.
pub fn record(pipe: &mut Pipeline, uid: &str, req: &LocalRequest, raw: &[u8], read_at: u64) {
    let key = outbox(uid);
    let head = format!("@{read_at}\n");
    let mut stored = Vec::with_capacity(head.len() + raw.len());
    stored.extend_from_slice(head.as_bytes());
    stored.extend_from_slice(raw);
    let hset = pipe.cmd("HSET").arg(&key).arg(REQUEST_FIELD).arg(stored);
    for twin in &req.destinations {
        hset.arg(outbox_waiting(*twin)).arg(1);
    }
    hset.ignore();
    pipe.cmd("EXPIRE")
        .arg(&key)
        .arg(super::keys::clamp_ttl(
            req.backlog_ttl.saturating_add(GRACE_SECS),
        ))
        .ignore();
}

/// The request a [`REQUEST_FIELD`] holds, and the unix time it was read at (`None`
/// for an entry of an earlier version, which holds it as stamped).
fn stored_request(stored: &[u8]) -> (Option<u64>, &[u8]) {
    let Some(rest) = stored.strip_prefix(b"@") else {
        return (None, stored);
    };
    let Some(end) = rest.iter().position(|&b| b == b'\n') else {
        return (None, stored);
    };
    let at = std::str::from_utf8(&rest[..end])
        .ok()
        .and_then(|t| t.parse().ok());
    (at, &rest[end + 1..])
}

/// Where the answers of the request stored as `stored` (the [`REQUEST_FIELD`]) go: the
/// route of an answer that comes after a restart (`None`, logged, when unreadable).
pub fn route(stored: &[u8]) -> Option<Route> {
    let json = stored_request(stored).1;
    #[derive(serde::Deserialize)]
    struct Stored {
        #[serde(rename = "ref")]
        reference: Option<String>,
        ret: String,
    }
    match serde_json::from_slice::<Stored>(json) {
        Ok(stored) => Some(Route {
            reference: stored.reference,
            reply_to: stored.ret,
        }),
        Err(e) => {
            tracing::warn!(error = %e, "unreadable outbox entry");
            None
        }
    }
}

/// A request found in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unanswered {
    pub uid: String,
    /// The twins still waited for.
    pub waiting: Vec<u32>,
    /// Still valid: to send again (`destinations` are the twins waited for).
    /// Expired: the client is owed a timeout error per waiting twin.
    pub state: Result<LocalRequest, Expired>,
}

/// Where the answers of an expired request go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    pub reference: Option<String>,
    pub reply_to: String,
}

/// Reads every outbox entry that still waits for an answer, at unix time `now`.
/// Unreadable ones are logged and skipped.
pub async fn load(
    conn: &mut MultiplexedConnection,
    now: u64,
) -> redis::RedisResult<Vec<Unanswered>> {
    let keys = scan_keys(conn, &format!("{OUTBOX_PREFIX}*")).await?;
    let mut found = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(LOAD_BATCH) {
        let mut pipe = redis::pipe();
        for key in chunk {
            pipe.cmd("HGETALL").arg(key);
        }
        let hashes: Vec<Vec<(String, String)>> = pipe.query_async(conn).await?;
        for (key, fields) in chunk.iter().zip(hashes) {
            let uid = key.trim_start_matches(OUTBOX_PREFIX).to_string();
            match unanswered(uid, fields, now) {
                Some(entry) => found.push(entry),
                None => tracing::debug!(%key, "skipping an answered or unreadable outbox entry"),
            }
        }
    }
    Ok(found)
}

fn unanswered(uid: String, fields: Vec<(String, String)>, now: u64) -> Option<Unanswered> {
    let mut stored = None;
    let mut waiting = Vec::new();
    for (field, value) in fields {
        if field == REQUEST_FIELD {
            stored = Some(value);
        } else if let Some(twin) = field.strip_prefix("d:").and_then(|t| t.parse().ok()) {
            waiting.push(twin);
        }
    }
    let stored = stored?;
    if waiting.is_empty() {
        return None;
    }
    waiting.sort_unstable();
    let (read_at, json) = stored_request(stored.as_bytes());
    let parsed = match read_at {
        // Read as it was read then, so it is stamped as it was; then is it still valid?
        Some(at) => parse_request(json, at).and_then(|mut request| {
            let left = (request.timestamp + request.expiration).saturating_sub(now);
            if left == 0 {
                return Err(Rejection {
                    reply_to: Some(request.reply_to),
                    reference: request.reference,
                    code: codes::VALIDATION,
                    message: "request expired".into(),
                    reason: None,
                });
            }
            request.backlog_ttl = request.backlog_ttl.min(left);
            Ok(request)
        }),
        None => parse_request(json, now),
    };
    let state = match parsed {
        Ok(mut request) => {
            request
                .destinations
                .retain(|t| waiting.binary_search(t).is_ok());
            Ok(request)
        }
        Err(rejection) => Err(Expired {
            reference: rejection.reference,
            reply_to: rejection.reply_to?,
        }),
    };
    Some(Unanswered {
        uid,
        waiting,
        state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> LocalRequest {
        LocalRequest {
            reference: Some("r".into()),
            reply_to: "ret".into(),
            destinations: vec![7, 9],
            command: "c".into(),
            payload: b"hi".to_vec(),
            schema: None,
            tags: Some("t".into()),
            timestamp: 1_000,
            expiration: 60,
            backlog_ttl: 60,
        }
    }

    /// `request()` as its client wrote it.
    const RAW: &str = r#"{"ver":1,"ref":"r","cmd":"c","exp":60,"dat":"aGk=","tag":"t","dst":[7,9],"ret":"ret","shm":null,"now":1000}"#;

    #[test]
    fn an_entry_reads_back_with_the_twins_still_waited_for() {
        let req = request();
        let mut pipe = redis::pipe();
        record(&mut pipe, "u", &req, RAW.as_bytes(), 1_000);
        // The HSET arguments, as the hash would hold them.
        let args: Vec<String> = pipe
            .cmd_iter()
            .next()
            .unwrap()
            .args_iter()
            .filter_map(|a| match a {
                redis::Arg::Simple(b) => Some(String::from_utf8(b.to_vec()).unwrap()),
                _ => None,
            })
            .collect();
        assert_eq!(args[..2], ["HSET", "msgbus.outbox.u"]);
        let mut fields: Vec<(String, String)> = args[2..]
            .chunks(2)
            .map(|kv| (kv[0].clone(), kv[1].clone()))
            .collect();
        // Twin 7 answered.
        fields.retain(|(f, _)| f != "d:7");
        let entry = unanswered("u".into(), fields.clone(), 1_010).unwrap();
        assert_eq!(entry.waiting, [9]);
        let back = entry.state.unwrap();
        assert_eq!(back.destinations, [9]);
        assert_eq!(back.payload, b"hi");
        assert_eq!(back.timestamp + back.expiration, 1_060, "same deadline");
        assert_eq!(back.reference.as_deref(), Some("r"));
        // Expired: the client is owed an error for twin 9.
        let expired = unanswered("u".into(), fields.clone(), 1_060).unwrap();
        assert_eq!(
            expired.state,
            Err(Expired {
                reference: Some("r".into()),
                reply_to: "ret".into()
            })
        );
        // An answer after a restart finds its client's list.
        let stored = fields.iter().find(|(f, _)| f == REQUEST_FIELD).unwrap();
        assert_eq!(
            route(stored.1.as_bytes()),
            Some(Route {
                reference: Some("r".into()),
                reply_to: "ret".into()
            })
        );
        assert_eq!(route(b"{}"), None);
        assert_eq!(stored.1, format!("@1000\n{RAW}"));
        // An entry of an earlier version (the request as stamped) reads the same.
        let legacy: Vec<_> = fields
            .iter()
            .map(|(f, v)| (f.clone(), v.replace("@1000\n", "")))
            .collect();
        let entry = unanswered("u".into(), legacy, 1_010).unwrap();
        assert_eq!(entry.state.unwrap().destinations, [9]);
        // All answered: nothing left to do.
        fields.retain(|(f, _)| f != "d:9");
        assert_eq!(unanswered("u".into(), fields, 1_010), None);
    }

    #[test]
    fn a_request_read_without_a_timestamp_keeps_the_deadline_it_was_given() {
        // `now: 0`: stamped when read (at 1000), not when read back after a restart.
        let raw = RAW.replace(r#""now":1000"#, r#""now":0"#);
        let fields = vec![
            (REQUEST_FIELD.to_string(), format!("@1000\n{raw}")),
            ("d:7".to_string(), "1".to_string()),
        ];
        let back = unanswered("u".into(), fields.clone(), 1_030).unwrap();
        let back = back.state.unwrap();
        assert_eq!(back.timestamp + back.expiration, 1_060);
        assert!(back.backlog_ttl <= 30, "{}", back.backlog_ttl);
        assert!(
            unanswered("u".into(), fields, 1_060)
                .unwrap()
                .state
                .is_err()
        );
    }
}
