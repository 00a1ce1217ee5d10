//! The replica link's I/O below the frames: reading one frame under a size bound, and
//! the two halves of the handshake (see [`super::wire`]), each under a deadline.

use std::time::Duration;

use axum::body::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::directory::Directory;
use super::wire::{self, Hello, NONCE_LEN, Prove, Side, WireError};

/// Longest a handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest handshake message.
const MAX_HANDSHAKE: usize = 512;

/// Why a link could not be opened or went down.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("frame of {0} bytes is over the limit")]
    TooBig(usize),
    #[error("handshake did not finish in time")]
    HandshakeTimeout,
    #[error("the other end is replica {got}, not {expected}")]
    WrongPeer { expected: String, got: String },
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("{0}")]
    Other(&'static str),
}

/// Reads one frame body of at most `max` bytes; `None` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> Result<Option<Bytes>, LinkError> {
    let mut header = [0u8; 4];
    match reader.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = wire::body_len(header);
    if len > max {
        return Err(LinkError::TooBig(len));
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await?;
    Ok(Some(Bytes::from(body)))
}

async fn must_read<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Bytes, LinkError> {
    read_frame(reader, MAX_HANDSHAKE)
        .await?
        .ok_or(LinkError::Other("closed during the handshake"))
}

/// The connecting side: proves to the replica `expected` that we are replica `own`,
/// and checks that it is `expected` and holds the same secret.
pub async fn client_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    own: &str,
    expected: &str,
    directory: &Directory,
) -> Result<(), LinkError> {
    let shake = async {
        let hello = wire::decode_hello(must_read(stream).await?)?;
        if hello.id != expected {
            return Err(LinkError::WrongPeer {
                expected: expected.to_string(),
                got: hello.id,
            });
        }
        let secret = directory.secret().await?;
        let nonce: [u8; NONCE_LEN] = rand::random();
        let prove = Prove {
            id: own.to_string(),
            nonce,
            mac: wire::mac(&secret, Side::Client, &hello.nonce, own, expected),
        };
        let mut out = Vec::new();
        wire::encode_prove(&mut out, &prove);
        stream.write_all(&out).await?;
        let proven = wire::decode_proven(must_read(stream).await?)?;
        wire::verify(&secret, Side::Server, &nonce, expected, own, &proven)?;
        Ok(())
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, shake)
        .await
        .map_err(|_| LinkError::HandshakeTimeout)?
}

/// The accepting side: checks that the connecting end holds the secret; returns its id.
pub async fn server_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    own: &str,
    directory: &Directory,
) -> Result<String, LinkError> {
    let shake = async {
        let hello = Hello {
            id: own.to_string(),
            nonce: rand::random(),
        };
        let mut out = Vec::new();
        wire::encode_hello(&mut out, &hello);
        stream.write_all(&out).await?;
        let prove = wire::decode_prove(must_read(stream).await?)?;
        // Read the secret now, not at start: a Redis that lost it has a new one, which
        // every replica then reads alike.
        let secret = directory.secret().await?;
        wire::verify(
            &secret,
            Side::Client,
            &hello.nonce,
            &prove.id,
            own,
            &prove.mac,
        )?;
        let mac = wire::mac(&secret, Side::Server, &prove.nonce, own, &prove.id);
        out.clear();
        wire::encode_proven(&mut out, &mac);
        stream.write_all(&out).await?;
        Ok(prove.id)
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, shake)
        .await
        .map_err(|_| LinkError::HandshakeTimeout)?
}
