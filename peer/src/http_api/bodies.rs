//! What the local HTTP API reads from a request: bodies, query strings and headers,
//! turned into checked values before any handler acts on them.
//!
//! Pure functions of the request's bytes, apart from the handlers in [`super::routes`],
//! so the fuzz targets (fuzz/bodies) and unit tests run exactly the code a request
//! meets, without a server.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rmb_proto::Address;
use serde::Deserialize;

use super::error::ApiError;
use crate::topics::config::TopicConfig;
use crate::topics::since::Since;
use crate::topics::wire::{self, Draft};

/// Longest `POST /call` timeout, in seconds.
pub const MAX_CALL_TIMEOUT: u64 = 600;
/// Longest `cmd` of a `POST /call`, in bytes.
pub const MAX_CALL_COMMAND: usize = 256;

/// Query parameters of the read endpoints.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Query {
    /// Where to start (`?since=`).
    pub since: Option<Since>,
    /// `?poll=1`: what is stored, then the end of the answer.
    pub poll: bool,
    /// Most messages of a poll.
    pub limit: u32,
}

/// Reads the query string of a read endpoint.
pub fn query(raw: Option<String>) -> Result<Query, ApiError> {
    let mut q = Query {
        limit: wire::MAX_PULL,
        ..Query::default()
    };
    let raw = raw.unwrap_or_default();
    for (key, value) in url::form_urlencoded::parse(raw.as_bytes()) {
        match key.as_ref() {
            "since" => {
                q.since = Some(
                    value
                        .parse::<Since>()
                        .map_err(|e| ApiError::bad_request(e.to_string()))?,
                )
            }
            "poll" => q.poll = matches!(value.as_ref(), "1" | "true" | "yes" | ""),
            // Checked by the access rules (for clients that cannot set headers).
            "access_token" => {}
            "limit" => {
                q.limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|l| (1..=wire::MAX_PULL).contains(l))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "limit is 1 to {}, not {value:?}",
                            wire::MAX_PULL
                        ))
                    })?
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {other:?} (since, poll, limit)"
                )));
            }
        }
    }
    Ok(q)
}

/// The body of `PUT /topics/{owner}/{name}`: a topic configuration (an empty body
/// means the defaults). Its bounds are checked where it is applied.
pub fn topic_config(bytes: &[u8]) -> Result<TopicConfig, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(TopicConfig::default());
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("the topic configuration: {e}")))
}

/// A header by its ntfy names (`X-Title` or `Title`).
fn header_of<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    let value = headers
        .get(format!("x-{name}"))
        .or_else(|| headers.get(name));
    value
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::bad_request(format!("the {name} header is not text")))
        })
        .transpose()
}

/// The message of a publish: a JSON document (`Content-Type: application/json`) with
/// `message`, `title`, `priority`, `tags`; or the raw body with those as headers.
/// Its bounds ([`Draft::check`]) are checked where it is published.
pub fn draft(headers: &HeaderMap, bytes: Bytes) -> Result<Draft, ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if json {
        return serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("the message document: {e}")));
    }
    let mut draft = Draft::from_bytes(bytes.to_vec());
    draft.title = header_of(headers, "title")?.map(str::to_string);
    draft.priority = header_of(headers, "priority")?
        .map(|p| {
            p.parse::<u8>()
                .map_err(|_| ApiError::bad_request("priority is 1 (min) to 5 (max)"))
        })
        .transpose()?;
    draft.tags = header_of(headers, "tags")?
        .map(|t| {
            t.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    Ok(draft)
}

/// The id an `EventSource` reconnecting by itself says it saw last (`Last-Event-ID`).
pub fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad_request("Last-Event-ID is a message id"))
        })
        .transpose()
}

/// Body of `POST /{owner}/{name}/subscribe`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    /// Start after this id (absent: after the newest).
    pub since: Option<u64>,
    /// Also push the messages to a Redis list.
    #[serde(default)]
    pub redis_list: bool,
}

/// Reads the body of `POST /{owner}/{name}/subscribe` (an empty body: the defaults).
pub fn subscription(bytes: &[u8]) -> Result<Subscription, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Subscription::default());
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("the subscription: {e}")))
}

/// Body of `POST /call`: the Redis API's request, one destination.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CallBody {
    twin: u32,
    /// Session of the destination (a direct client), if any.
    #[serde(default)]
    session: Option<String>,
    cmd: String,
    /// Text payload…
    #[serde(default)]
    payload: Option<String>,
    /// …or bytes, base64.
    #[serde(default)]
    payload_base64: Option<String>,
    /// Seconds to wait (default 30, at most [`MAX_CALL_TIMEOUT`]).
    #[serde(default)]
    timeout: Option<u64>,
}

/// A checked `POST /call`: what to send where, and how long to wait for the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub destination: Address,
    pub cmd: String,
    pub payload: Vec<u8>,
    pub timeout: Duration,
}

/// Reads and checks the body of `POST /call`.
pub fn call(bytes: &[u8]) -> Result<Call, ApiError> {
    let b: CallBody = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("the call: {e}")))?;
    if b.twin == 0 {
        return Err(ApiError::bad_request(
            "twin is a twin id (a positive number)",
        ));
    }
    if b.cmd.is_empty() || b.cmd.len() > MAX_CALL_COMMAND {
        return Err(ApiError::bad_request(format!(
            "cmd is 1 to {MAX_CALL_COMMAND} bytes"
        )));
    }
    let payload = match (b.payload, b.payload_base64) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give payload or payload_base64, not both",
            ));
        }
        (Some(text), None) => text.into_bytes(),
        (None, Some(b64)) => B64
            .decode(b64)
            .map_err(|_| ApiError::bad_request("payload_base64 is not valid base64"))?,
        (None, None) => Vec::new(),
    };
    let timeout = b.timeout.unwrap_or(30);
    if !(1..=MAX_CALL_TIMEOUT).contains(&timeout) {
        return Err(ApiError::bad_request(format!(
            "timeout is 1 to {MAX_CALL_TIMEOUT} seconds"
        )));
    }
    let destination = match b.session {
        Some(sid) => Address::session(b.twin, sid),
        None => Address::twin(b.twin),
    };
    Ok(Call {
        destination,
        cmd: b.cmd,
        payload,
        timeout: Duration::from_secs(timeout),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_is_checked_before_anything_is_sent() {
        let call =
            call(br#"{"twin":7,"session":"web","cmd":"a.b","payload_base64":"AAE="}"#).unwrap();
        assert_eq!(call.destination, Address::session(7, "web"));
        assert_eq!(
            (call.payload, call.timeout),
            (vec![0, 1], Duration::from_secs(30))
        );
        for bad in [
            &br#"{"twin":0,"cmd":"a"}"#[..],
            br#"{"twin":1,"cmd":""}"#,
            br#"{"twin":1,"cmd":"a","payload":"x","payload_base64":""}"#,
            br#"{"twin":1,"cmd":"a","timeout":601}"#,
            br#"{"twin":1,"cmd":"a","extra":1}"#,
        ] {
            assert!(
                super::call(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn empty_bodies_mean_the_defaults_and_queries_are_bounded() {
        assert_eq!(topic_config(b" \n").unwrap(), TopicConfig::default());
        assert_eq!(subscription(b"").unwrap(), Subscription::default());
        assert!(subscription(br#"{"sinse":1}"#).is_err());
        let q = query(Some("since=5&poll=&limit=10".into())).unwrap();
        assert_eq!((q.since, q.poll, q.limit), (Some(Since::Id(5)), true, 10));
        assert!(query(Some("limit=0".into())).is_err());
        assert!(query(Some("color=red".into())).is_err());
    }
}
