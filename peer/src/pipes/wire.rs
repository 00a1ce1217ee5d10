//! The frames of a local pipe: what `rmb pipe` and `rmb forward` exchange with their
//! rmb-peer over an upgraded HTTP connection (`Upgrade: rmb-pipe`).
//!
//! A plain byte stream could carry the data, but not how it ended: whether the far side
//! acknowledged everything, or the connection was reset and why. The exit code of
//! `rmb pipe` must tell the truth, so data travels in frames and each end is a frame:
//!
//! ```text
//! frame = kind:u8 [len:u32 big-endian, payload]      (len only for DATA, ERROR, OPENED)
//! DATA   0x01  both ways   bytes of the connection
//! FIN    0x02  both ways   the sender's direction ended (a half-close)
//! DONE   0x03  peer → app  closed both ways, the far side acknowledged everything sent
//! ERROR  0x04  peer → app  the connection failed; payload: the reason (UTF-8)
//! OPENED 0x05  peer → app  a connection was accepted for a listener; payload: JSON
//! ```
//!
//! Per connection the app sends any number of DATA then exactly one FIN (at once after
//! an ERROR); the peer sends DATA, then FIN, then DONE, or ERROR at any point. An
//! upgraded HTTP connection that closes without FIN resets the bus connection.
//!
//! Lengths come from the other process and are bounded before anything is allocated.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Most data bytes in one DATA frame (what a reader must accept).
pub const MAX_DATA: usize = 256 * 1024;
/// Most bytes of an ERROR or OPENED payload.
pub const MAX_TEXT: usize = 8 * 1024;
/// Bytes of a frame header with a length.
pub const HEADER: usize = 5;

const DATA: u8 = 0x01;
const FIN: u8 = 0x02;
const DONE: u8 = 0x03;
const ERROR: u8 = 0x04;
const OPENED: u8 = 0x05;

/// One frame as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Bytes of the connection.
    Data(Vec<u8>),
    /// The sender's direction ended.
    Fin,
    /// The connection closed cleanly, everything sent acknowledged.
    Done,
    /// The connection failed, with the reason.
    Error(String),
    /// A listener accepted a connection: JSON describing it.
    Opened(String),
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream ended between frames (no FIN or DONE came first).
    #[error("the stream ended without saying how the connection ended")]
    Eof,
    /// The stream ended inside a frame, or failed.
    #[error("reading the local pipe: {0}")]
    Io(#[from] std::io::Error),
    /// A kind this side does not know.
    #[error("unknown frame kind {0:#04x}")]
    Kind(u8),
    /// A length beyond the bound for its kind.
    #[error("a frame of {len} bytes is over the limit of {max}")]
    TooLong { len: usize, max: usize },
    /// An ERROR or OPENED payload that is not UTF-8.
    #[error("a text frame that is not UTF-8")]
    NotText,
}

/// Reads the next frame. DATA payloads land in `buf` (reused between calls) and are
/// returned as [`Frame::Data`] with an empty vector: the caller takes the bytes from
/// `buf`, which saves a copy per frame on the hot path.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Frame, FrameError> {
    let kind = match reader.read_u8().await {
        Ok(kind) => kind,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Eof),
        Err(e) => return Err(e.into()),
    };
    let max = match kind {
        FIN => return Ok(Frame::Fin),
        DONE => return Ok(Frame::Done),
        DATA => MAX_DATA,
        ERROR | OPENED => MAX_TEXT,
        other => return Err(FrameError::Kind(other)),
    };
    let len = reader.read_u32().await? as usize;
    if len > max {
        return Err(FrameError::TooLong { len, max });
    }
    buf.clear();
    buf.resize(len, 0);
    reader.read_exact(buf).await?;
    match kind {
        DATA => Ok(Frame::Data(Vec::new())),
        _ => {
            let text = String::from_utf8(std::mem::take(buf)).map_err(|_| FrameError::NotText)?;
            Ok(if kind == ERROR {
                Frame::Error(text)
            } else {
                Frame::Opened(text)
            })
        }
    }
}

/// Fills the header of a DATA frame whose `len` payload bytes follow at
/// `frame[HEADER..]`, so a sender can read straight into one buffer and write it once.
pub fn data_header(frame: &mut [u8], len: usize) {
    debug_assert!(len <= MAX_DATA && frame.len() >= HEADER);
    frame[0] = DATA;
    frame[1..HEADER].copy_from_slice(&(len as u32).to_be_bytes());
}

/// Writes a FIN frame.
pub async fn write_fin<W: AsyncWrite + Unpin>(writer: &mut W) -> std::io::Result<()> {
    writer.write_all(&[FIN]).await?;
    writer.flush().await
}

/// Writes a DONE frame.
pub async fn write_done<W: AsyncWrite + Unpin>(writer: &mut W) -> std::io::Result<()> {
    writer.write_all(&[DONE]).await?;
    writer.flush().await
}

/// Writes an ERROR frame (the reason cut to [`MAX_TEXT`] bytes).
pub async fn write_error<W: AsyncWrite + Unpin>(
    writer: &mut W,
    reason: &str,
) -> std::io::Result<()> {
    write_text(writer, ERROR, reason).await
}

/// Writes an OPENED frame.
pub async fn write_opened<W: AsyncWrite + Unpin>(
    writer: &mut W,
    json: &str,
) -> std::io::Result<()> {
    write_text(writer, OPENED, json).await
}

async fn write_text<W: AsyncWrite + Unpin>(
    writer: &mut W,
    kind: u8,
    text: &str,
) -> std::io::Result<()> {
    let mut end = text.len().min(MAX_TEXT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut frame = Vec::with_capacity(HEADER + end);
    frame.push(kind);
    frame.extend_from_slice(&(end as u32).to_be_bytes());
    frame.extend_from_slice(&text.as_bytes()[..end]);
    writer.write_all(&frame).await?;
    writer.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn roundtrip(bytes: &[u8]) -> Vec<Result<Frame, String>> {
        let mut reader = bytes;
        let mut buf = Vec::new();
        let mut out = Vec::new();
        loop {
            match read_frame(&mut reader, &mut buf).await {
                Ok(Frame::Data(_)) => out.push(Ok(Frame::Data(buf.clone()))),
                Ok(frame) => out.push(Ok(frame)),
                Err(FrameError::Eof) => return out,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    return out;
                }
            }
        }
    }

    #[tokio::test]
    async fn frames_read_back_as_written() {
        let mut bytes = vec![0u8; HEADER + 3];
        data_header(&mut bytes, 3);
        bytes[HEADER..].copy_from_slice(b"abc");
        write_fin(&mut bytes).await.unwrap();
        write_opened(&mut bytes, r#"{"remote":"7"}"#).await.unwrap();
        write_error(&mut bytes, "reset").await.unwrap();
        write_done(&mut bytes).await.unwrap();
        assert_eq!(
            roundtrip(&bytes).await,
            vec![
                Ok(Frame::Data(b"abc".to_vec())),
                Ok(Frame::Fin),
                Ok(Frame::Opened(r#"{"remote":"7"}"#.into())),
                Ok(Frame::Error("reset".into())),
                Ok(Frame::Done),
            ]
        );
    }

    #[tokio::test]
    async fn hostile_lengths_and_kinds_are_refused_before_allocating() {
        let mut huge = vec![DATA];
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        let out = roundtrip(&huge).await;
        assert!(
            matches!(&out[..], [Err(e)] if e.contains("over the limit")),
            "{out:?}"
        );
        let mut long_text = vec![ERROR];
        long_text.extend_from_slice(&((MAX_TEXT + 1) as u32).to_be_bytes());
        assert!(roundtrip(&long_text).await[0].is_err());
        assert!(roundtrip(&[0x7f]).await[0].is_err());
        // Cut inside a frame: an error, not a clean end.
        let mut cut = vec![0u8; HEADER + 3];
        data_header(&mut cut, 10);
        assert!(roundtrip(&cut).await[0].is_err());
    }

    #[tokio::test]
    async fn long_reasons_are_cut_on_a_character_boundary() {
        let mut bytes = Vec::new();
        write_error(&mut bytes, &"é".repeat(MAX_TEXT))
            .await
            .unwrap();
        let out = roundtrip(&bytes).await;
        let Ok(Frame::Error(text)) = &out[0] else {
            panic!("{out:?}")
        };
        assert!(text.len() <= MAX_TEXT && text.chars().all(|c| c == 'é'));
    }
}
