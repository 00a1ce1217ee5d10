//! One outbound link to another replica: [`LinkHandle`] (what routing offers envelopes
//! to, never waiting) and the actor behind it ([`run`]), which connects, proves itself,
//! writes batches and matches acknowledgements.
//!
//! Every envelope stays this replica's until the other end acknowledges it: delivered
//! (dropped here) or refused (returned, to go to the offline queue). When the link
//! breaks, whatever is unacknowledged is returned too, and the link refuses new
//! envelopes for a backoff (routing then queues them in Redis, which wakes the holder).
//! An envelope the other end delivered just before the break is then delivered twice by
//! the relay; rmb peers drop the repeat by its id.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::mpsc;

use super::Shared;
use super::transport::{LinkError, client_handshake, read_frame};
use super::wire::{self, Frame};
use crate::switch::{Outgoing, SessionId, cost};
use crate::throttle::LogThrottle;

/// Most envelopes in one batch.
const BATCH_ITEMS: usize = 1024;
/// A batch stops growing past this many bytes.
const BATCH_BYTES: usize = 1 << 20;
/// A ping goes out after this long without writing.
pub const PING_EVERY: Duration = Duration::from_secs(5);
/// The link is dead after this long without hearing anything.
const DEAD_AFTER: Duration = Duration::from_secs(20);
/// A link nothing was sent on for this long is closed (its replica may be gone).
const IDLE_CLOSE: Duration = Duration::from_secs(120);
/// Longest a connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest frame the accepting side sends (an ack refusing a whole batch is ~8 KiB).
const MAX_ACK_FRAME: usize = 1 << 20;
/// Longest wait before trying a failed link again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Link failures are logged at most once per this interval.
static FAIL_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(10));

/// An envelope on its way to another replica.
pub type Forward = (SessionId, Outgoing);

/// What routing holds of a link: offering never waits.
pub struct LinkHandle {
    tx: mpsc::UnboundedSender<Forward>,
    /// Bytes offered and not yet acknowledged or returned.
    bytes: AtomicUsize,
    window: usize,
    /// Refusing for now (connecting failed or the link broke; a backoff runs).
    down: AtomicBool,
}

impl LinkHandle {
    /// Offers an envelope to the link; it comes back when the link is down or holds its
    /// window of bytes already.
    pub fn offer(&self, forward: Forward) -> Result<(), Forward> {
        if self.down.load(Ordering::Relaxed) {
            return Err(forward);
        }
        let size = cost(&forward.1.0);
        let before = self.bytes.fetch_add(size, Ordering::AcqRel);
        if before > 0 && before + size > self.window {
            self.bytes.fetch_sub(size, Ordering::AcqRel);
            return Err(forward);
        }
        self.tx.send(forward).map_err(|e| {
            self.bytes.fetch_sub(size, Ordering::AcqRel);
            e.0
        })
    }

    fn release(&self, size: usize) {
        self.bytes.fetch_sub(size, Ordering::AcqRel);
    }
}

/// Makes a link to replica `peer` and its actor (to be run by the caller).
pub fn new(peer: String, shared: Arc<Shared>) -> (Arc<LinkHandle>, Actor) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = Arc::new(LinkHandle {
        tx,
        bytes: AtomicUsize::new(0),
        window: shared.settings.window,
        down: AtomicBool::new(false),
    });
    let actor = Actor {
        peer,
        handle: Arc::clone(&handle),
        rx,
        shared,
        unacked: VecDeque::new(),
        next_seq: 1,
    };
    (handle, actor)
}

/// The task behind one [`LinkHandle`].
pub struct Actor {
    peer: String,
    handle: Arc<LinkHandle>,
    rx: mpsc::UnboundedReceiver<Forward>,
    shared: Arc<Shared>,
    unacked: VecDeque<(u64, Forward)>,
    next_seq: u64,
}

/// How a connected link ended.
enum Ended {
    Shutdown,
    Idle,
    Failed(LinkError),
}

impl Actor {
    /// Runs the link until shutdown, or until it has been idle or its replica gone.
    pub async fn run(mut self) {
        let shutdown = self.shared.shutdown.clone();
        let mut backoff = Duration::from_millis(100);
        let mut failing_since: Option<Instant> = None;
        loop {
            let connected = tokio::select! {
                _ = shutdown.cancelled() => break,
                connected = self.connect() => connected,
            };
            let error = match connected {
                Ok(stream) => {
                    backoff = Duration::from_millis(100);
                    failing_since = None;
                    self.shared.counters.links.inc();
                    let ended = self.serve(stream).await;
                    self.shared.counters.links.dec();
                    match ended {
                        Ended::Shutdown | Ended::Idle => break,
                        Ended::Failed(e) => e,
                    }
                }
                Err(e) => e,
            };
            if let Some(held_back) = FAIL_LOG.allow() {
                tracing::warn!(peer = %self.peer, error = %error, held_back, "replica link down; envelopes for its sessions go through the offline queue meanwhile");
            }
            self.handle.down.store(true, Ordering::Relaxed);
            self.return_unacked("link_down").await;
            self.return_queued("link_down").await;
            if failing_since.get_or_insert_with(Instant::now).elapsed() > IDLE_CLOSE {
                // Its replica is gone for good (its sessions' claims lapse meanwhile).
                break;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            self.handle.down.store(false, Ordering::Relaxed);
        }
        // Gone from the table first, so nothing new arrives; then hand back the rest.
        self.shared.remove_link(&self.peer, &self.handle);
        self.rx.close();
        self.return_unacked("link_closed").await;
        self.return_queued("link_closed").await;
    }

    async fn connect(&self) -> Result<TcpStream, LinkError> {
        let address = self
            .shared
            .directory
            .address(&self.peer)
            .await?
            .ok_or(LinkError::Other("replica gone"))?;
        let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&address))
            .await
            .map_err(|_| LinkError::Other("connect timed out"))??;
        stream.set_nodelay(true)?;
        client_handshake(
            &mut stream,
            &self.shared.id,
            &self.peer,
            &self.shared.directory,
        )
        .await?;
        tracing::debug!(peer = %self.peer, %address, "replica link up");
        Ok(stream)
    }

    async fn serve(&mut self, stream: TcpStream) -> Ended {
        let (read, mut write) = stream.into_split();
        let (frames_tx, mut frames) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_frames(read, frames_tx));
        let _abort = AbortOnDrop(reader);
        let shutdown = self.shared.shutdown.clone();
        let write_timeout = self.shared.settings.write_timeout;
        let mut out = Vec::new();
        let mut batch: Vec<Forward> = Vec::new();
        let mut heard = Instant::now();
        let mut wrote = Instant::now();
        let mut sent = Instant::now();
        let mut tick = tokio::time::interval(PING_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The handle is gone: settle what is unacknowledged, then end.
        let mut draining = false;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ended::Shutdown,
                frame = frames.recv() => match frame {
                    Some(Ok(Frame::Ack { upto, refused })) => {
                        heard = Instant::now();
                        self.acked(upto, &refused).await;
                        if draining && self.unacked.is_empty() {
                            return Ended::Idle;
                        }
                    }
                    Some(Ok(Frame::Ping)) => heard = Instant::now(),
                    Some(Ok(Frame::Batch { .. })) => {
                        return Ended::Failed(LinkError::Other("unexpected batch from the accepting side"));
                    }
                    Some(Err(e)) => return Ended::Failed(e),
                    None => return Ended::Failed(LinkError::Other("closed by the other replica")),
                },
                first = self.rx.recv(), if !draining => {
                    let Some(first) = first else {
                        if self.unacked.is_empty() {
                            return Ended::Idle;
                        }
                        draining = true;
                        continue;
                    };
                    let mut bytes = cost(&first.1.0);
                    batch.push(first);
                    while batch.len() < BATCH_ITEMS && bytes < BATCH_BYTES {
                        let Ok(next) = self.rx.try_recv() else { break };
                        bytes += cost(&next.1.0);
                        batch.push(next);
                    }
                    let first_seq = self.next_seq;
                    out.clear();
                    wire::encode_batch(&mut out, first_seq, batch.iter().map(|(s, o)| (s, o)));
                    self.next_seq += batch.len() as u64;
                    for (i, forward) in batch.drain(..).enumerate() {
                        self.unacked.push_back((first_seq + i as u64, forward));
                    }
                    if let Err(e) = write_all(&mut write, &out, write_timeout).await {
                        return Ended::Failed(e);
                    }
                    wrote = Instant::now();
                    sent = wrote;
                }
                _ = tick.tick() => {
                    if heard.elapsed() > DEAD_AFTER {
                        return Ended::Failed(LinkError::Other("nothing heard from the other replica"));
                    }
                    if self.unacked.is_empty() && sent.elapsed() > IDLE_CLOSE {
                        // Out of the table before the last look at the queue: an offer
                        // made meanwhile then fails and goes to the offline queue.
                        self.shared.remove_link(&self.peer, &self.handle);
                        self.rx.close();
                        if self.rx.is_empty() {
                            return Ended::Idle;
                        }
                        // What was offered before the close is sent next; then
                        // `recv` ends and the link settles and ends.
                    }
                    if wrote.elapsed() >= PING_EVERY {
                        out.clear();
                        wire::encode_ping(&mut out);
                        if let Err(e) = write_all(&mut write, &out, write_timeout).await {
                            return Ended::Failed(e);
                        }
                        wrote = Instant::now();
                    }
                }
            }
        }
    }

    /// Settles every envelope up to `upto`: delivered, or returned when refused.
    async fn acked(&mut self, upto: u64, refused: &[u64]) {
        let mut refused = refused.iter().peekable();
        let mut delivered = 0;
        while let Some((seq, _)) = self.unacked.front() {
            if *seq > upto {
                break;
            }
            let (seq, forward) = self.unacked.pop_front().expect("front exists");
            self.handle.release(cost(&forward.1.0));
            while refused.next_if(|r| **r < seq).is_some() {}
            if refused.next_if(|r| **r == seq).is_some() {
                self.shared.presence.forget(&forward.0);
                self.give_back(forward, "refused").await;
            } else {
                delivered += 1;
            }
        }
        self.shared.counters.forwarded.inc_by(delivered);
    }

    async fn return_unacked(&mut self, reason: &'static str) {
        while let Some((_, forward)) = self.unacked.pop_front() {
            self.handle.release(cost(&forward.1.0));
            self.give_back(forward, reason).await;
        }
    }

    async fn return_queued(&mut self, reason: &'static str) {
        while let Ok(forward) = self.rx.try_recv() {
            self.handle.release(cost(&forward.1.0));
            self.give_back(forward, reason).await;
        }
    }

    async fn give_back(&self, forward: Forward, reason: &'static str) {
        self.shared
            .counters
            .returned
            .with_label_values(&[reason])
            .inc();
        // Waits while the offline queue catches up: meanwhile this link's window stays
        // spent, so routing queues new envelopes itself.
        let _ = self.shared.returned.send(forward).await;
    }
}

async fn write_all(
    write: &mut tokio::net::tcp::OwnedWriteHalf,
    bytes: &[u8],
    timeout: Duration,
) -> Result<(), LinkError> {
    tokio::time::timeout(timeout, write.write_all(bytes))
        .await
        .map_err(|_| LinkError::Other("write timed out"))??;
    Ok(())
}

/// Reads the accepting side's frames (acks, pings) until the link ends.
async fn read_frames(
    mut read: OwnedReadHalf,
    frames: mpsc::UnboundedSender<Result<Frame, LinkError>>,
) {
    loop {
        let frame = match read_frame(&mut read, MAX_ACK_FRAME).await {
            Ok(Some(body)) => wire::decode(body).map_err(LinkError::from),
            Ok(None) => return,
            Err(e) => Err(e),
        };
        let failed = frame.is_err();
        if frames.send(frame).is_err() || failed {
            return;
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The table of links by replica id.
pub type Links = Mutex<std::collections::HashMap<String, Arc<LinkHandle>>>;
