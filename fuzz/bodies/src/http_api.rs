//! The local HTTP API of rmb-peer: the bodies, query strings and headers its handlers
//! read (`rmb_peer::http_api::bodies`), before any of them acts.

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use rmb_peer::http_api::bodies;
use rmb_peer::topics::config::TopicConfig;
use rmb_peer::topics::wire::MAX_PULL;

use crate::{alloc, select};

/// By the first byte: a topic configuration (`PUT`), a JSON message to publish, a raw
/// message whose title, priority and tags come as headers (the input's first three
/// lines), a subscription (`POST …/subscribe`), a call (`POST /call`), a read
/// endpoint's query string, a `Last-Event-ID` header. No panic, bounded allocations,
/// and what is accepted is within the bounds the handlers rely on.
pub fn http_bodies(data: &[u8]) {
    let Some((which, rest)) = select(data, 7) else {
        return;
    };
    let limit = alloc::limit(rest.len());
    match which {
        0 => {
            let Ok(config) = alloc::bounded("topic_config", limit, || bodies::topic_config(rest))
            else {
                return;
            };
            if config.check().is_ok() {
                let again = serde_json::to_vec(&config).expect("configurations serialize");
                assert_eq!(
                    serde_json::from_slice::<TopicConfig>(&again).ok(),
                    Some(config)
                );
            }
        }
        1 | 2 => {
            let (headers, body) = if which == 1 {
                let mut headers = HeaderMap::new();
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                (headers, rest)
            } else {
                raw_message(rest)
            };
            let draft = alloc::bounded("draft", limit, || {
                bodies::draft(&headers, Bytes::copy_from_slice(body))
            });
            if let Ok(draft) = draft
                && let Ok(size) = draft.check()
            {
                assert!(size <= rmb_peer::topics::wire::MAX_PAYLOAD);
            }
        }
        3 => {
            let _ = alloc::bounded("subscription", limit, || bodies::subscription(rest));
        }
        4 => {
            let Ok(call) = alloc::bounded("call", limit, || bodies::call(rest)) else {
                return;
            };
            assert!(call.destination.twin != 0);
            assert!(!call.cmd.is_empty() && call.cmd.len() <= bodies::MAX_CALL_COMMAND);
            let secs = call.timeout.as_secs();
            assert!((1..=bodies::MAX_CALL_TIMEOUT).contains(&secs));
        }
        5 => {
            let raw = String::from_utf8_lossy(rest).into_owned();
            if let Ok(q) = alloc::bounded("query", limit, || bodies::query(Some(raw))) {
                assert!((1..=MAX_PULL).contains(&q.limit));
            }
        }
        _ => {
            let mut headers = HeaderMap::new();
            if let Ok(value) = HeaderValue::from_bytes(rest) {
                headers.insert("last-event-id", value);
            }
            let _ = bodies::last_event_id(&headers);
        }
    }
}

/// A raw publish: up to three header values (title, priority, tags) on the input's
/// first lines, the rest the body.
fn raw_message(data: &[u8]) -> (HeaderMap, &[u8]) {
    let mut headers = HeaderMap::new();
    let mut rest = data;
    for name in ["x-title", "priority", "x-tags"] {
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            break;
        };
        if let Ok(value) = HeaderValue::from_bytes(&rest[..end]) {
            headers.insert(HeaderName::from_static(name), value);
        }
        rest = &rest[end + 1..];
    }
    (headers, rest)
}
