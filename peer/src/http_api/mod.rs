//! The peer's local HTTP API (`rmb-peer --http 127.0.0.1:PORT`), beside the Redis API:
//! topics (publish with one POST, pull as JSON lines, live subscribe over a JSON stream,
//! SSE or a WebSocket, list/create/configure) and `POST /call` for plain requests, so an
//! app needs only curl. Shapes follow ntfy's (`id`, `topic`, `time`, `message`,
//! `?since=`, `?poll=1`). See docs/topics.md.
//!
//! Who may use it is decided in [`access`] (Host, Origin and content-type rules against
//! web pages, an optional bearer token, a Unix socket); [`guard`] applies those rules and
//! reads request bodies under a deadline; [`listener`] caps connections, puts deadlines
//! on every wait for a request and drops clients that stop reading. docs/topics.md says
//! what a web page can and cannot do. [`metrics`] serves `--metrics-listen` with the
//! same defences.

pub mod access;
pub mod bodies;
pub mod error;
pub mod feed;
pub mod guard;
pub mod listener;
pub mod metrics;
pub mod routes;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::conn::Connections;
use crate::pipes::serve::PipeService;
use crate::topics::Topics;
use access::{Access, Transport};
use guard::{Guard, Refusals};
use listener::{ConnOptions, Listener};

/// Default of `--http-max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 256;
/// Default of `--http-header-timeout`, in seconds.
pub const DEFAULT_HEADER_TIMEOUT_SECS: u64 = 10;
/// Default of `--http-body-timeout`, in seconds.
pub const DEFAULT_BODY_TIMEOUT_SECS: u64 = 30;
/// Default of `--http-stall-timeout`, in seconds.
pub const DEFAULT_STALL_TIMEOUT_SECS: u64 = 30;

/// Where and how the API serves (the `--http…` flags).
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// TCP address (`--http`).
    pub listen: Option<SocketAddr>,
    /// Unix socket path (`--http-socket`).
    pub socket: Option<PathBuf>,
    /// Host names accepted besides IP literals and `localhost` (`--http-host`).
    pub hosts: Vec<String>,
    /// Origins allowed to make cross-origin requests (`--http-allow-origin`).
    pub origins: Vec<String>,
    /// Bearer token required on TCP (read from `--http-token-file`).
    pub token: Option<String>,
    /// Connection cap and deadlines.
    pub conn: ConnOptions,
    /// Deadline for a request body.
    pub body_timeout: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            listen: None,
            socket: None,
            hosts: Vec::new(),
            origins: Vec::new(),
            token: None,
            conn: ConnOptions {
                max_connections: DEFAULT_MAX_CONNECTIONS as usize,
                header_timeout: Duration::from_secs(DEFAULT_HEADER_TIMEOUT_SECS),
                stall_timeout: Duration::from_secs(DEFAULT_STALL_TIMEOUT_SECS),
            },
            body_timeout: Duration::from_secs(DEFAULT_BODY_TIMEOUT_SECS),
        }
    }
}

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpApiError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on the Unix socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the HTTP token file {path}: {source}")]
    Token {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("nothing to serve: give --http ADDR:PORT and/or --http-socket PATH")]
    NoListener,
}

/// A running HTTP API.
pub struct HttpApi {
    addr: Option<SocketAddr>,
    socket: Option<PathBuf>,
    refusals: Arc<Refusals>,
    stop: CancellationToken,
    task: JoinHandle<()>,
    pipes: Option<PipeService>,
}

/// Binds a TCP listener on `listen`; returns it and the address it got (the port chosen
/// when `listen` asks for any). Callers warn in their own words when it is beyond
/// loopback.
pub(crate) async fn bind_tcp(
    listen: SocketAddr,
) -> Result<(TcpListener, SocketAddr), HttpApiError> {
    let tcp = TcpListener::bind(listen)
        .await
        .map_err(|source| HttpApiError::Bind {
            addr: listen,
            source,
        })?;
    let bound = tcp.local_addr().unwrap_or(listen);
    Ok((tcp, bound))
}

impl HttpApi {
    /// Listens where `options` say and serves topics, and pipes over `connections` when
    /// given.
    pub async fn start(
        options: HttpOptions,
        topics: Topics,
        connections: Option<Connections>,
    ) -> Result<HttpApi, HttpApiError> {
        let mut listeners = Vec::new();
        let mut addr = None;
        if let Some(listen) = options.listen {
            let (tcp, bound) = bind_tcp(listen).await?;
            if !bound.ip().is_loopback() && options.token.is_none() {
                tracing::warn!(addr = %bound, "the HTTP API listens beyond loopback without --http-token-file: anyone who reaches it acts as this twin");
            }
            addr = Some(bound);
            listeners.push((Listener::Tcp(tcp), Transport::Tcp));
        }
        if let Some(path) = &options.socket {
            listeners.push((Listener::Unix(bind_unix(path)?), Transport::Unix));
        }
        if listeners.is_empty() {
            return Err(HttpApiError::NoListener);
        }
        let refusals = Arc::new(Refusals::default());
        let guard = Arc::new(Guard {
            access: Access::new(options.hosts, options.origins, options.token),
            refusals: Arc::clone(&refusals),
            body_timeout: options.body_timeout,
            max_body: routes::MAX_BODY,
        });
        let stop = CancellationToken::new();
        let pipes = connections.map(|c| PipeService::new(c, stop.clone()));
        let app = routes::router(
            topics,
            pipes.clone(),
            guard,
            options.conn.stall_timeout,
            stop.clone(),
        );
        let listeners = listeners
            .into_iter()
            .map(|(l, t)| (l, app.clone().layer(axum::Extension(t))))
            .collect();
        let task = tokio::spawn(listener::serve(
            listeners,
            options.conn,
            Arc::clone(&refusals),
            stop.clone(),
        ));
        tracing::info!(tcp = ?addr, socket = ?options.socket, "http api serving topics, /call and /pipes");
        Ok(HttpApi {
            addr,
            socket: options.socket,
            refusals,
            stop,
            task,
            pipes,
        })
    }

    /// The TCP address it listens on, if any.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// Refusals so far, by reason.
    pub fn refusals(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.refusals.snapshot()
    }

    /// Stops taking connections, ends live streams and waits (at most `grace`) for
    /// requests in progress; removes the Unix socket.
    pub async fn shutdown(self, grace: Duration) {
        self.stop.cancel();
        if let Some(pipes) = &self.pipes {
            pipes.wait(grace).await;
        }
        let mut task = self.task;
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            task.abort();
            let _ = task.await;
        }
        if let Some(path) = &self.socket {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Binds the Unix socket at `path`, replacing a stale one (a socket file nobody answers
/// on), readable and writable by this user only.
fn bind_unix(path: &Path) -> Result<tokio::net::UnixListener, HttpApiError> {
    let err = |source| HttpApiError::Socket {
        path: path.to_path_buf(),
        source,
    };
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            )));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another process serves on it",
            )));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// Reads the API token from `path`, creating the file with a new random token (mode
/// 0600) when it does not exist, so `rmb-peer --http-token-file F` works the first time
/// and clients read the same file.
pub fn load_or_create_token(path: &Path) -> Result<String, HttpApiError> {
    let err = |source| HttpApiError::Token {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let token = text.trim().to_string();
            if token.is_empty() {
                return Err(err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "the file is empty",
                )));
            }
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use rand::RngCore;
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut bytes = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut bytes);
            let token = hex_string(&bytes);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(err)?;
            file.write_all(format!("{token}\n").as_bytes())
                .map_err(err)?;
            tracing::info!(path = %path.display(), "created a new HTTP API token");
            Ok(token)
        }
        Err(e) => Err(err(e)),
    }
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
