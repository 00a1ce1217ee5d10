//! The routes of the local HTTP API and their handlers.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/` | `{"twin": N}`: which twin this peer is |
//! | GET | `/topics` | own topics, subscriptions, counters |
//! | PUT | `/topics/{owner}/{name}` | create or configure an own topic (JSON config) |
//! | GET | `/topics/{owner}/{name}` | an own topic's state, or a subscription's |
//! | POST | `/topics/{owner}/{name}` | publish: the body is the message |
//! | GET | `/topics/{owner}/{name}/json` | JSON lines: `?poll=1` what is stored, else live |
//! | GET | `/topics/{owner}/{name}/sse` | live, as server-sent events |
//! | GET | `/topics/{owner}/{name}/ws` | live, over a WebSocket |
//! | POST/DELETE | `/topics/{owner}/{name}/subscribe` | durable subscription on/off |
//! | POST | `/call` | a request to a twin, answered with its response |
//!
//! Read endpoints take `?since=`: an id, `all` (from the start), `latest` (the newest
//! kept message), a duration (`10m`) or a unix time ([`crate::topics::since`]). Live
//! ones replay what is kept after it first; for another twin's topic they subscribe
//! first. Their first event (`open`) says the id they start after (`since`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures_util::stream;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::bodies;
use super::error::ApiError;
use super::feed::{Feed, Item};
use super::guard::{Guard, Refusals};
use crate::pipes::serve::PipeService;
use crate::topics::since::Since;
use crate::topics::wire::{self, TopicName};
use crate::topics::{TopicError, Topics};

/// Largest request body: a message at its limit, base64-encoded in JSON, with fields.
pub const MAX_BODY: usize = wire::MAX_PAYLOAD * 2 + 16 * 1024;

/// What the handlers share.
#[derive(Clone)]
pub struct Api {
    topics: Topics,
    stop: CancellationToken,
    refusals: Arc<Refusals>,
    /// Longest wait for a WebSocket client to take a frame.
    stall: Duration,
}

/// The API's routes over `topics`, behind `guard`; `stop` ends live streams, a WebSocket
/// client that takes no frame for `stall` is dropped.
pub fn router(
    topics: Topics,
    pipes: Option<PipeService>,
    guard: Arc<Guard>,
    stall: Duration,
    stop: CancellationToken,
) -> Router {
    let refusals = Arc::clone(&guard.refusals);
    let routes = Router::new()
        .route("/", get(hello))
        .route("/topics", get(list))
        .route(
            "/topics/{owner}/{name}",
            get(show).put(configure).post(publish),
        )
        .route("/topics/{owner}/{name}/json", get(json_lines))
        .route("/topics/{owner}/{name}/sse", get(sse))
        .route("/topics/{owner}/{name}/ws", get(ws))
        .route(
            "/topics/{owner}/{name}/subscribe",
            post(subscribe).delete(unsubscribe),
        )
        .route("/call", post(call));
    let routes = match pipes {
        Some(pipes) => routes.merge(pipes.routes()),
        None => routes,
    };
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            guard,
            super::guard::guard,
        ))
        .with_state(Api {
            topics,
            stop,
            refusals,
            stall,
        })
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such endpoint; see docs/topics.md",
    )
}

async fn not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this endpoint; see docs/topics.md",
    )
}

async fn hello(State(api): State<Api>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "twin": api.topics.twin(),
        "api": "rmb-peer",
        "refused": api.refusals.snapshot(),
    }))
}

async fn list(State(api): State<Api>) -> Result<Response, ApiError> {
    Ok(Json(api.topics.list().await?).into_response())
}

/// The topic of a `/topics/{owner}/{name}` path.
fn topic(path: Result<Path<(String, String)>, PathRejection>) -> Result<TopicName, ApiError> {
    let Path((owner, name)) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    format!("{owner}/{name}")
        .parse::<TopicName>()
        .map_err(|e| ApiError::bad_request(e.to_string()))
}

fn body(bytes: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    bytes.map_err(|e| {
        let status = e.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!("the request body is larger than {MAX_BODY} bytes")
        } else {
            e.body_text()
        };
        ApiError::new(status, message)
    })
}

async fn show(
    State(api): State<Api>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let topic = topic(path)?;
    if topic.owner == api.topics.twin() {
        return Ok(Json(api.topics.show(&topic).await?).into_response());
    }
    match api.topics.subscription(&topic).await? {
        Some(sub) => Ok(Json(sub).into_response()),
        None => Err(TopicError::NotSubscribed(topic.to_string()).into()),
    }
}

async fn configure(
    State(api): State<Api>,
    path: Result<Path<(String, String)>, PathRejection>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let topic = topic(path)?;
    let bytes = body(bytes)?;
    if topic.owner != api.topics.twin() {
        return Err(TopicError::NotOwner {
            owner: topic.owner,
            topic: topic.to_string(),
        }
        .into());
    }
    let config = bodies::topic_config(&bytes)?;
    Ok(Json(api.topics.configure(&topic.name, config).await?).into_response())
}

async fn publish(
    State(api): State<Api>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let topic = topic(path)?;
    let draft = bodies::draft(&headers, body(bytes)?)?;
    Ok(Json(api.topics.publish(&topic, draft).await?).into_response())
}

/// Subscribes to another twin's topic before a live stream (own topics need none).
async fn ensure_subscribed(
    api: &Api,
    topic: &TopicName,
    since: Option<u64>,
) -> Result<(), ApiError> {
    if topic.owner != api.topics.twin() && api.topics.subscription(topic).await?.is_none() {
        api.topics.subscribe(topic, since, false).await?;
    }
    Ok(())
}

/// The id `since` stands for in `topic` (`None` stays `None`).
async fn resolve(
    api: &Api,
    topic: &TopicName,
    since: Option<Since>,
) -> Result<Option<u64>, ApiError> {
    match since {
        Some(since) => Ok(Some(api.topics.position(topic, since).await?)),
        None => Ok(None),
    }
}

/// The position a live stream starts after: `since`, or the newest id (new messages only).
async fn start(api: &Api, topic: &TopicName, since: Option<u64>) -> Result<u64, ApiError> {
    if let Some(since) = since {
        return Ok(since);
    }
    if topic.owner == api.topics.twin() {
        return Ok(api.topics.show(topic).await?.last_id);
    }
    Ok(api
        .topics
        .subscription(topic)
        .await?
        .map_or(0, |s| s.last_id))
}

/// A live stream's first event; `since` is the id it starts after (a client that
/// reconnects before any message came resumes after it).
fn open_line(topic: &TopicName, since: u64) -> String {
    serde_json::json!({ "event": "open", "topic": topic.to_string(), "time": rmb_proto::time::unix_now(), "since": since })
        .to_string()
}

fn keepalive_line(topic: &TopicName) -> String {
    serde_json::json!({ "event": "keepalive", "topic": topic.to_string(), "time": rmb_proto::time::unix_now() })
        .to_string()
}

async fn json_lines(
    State(api): State<Api>,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let topic = topic(path)?;
    let q = bodies::query(raw)?;
    if q.poll {
        let since = resolve(&api, &topic, q.since).await?.unwrap_or(0);
        let messages = api.topics.pull(&topic, since, q.limit).await?;
        let mut out = String::new();
        for m in messages {
            out.push_str(&serde_json::to_string(&m).expect("a message serialises"));
            out.push('\n');
        }
        return Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], out).into_response());
    }
    let wanted = resolve(&api, &topic, q.since).await?;
    ensure_subscribed(&api, &topic, wanted).await?;
    let since = start(&api, &topic, wanted).await?;
    let feed = Feed::new(api.topics.clone(), topic.clone(), since, api.stop.clone());
    let first = format!("{}\n", open_line(&topic, since));
    let lines = stream::once(async move { Ok::<_, Infallible>(first) }).chain_feed(feed, topic);
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}

/// Turns a feed into JSON lines after a first stream.
trait ChainFeed {
    fn chain_feed(
        self,
        feed: Feed,
        topic: TopicName,
    ) -> impl futures_util::Stream<Item = Result<String, Infallible>> + Send + 'static;
}

impl<S> ChainFeed for S
where
    S: futures_util::Stream<Item = Result<String, Infallible>> + Send + 'static,
{
    fn chain_feed(
        self,
        feed: Feed,
        topic: TopicName,
    ) -> impl futures_util::Stream<Item = Result<String, Infallible>> + Send + 'static {
        use futures_util::StreamExt;
        let rest = stream::unfold((feed, topic), |(mut feed, topic)| async move {
            let line = match feed.next().await? {
                Item::Event(_, json) => format!("{json}\n"),
                Item::Keepalive => format!("{}\n", keepalive_line(&topic)),
                Item::Failed(e) => {
                    format!("{}\n", serde_json::json!({ "event": "error", "error": e }))
                }
            };
            Some((Ok(line), (feed, topic)))
        });
        self.chain(rest)
    }
}

/// Server-sent events: each message and gap carries its id as the event's `id:`, so a
/// browser's `EventSource` that reconnects by itself sends `Last-Event-ID` and resumes
/// after it (`?since=` wins when both are given).
async fn sse(
    State(api): State<Api>,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let topic = topic(path)?;
    let mut q = bodies::query(raw)?;
    if q.since.is_none() {
        q.since = bodies::last_event_id(&headers)?.map(Since::Id);
    }
    let wanted = resolve(&api, &topic, q.since).await?;
    ensure_subscribed(&api, &topic, wanted).await?;
    let since = start(&api, &topic, wanted).await?;
    let feed = Feed::new(api.topics.clone(), topic.clone(), since, api.stop.clone());
    let open = SseEvent::default()
        .event("open")
        .data(open_line(&topic, since));
    let rest = stream::unfold(feed, |mut feed| async move {
        loop {
            let event = match feed.next().await? {
                Item::Event(id, json) => {
                    let kind = if json.contains("\"event\":\"gap\"") {
                        "gap"
                    } else {
                        "message"
                    };
                    SseEvent::default()
                        .event(kind)
                        .id(id.to_string())
                        .data(json.as_ref())
                }
                // Sse's own keep-alive comments cover idle time.
                Item::Keepalive => continue,
                Item::Failed(e) => SseEvent::default()
                    .event("error")
                    .data(serde_json::json!({ "event": "error", "error": e }).to_string()),
            };
            return Some((Ok::<_, Infallible>(event), feed));
        }
    });
    use futures_util::StreamExt;
    let events = stream::once(async move { Ok::<_, Infallible>(open) }).chain(rest);
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

async fn ws(
    State(api): State<Api>,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(raw): RawQuery,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let topic = topic(path)?;
    let q = bodies::query(raw)?;
    let upgrade = upgrade.map_err(|e| {
        ApiError::bad_request(format!("this endpoint is a WebSocket: {}", e.body_text()))
    })?;
    let wanted = resolve(&api, &topic, q.since).await?;
    ensure_subscribed(&api, &topic, wanted).await?;
    let since = start(&api, &topic, wanted).await?;
    let feed = Feed::new(api.topics.clone(), topic.clone(), since, api.stop.clone());
    let (refusals, stall) = (Arc::clone(&api.refusals), api.stall);
    Ok(upgrade
        .max_message_size(64 * 1024)
        .on_upgrade(move |socket| serve_ws(socket, feed, topic, since, refusals, stall)))
}

/// Sends `message`, giving up (and counting a slow consumer) when the client has not
/// taken it within `stall`.
async fn send_ws(
    socket: &mut WebSocket,
    message: Message,
    refusals: &Refusals,
    stall: Duration,
) -> bool {
    match tokio::time::timeout(stall, socket.send(message)).await {
        Ok(sent) => sent.is_ok(),
        Err(_) => {
            refusals.count("slow_consumer");
            false
        }
    }
}

/// Sends the feed as text frames until the client leaves, stops reading for `stall`, or
/// the API stops; what the client sends is ignored (pings are answered by the WebSocket
/// layer).
async fn serve_ws(
    mut socket: WebSocket,
    mut feed: Feed,
    topic: TopicName,
    since: u64,
    refusals: Arc<Refusals>,
    stall: Duration,
) {
    let open = Message::Text(open_line(&topic, since).into());
    if !send_ws(&mut socket, open, &refusals, stall).await {
        return;
    }
    loop {
        let line = tokio::select! {
            item = feed.next() => match item {
                Some(Item::Event(_, json)) => json.to_string(),
                Some(Item::Keepalive) => keepalive_line(&topic),
                Some(Item::Failed(e)) => serde_json::json!({ "event": "error", "error": e }).to_string(),
                None => break,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            },
        };
        if !send_ws(&mut socket, Message::Text(line.into()), &refusals, stall).await {
            return;
        }
    }
    let _ = tokio::time::timeout(stall, socket.send(Message::Close(None))).await;
}

async fn subscribe(
    State(api): State<Api>,
    path: Result<Path<(String, String)>, PathRejection>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let topic = topic(path)?;
    let bytes = body(bytes)?;
    let b = bodies::subscription(&bytes)?;
    Ok(Json(api.topics.subscribe(&topic, b.since, b.redis_list).await?).into_response())
}

async fn unsubscribe(
    State(api): State<Api>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let topic = topic(path)?;
    api.topics.unsubscribe(&topic).await?;
    Ok(
        Json(serde_json::json!({ "topic": topic.to_string(), "subscribed": false }))
            .into_response(),
    )
}

/// Answer of `POST /call`.
#[derive(Debug, Serialize)]
struct CallAnswer {
    twin: u32,
    /// The reply as text, or base64 when `encoding` says so.
    payload: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    schema: Option<String>,
}

async fn call(
    State(api): State<Api>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let bytes = body(bytes)?;
    let call = bodies::call(&bytes)?;
    let twin = call.destination.twin;
    let response = api
        .topics
        .call(call.destination, &call.cmd, call.payload, call.timeout)
        .await?;
    let reply = response
        .reply
        .map_err(|error| TopicError::Remote { twin, error })?;
    let (payload, encoding) = match String::from_utf8(reply) {
        Ok(text) => (text, None),
        Err(e) => (B64.encode(e.as_bytes()), Some("base64")),
    };
    Ok(Json(CallAnswer {
        twin: response.source.twin,
        payload,
        encoding,
        schema: response.schema,
    })
    .into_response())
}
