//! The app's side of local pipes: asks the local rmb-peer's HTTP API (TCP or Unix socket)
//! to open or listen, then moves bytes between local input/output and the pipe's frames
//! and reports how the connection ended. `rmb pipe` and `rmb forward` use it by default,
//! so they need no mnemonic, relay or registry of their own.

use std::path::PathBuf;
use std::time::Duration;

use axum::body::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Request;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadHalf, WriteHalf,
};
use tokio_util::sync::CancellationToken;

use super::serve::UPGRADE;
use super::wire::{self, Frame, FrameError};

type Io = TokioIo<Upgraded>;

/// Longest wait to reach the local API.
const CONNECT_WAIT: Duration = Duration::from_secs(5);
/// Longest wait for the answer to an open (the peer's open timeout is 15 s by default).
const OPEN_WAIT: Duration = Duration::from_secs(60);
/// Longest wait for the answer to a listen (given at once).
const LISTEN_WAIT: Duration = Duration::from_secs(10);
/// Bytes read from the app's input per DATA frame.
const CHUNK: usize = 128 * 1024;
/// Longest wait, after the pipe failed, for the app's FIN to go out.
const FIN_WAIT: Duration = Duration::from_secs(5);

/// Where the local API listens.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// `host:port` of `rmb-peer --http`.
    Tcp(String),
    /// The path of `rmb-peer --http-socket`.
    Unix(PathBuf),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(authority) => write!(f, "http://{authority}"),
            Endpoint::Unix(path) => write!(f, "the socket {}", path.display()),
        }
    }
}

/// Why a pipe could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PipeApiError {
    /// The URL is not `http://host[:port]`.
    #[error("'{0}' is not an http://HOST:PORT address of the peer's HTTP API")]
    Url(String),
    /// Nothing answers there.
    #[error(
        "no rmb-peer HTTP API at {endpoint} ({source}): start rmb-peer with --http \
         127.0.0.1:8051 (or --http-socket PATH and give it here), or give --relay and a \
         secret to run a direct client"
    )]
    NoPeer {
        endpoint: Endpoint,
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("talking to the peer's HTTP API at {endpoint}: {detail}")]
    Http { endpoint: Endpoint, detail: String },
    /// The API answered in time but said no.
    #[error("{message} (HTTP {status})")]
    Refused { status: u16, message: String },
    /// No answer in time.
    #[error("the peer's HTTP API at {0} did not answer in time")]
    Timeout(Endpoint),
}

/// How a pipe ended badly.
#[derive(Debug, thiserror::Error)]
pub enum PipeFailure {
    /// The peer reported the connection failed.
    #[error("{0}")]
    Remote(String),
    /// The local peer went away without saying how the connection ended.
    #[error("the local rmb-peer closed the pipe without saying how the connection ended")]
    PeerGone,
    /// The local peer broke the framing.
    #[error("the local rmb-peer sent something unexpected: {0}")]
    Framing(FrameError),
    /// Reading the local input failed.
    #[error("reading the input: {0}")]
    Input(std::io::Error),
    /// Writing the local output failed.
    #[error("writing the output: {0}")]
    Output(std::io::Error),
    /// Writing to the local peer failed.
    #[error("writing to the local rmb-peer: {0}")]
    Local(std::io::Error),
}

/// The local HTTP API of an rmb-peer, as a pipe client sees it.
#[derive(Debug, Clone)]
pub struct LocalApi {
    endpoint: Endpoint,
    token: Option<String>,
}

impl LocalApi {
    /// The API at `url` (`http://host:port`), or at `socket` when given; `token` is sent
    /// as a bearer token.
    pub fn new(
        url: &str,
        socket: Option<PathBuf>,
        token: Option<String>,
    ) -> Result<LocalApi, PipeApiError> {
        let endpoint = match socket {
            Some(path) => Endpoint::Unix(path),
            None => {
                let rest = url
                    .strip_prefix("http://")
                    .ok_or_else(|| PipeApiError::Url(url.to_string()))?;
                let authority = rest.split('/').next().unwrap_or_default();
                if authority.is_empty() {
                    return Err(PipeApiError::Url(url.to_string()));
                }
                let authority = if authority
                    .rsplit_once(':')
                    .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
                {
                    authority.to_string()
                } else {
                    format!("{authority}:80")
                };
                Endpoint::Tcp(authority)
            }
        };
        Ok(LocalApi { endpoint, token })
    }

    /// Opens a connection to `to` (`TWIN` or `TWIN:SID`) for `protocol`.
    pub async fn open(&self, to: &str, protocol: &str) -> Result<AppPipe, PipeApiError> {
        let query = format!("to={}&protocol={}", encode(to), encode(protocol));
        let (io, headers) = self.upgrade("/pipes/open", &query, OPEN_WAIT).await?;
        let (reader, writer) = tokio::io::split(io);
        Ok(AppPipe {
            reader: BufReader::with_capacity(wire::MAX_DATA + wire::HEADER, reader),
            writer,
            remote: header(&headers, "rmb-remote").unwrap_or_else(|| to.to_string()),
        })
    }

    /// Listens for `protocol` as the peer's twin; `allow` limits who may open (empty:
    /// any twin); `keep` serves connection after connection.
    pub async fn listen(
        &self,
        protocol: &str,
        allow: &[u32],
        keep: bool,
    ) -> Result<AppListener, PipeApiError> {
        let mut query = format!("protocol={}", encode(protocol));
        if !allow.is_empty() {
            let list: Vec<String> = allow.iter().map(u32::to_string).collect();
            query.push_str(&format!("&allow={}", list.join(",")));
        }
        if keep {
            query.push_str("&keep=1");
        }
        let (io, headers) = self.upgrade("/pipes/listen", &query, LISTEN_WAIT).await?;
        let (reader, writer) = tokio::io::split(io);
        Ok(AppListener {
            reader: BufReader::with_capacity(wire::MAX_DATA + wire::HEADER, reader),
            writer,
            address: header(&headers, "rmb-address").unwrap_or_default(),
        })
    }

    async fn upgrade(
        &self,
        path: &str,
        query: &str,
        wait: Duration,
    ) -> Result<(Io, hyper::HeaderMap), PipeApiError> {
        let endpoint = self.endpoint.clone();
        let http_err = |detail: String| PipeApiError::Http {
            endpoint: endpoint.clone(),
            detail,
        };
        let connected = tokio::time::timeout(CONNECT_WAIT, async {
            match &self.endpoint {
                Endpoint::Tcp(authority) => tokio::net::TcpStream::connect(authority.as_str())
                    .await
                    .map(|tcp| {
                        let _ = tcp.set_nodelay(true);
                        Conn::Tcp(tcp)
                    }),
                Endpoint::Unix(path) => tokio::net::UnixStream::connect(path).await.map(Conn::Unix),
            }
        })
        .await
        .map_err(|_| PipeApiError::Timeout(endpoint.clone()))?
        .map_err(|source| PipeApiError::NoPeer {
            endpoint: endpoint.clone(),
            source,
        })?;
        let host = match &self.endpoint {
            Endpoint::Tcp(authority) => authority.clone(),
            Endpoint::Unix(_) => "localhost".to_string(),
        };
        let exchange = async {
            let (mut sender, conn) = match connected {
                Conn::Tcp(tcp) => handshake(tcp).await,
                Conn::Unix(unix) => handshake(unix).await,
            }
            .map_err(|e| http_err(e.to_string()))?;
            tokio::spawn(conn);
            let mut request = Request::post(format!("{path}?{query}"))
                .header(hyper::header::HOST, host)
                .header(hyper::header::UPGRADE, UPGRADE)
                .header(hyper::header::CONNECTION, "upgrade")
                .header(hyper::header::CONTENT_TYPE, "application/vnd.rmb.pipe");
            if let Some(token) = &self.token {
                request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
            }
            let request = request
                .body(Empty::<Bytes>::new())
                .map_err(|e| http_err(e.to_string()))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| http_err(e.to_string()))?;
            if response.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
                let status = response.status().as_u16();
                let body = Limited::new(response.into_body(), 64 * 1024)
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let message = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                    .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
                let message = if status == 404 && message.is_empty() {
                    "this rmb-peer has no pipe API (an older version?)".to_string()
                } else {
                    message
                };
                return Err(PipeApiError::Refused { status, message });
            }
            let headers = response.headers().clone();
            let upgraded = hyper::upgrade::on(response)
                .await
                .map_err(|e| http_err(e.to_string()))?;
            Ok((TokioIo::new(upgraded), headers))
        };
        tokio::time::timeout(wait, exchange)
            .await
            .map_err(|_| PipeApiError::Timeout(endpoint.clone()))?
    }
}

enum Conn {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// The HTTP connection's driver, run in its own task until the upgrade hands it over.
type Driver = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

async fn handshake<T>(io: T) -> hyper::Result<(Sender, Driver)>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    Ok((
        sender,
        Box::pin(async move {
            let _ = conn.with_upgrades().await;
        }),
    ))
}

fn header(headers: &hyper::HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Percent-encodes a query value (twin addresses and protocol names are short ASCII).
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One open connection through the local peer.
pub struct AppPipe {
    reader: BufReader<ReadHalf<Io>>,
    writer: WriteHalf<Io>,
    remote: String,
}

impl AppPipe {
    /// The far side's address.
    pub fn remote(&self) -> &str {
        &self.remote
    }

    /// Moves `input` to the far side and the far side's bytes to `output`, each
    /// direction ending on its own (input's end half-closes; the far side's end shuts
    /// `output` down). Ok only when both ended and the far side acknowledged everything.
    pub async fn run<I, O>(mut self, input: &mut I, output: &mut O) -> Result<(), PipeFailure>
    where
        I: AsyncRead + Unpin,
        O: AsyncWrite + Unpin,
    {
        run_pipe(&mut self.reader, &mut self.writer, input, output)
            .await
            .0
    }
}

/// A listener held by the local peer for this app.
pub struct AppListener {
    reader: BufReader<ReadHalf<Io>>,
    writer: WriteHalf<Io>,
    address: String,
}

/// An accepted connection, as the OPENED frame describes it.
#[derive(Debug, Clone)]
pub struct Opened {
    /// Who opened it (`TWIN` or `TWIN:SID`).
    pub remote: String,
    /// The cipher of the connection.
    pub cipher: String,
}

impl AppListener {
    /// The address openers use (the peer's twin).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Waits for the next connection; `None` when the peer ended the listener.
    pub async fn next(&mut self) -> Result<Option<Opened>, PipeFailure> {
        let mut buf = Vec::new();
        match wire::read_frame(&mut self.reader, &mut buf).await {
            Ok(Frame::Opened(json)) => {
                let value: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
                let field = |name: &str| {
                    value
                        .get(name)
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                        .to_string()
                };
                Ok(Some(Opened {
                    remote: field("remote"),
                    cipher: field("cipher"),
                }))
            }
            Ok(Frame::Error(reason)) => Err(PipeFailure::Remote(reason)),
            Err(FrameError::Eof) => Ok(None),
            Ok(other) => Err(PipeFailure::Framing(FrameError::Kind(kind_of(&other)))),
            Err(e) => Err(PipeFailure::Framing(e)),
        }
    }

    /// Serves the connection [`AppListener::next`] returned, as [`AppPipe::run`] does.
    /// After an error the listener can serve the next one only if the framing stayed in
    /// step; the second value says so.
    pub async fn serve<I, O>(
        &mut self,
        input: &mut I,
        output: &mut O,
    ) -> (Result<(), PipeFailure>, bool)
    where
        I: AsyncRead + Unpin,
        O: AsyncWrite + Unpin,
    {
        run_pipe(&mut self.reader, &mut self.writer, input, output).await
    }
}

fn kind_of(frame: &Frame) -> u8 {
    match frame {
        Frame::Data(_) => 0x01,
        Frame::Fin => 0x02,
        Frame::Done => 0x03,
        Frame::Error(_) => 0x04,
        Frame::Opened(_) => 0x05,
    }
}

/// The app's half of one connection; the bool says whether the framing is still in step.
async fn run_pipe<R, W, I, O>(
    reader: &mut BufReader<R>,
    writer: &mut W,
    input: &mut I,
    output: &mut O,
) -> (Result<(), PipeFailure>, bool)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    I: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
{
    let failed = CancellationToken::new();
    // Input → peer. Stops reading when the pipe failed, and sends the FIN the peer waits
    // for either way; a frame is never cut (only the read is abandoned).
    let upload = async {
        let mut frame = vec![0u8; wire::HEADER + CHUNK];
        loop {
            let read = tokio::select! {
                biased;
                _ = failed.cancelled() => None,
                read = input.read(&mut frame[wire::HEADER..]) => Some(read),
            };
            match read {
                None | Some(Ok(0)) => {
                    return wire::write_fin(writer).await.map_err(PipeFailure::Local);
                }
                Some(Ok(n)) => {
                    wire::data_header(&mut frame, n);
                    writer
                        .write_all(&frame[..wire::HEADER + n])
                        .await
                        .map_err(PipeFailure::Local)?;
                }
                Some(Err(e)) => return Err(PipeFailure::Input(e)),
            }
        }
    };
    // Peer → output, then how it ended.
    let download = async {
        let mut buf = Vec::with_capacity(wire::MAX_DATA);
        let result = loop {
            match wire::read_frame(reader, &mut buf).await {
                Ok(Frame::Data(_)) => {
                    if let Err(e) = output.write_all(&buf).await {
                        break Err(PipeFailure::Output(e));
                    }
                }
                Ok(Frame::Fin) => {
                    // Flush first: some writers (tokio's stdout) drop what is buffered
                    // on shutdown.
                    let ended = match output.flush().await {
                        Ok(()) => output.shutdown().await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = ended {
                        break Err(PipeFailure::Output(e));
                    }
                }
                Ok(Frame::Done) => break Ok(()),
                Ok(Frame::Error(reason)) => break Err(PipeFailure::Remote(reason)),
                Ok(Frame::Opened(_)) => break Err(PipeFailure::Framing(FrameError::Kind(0x05))),
                Err(FrameError::Eof) => break Err(PipeFailure::PeerGone),
                Err(e) => break Err(PipeFailure::Framing(e)),
            }
        };
        if result.is_err() {
            failed.cancel();
        }
        result
    };
    tokio::pin!(upload, download);
    let mut uploaded = false;
    loop {
        tokio::select! {
            result = &mut upload, if !uploaded => match result {
                Ok(()) => uploaded = true,
                // The peer resets the connection when this side goes without a FIN.
                Err(e) => return (Err(e), false),
            },
            result = &mut download => {
                let in_step = matches!(result, Ok(()) | Err(PipeFailure::Remote(_) | PipeFailure::Output(_)));
                if !uploaded {
                    // Done comes only after our FIN; after a failure the FIN still goes out.
                    match tokio::time::timeout(FIN_WAIT, &mut upload).await {
                        Ok(Ok(())) => {}
                        _ => return (result, false),
                    }
                }
                return (result, in_step);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_of_the_local_api() {
        let api = LocalApi::new("http://127.0.0.1:8051", None, None).unwrap();
        assert!(matches!(api.endpoint, Endpoint::Tcp(ref a) if a == "127.0.0.1:8051"));
        let api = LocalApi::new("http://localhost/", None, None).unwrap();
        assert!(matches!(api.endpoint, Endpoint::Tcp(ref a) if a == "localhost:80"));
        let api = LocalApi::new("ignored", Some("/run/p.sock".into()), None).unwrap();
        assert!(matches!(api.endpoint, Endpoint::Unix(_)));
        assert!(LocalApi::new("https://x:1", None, None).is_err());
        assert!(LocalApi::new("http://", None, None).is_err());
        assert_eq!(encode("7:pipe"), "7:pipe");
        assert_eq!(encode("a b&c"), "a%20b%26c");
    }
}
