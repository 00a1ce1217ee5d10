//! Large socket reads for busy connections, none of their memory for idle ones.
//!
//! Sessions read their WebSocket in small steps: tungstenite reads at most its read
//! buffer size per call, and the relay keeps that at 2 KiB so 100k idle sessions stay
//! small (docs/operations.md). A 64 KiB frame of a busy connection then costs 32
//! `recv` calls. [`ReadAhead`] sits between the socket and everything above it (TLS,
//! HTTP, WebSocket): while reads keep filling the caller's buffer, it reads up to
//! [`AHEAD`] bytes per call into a buffer of its own and hands them out from memory;
//! as soon as the socket has less than that waiting and what it holds is handed out,
//! it frees the buffer and reads straight into the caller's buffer again. An idle
//! connection holds no extra byte.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read from the socket per call while a connection is busy.
pub const AHEAD: usize = 64 * 1024;

/// An `AsyncRead + AsyncWrite` that reads ahead while its reads come back full.
#[derive(Debug)]
pub struct ReadAhead<IO> {
    io: IO,
    /// Present while busy: bytes read and not yet handed out are `buf[start..end]`.
    buf: Option<Box<[u8]>>,
    start: usize,
    end: usize,
    /// The last socket read into `buf` filled it: more is probably waiting.
    more: bool,
}

impl<IO> ReadAhead<IO> {
    /// `io`, read directly until a read fills the caller's buffer.
    pub fn new(io: IO) -> Self {
        ReadAhead {
            io,
            buf: None,
            start: 0,
            end: 0,
            more: false,
        }
    }

    /// True while it holds a read-ahead buffer (for tests and memory accounting).
    pub fn is_buffering(&self) -> bool {
        self.buf.is_some()
    }

    /// Hands out buffered bytes; frees the buffer once it is drained and the socket
    /// looked drained too.
    fn hand_out(&mut self, out: &mut ReadBuf<'_>) {
        let Some(buf) = self.buf.as_ref() else {
            return;
        };
        let n = out.remaining().min(self.end - self.start);
        out.put_slice(&buf[self.start..self.start + n]);
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if !self.more {
                self.buf = None;
            }
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for ReadAhead<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if this.start < this.end {
            this.hand_out(out);
            return Poll::Ready(Ok(()));
        }
        // A caller asking for as much as we would read ahead gains nothing from a copy.
        if this.buf.is_none() || out.remaining() >= AHEAD {
            let wanted = out.remaining();
            let before = out.filled().len();
            let polled = Pin::new(&mut this.io).poll_read(cx, out);
            if let Poll::Ready(Ok(())) = polled
                && out.filled().len() - before == wanted
                && wanted < AHEAD
            {
                // It filled the caller's buffer: the next read goes through ours.
                this.buf = Some(vec![0; AHEAD].into_boxed_slice());
                this.more = true;
            }
            return polled;
        }
        let buf = this.buf.as_mut().expect("checked above");
        let mut ahead = ReadBuf::new(buf);
        match Pin::new(&mut this.io).poll_read(cx, &mut ahead) {
            Poll::Ready(Ok(())) => {
                let n = ahead.filled().len();
                this.start = 0;
                this.end = n;
                this.more = n == AHEAD;
                if n == 0 {
                    // End of stream.
                    this.buf = None;
                    return Poll::Ready(Ok(()));
                }
                this.hand_out(out);
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for ReadAhead<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Reads `total` bytes in `step`-byte reads.
    async fn read_all(
        r: &mut ReadAhead<tokio::io::DuplexStream>,
        total: usize,
        step: usize,
    ) -> Vec<u8> {
        let mut got = Vec::new();
        let mut chunk = vec![0; step];
        while got.len() < total {
            let n = r.read(&mut chunk).await.unwrap();
            assert!(n > 0, "early end of stream");
            got.extend_from_slice(&chunk[..n]);
        }
        got
    }

    #[tokio::test]
    async fn small_reads_of_a_busy_stream_get_every_byte_in_order_and_the_buffer_goes() {
        let (mut tx, rx) = tokio::io::duplex(1 << 20);
        let mut r = ReadAhead::new(rx);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        tx.write_all(&data).await.unwrap();
        let got = read_all(&mut r, data.len(), 2048).await;
        assert_eq!(got, data);
        // Everything was handed out and the socket had less than a full read left.
        assert!(!r.is_buffering(), "an idle connection keeps no buffer");

        // Small messages one at a time never fill a read: no buffer at all.
        for i in 0..10u8 {
            tx.write_all(&[i; 100]).await.unwrap();
            let mut chunk = [0; 2048];
            let n = r.read(&mut chunk).await.unwrap();
            assert_eq!(&chunk[..n], &[i; 100]);
            assert!(!r.is_buffering());
        }

        // End of stream comes through.
        tx.write_all(&data[..5000]).await.unwrap();
        drop(tx);
        let got = read_all(&mut r, 5000, 2048).await;
        assert_eq!(got, data[..5000]);
        let mut chunk = [0; 2048];
        assert_eq!(r.read(&mut chunk).await.unwrap(), 0);
        assert!(!r.is_buffering());
    }

    #[tokio::test]
    async fn writes_pass_through() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut w = ReadAhead::new(a);
        w.write_all(b"hello").await.unwrap();
        w.flush().await.unwrap();
        let mut got = [0; 5];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
    }
}
