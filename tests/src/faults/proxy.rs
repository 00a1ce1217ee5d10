//! [`FaultProxy`]: a TCP proxy that adds latency, caps bandwidth, stalls (blackholes) and
//! cuts connections on command, put between two processes of a fault run.
//!
//! netem is missing from this kernel, so delay and rate limits are done here, on the
//! byte stream: every chunk read is forwarded once its delay has passed, no faster than
//! the byte rate allows. A blackhole stops forwarding in both directions and holds new
//! connections (as a path whose packets vanish would: TCP on both sides waits), a cut
//! resets every open connection. Each proxy runs its own single-thread tokio runtime.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Largest chunk read at once.
const CHUNK: usize = 16 << 10;
/// Chunks held per direction before the reader waits (bounds memory to 4 MiB).
const QUEUE: usize = 256;
/// Longest wait for the upstream's TCP handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The proxy's settings, changed while it runs.
#[derive(Default)]
struct Knobs {
    /// Delay client→upstream and upstream→client, in microseconds.
    delay_up: AtomicU64,
    delay_down: AtomicU64,
    /// Bytes per second each direction may carry, all connections together (0: no
    /// limit).
    rate: AtomicU64,
    /// When the cap lets the next byte out, client to upstream and back.
    free_up: Mutex<Option<Instant>>,
    free_down: Mutex<Option<Instant>>,
}

/// A running proxy from [`FaultProxy::addr`] to its upstream; stopped on drop.
pub struct FaultProxy {
    addr: SocketAddr,
    knobs: Arc<Knobs>,
    /// `true` while blackholed.
    hole: watch::Sender<bool>,
    /// Bumped by each cut; `u64::MAX` stops the proxy.
    cuts: watch::Sender<u64>,
    accepted: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on `listen` (port 0 for any) and forwards each connection to `upstream`.
    pub fn start(listen: SocketAddr, upstream: SocketAddr) -> FaultProxy {
        let std_listener = std::net::TcpListener::bind(listen)
            .unwrap_or_else(|e| panic!("proxy cannot listen on {listen}: {e}"));
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("proxy address");
        let knobs = Arc::new(Knobs::default());
        let (hole, hole_rx) = watch::channel(false);
        let (cuts, cuts_rx) = watch::channel(0u64);
        let accepted = Arc::new(AtomicU64::new(0));
        let thread = {
            let (knobs, accepted) = (Arc::clone(&knobs), Arc::clone(&accepted));
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("proxy runtime");
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).expect("tokio listener");
                    accept_loop(listener, upstream, knobs, hole_rx, cuts_rx, accepted).await;
                });
            })
        };
        FaultProxy {
            addr,
            knobs,
            hole,
            cuts,
            accepted,
            thread: Some(thread),
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Delays each direction by `up` (client to upstream) and `down`.
    pub fn set_delay(&self, up: Duration, down: Duration) {
        let micros = |d: Duration| d.as_micros().min(u128::from(u64::MAX)) as u64;
        self.knobs.delay_up.store(micros(up), Ordering::SeqCst);
        self.knobs.delay_down.store(micros(down), Ordering::SeqCst);
    }

    /// Caps each direction at `bytes_per_sec` (0: no cap).
    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.knobs.rate.store(bytes_per_sec, Ordering::SeqCst);
    }

    /// Stops (`true`) or resumes forwarding and connecting.
    pub fn set_blackhole(&self, on: bool) {
        self.hole.send_replace(on);
    }

    /// Resets every connection open now (new ones are accepted as before).
    pub fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.cuts.send_replace(u64::MAX);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    knobs: Arc<Knobs>,
    hole: watch::Receiver<bool>,
    mut cuts: watch::Receiver<u64>,
    accepted: Arc<AtomicU64>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            conn = listener.accept() => {
                let Ok((client, _)) = conn else { continue };
                accepted.fetch_add(1, Ordering::SeqCst);
                let (knobs, hole, cuts) = (Arc::clone(&knobs), hole.clone(), cuts.clone());
                tasks.spawn(serve(client, upstream, knobs, hole, cuts));
            }
            changed = cuts.changed() => {
                if changed.is_err() || *cuts.borrow() == u64::MAX {
                    break;
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    tasks.shutdown().await;
}

/// Waits while the blackhole is on.
async fn through_hole(hole: &mut watch::Receiver<bool>) {
    let _ = hole.wait_for(|on| !on).await;
}

/// One proxied connection, until either side closes it or a cut resets it.
async fn serve(
    client: TcpStream,
    upstream: SocketAddr,
    knobs: Arc<Knobs>,
    mut hole: watch::Receiver<bool>,
    mut cuts: watch::Receiver<u64>,
) {
    let generation = *cuts.borrow_and_update();
    let cut = |cuts: &mut watch::Receiver<u64>| {
        let mut cuts = cuts.clone();
        async move {
            let _ = cuts.wait_for(|n| *n != generation).await;
        }
    };
    let connect = async {
        through_hole(&mut hole).await;
        tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(upstream)).await
    };
    let server = tokio::select! {
        server = connect => server,
        _ = cut(&mut cuts) => {
            let _ = client.set_zero_linger();
            return;
        }
    };
    let Ok(Ok(server)) = server else { return };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let both = async {
        tokio::join!(
            pump(
                &mut client_read,
                &mut server_write,
                &knobs,
                Up,
                hole.clone()
            ),
            pump(
                &mut server_read,
                &mut client_write,
                &knobs,
                Down,
                hole.clone()
            ),
        )
    };
    let was_cut = tokio::select! {
        _ = both => false,
        _ = cut(&mut cuts) => true,
    };
    if was_cut {
        // Closing with SO_LINGER 0 sends a reset, as a broken path seen by one end would.
        let _ = client_read.as_ref().set_zero_linger();
        let _ = server_read.as_ref().set_zero_linger();
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Up,
    Down,
}
use Direction::{Down, Up};

/// Copies `from` to `to` through the delay line and rate cap until EOF or an error,
/// then shuts `to`'s write side.
async fn pump(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    knobs: &Knobs,
    direction: Direction,
    mut hole: watch::Receiver<bool>,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUE);
    let reader = {
        let mut hole = hole.clone();
        async move {
            let mut buf = vec![0u8; CHUNK];
            loop {
                through_hole(&mut hole).await;
                let n = match from.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let delay = match direction {
                    Up => knobs.delay_up.load(Ordering::SeqCst),
                    Down => knobs.delay_down.load(Ordering::SeqCst),
                };
                let due = Instant::now() + Duration::from_micros(delay);
                if tx.send((due, buf[..n].to_vec())).await.is_err() {
                    break;
                }
            }
        }
    };
    let writer = async {
        let free = match direction {
            Up => &knobs.free_up,
            Down => &knobs.free_down,
        };
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            let rate = knobs.rate.load(Ordering::SeqCst);
            for piece in bytes.chunks(if rate == 0 { CHUNK } else { 1024 }) {
                through_hole(&mut hole).await;
                if rate > 0 {
                    // Book this piece's time on the link, then wait for its turn.
                    let cost = Duration::from_secs_f64(piece.len() as f64 / rate as f64);
                    let turn = {
                        let mut next = free.lock().unwrap_or_else(|e| e.into_inner());
                        let turn = next.unwrap_or_else(Instant::now).max(Instant::now());
                        *next = Some(turn + cost);
                        turn
                    };
                    tokio::time::sleep_until(turn).await;
                }
                if to.write_all(piece).await.is_err() {
                    return;
                }
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
