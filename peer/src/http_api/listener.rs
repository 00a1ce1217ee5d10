//! The HTTP API's accept loops (TCP and Unix socket): a cap on open connections, a
//! deadline on every wait for a request, bounded write buffers, and slow readers dropped.
//!
//! `axum::serve` has none of these, so a client could hold connections forever (idle, or
//! drip-feeding headers) and a live stream that is never read would grow the peer's
//! memory. Here each connection:
//!
//! 1. takes a slot of `--http-max-connections` (shared by both listeners) for as long as
//!    its socket lives, a WebSocket included; over the cap it is closed at once;
//! 2. is served HTTP/1.1 by hyper with `--http-header-timeout` as the deadline for each
//!    request's headers, which also ends a connection that sends nothing and an idle
//!    keep-alive one; bodies have their own deadline ([`super::guard`]);
//! 3. buffers at most [`WRITE_BUFFER`] bytes of answer in the process before hyper stops
//!    asking a stream for more, and is closed when a write has waited longer than
//!    `--http-stall-timeout` (a reader that stopped reading; it resumes with `since`).
//!    WebSocket streams apply the same deadline to each send ([`Stall`]).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rmb_proto::throttle::LogThrottle;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::guard::Refusals;

/// Most answer bytes hyper holds for one connection before it waits for the socket
/// (its default is about 400 KiB; requests' headers must also fit).
pub const WRITE_BUFFER: usize = 64 * 1024;
/// Pause after a failed accept (e.g. out of file descriptors) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How long shutdown waits for open exchanges.
const DRAIN: Duration = Duration::from_secs(2);

static LIMIT_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(10));

/// The connection limits and deadlines.
#[derive(Debug, Clone, Copy)]
pub struct ConnOptions {
    /// Most connections open at once (both listeners together).
    pub max_connections: usize,
    /// Deadline for each request's headers, and for the first byte of the next one.
    pub header_timeout: Duration,
    /// Longest a write may wait on a client that does not read.
    pub stall_timeout: Duration,
}

/// A listener the loop can accept from.
pub enum Listener {
    /// `--http`.
    Tcp(tokio::net::TcpListener),
    /// `--http-socket`.
    Unix(tokio::net::UnixListener),
}

/// Serves `app` on every listener until `stop`; returns when all are closed and the open
/// exchanges are done (or [`DRAIN`] passed).
pub async fn serve(
    listeners: Vec<(Listener, Router)>,
    options: ConnOptions,
    refusals: Arc<Refusals>,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(options.max_connections));
    let connections = TaskTracker::new();
    let loops = TaskTracker::new();
    for (listener, app) in listeners {
        let ctx = Ctx {
            app,
            options,
            refusals: Arc::clone(&refusals),
            stop: stop.clone(),
            slots: Arc::clone(&slots),
            connections: connections.clone(),
        };
        loops.spawn(ctx.accept_loop(listener));
    }
    loops.close();
    loops.wait().await;
    connections.close();
    let _ = tokio::time::timeout(DRAIN, connections.wait()).await;
}

#[derive(Clone)]
struct Ctx {
    app: Router,
    options: ConnOptions,
    refusals: Arc<Refusals>,
    stop: CancellationToken,
    slots: Arc<Semaphore>,
    connections: TaskTracker,
}

impl Ctx {
    async fn accept_loop(self, listener: Listener) {
        loop {
            let accepted = tokio::select! {
                biased;
                _ = self.stop.cancelled() => return,
                accepted = accept(&listener) => accepted,
            };
            let io = match accepted {
                Ok(io) => io,
                Err(e) => {
                    if let Some(held_back) = LIMIT_LOG.allow() {
                        tracing::warn!(error = %e, held_back, "http api: accept failed");
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() else {
                self.refusals.count("connections");
                if let Some(held_back) = LIMIT_LOG.allow() {
                    tracing::info!(
                        max = self.options.max_connections,
                        held_back,
                        "http api: connection refused, at --http-max-connections"
                    );
                }
                drop(io);
                continue;
            };
            let stall = Stall::new(self.options.stall_timeout);
            let io = Watched {
                io,
                stall: stall.clone(),
                _slot: slot,
            };
            self.connections.spawn(self.clone().connection(io, stall));
        }
    }

    async fn connection(self, io: Watched, stall: Stall) {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.options.header_timeout)
            .max_buf_size(WRITE_BUFFER);
        let conn = builder
            .serve_connection(TokioIo::new(io), TowerToHyperService::new(self.app.clone()))
            .with_upgrades();
        let mut conn = std::pin::pin!(conn);
        let mut check = tokio::time::interval(stall.check_every());
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                result = conn.as_mut() => {
                    if let Err(e) = result
                        && e.is_timeout()
                    {
                        self.refusals.count("header_timeout");
                    }
                    return;
                }
                _ = self.stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(DRAIN, conn.as_mut()).await;
                    return;
                }
                _ = check.tick() => {
                    if stall.stalled() {
                        // Dropping the connection drops its stream and what it buffered.
                        self.refusals.count("slow_consumer");
                        return;
                    }
                }
            }
        }
    }
}

async fn accept(listener: &Listener) -> io::Result<Io> {
    match listener {
        Listener::Tcp(l) => {
            let (tcp, _) = l.accept().await?;
            let _ = tcp.set_nodelay(true);
            Ok(Io::Tcp(tcp))
        }
        Listener::Unix(l) => Ok(Io::Unix(l.accept().await?.0)),
    }
}

/// When writes to one client last started waiting, so a watchdog can tell a reader that
/// stopped reading from one that is slow but moving.
#[derive(Debug, Clone)]
pub struct Stall {
    /// Milliseconds since `epoch` at which the current wait began; 0: not waiting.
    since: Arc<AtomicU64>,
    epoch: Instant,
    timeout: Duration,
}

impl Stall {
    /// A watch that calls a wait longer than `timeout` a stall.
    pub fn new(timeout: Duration) -> Self {
        Stall {
            since: Arc::new(AtomicU64::new(0)),
            epoch: Instant::now(),
            timeout,
        }
    }

    fn now_ms(&self) -> u64 {
        (self.epoch.elapsed().as_millis() as u64).max(1)
    }

    /// A write could not go on.
    fn waiting(&self) {
        let now = self.now_ms();
        let _ = self
            .since
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// A write went through.
    fn moved(&self) {
        self.since.store(0, Ordering::Relaxed);
    }

    /// True when a write has waited longer than the timeout.
    pub fn stalled(&self) -> bool {
        let since = self.since.load(Ordering::Relaxed);
        since != 0 && self.now_ms().saturating_sub(since) > self.timeout.as_millis() as u64
    }

    /// How often a watchdog should look.
    pub fn check_every(&self) -> Duration {
        (self.timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(5))
    }

    /// The timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// A TCP or Unix connection.
enum Io {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// A connection's I/O with its slot of the connection cap and its write watch.
struct Watched {
    io: Io,
    stall: Stall,
    _slot: OwnedSemaphorePermit,
}

impl Watched {
    fn track<T>(&self, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match &poll {
            Poll::Pending => self.stall.waiting(),
            Poll::Ready(_) => self.stall.moved(),
        }
        poll
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = match &mut self.io {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Io::Unix(s) => Pin::new(s).poll_write(cx, buf),
        };
        self.track(poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = match &mut self.io {
            Io::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        };
        self.track(poll)
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Tcp(s) => s.is_write_vectored(),
            Io::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
