//! The peer's side of local pipes: two routes of the local HTTP API that turn an
//! upgraded HTTP connection into one end of a bus connection, so `rmb pipe` and
//! `rmb forward` need no keys, relays or registry of their own.
//!
//! - `POST /pipes/open?to=TWIN[:SID]&protocol=P`: opens a connection; answers 101 once
//!   it is open (the `Rmb-Remote` header names it), or an error saying why not.
//! - `POST /pipes/listen?protocol=P[&allow=7,9][&keep=1]`: listens for P as this twin;
//!   answers 101 at once (`Rmb-Address` says whom to open), then an OPENED frame per
//!   accepted connection. Without `keep` it serves one connection; with it, one after
//!   another while the app stays, and opens arriving meanwhile wait in the backlog.
//!
//! Both need `Upgrade: rmb-pipe`, which no web page can send; the API's guard has
//! already checked Host, Origin and the token. Frames: [`super::wire`].

use std::collections::HashSet;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hyper_util::rt::TokioIo;
use rmb_proto::Address;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::wire::{self, Frame, FrameError};
use crate::conn::{ConnectError, Connections, ListenError, ListenOptions, Stream};
use crate::http_api::error::ApiError;

/// The `Upgrade` token of a local pipe.
pub const UPGRADE: &str = "rmb-pipe";
/// Bytes read from the bus connection per DATA frame sent to the app.
const CHUNK: usize = 128 * 1024;
/// Longest wait, once both directions ended, for the far side to acknowledge the rest.
const FINISH_WAIT: Duration = Duration::from_secs(30);

/// What the pipe routes share: the peer's connections, a stop signal, and the tasks
/// bridging upgraded connections (so shutdown can wait for them).
#[derive(Clone)]
pub struct PipeService {
    connections: Connections,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl PipeService {
    /// Pipes over `connections`; `stop` ends every pipe with an ERROR frame.
    pub fn new(connections: Connections, stop: CancellationToken) -> PipeService {
        PipeService {
            connections,
            stop,
            tasks: TaskTracker::new(),
        }
    }

    /// The routes, to merge into the API's router (inside its guard).
    pub fn routes<S: Clone + Send + Sync + 'static>(self) -> Router<S> {
        Router::new()
            .route("/pipes/open", post(open))
            .route("/pipes/listen", post(listen))
            .with_state(self)
    }

    /// Waits (at most `grace`) for pipes to end after the stop signal.
    pub async fn wait(&self, grace: Duration) {
        self.tasks.close();
        let _ = tokio::time::timeout(grace, self.tasks.wait()).await;
    }
}

#[derive(Debug, Deserialize)]
struct OpenQuery {
    to: String,
    protocol: String,
}

#[derive(Debug, Deserialize)]
struct ListenQuery {
    protocol: String,
    allow: Option<String>,
    keep: Option<String>,
}

/// Refuses a request that is not an `rmb-pipe` upgrade.
fn check_upgrade(request: &Request) -> Result<(), ApiError> {
    let wants = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(UPGRADE));
    if wants {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "a pipe needs `Upgrade: rmb-pipe` (use rmb pipe or rmb forward)",
        ))
    }
}

fn switching(headers: &[(&'static str, String)]) -> Response {
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static(UPGRADE));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::from_str(value) {
            h.insert(*name, value);
        }
    }
    response
}

fn connect_error(e: &ConnectError) -> StatusCode {
    match e {
        ConnectError::InvalidProtocol(_) => StatusCode::BAD_REQUEST,
        ConnectError::UnknownTwin(_) | ConnectError::UnknownProtocol { .. } => {
            StatusCode::NOT_FOUND
        }
        ConnectError::Refused { .. } | ConnectError::NotAllowed { .. } => StatusCode::FORBIDDEN,
        ConnectError::Busy { .. } | ConnectError::TooMany(_) | ConnectError::Closed => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        ConnectError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    }
}

async fn open(
    State(service): State<PipeService>,
    Query(query): Query<OpenQuery>,
    mut request: Request,
) -> Result<Response, ApiError> {
    check_upgrade(&request)?;
    let to: Address = query
        .to
        .parse()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("to={:?}: {e}", query.to)))?;
    let upgrade = hyper::upgrade::on(&mut request);
    let stream = service
        .connections
        .connect_address(to.clone(), &query.protocol)
        .await
        .map_err(|e| ApiError::new(connect_error(&e), e.to_string()))?;
    let remote = stream.remote().to_string();
    let tasks = service.tasks.clone();
    tasks.spawn(async move {
        let Ok(upgraded) = upgrade.await else {
            stream.abort();
            return;
        };
        let (reader, mut writer) = tokio::io::split(TokioIo::new(upgraded));
        let mut reader = BufReader::with_capacity(wire::MAX_DATA + wire::HEADER, reader);
        let _ = bridge(&mut reader, &mut writer, stream, &service.stop).await;
        let _ = writer.shutdown().await;
    });
    Ok(switching(&[("rmb-remote", remote)]))
}

async fn listen(
    State(service): State<PipeService>,
    Query(query): Query<ListenQuery>,
    mut request: Request,
) -> Result<Response, ApiError> {
    check_upgrade(&request)?;
    let allow = match query.allow.as_deref().filter(|a| !a.is_empty()) {
        None => None,
        Some(list) => Some(
            list.split(',')
                .map(|t| t.trim().parse::<u32>())
                .collect::<Result<HashSet<u32>, _>>()
                .map_err(|_| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!("allow={list:?} is not a list of twin ids"),
                    )
                })?,
        ),
    };
    let keep = matches!(query.keep.as_deref(), Some("1" | "true" | "yes" | ""));
    let mut listener = service
        .connections
        .listen(&query.protocol, ListenOptions { allow })
        .map_err(|e| match e {
            ListenError::AlreadyListening(p) => ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "this peer already listens for '{p}' (an --expose rule, or another rmb pipe \
                     listen)"
                ),
            ),
            e => ApiError::new(StatusCode::BAD_REQUEST, e.to_string()),
        })?;
    let address = service.connections.local_address().to_string();
    let upgrade = hyper::upgrade::on(&mut request);
    let tasks = service.tasks.clone();
    tasks.spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let (reader, mut writer) = tokio::io::split(TokioIo::new(upgraded));
        let mut reader = BufReader::with_capacity(wire::MAX_DATA + wire::HEADER, reader);
        loop {
            // While waiting, the app sends nothing: anything readable is its end.
            let incoming = tokio::select! {
                biased;
                _ = service.stop.cancelled() => {
                    let _ = wire::write_error(&mut writer, "the peer is shutting down").await;
                    break;
                }
                _ = reader.fill_buf() => break,
                incoming = listener.next() => match incoming {
                    Some(incoming) => incoming,
                    None => break,
                },
            };
            let remote = incoming.remote().to_string();
            let stream = match incoming.accept().await {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::debug!(%remote, error = %e, "pipe listen: accepting failed");
                    continue;
                }
            };
            let opened = serde_json::json!({
                "remote": remote,
                "protocol": listener.protocol(),
                "cipher": stream.cipher().to_string(),
            })
            .to_string();
            if wire::write_opened(&mut writer, &opened).await.is_err() {
                stream.abort();
                break;
            }
            let synced = bridge(&mut reader, &mut writer, stream, &service.stop).await;
            if !(keep && synced) {
                break;
            }
        }
        drop(listener);
        let _ = writer.shutdown().await;
    });
    Ok(switching(&[("rmb-address", address)]))
}

/// Why one direction of a bridge stopped early.
enum Broke {
    /// The app's side closed or broke the framing: the connection is reset.
    App,
    /// The bus connection failed; the app was told (ERROR frame) if it could be.
    Bus,
}

/// Carries one bus connection over the app's frames until both directions ended and the
/// far side acknowledged everything (DONE), or it failed (ERROR). Returns true when the
/// framing is still in step (the app's FIN for this connection was read), so a `keep`
/// listener may serve the next connection on it.
async fn bridge<R, W>(
    reader: &mut BufReader<R>,
    writer: &mut W,
    stream: Stream,
    stop: &CancellationToken,
) -> bool
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (mut from_bus, mut to_bus) = tokio::io::split(stream);
    let mut failed = false;
    // The upload's writes failing after the download already ended: the download, which
    // owns the app's writer, tells the app.
    let write_failed = CancellationToken::new();
    let write_error: OnceLock<String> = OnceLock::new();
    let fin_sent = AtomicBool::new(false);
    let parked = Notify::new();
    let outcome = {
        // App → bus: runs until the app's FIN, even after the bus failed (then it
        // discards), so the framing stays in step.
        let upload = async {
            let mut buf = Vec::with_capacity(CHUNK);
            let mut writing = true;
            loop {
                match wire::read_frame(reader, &mut buf).await {
                    Ok(Frame::Data(_)) => {
                        if writing && let Err(e) = to_bus.write_all(&buf).await {
                            writing = false;
                            let _ = write_error.set(format!("the connection failed: {e}"));
                            write_failed.cancel();
                        }
                    }
                    Ok(Frame::Fin) => {
                        if writing {
                            let _ = to_bus.shutdown().await;
                        }
                        return Ok(());
                    }
                    Ok(_) | Err(FrameError::Eof | FrameError::Io(_)) => return Err(Broke::App),
                    Err(e) => {
                        tracing::debug!(error = %e, "pipe: the app broke the framing");
                        return Err(Broke::App);
                    }
                }
            }
        };
        // Bus → app: DATA frames, then FIN at the far side's end; ERROR on failure, also
        // a failure the upload meets after the FIN.
        let download = async {
            let mut frame = vec![0u8; wire::HEADER + CHUNK];
            loop {
                match from_bus.read(&mut frame[wire::HEADER..]).await {
                    Ok(0) => break,
                    Ok(n) => {
                        wire::data_header(&mut frame, n);
                        if writer.write_all(&frame[..wire::HEADER + n]).await.is_err() {
                            return Err(Broke::App);
                        }
                    }
                    Err(e) => {
                        let reason = format!("the connection failed: {e}");
                        let _ = wire::write_error(writer, &reason).await;
                        return Err(Broke::Bus);
                    }
                }
            }
            wire::write_fin(writer).await.map_err(|_| Broke::App)?;
            fin_sent.store(true, Ordering::Release);
            parked.notify_one();
            write_failed.cancelled().await;
            let reason = write_error
                .get()
                .map_or("the connection failed", String::as_str);
            let _ = wire::write_error(writer, reason).await;
            Err(Broke::Bus)
        };
        tokio::pin!(upload, download);
        let (mut up, mut down) = (false, false);
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break Err(Broke::App),
                // The download parked after its FIN: look again whether both are done.
                _ = parked.notified() => {}
                result = &mut upload, if !up => {
                    if result.is_err() {
                        break Err(Broke::App);
                    }
                    up = true;
                }
                result = &mut download, if !down => match result {
                    Ok(()) => down = true,
                    Err(Broke::App) => break Err(Broke::App),
                    Err(Broke::Bus) => {
                        failed = true;
                        down = true;
                    }
                },
            }
            // A download parked after its FIN may go; one telling the app of a failure
            // finishes its frame first.
            let idle = fin_sent.load(Ordering::Acquire) && !write_failed.is_cancelled();
            if up && (down || idle) {
                break Ok(());
            }
        }
    };
    let mut stream = from_bus.unsplit(to_bus);
    match outcome {
        Err(_) => {
            stream.abort();
            if stop.is_cancelled() {
                let _ = wire::write_error(writer, "the peer is shutting down").await;
            }
            false
        }
        Ok(()) if failed => true,
        Ok(()) => {
            let reason = match tokio::time::timeout(FINISH_WAIT, stream.finish()).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("the far side did not take everything: {e}")),
                Err(_) => Some(format!(
                    "the far side did not acknowledge the end within {} s",
                    FINISH_WAIT.as_secs()
                )),
            };
            let written = match reason {
                None => wire::write_done(writer).await,
                Some(reason) => {
                    stream.abort();
                    wire::write_error(writer, &reason).await
                }
            };
            written.is_ok()
        }
    }
}
