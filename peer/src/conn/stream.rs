//! An open connection as the application sees it ([`Stream`]: `AsyncRead + AsyncWrite`
//! plus length-prefixed messages), and the task that drives its [`State`]: it sends what
//! the state machine wants sent, encrypted under the connection's keys, and runs its
//! timers.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use rmb_proto::Address;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::crypto::{self, Keys};
use super::replay::PacketWindow;
use super::state::{self, Read, State, Stats, StreamError};
use super::wire::{ConnId, Frame};
use crate::core::{Peer, SendError};

/// Expiration of a data envelope: a frame older than this is useless (it was resent).
/// Open requests live at least this long too ([`super::Connections::connect`]).
pub(super) const FRAME_EXPIRATION: u64 = 60;
/// Longest wait for a relay link to take a frame. Past it the frame counts as lost
/// (retransmission sends it again), so timers keep running while no relay is up.
const SEND_WAIT: Duration = Duration::from_secs(2);
/// Default bound of one message read by [`Stream::recv_message`].
pub const MAX_MESSAGE: usize = 16 << 20;

/// What the stream handle and the driver share.
pub(crate) struct Conn {
    pub(crate) id: ConnId,
    pub(crate) remote: Address,
    pub(crate) protocol: String,
    pub(crate) keys: Keys,
    locked: Mutex<Locked>,
    /// Wakes the driver (something to send, or the handle went away).
    driver: Notify,
    /// Wakes tasks waiting for a change (close).
    changed: Notify,
}

/// What became of a received packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Received {
    Applied,
    /// It does not authenticate under the connection's key (forged, altered, re-sourced
    /// or meant for another connection), or its frame is malformed.
    Forged,
    /// Authentic, but its packet number arrived before (or is too old to tell).
    Replayed,
}

struct Locked {
    state: State,
    /// Packet numbers received (replays are dropped).
    seen: PacketWindow,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
}

impl Conn {
    pub(crate) fn new(
        id: ConnId,
        remote: Address,
        protocol: String,
        keys: Keys,
        state: State,
    ) -> Arc<Conn> {
        Arc::new(Conn {
            id,
            remote,
            protocol,
            keys,
            locked: Mutex::new(Locked {
                state,
                seen: PacketWindow::default(),
                read_waker: None,
                write_waker: None,
            }),
            driver: Notify::new(),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Locked> {
        self.locked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens (in place: `cipher` is used up) and applies a packet from the peer, unless
    /// it does not authenticate under this connection's key or its packet number came
    /// before.
    pub(crate) fn receive(&self, pn: u64, cipher: &mut [u8]) -> Received {
        let Ok(plain) = self.keys.open_in_place(pn, cipher) else {
            return Received::Forged;
        };
        let Ok(frame) = Frame::decode(plain) else {
            return Received::Forged;
        };
        let mut locked = self.lock();
        if locked.seen.admit(pn).is_err() {
            return Received::Replayed;
        }
        locked.state.on_frame(Instant::now().into_std(), frame);
        locked.wake();
        drop(locked);
        self.driver.notify_one();
        self.changed.notify_waiters();
        Received::Applied
    }

    /// Aborts the connection locally (peer shutdown).
    pub(crate) fn abort(&self, code: u32, error: StreamError) {
        let mut locked = self.lock();
        locked.state.reset(code, error);
        locked.wake();
        drop(locked);
        self.driver.notify_one();
        self.changed.notify_waiters();
    }

    pub(crate) fn stats(&self) -> Stats {
        self.lock().state.stats()
    }
}

impl Locked {
    fn wake(&mut self) {
        if let Some(w) = self.read_waker.take() {
            w.wake();
        }
        if let Some(w) = self.write_waker.take() {
            w.wake();
        }
    }
}

/// Runs one connection until it is done: sends frames, runs timers. `forget` removes
/// it from the peer's table at the end.
pub(crate) async fn drive(
    peer: Peer,
    conn: Arc<Conn>,
    shutdown: CancellationToken,
    forget: impl FnOnce(),
) {
    let mut pn: u64 = 0;
    loop {
        let now = Instant::now().into_std();
        let (frames, next, done) = {
            let mut locked = conn.lock();
            locked.state.on_timeout(now);
            let mut frames = Vec::new();
            while let Some(frame) = locked.state.poll_transmit(now) {
                frames.push(frame);
            }
            locked.wake();
            let next = locked.state.poll_timeout();
            (frames, next, locked.state.is_done(now))
        };
        conn.changed.notify_waiters();
        for frame in frames {
            pn += 1;
            if !send(&peer, &conn, pn, &frame).await {
                conn.abort(state::CODE_SHUTDOWN, StreamError::Shutdown);
                forget();
                return;
            }
        }
        if done {
            forget();
            return;
        }
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = conn.driver.notified() => {}
            _ = sleep => {}
            _ = shutdown.cancelled() => {
                conn.abort(state::CODE_SHUTDOWN, StreamError::Shutdown);
                // Best effort: tell the peer at once rather than by its idle timeout.
                let reset = conn.lock().state.poll_transmit(Instant::now().into_std());
                if let Some(frame) = reset {
                    let _ = tokio::time::timeout(Duration::from_secs(1), send(&peer, &conn, pn + 1, &frame)).await;
                }
                forget();
                return;
            }
        }
    }
}

/// Encrypts and sends one frame (unsigned: the connection's key authenticates it);
/// false only when the peer is closed.
async fn send(peer: &Peer, conn: &Conn, pn: u64, frame: &Frame) -> bool {
    let len = crypto::frame_packet_len(frame);
    let fill = |out: &mut Vec<u8>| conn.keys.seal_frame_into(pn, frame, out);
    let sending = peer.send_conn_frame(conn.remote.clone(), FRAME_EXPIRATION, len, fill);
    let Ok(sent) = tokio::time::timeout(SEND_WAIT, sending).await else {
        return true;
    };
    match sent {
        Ok(_) => true,
        Err(SendError::Closed) => false,
        // Retransmission sends it again; a registry hiccup is not fatal.
        Err(e) => {
            tracing::debug!(remote = %conn.remote, error = %e, "a connection frame was not sent");
            true
        }
    }
}

/// Why reading a message failed.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("the stream ended inside a message")]
    Truncated,
    #[error("stream I/O: {0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for MessageError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            return MessageError::Truncated;
        }
        match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<StreamError>())
        {
            Some(stream) => MessageError::Stream(stream.clone()),
            None => MessageError::Io(e),
        }
    }
}

/// One open connection: an ordered, reliable byte stream both ways, end-to-end
/// encrypted under keys of this connection only.
///
/// Use it as `AsyncRead + AsyncWrite` (`shutdown` half-closes: the peer reads EOF), or
/// exchange length-prefixed messages ([`send_message`](Stream::send_message) /
/// [`recv_message`](Stream::recv_message)). Dropping it closes the connection: cleanly
/// once the peer finished too, otherwise by aborting (the peer sees
/// [`StreamError::Reset`]).
pub struct Stream {
    conn: Arc<Conn>,
    max_message: usize,
}

impl Stream {
    pub(crate) fn new(conn: Arc<Conn>) -> Stream {
        Stream {
            conn,
            max_message: MAX_MESSAGE,
        }
    }

    /// The other side (twin, and session for a direct client).
    pub fn remote(&self) -> &Address {
        &self.conn.remote
    }

    /// The connection id (it travels in the clear in every frame; for logs, and for
    /// tests that forge frames).
    pub fn id(&self) -> ConnId {
        self.conn.id
    }

    /// The protocol name the connection was opened with.
    pub fn protocol(&self) -> &str {
        &self.conn.protocol
    }

    /// The cipher the two sides agreed on in the handshake.
    pub fn cipher(&self) -> rmb_aead::Cipher {
        self.conn.keys.cipher()
    }

    /// Counters (frames, retransmissions, bytes).
    pub fn stats(&self) -> Stats {
        self.conn.stats()
    }

    /// Largest message [`recv_message`](Stream::recv_message) accepts (16 MiB by default).
    pub fn set_max_message(&mut self, limit: usize) {
        self.max_message = limit;
    }

    /// Writes one message (a 4-byte big-endian length, then the bytes).
    pub async fn send_message(&mut self, message: &[u8]) -> Result<(), MessageError> {
        let len = u32::try_from(message.len())
            .ok()
            .filter(|&l| l as usize <= self.max_message)
            .ok_or(StreamError::MessageTooLarge {
                size: message.len(),
                limit: self.max_message,
            })?;
        self.write_all(&len.to_be_bytes()).await?;
        self.write_all(message).await?;
        Ok(())
    }

    /// Reads one message; `None` when the peer finished between messages.
    pub async fn recv_message(&mut self) -> Result<Option<Vec<u8>>, MessageError> {
        let mut len = [0u8; 4];
        let first = self.read(&mut len).await?;
        if first == 0 {
            return Ok(None);
        }
        self.read_exact(&mut len[first..]).await?;
        let len = u32::from_be_bytes(len) as usize;
        if len > self.max_message {
            return Err(StreamError::MessageTooLarge {
                size: len,
                limit: self.max_message,
            }
            .into());
        }
        let mut message = vec![0u8; len];
        self.read_exact(&mut message).await?;
        Ok(Some(message))
    }

    /// Resets the connection: the far side reads an error, not an end, so a transfer cut
    /// short on this side is never taken for a complete one (dropping a stream whose far
    /// side already finished closes it cleanly instead).
    pub fn abort(&self) {
        let mut locked = self.conn.lock();
        if locked.state.error().is_none() {
            locked.state.reset(state::CODE_CLOSED, StreamError::Closed);
        }
        drop(locked);
        self.conn.driver.notify_one();
    }

    /// Half-closes (the peer reads EOF after everything written) and waits until the
    /// peer acknowledged all of it.
    pub async fn finish(&mut self) -> Result<(), StreamError> {
        loop {
            let changed = self.conn.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut locked = self.conn.lock();
                if let Some(e) = locked.state.error() {
                    return Err(e.clone());
                }
                locked.state.finish();
                if locked.state.finish_acked() {
                    return Ok(());
                }
            }
            self.conn.driver.notify_one();
            changed.await;
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.conn.lock().state.detach();
        self.conn.driver.notify_one();
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let mut locked = self.conn.lock();
        match locked.state.read(buf.initialize_unfilled()) {
            Ok(Read::Data(n)) => {
                buf.advance(n);
                let notify = locked.state.wants_send();
                drop(locked);
                if notify {
                    self.conn.driver.notify_one();
                }
                Poll::Ready(Ok(()))
            }
            Ok(Read::End) => Poll::Ready(Ok(())),
            Ok(Read::Blocked) => {
                locked.read_waker = Some(cx.waker().clone());
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut locked = self.conn.lock();
        match locked.state.write(data) {
            Ok(0) if !data.is_empty() => {
                locked.write_waker = Some(cx.waker().clone());
                Poll::Pending
            }
            Ok(n) => {
                drop(locked);
                self.conn.driver.notify_one();
                Poll::Ready(Ok(n))
            }
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // Written bytes are the driver's to deliver (and resend); nothing to push.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let mut locked = self.conn.lock();
        if let Some(e) = locked.state.error() {
            return Poll::Ready(Err(e.clone().into()));
        }
        locked.state.finish();
        drop(locked);
        self.conn.driver.notify_one();
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::crypto::{Ephemeral, complete, respond, sign_open};
    use crate::conn::wire::{self, Open};
    use rmb_identity::registry::Twin;
    use rmb_identity::{Identity, KeyType};

    /// Both ends' keys of one handshake between twins 1 (opener) and 2.
    fn keys() -> (Keys, Keys) {
        let alice = Identity::from_secret("//Alice", KeyType::Ed25519).unwrap();
        let bob = Identity::from_secret("//Bob", KeyType::Ed25519).unwrap();
        let eph = Ephemeral::generate();
        let mut open = Open {
            id: [9; wire::ID_LEN],
            ephemeral: eph.public,
            window: 1 << 20,
            protocol: "p".into(),
            offer: rmb_aead::Cipher::preferred()
                .iter()
                .map(|c| c.id())
                .collect(),
            signature: [0; rmb_identity::SIGNATURE_LEN],
        };
        sign_open(&alice, &mut open, 1, 2);
        let (accept, bob_keys) =
            respond(&bob, &open, 1, 2, 1 << 20, &rmb_aead::Cipher::ALL).unwrap();
        let responder = Twin {
            id: 2,
            account: bob.signer().account(),
            relays: Default::default(),
            pk: None,
        };
        (
            complete(eph, &open, &accept, 1, &responder).unwrap(),
            bob_keys,
        )
    }

    fn conn(keys: Keys) -> Arc<Conn> {
        let now = Instant::now().into_std();
        let state = State::new(state::Config::default(), now, 1 << 20);
        Conn::new([9; wire::ID_LEN], Address::twin(1), "p".into(), keys, state)
    }

    #[tokio::test]
    async fn only_new_authentic_packets_are_applied() {
        let (alice, bob) = keys();
        let frame = Frame {
            flags: wire::DATA,
            data: b"hello".to_vec(),
            ..Default::default()
        };
        let at_bob = conn(bob);
        // What a packet's receiver gets: its number and (a copy of) its ciphertext.
        let parts = |packet: &[u8]| {
            let (_, pn, cipher) = wire::split_packet(packet).unwrap();
            (pn, cipher.to_vec())
        };
        let packet = alice.seal_frame(1, &frame);
        let (pn, cipher) = parts(&packet);
        assert_eq!(at_bob.receive(pn, &mut cipher.clone()), Received::Applied);
        // The same packet again (a relay or anyone replaying it unsigned): dropped.
        assert_eq!(at_bob.receive(pn, &mut cipher.clone()), Received::Replayed);
        // Claimed under another packet number: does not authenticate.
        assert_eq!(
            at_bob.receive(pn + 1, &mut cipher.clone()),
            Received::Forged
        );
        // Bob's own direction's key (a frame reflected back to him): does not either.
        let (_, other_bob) = keys();
        let (pn, mut reflected) = parts(&other_bob.seal_frame(2, &frame));
        assert_eq!(at_bob.receive(pn, &mut reflected), Received::Forged);
        let (pn, mut flipped) = parts(&alice.seal_frame(3, &frame));
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(at_bob.receive(pn, &mut flipped), Received::Forged);
        // A forgery does not use up its packet number: the real packet 3 still counts.
        let (pn, mut real) = parts(&alice.seal_frame(3, &frame));
        assert_eq!(at_bob.receive(pn, &mut real), Received::Applied);
    }
}
