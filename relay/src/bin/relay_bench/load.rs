//! The load generator both modes share: N sender → receiver pairs over WebSocket, at most
//! `window` unacknowledged frames per pair, and the send time inside every frame.
//!
//! The "acknowledgement" is in-process: the receiver task hands a window permit back to
//! its sender for every frame it gets, so no extra traffic crosses the server under test.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use rmb_identity::{Signer, sign_envelope};
use rmb_proto::{Address, Envelope, Message, Payload, Request};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::{Bytes, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Starts the payload; the send timestamp follows it.
const MARKER: &[u8; 8] = b"RMBBENCH";
/// Digits of the per-pair sequence number at the end of every uid.
const UID_DIGITS: usize = 12;
/// Most frames written before one flush.
const MAX_BATCH: u64 = 32;
/// How long stragglers may take to arrive once sending stopped.
const DRAIN: Duration = Duration::from_secs(5);

/// One frame sent over and over: encoded bytes with two slots rewritten per send.
#[derive(Clone)]
pub struct Template {
    bytes: Vec<u8>,
    /// Offset of the uid's sequence digits.
    seq_at: usize,
    /// Offset of the send time: 8 bytes, little-endian nanoseconds since the run's clock.
    stamp_at: usize,
}

impl Template {
    /// A request envelope from twin `src` to twin `dst` with a `payload`-byte plain body,
    /// signed once by `signer`. Rewriting the uid and timestamp afterwards invalidates the
    /// signature; relays do not check client envelopes (receivers would).
    pub fn request(
        signer: &Signer,
        src: u32,
        dst: u32,
        pair: usize,
        payload: usize,
    ) -> anyhow::Result<Self> {
        let prefix = format!("bench-{pair}-");
        let mut body = vec![0u8; payload.max(MARKER.len() + 8)];
        body[..MARKER.len()].copy_from_slice(MARKER);
        let mut env = Envelope {
            uid: format!("{prefix}{}", "0".repeat(UID_DIGITS)),
            expiration: 3600,
            source: Some(Address::twin(src)),
            destination: Some(Address::twin(dst)),
            message: Some(Message::Request(Request {
                command: "bench.echo".into(),
            })),
            payload: Some(Payload::Plain(body)),
            ..Default::default()
        };
        env.stamp_at(rmb_proto::time::unix_now());
        sign_envelope(signer, &mut env);
        let bytes = env.to_bytes();
        let stamp_at = find(&bytes, MARKER).context("payload marker not in the encoding")?;
        let seq_at = find(&bytes, env.uid.as_bytes()).context("uid not in the encoding")?;
        Ok(Template {
            stamp_at: stamp_at + MARKER.len(),
            seq_at: seq_at + prefix.len(),
            bytes,
        })
    }

    /// Size of every frame, in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    fn frame(&self, seq: u64, stamp: u64) -> Bytes {
        let mut bytes = self.bytes.clone();
        let mut n = seq;
        for digit in bytes[self.seq_at..self.seq_at + UID_DIGITS]
            .iter_mut()
            .rev()
        {
            *digit = b'0' + (n % 10) as u8;
            n /= 10;
        }
        bytes[self.stamp_at..self.stamp_at + 8].copy_from_slice(&stamp.to_le_bytes());
        Bytes::from(bytes)
    }

    /// The send time in a frame made from this template, or `None` if it is not one.
    fn stamp_of(&self, frame: &[u8]) -> Option<u64> {
        if frame.len() != self.bytes.len()
            || frame.get(self.stamp_at - MARKER.len()..self.stamp_at)? != MARKER
        {
            return None;
        }
        Some(u64::from_le_bytes(
            frame[self.stamp_at..self.stamp_at + 8].try_into().ok()?,
        ))
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One sender → receiver pair: WebSocket URLs (with any login) and the frame to send.
pub struct Pair {
    pub sender: String,
    pub receiver: String,
    pub template: Template,
}

/// How long and how hard to push.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub window: usize,
    /// Not counted: connections and caches settle.
    pub warmup: Duration,
    pub duration: Duration,
    /// Send exactly this many per pair instead of running for `duration`.
    pub messages: Option<u64>,
}

/// What one run measured.
#[derive(Debug, Default)]
pub struct Stats {
    /// Frames received inside the measured interval.
    pub counted: u64,
    pub elapsed: Duration,
    /// Sorted one-way latencies of the counted frames, in nanoseconds.
    pub latencies: Vec<u64>,
    pub sent: u64,
    pub received: u64,
    /// Frames that were not ours (error envelopes) and connection failures.
    pub errors: u64,
    pub first_error: Option<String>,
}

impl Stats {
    pub fn rate(&self) -> f64 {
        self.counted as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `q` quantile (0..=1) of the latencies, in nanoseconds.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let last = self.latencies.len().checked_sub(1)?;
        Some(self.latencies[(last as f64 * q).round() as usize])
    }
}

/// Counts what went wrong and keeps the first message.
#[derive(Default)]
struct Errors {
    count: AtomicU64,
    first: Mutex<Option<String>>,
}

impl Errors {
    fn record(&self, what: String) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.first
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(what);
    }
}

struct Shared {
    window: Semaphore,
    sent: AtomicU64,
    received: AtomicU64,
}

#[derive(Default)]
struct Received {
    counted: u64,
    latencies: Vec<u64>,
    last: Option<Instant>,
}

/// Opens a WebSocket with Nagle off, keeping the login token out of error messages.
pub async fn connect(url: &str) -> anyhow::Result<Ws> {
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
        .await
        .with_context(|| format!("connecting to {}", url.split('?').next().unwrap_or(url)))?;
    Ok(ws)
}

/// Runs `plan` over `pairs` and returns the combined measurement.
pub async fn run(pairs: Vec<Pair>, plan: Plan) -> anyhow::Result<Stats> {
    let clock = Instant::now();
    let mut receivers = Vec::with_capacity(pairs.len());
    for pair in &pairs {
        receivers.push(connect(&pair.receiver).await?);
    }
    let mut senders = Vec::with_capacity(pairs.len());
    for pair in &pairs {
        senders.push(connect(&pair.sender).await?);
    }
    // The server registers a session just after answering the upgrade: let it finish.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let start = Instant::now();
    let (from, until) = match plan.messages {
        Some(_) => (start, None),
        None => (
            start + plan.warmup,
            Some(start + plan.warmup + plan.duration),
        ),
    };
    let cancel = CancellationToken::new();
    let errors = Arc::new(Errors::default());
    let (mut send_tasks, mut recv_tasks, mut shares) = (Vec::new(), Vec::new(), Vec::new());
    for ((pair, rx), tx) in pairs.into_iter().zip(receivers).zip(senders) {
        let shared = Arc::new(Shared {
            window: Semaphore::new(plan.window.max(1)),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
        });
        let (sink, stream) = tx.split();
        let window = Window { from, until, clock };
        recv_tasks.push(tokio::spawn(receive(
            rx,
            pair.template.clone(),
            Arc::clone(&shared),
            window,
            cancel.clone(),
            Arc::clone(&errors),
        )));
        tokio::spawn(watch_sender(stream, cancel.clone(), Arc::clone(&errors)));
        send_tasks.push(tokio::spawn(send(
            sink,
            pair.template,
            Arc::clone(&shared),
            window,
            plan.messages,
        )));
        shares.push(shared);
    }
    let mut failure = None;
    for task in send_tasks {
        if let Err(e) = task.await? {
            failure.get_or_insert(e);
        }
    }
    let drained_by = Instant::now() + DRAIN;
    while Instant::now() < drained_by
        && shares
            .iter()
            .any(|s| s.received.load(Ordering::Relaxed) < s.sent.load(Ordering::Relaxed))
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cancel.cancel();
    if let Some(e) = failure {
        return Err(e.context("a sender failed"));
    }

    let mut stats = Stats::default();
    let mut last = start;
    for task in recv_tasks {
        let got = task.await?;
        stats.counted += got.counted;
        stats.latencies.extend(got.latencies);
        last = last.max(got.last.unwrap_or(start));
    }
    stats.latencies.sort_unstable();
    stats.elapsed = match until {
        Some(until) => until - from,
        None => last - start,
    };
    for shared in &shares {
        stats.sent += shared.sent.load(Ordering::Relaxed);
        stats.received += shared.received.load(Ordering::Relaxed);
    }
    stats.errors = errors.count.load(Ordering::Relaxed);
    stats.first_error = errors
        .first
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    Ok(stats)
}

/// The measured interval and the clock the send times are taken from.
#[derive(Clone, Copy)]
struct Window {
    from: Instant,
    until: Option<Instant>,
    clock: Instant,
}

async fn send(
    mut sink: SplitSink<Ws, WsMessage>,
    template: Template,
    shared: Arc<Shared>,
    window: Window,
    limit: Option<u64>,
) -> anyhow::Result<()> {
    let mut seq = 0u64;
    loop {
        let over = window.until.is_some_and(|u| Instant::now() >= u);
        if over || limit.is_some_and(|l| seq >= l) {
            break;
        }
        let permit = match shared.window.try_acquire() {
            Ok(permit) => permit,
            Err(_) => match window.until {
                Some(until) => {
                    match tokio::time::timeout_at(until.into(), shared.window.acquire()).await {
                        Ok(permit) => permit?,
                        Err(_) => break,
                    }
                }
                None => shared.window.acquire().await?,
            },
        };
        permit.forget();
        let mut batch = 1;
        while batch < MAX_BATCH && limit.is_none_or(|l| seq + batch < l) {
            match shared.window.try_acquire() {
                Ok(permit) => permit.forget(),
                Err(_) => break,
            }
            batch += 1;
        }
        for _ in 0..batch {
            let stamp = window.clock.elapsed().as_nanos() as u64;
            let frame = WsMessage::Binary(template.frame(seq, stamp));
            sink.feed(frame).await.context("sending a frame")?;
            seq += 1;
        }
        sink.flush().await.context("sending a frame")?;
        shared.sent.store(seq, Ordering::Relaxed);
    }
    Ok(())
}

async fn receive(
    mut ws: Ws,
    template: Template,
    shared: Arc<Shared>,
    window: Window,
    cancel: CancellationToken,
    errors: Arc<Errors>,
) -> Received {
    let mut got = Received {
        latencies: Vec::with_capacity(1 << 16),
        ..Default::default()
    };
    loop {
        let frame = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            frame = ws.next() => frame,
        };
        let bytes = match frame {
            Some(Ok(WsMessage::Binary(bytes))) => bytes,
            Some(Ok(WsMessage::Close(_))) | None => break,
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                errors.record(format!("receiver connection failed: {e}"));
                break;
            }
        };
        let now = Instant::now();
        let Some(stamp) = template.stamp_of(&bytes) else {
            errors.record(describe(&bytes));
            continue;
        };
        shared.received.fetch_add(1, Ordering::Relaxed);
        shared.window.add_permits(1);
        if now >= window.from && window.until.is_none_or(|u| now <= u) {
            got.counted += 1;
            let at = now.duration_since(window.clock).as_nanos() as u64;
            got.latencies.push(at.saturating_sub(stamp));
        }
        got.last = Some(now);
    }
    got
}

/// Reads what comes back to a sender: only error envelopes should.
async fn watch_sender(mut stream: SplitStream<Ws>, cancel: CancellationToken, errors: Arc<Errors>) {
    loop {
        let frame = tokio::select! {
            _ = cancel.cancelled() => return,
            frame = stream.next() => frame,
        };
        match frame {
            Some(Ok(WsMessage::Binary(bytes))) => errors.record(describe(&bytes)),
            Some(Ok(WsMessage::Close(_))) | None => return,
            Some(Ok(_)) => {}
            Some(Err(e)) => return errors.record(format!("sender connection failed: {e}")),
        }
    }
}

fn describe(bytes: &[u8]) -> String {
    match Envelope::decode_limited(bytes, usize::MAX) {
        Ok(Envelope {
            message: Some(Message::Error(e)),
            uid,
            ..
        }) => format!("error envelope for {uid}: {}", e.message),
        Ok(env) => format!("unexpected {:?} envelope {}", env.kind(), env.uid),
        Err(e) => format!("unexpected frame of {} bytes: {e}", bytes.len()),
    }
}
