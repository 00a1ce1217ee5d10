//! Local pipes (rmb_peer::pipes::wire): the frames `rmb pipe` / `rmb forward` and their
//! rmb-peer exchange over an upgraded HTTP connection.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use rmb_peer::pipes::wire::{
    Frame, FrameError, HEADER, MAX_DATA, MAX_TEXT, data_header, read_frame, write_done,
    write_error, write_fin, write_opened,
};

use crate::alloc;

/// Runs a future that never waits (it reads from a slice and writes to a vector).
fn now<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => unreachable!("reading a slice never waits"),
    }
}

/// The input as a stream of frames, read until it ends or a frame is refused. No
/// panic; no frame makes the reader hold more than its kind's bound (plus the bytes
/// read); every frame read is within its bound, and writing the frames read again
/// gives back exactly the bytes they were read from.
pub fn pipe_frames(data: &[u8]) {
    let mut reader = data;
    let mut buf = Vec::new();
    let mut written = Vec::new();
    loop {
        let before = reader.len();
        let read = alloc::bounded("read_frame", MAX_DATA + alloc::limit(before), || {
            now(read_frame(&mut reader, &mut buf))
        });
        let frame = match read {
            Ok(frame) => frame,
            Err(FrameError::Eof) => {
                assert!(reader.is_empty());
                break;
            }
            Err(_) => {
                // Refused or cut: what was written back is what came before it.
                break;
            }
        };
        match frame {
            Frame::Data(_) => {
                assert!(buf.len() <= MAX_DATA);
                let mut out = vec![0u8; HEADER + buf.len()];
                data_header(&mut out, buf.len());
                out[HEADER..].copy_from_slice(&buf);
                written.extend_from_slice(&out);
            }
            Frame::Fin => now(write_fin(&mut written)).expect("writing to a vector"),
            Frame::Done => now(write_done(&mut written)).expect("writing to a vector"),
            Frame::Error(text) => {
                assert!(text.len() <= MAX_TEXT);
                now(write_error(&mut written, &text)).expect("writing to a vector");
            }
            Frame::Opened(text) => {
                assert!(text.len() <= MAX_TEXT);
                now(write_opened(&mut written, &text)).expect("writing to a vector");
            }
        }
        let consumed = data.len() - reader.len();
        assert_eq!(written, data[..consumed], "frames write back as read");
    }
}
