//! The state machine of one connection, with time as an input (no I/O, no clock, no
//! tasks), so every rule is testable by feeding it frames and instants.
//!
//! Each direction is a byte stream numbered by offset, as in TCP/QUIC:
//! - the writer keeps every byte until it is acknowledged (`acked ≤ next_send ≤ written`)
//!   and sends only below the reader's advertised limit (`max_data`: bytes consumed by the
//!   reader's application plus its window), so a slow reader bounds what is in flight;
//! - every frame carries the cumulative ack and the limit; the reader acknowledges at
//!   once on a FIN, a probe, a duplicate or a quarter window, else after `ack_delay`;
//! - bytes not acknowledged within the retransmission timeout are all sent again from
//!   the first unacknowledged one (go-back-N; a relay failover may lose a window's worth
//!   at once); the timeout backs off, doubling up to `rto_max`;
//! - a frame out of order (federating relays forward envelopes concurrently) is kept
//!   until the gap before it fills, within the window (beyond it, it is dropped and
//!   sent again later), so the reader never buffers more than twice its window and the
//!   stream has no loss, duplicate or reorder;
//! - FIN ends a direction (half-close) and takes one offset, so its ack is visible;
//!   RESET aborts both;
//! - keep-alive: a probe is sent after `keepalive` without sending, and the connection is
//!   dead after `idle_timeout` without hearing anything.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::wire::{self, Frame};

/// Tunables of a connection. Every one bounds memory or time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Bytes the peer may send beyond what our application has read.
    pub window: u32,
    /// Bytes our writer may buffer (sent but unacknowledged, or waiting to be sent).
    pub send_buffer: usize,
    /// Most data bytes per frame (one envelope each).
    pub max_frame: usize,
    /// Send a probe after this long without sending anything.
    pub keepalive: Duration,
    /// The peer is dead after this long without a frame from it.
    pub idle_timeout: Duration,
    /// Retransmission timeout bounds (the first one is `rto_initial`).
    pub rto_min: Duration,
    pub rto_initial: Duration,
    pub rto_max: Duration,
    /// Longest wait before acknowledging data.
    pub ack_delay: Duration,
    /// How long a cleanly closed connection keeps answering a peer that missed our
    /// last ack.
    pub linger: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            window: 2 << 20,
            send_buffer: 2 << 20,
            max_frame: 128 << 10,
            keepalive: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(20),
            rto_min: Duration::from_millis(300),
            rto_initial: Duration::from_secs(1),
            rto_max: Duration::from_secs(4),
            ack_delay: Duration::from_millis(5),
            linger: Duration::from_secs(2),
        }
    }
}

impl Config {
    /// Clamps values from configuration into workable bounds.
    pub fn clamped(mut self) -> Config {
        self.window = self.window.clamp(16 << 10, 64 << 20);
        self.send_buffer = self.send_buffer.clamp(16 << 10, 64 << 20);
        self.max_frame = self.max_frame.clamp(1024, 1 << 20);
        self.keepalive = self
            .keepalive
            .clamp(Duration::from_millis(100), Duration::from_secs(600));
        self.idle_timeout = self
            .idle_timeout
            .clamp(self.keepalive * 2, Duration::from_secs(3600));
        self
    }
}

/// Reset code: the application closed the connection before the peer finished.
pub const CODE_CLOSED: u32 = 0;
/// Reset code: the peer broke the protocol (data beyond the window, a moved FIN).
pub const CODE_PROTOCOL: u32 = 1;
/// Reset code: the peer was silent past the idle timeout.
pub const CODE_TIMEOUT: u32 = 2;
/// Reset code: the local peer shut down.
pub const CODE_SHUTDOWN: u32 = 3;

/// Why a stream operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("the peer aborted the connection (code {code})")]
    Reset { code: u32 },
    #[error("the peer was silent for {0:?}: connection presumed dead")]
    TimedOut(Duration),
    #[error("the peer broke the connection protocol")]
    Protocol,
    #[error("the connection was closed locally")]
    Closed,
    #[error("this side already finished writing")]
    Finished,
    #[error("the local peer shut down")]
    Shutdown,
    #[error("message of {size} bytes is larger than the limit of {limit}")]
    MessageTooLarge { size: usize, limit: usize },
}

impl From<StreamError> for std::io::Error {
    fn from(e: StreamError) -> Self {
        use std::io::ErrorKind;
        let kind = match e {
            StreamError::Reset { .. } => ErrorKind::ConnectionReset,
            StreamError::TimedOut(_) => ErrorKind::TimedOut,
            StreamError::Protocol | StreamError::MessageTooLarge { .. } => ErrorKind::InvalidData,
            StreamError::Closed | StreamError::Finished => ErrorKind::BrokenPipe,
            StreamError::Shutdown => ErrorKind::NotConnected,
        };
        std::io::Error::new(kind, e)
    }
}

/// What a read produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// This many bytes were copied.
    Data(usize),
    /// The peer finished writing and everything was read.
    End,
    /// Nothing yet.
    Blocked,
}

/// Counters of one connection (for status and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub frames_sent: u64,
    pub frames_received: u64,
    /// Retransmission timeouts that fired.
    pub timeouts: u64,
    /// Data frames dropped as duplicate or out of order.
    pub discarded: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// One connection's state.
#[derive(Debug)]
pub struct State {
    cfg: Config,
    // Sending.
    send_buf: VecDeque<u8>,
    acked: u64,
    next_send: u64,
    fin_queued: bool,
    fin_sent: bool,
    fin_acked: bool,
    peer_max_data: u64,
    // Receiving.
    recv_buf: VecDeque<u8>,
    recv_next: u64,
    /// Frames that arrived ahead of a gap, by offset (at most a window of bytes).
    ahead: BTreeMap<u64, Vec<u8>>,
    ahead_bytes: u64,
    fin_at: Option<u64>,
    advertised: u64,
    acked_to_peer: u64,
    ack_now: bool,
    ack_due: Option<Instant>,
    // Time.
    last_recv: Instant,
    last_send: Instant,
    ping_due: bool,
    rto: Duration,
    rto_deadline: Option<Instant>,
    srtt: Option<Duration>,
    rtt_probe: Option<(u64, Instant)>,
    closed_at: Option<Instant>,
    // End.
    error: Option<StreamError>,
    reset_code: Option<u32>,
    reset_sent: bool,
    detached: bool,
    stats: Stats,
}

impl State {
    /// A connection just established; `peer_window` is the credit the peer granted.
    pub fn new(cfg: Config, now: Instant, peer_window: u32) -> State {
        let cfg = cfg.clamped();
        State {
            send_buf: VecDeque::new(),
            acked: 0,
            next_send: 0,
            fin_queued: false,
            fin_sent: false,
            fin_acked: false,
            peer_max_data: u64::from(peer_window),
            recv_buf: VecDeque::new(),
            recv_next: 0,
            ahead: BTreeMap::new(),
            ahead_bytes: 0,
            fin_at: None,
            advertised: u64::from(cfg.window),
            acked_to_peer: 0,
            ack_now: false,
            ack_due: None,
            last_recv: now,
            last_send: now,
            ping_due: false,
            rto: cfg.rto_initial,
            rto_deadline: None,
            srtt: None,
            rtt_probe: None,
            closed_at: None,
            error: None,
            reset_code: None,
            reset_sent: false,
            detached: false,
            stats: Stats::default(),
            cfg,
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The error that ended the connection, if any.
    pub fn error(&self) -> Option<&StreamError> {
        self.error.as_ref()
    }

    fn written(&self) -> u64 {
        self.acked + self.send_buf.len() as u64
    }

    fn consumed(&self) -> u64 {
        self.recv_next - self.recv_buf.len() as u64
    }

    fn recv_fin(&self) -> bool {
        self.fin_at == Some(self.recv_next)
    }

    fn ack_value(&self) -> u64 {
        self.recv_next + u64::from(self.recv_fin())
    }

    fn limit(&self) -> u64 {
        self.consumed() + u64::from(self.cfg.window)
    }

    /// Both directions finished and acknowledged.
    pub fn is_closed(&self) -> bool {
        self.fin_acked && self.recv_fin()
    }

    /// Bytes the writer may still queue.
    pub fn write_room(&self) -> usize {
        self.cfg.send_buffer.saturating_sub(self.send_buf.len())
    }

    /// Queues bytes for sending; `Ok(0)` for a non-empty `data` means "no room, wait".
    pub fn write(&mut self, data: &[u8]) -> Result<usize, StreamError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if self.fin_queued {
            return Err(StreamError::Finished);
        }
        let n = data.len().min(self.write_room());
        self.send_buf.extend(&data[..n]);
        Ok(n)
    }

    /// Copies received bytes into `buf`.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<Read, StreamError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if self.recv_buf.is_empty() {
            return Ok(if self.recv_fin() {
                Read::End
            } else {
                Read::Blocked
            });
        }
        let n = buf.len().min(self.recv_buf.len());
        copy_out(&self.recv_buf, 0, &mut buf[..n]);
        self.recv_buf.drain(..n);
        // A reader that frees half a window tells the writer now.
        if self.limit() - self.advertised >= u64::from(self.cfg.window / 2) {
            self.ack_now = true;
        }
        Ok(Read::Data(n))
    }

    /// True when a frame should go out now (an ack or window update the reader owes).
    pub fn wants_send(&self) -> bool {
        self.ack_now
    }

    /// Bytes received and not yet read.
    pub fn readable(&self) -> usize {
        self.recv_buf.len()
    }

    /// Ends our direction after the queued bytes (half-close).
    pub fn finish(&mut self) {
        self.fin_queued = true;
    }

    /// True once our FIN was acknowledged (everything we wrote arrived).
    pub fn finish_acked(&self) -> bool {
        self.fin_acked
    }

    /// Aborts the connection: the peer gets a RESET with `code`; local operations fail
    /// with `error`.
    pub fn reset(&mut self, code: u32, error: StreamError) {
        if self.error.is_none() {
            self.error = Some(error);
            self.reset_code = Some(code);
            self.send_buf.clear();
            self.recv_buf.clear();
            self.ahead.clear();
        }
    }

    /// The application dropped its handle: a finished exchange closes cleanly (after our
    /// data is acknowledged); a peer still sending to nobody is reset.
    pub fn detach(&mut self) {
        self.detached = true;
        self.finish();
        if !self.recv_fin() && self.error.is_none() {
            self.reset(CODE_CLOSED, StreamError::Closed);
        }
    }

    /// True when the driver may forget the connection.
    pub fn is_done(&self, now: Instant) -> bool {
        if self.error.is_some() {
            return self.reset_code.is_none() || self.reset_sent;
        }
        self.detached && self.closed_at.is_some_and(|at| now >= at + self.cfg.linger)
    }

    /// Takes in a frame from the peer.
    pub fn on_frame(&mut self, now: Instant, frame: Frame) {
        if self.error.is_some() {
            // Tell a peer that keeps talking to a reset connection again.
            if self.reset_code.is_some() && !frame.has(wire::RESET) {
                self.reset_sent = false;
            }
            return;
        }
        self.stats.frames_received += 1;
        self.last_recv = now;
        if frame.has(wire::RESET) {
            self.error = Some(StreamError::Reset { code: frame.code });
            self.send_buf.clear();
            self.recv_buf.clear();
            return;
        }
        self.on_ack(now, frame.ack);
        self.peer_max_data = self.peer_max_data.max(frame.max_data);
        if frame.has(wire::PING) {
            self.ack_now = true;
        }
        if frame.has(wire::DATA) {
            self.on_data(now, &frame);
        }
        self.check_closed(now);
    }

    fn on_ack(&mut self, now: Instant, ack: u64) {
        let written = self.written();
        let top = written + u64::from(self.fin_sent);
        if ack > top || ack <= self.acked {
            return;
        }
        let data_ack = ack.min(written);
        let progress = data_ack > self.acked || (ack == written + 1 && !self.fin_acked);
        self.send_buf.drain(..(data_ack - self.acked) as usize);
        self.acked = data_ack;
        self.next_send = self.next_send.max(self.acked);
        if self.fin_sent && ack == written + 1 {
            self.fin_acked = true;
        }
        if !progress {
            return;
        }
        if let Some((end, at)) = self.rtt_probe
            && ack >= end
        {
            let sample = now.saturating_duration_since(at);
            let srtt = match self.srtt {
                Some(s) => (s * 7 + sample) / 8,
                None => sample,
            };
            self.srtt = Some(srtt);
            self.rtt_probe = None;
        }
        self.rto = match self.srtt {
            Some(s) => (s * 4 + self.cfg.ack_delay).clamp(self.cfg.rto_min, self.cfg.rto_max),
            None => self.cfg.rto_initial,
        };
        self.rto_deadline = self.in_flight().then(|| now + self.rto);
    }

    fn in_flight(&self) -> bool {
        self.next_send > self.acked || (self.fin_sent && !self.fin_acked)
    }

    fn on_data(&mut self, now: Instant, frame: &Frame) {
        let len = frame.data.len() as u64;
        let Some(end) = frame.offset.checked_add(len) else {
            return self.violation();
        };
        if frame.has(wire::FIN) {
            match self.fin_at {
                Some(at) if at != end => return self.violation(),
                _ if end < self.recv_next => return self.violation(),
                _ => self.fin_at = Some(end),
            }
            self.ack_now = true;
        }
        if self.fin_at.is_some_and(|at| end > at) {
            return self.violation();
        }
        if end > self.advertised.max(self.limit()) {
            return self.violation();
        }
        if frame.offset > self.recv_next {
            // A gap: keep it for later (within a window), and repeat our ack.
            let room = u64::from(self.cfg.window).saturating_sub(self.ahead_bytes);
            if len > 0 && len <= room && !self.ahead.contains_key(&frame.offset) {
                self.ahead.insert(frame.offset, frame.data.clone());
                self.ahead_bytes += len;
            } else {
                self.stats.discarded += 1;
            }
            self.ack_now = true;
            return;
        }
        if end <= self.recv_next {
            if len > 0 {
                self.stats.discarded += 1;
                self.ack_now = true;
            }
            return;
        }
        self.append(frame.offset, &frame.data);
        // The gap may be filled: take what was waiting behind it.
        while let Some(entry) = self.ahead.first_entry() {
            if *entry.key() > self.recv_next {
                break;
            }
            let (offset, data) = entry.remove_entry();
            self.ahead_bytes -= data.len() as u64;
            self.append(offset, &data);
        }
        if self.recv_next - self.acked_to_peer >= u64::from(self.cfg.window / 4) {
            self.ack_now = true;
        } else if self.ack_due.is_none() {
            self.ack_due = Some(now + self.cfg.ack_delay);
        }
    }

    /// Appends the part of `data` (at `offset ≤ recv_next`) not received yet.
    fn append(&mut self, offset: u64, data: &[u8]) {
        let end = offset + data.len() as u64;
        if end <= self.recv_next {
            return;
        }
        let skip = (self.recv_next - offset) as usize;
        self.recv_buf.extend(&data[skip..]);
        self.stats.bytes_received += end - self.recv_next;
        self.recv_next = end;
    }

    fn violation(&mut self) {
        self.reset(CODE_PROTOCOL, StreamError::Protocol);
    }

    fn check_closed(&mut self, now: Instant) {
        if self.closed_at.is_none() && self.is_closed() {
            self.closed_at = Some(now);
        }
    }

    /// The next frame to send now, if any.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Frame> {
        if self.error.is_some() {
            let code = self.reset_code?;
            if self.reset_sent {
                return None;
            }
            self.reset_sent = true;
            return Some(self.frame(now, wire::RESET, code));
        }
        let written = self.written();
        let can_send = written.min(self.peer_max_data);
        if self.next_send < can_send {
            let len = ((can_send - self.next_send) as usize).min(self.cfg.max_frame);
            let start = (self.next_send - self.acked) as usize;
            let offset = self.next_send;
            let end = offset + len as u64;
            let fin = self.fin_queued && end == written;
            let mut frame = self.frame(now, wire::DATA | if fin { wire::FIN } else { 0 }, 0);
            frame.offset = offset;
            frame.data = copy_range(&self.send_buf, start, len);
            self.next_send = end;
            self.fin_sent |= fin;
            self.stats.bytes_sent += len as u64;
            self.armed(now, end + u64::from(fin));
            return Some(frame);
        }
        if self.fin_queued && !self.fin_sent && self.next_send == written {
            let mut frame = self.frame(now, wire::DATA | wire::FIN, 0);
            frame.offset = written;
            self.fin_sent = true;
            self.armed(now, written + 1);
            return Some(frame);
        }
        if self.ack_now || self.ack_due.is_some_and(|at| now >= at) {
            return Some(self.frame(now, 0, 0));
        }
        if self.ping_due {
            return Some(self.frame(now, wire::PING, 0));
        }
        None
    }

    fn armed(&mut self, now: Instant, end: u64) {
        if self.rto_deadline.is_none() {
            self.rto_deadline = Some(now + self.rto);
        }
        if self.rtt_probe.is_none() {
            self.rtt_probe = Some((end, now));
        }
    }

    /// A frame of `flags` with our ack and limit; counts as sending.
    fn frame(&mut self, now: Instant, flags: u8, code: u32) -> Frame {
        let ack = self.ack_value();
        let max_data = self.limit().max(self.advertised);
        self.advertised = max_data;
        self.acked_to_peer = self.recv_next;
        self.ack_now = false;
        self.ack_due = None;
        self.ping_due = false;
        self.last_send = now;
        self.stats.frames_sent += 1;
        Frame {
            flags,
            ack,
            max_data,
            offset: 0,
            code,
            data: Vec::new(),
        }
    }

    /// When [`on_timeout`](State::on_timeout) should next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.error.is_some() {
            return None;
        }
        let mut next = self.last_recv + self.cfg.idle_timeout;
        let mut earliest = |t: Option<Instant>| {
            if let Some(t) = t {
                next = next.min(t);
            }
        };
        earliest(self.ack_due);
        earliest(self.rto_deadline);
        earliest(Some(self.last_send + self.cfg.keepalive));
        earliest(self.closed_at.map(|at| at + self.cfg.linger));
        Some(next)
    }

    /// Runs the timers due at `now`.
    pub fn on_timeout(&mut self, now: Instant) {
        if self.error.is_some() {
            return;
        }
        let silent = now.saturating_duration_since(self.last_recv);
        if silent >= self.cfg.idle_timeout {
            self.reset(CODE_TIMEOUT, StreamError::TimedOut(silent));
            return;
        }
        if self.rto_deadline.is_some_and(|at| now >= at) {
            self.stats.timeouts += 1;
            self.next_send = self.acked;
            if !self.fin_acked {
                self.fin_sent = false;
            }
            self.rto = (self.rto * 2).min(self.cfg.rto_max);
            self.rto_deadline = None;
            self.rtt_probe = None;
            // Probe too: a lost window update would otherwise stall a zero window.
            self.ping_due = true;
        }
        if now >= self.last_send + self.cfg.keepalive {
            self.ping_due = true;
        }
    }
}

/// Copies `out.len()` bytes of `deque` from `start` (slice copies, not byte by byte).
/// `len` bytes of `deque` from `start`, in a new buffer (not zero-filled first).
fn copy_range(deque: &VecDeque<u8>, start: usize, len: usize) -> Vec<u8> {
    let (front, back) = deque.as_slices();
    let mut out = Vec::with_capacity(len);
    let from_front = front.len().saturating_sub(start).min(len);
    out.extend_from_slice(&front[start.min(front.len())..][..from_front]);
    let from = (start + from_front).saturating_sub(front.len());
    out.extend_from_slice(&back[from..from + (len - from_front)]);
    out
}

fn copy_out(deque: &VecDeque<u8>, start: usize, out: &mut [u8]) {
    let (front, back) = deque.as_slices();
    let mut done = 0;
    if start < front.len() {
        let n = out.len().min(front.len() - start);
        out[..n].copy_from_slice(&front[start..start + n]);
        done = n;
    }
    if done < out.len() {
        let from = start + done - front.len();
        let rest = out.len() - done;
        out[done..].copy_from_slice(&back[from..from + rest]);
    }
}

#[cfg(test)]
mod tests;
