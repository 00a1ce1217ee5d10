//! The replica link's bytes: the handshake that proves both ends are replicas of the
//! same relay, and the frames that follow it. Pure encoding and decoding, no I/O, so
//! every rule about hostile input is tested here.
//!
//! ```text
//! handshake (each message is one frame):
//!   server → client  HELLO   magic, server id, server nonce (32 bytes)
//!   client → server  PROVE   magic, client id, client nonce, mac(secret, "client", server nonce, client id, server id)
//!   server → client  PROVEN  mac(secret, "server", client nonce, server id, client id)
//! then, client → server:  BATCH  first sequence number, envelopes for sessions held by the server
//!                         PING   (keeps an idle link alive)
//!       server → client:  ACK    every sequence number up to `upto` handled; `refused` were not
//!                                delivered (the session is not connected there)
//! frame = u32 big-endian body length, body; body = u8 type, fields
//! ```
//!
//! The MAC is HMAC-SHA-256 under the secret every replica of the relay reads from
//! Redis: whoever can read that secret can already read and write every queue.

use axum::body::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::switch::{Outgoing, SessionId};

/// Opens every handshake message: protocol name and version.
pub const MAGIC: &[u8; 8] = b"RMBRPL01";

/// Bytes of a nonce.
pub const NONCE_LEN: usize = 32;

/// Longest replica id accepted (ids are 16 hex characters).
pub const MAX_ID_LEN: usize = 64;

/// Longest session id accepted inside a batch (the relay's own login rules allow far
/// less; this only bounds what a broken peer can make us allocate).
const MAX_SID_LEN: usize = 1024;

const TYPE_BATCH: u8 = 1;
const TYPE_ACK: u8 = 2;
const TYPE_PING: u8 = 3;

/// Bytes of framing each envelope costs inside a batch besides its session id and bytes.
pub const ITEM_OVERHEAD: usize = 4 + 2 + 8 + 4;

/// A frame after the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Envelopes numbered `first`, `first + 1`, …
    Batch { first: u64, items: Vec<Item> },
    /// Every envelope numbered up to `upto` is handled; those in `refused` were not
    /// delivered and are the sender's again.
    Ack { upto: u64, refused: Vec<u64> },
    /// Nothing to say; the link is alive.
    Ping,
}

/// One envelope on the link: for whom, until when, what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub session: SessionId,
    pub item: Outgoing,
}

/// Why bytes from the other end are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame ends early")]
    Short,
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    #[error("bytes left after the frame")]
    Trailing,
    #[error("not a replica link (bad magic)")]
    BadMagic,
    #[error("field too long")]
    TooLong,
    #[error("session id is not UTF-8")]
    BadSid,
    #[error("the other end does not hold the relay's replica secret")]
    BadProof,
}

/// Appends the frame header for a body of `len` bytes.
fn header(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(&(len as u32).to_be_bytes());
}

/// Appends a BATCH frame holding `items`, numbered from `first`.
pub fn encode_batch<'a>(
    out: &mut Vec<u8>,
    first: u64,
    items: impl Iterator<Item = (&'a SessionId, &'a Outgoing)> + Clone,
) {
    let mut len = 1 + 8 + 4;
    let mut count = 0u32;
    for (session, (bytes, _)) in items.clone() {
        len += ITEM_OVERHEAD + session.sid.as_ref().map_or(0, |s| s.len()) + bytes.len();
        count += 1;
    }
    out.reserve(4 + len);
    header(out, len);
    out.push(TYPE_BATCH);
    out.extend_from_slice(&first.to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    for (session, (bytes, deadline)) in items {
        let sid = session.sid.as_deref().unwrap_or("");
        out.extend_from_slice(&session.twin.to_be_bytes());
        out.extend_from_slice(&(sid.len() as u16).to_be_bytes());
        out.extend_from_slice(sid.as_bytes());
        out.extend_from_slice(&deadline.to_be_bytes());
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(bytes);
    }
}

/// Appends an ACK frame.
pub fn encode_ack(out: &mut Vec<u8>, upto: u64, refused: &[u64]) {
    header(out, 1 + 8 + 4 + 8 * refused.len());
    out.push(TYPE_ACK);
    out.extend_from_slice(&upto.to_be_bytes());
    out.extend_from_slice(&(refused.len() as u32).to_be_bytes());
    for seq in refused {
        out.extend_from_slice(&seq.to_be_bytes());
    }
}

/// Appends a PING frame.
pub fn encode_ping(out: &mut Vec<u8>) {
    header(out, 1);
    out.push(TYPE_PING);
}

/// The body length a frame header announces.
pub fn body_len(header: [u8; 4]) -> usize {
    u32::from_be_bytes(header) as usize
}

/// A cursor over a frame body that never reads past its end.
struct Reader {
    body: Bytes,
    at: usize,
}

impl Reader {
    fn take(&mut self, n: usize) -> Result<Bytes, WireError> {
        let end = self.at.checked_add(n).ok_or(WireError::Short)?;
        if end > self.body.len() {
            return Err(WireError::Short);
        }
        let part = self.body.slice(self.at..end);
        self.at = end;
        Ok(part)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let part = self.take(N)?;
        Ok(part[..].try_into().expect("length checked"))
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn done(&self) -> Result<(), WireError> {
        if self.at == self.body.len() {
            Ok(())
        } else {
            Err(WireError::Trailing)
        }
    }
}

/// Decodes a frame body (its header already read and its length bounded by the
/// caller). Envelope bytes share `body`'s buffer: no copy.
pub fn decode(body: Bytes) -> Result<Frame, WireError> {
    let mut r = Reader { body, at: 0 };
    let frame = match r.u8()? {
        TYPE_BATCH => {
            let first = r.u64()?;
            let count = r.u32()? as usize;
            // Each item takes at least ITEM_OVERHEAD bytes: a count the body cannot hold
            // is refused before anything is allocated for it.
            if count > (r.body.len() - r.at) / ITEM_OVERHEAD {
                return Err(WireError::Short);
            }
            let mut items = Vec::with_capacity(count);
            for _ in 0..count {
                let twin = r.u32()?;
                let sid_len = r.u16()? as usize;
                if sid_len > MAX_SID_LEN {
                    return Err(WireError::TooLong);
                }
                let sid = r.take(sid_len)?;
                let sid = std::str::from_utf8(&sid).map_err(|_| WireError::BadSid)?;
                let deadline = r.u64()?;
                let len = r.u32()? as usize;
                let bytes = r.take(len)?;
                items.push(Item {
                    session: SessionId {
                        twin,
                        sid: (!sid.is_empty()).then(|| sid.to_string()),
                    },
                    item: (bytes, deadline),
                });
            }
            Frame::Batch { first, items }
        }
        TYPE_ACK => {
            let upto = r.u64()?;
            let count = r.u32()? as usize;
            if count > (r.body.len() - r.at) / 8 {
                return Err(WireError::Short);
            }
            let refused = (0..count).map(|_| r.u64()).collect::<Result<_, _>>()?;
            Frame::Ack { upto, refused }
        }
        TYPE_PING => Frame::Ping,
        other => return Err(WireError::UnknownType(other)),
    };
    r.done()?;
    Ok(frame)
}

/// The server's first message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub id: String,
    pub nonce: [u8; NONCE_LEN],
}

/// The client's answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prove {
    pub id: String,
    pub nonce: [u8; NONCE_LEN],
    pub mac: [u8; 32],
}

fn put_id(out: &mut Vec<u8>, id: &str) {
    out.push(id.len().min(MAX_ID_LEN) as u8);
    out.extend_from_slice(&id.as_bytes()[..id.len().min(MAX_ID_LEN)]);
}

fn get_id(r: &mut Reader) -> Result<String, WireError> {
    let len = r.u8()? as usize;
    if len > MAX_ID_LEN {
        return Err(WireError::TooLong);
    }
    let id = r.take(len)?;
    String::from_utf8(id.to_vec()).map_err(|_| WireError::BadSid)
}

fn magic(r: &mut Reader) -> Result<(), WireError> {
    if &r.array::<8>()? != MAGIC {
        return Err(WireError::BadMagic);
    }
    Ok(())
}

/// Appends the HELLO frame.
pub fn encode_hello(out: &mut Vec<u8>, hello: &Hello) {
    let start = out.len();
    header(out, 0);
    out.extend_from_slice(MAGIC);
    put_id(out, &hello.id);
    out.extend_from_slice(&hello.nonce);
    patch_len(out, start);
}

/// Decodes a HELLO body.
pub fn decode_hello(body: Bytes) -> Result<Hello, WireError> {
    let mut r = Reader { body, at: 0 };
    magic(&mut r)?;
    let id = get_id(&mut r)?;
    let nonce = r.array()?;
    r.done()?;
    Ok(Hello { id, nonce })
}

/// Appends the PROVE frame.
pub fn encode_prove(out: &mut Vec<u8>, prove: &Prove) {
    let start = out.len();
    header(out, 0);
    out.extend_from_slice(MAGIC);
    put_id(out, &prove.id);
    out.extend_from_slice(&prove.nonce);
    out.extend_from_slice(&prove.mac);
    patch_len(out, start);
}

/// Decodes a PROVE body.
pub fn decode_prove(body: Bytes) -> Result<Prove, WireError> {
    let mut r = Reader { body, at: 0 };
    magic(&mut r)?;
    let id = get_id(&mut r)?;
    let nonce = r.array()?;
    let mac = r.array()?;
    r.done()?;
    Ok(Prove { id, nonce, mac })
}

/// Appends the PROVEN frame (the server's MAC).
pub fn encode_proven(out: &mut Vec<u8>, mac: &[u8; 32]) {
    header(out, 32);
    out.extend_from_slice(mac);
}

/// Decodes a PROVEN body.
pub fn decode_proven(body: Bytes) -> Result<[u8; 32], WireError> {
    let mut r = Reader { body, at: 0 };
    let mac = r.array()?;
    r.done()?;
    Ok(mac)
}

fn patch_len(out: &mut [u8], start: usize) {
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Which end a MAC speaks for, so a client's proof can never be played back as a
/// server's.
#[derive(Debug, Clone, Copy)]
pub enum Side {
    Client,
    Server,
}

/// The MAC `side` sends: over the other end's nonce and both ids, under `secret`.
pub fn mac(secret: &[u8], side: Side, nonce: &[u8; NONCE_LEN], own: &str, other: &str) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(match side {
        Side::Client => b"rmb replica link: client",
        Side::Server => b"rmb replica link: server",
    });
    mac.update(nonce);
    for id in [own, other] {
        mac.update(&[id.len() as u8]);
        mac.update(id.as_bytes());
    }
    mac.finalize().into_bytes().into()
}

/// Checks a MAC received from the other end in constant time.
pub fn verify(
    secret: &[u8],
    side: Side,
    nonce: &[u8; NONCE_LEN],
    theirs: &str,
    ours: &str,
    got: &[u8; 32],
) -> Result<(), WireError> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(match side {
        Side::Client => b"rmb replica link: client",
        Side::Server => b"rmb replica link: server",
    });
    mac.update(nonce);
    for id in [theirs, ours] {
        mac.update(&[id.len() as u8]);
        mac.update(id.as_bytes());
    }
    mac.verify_slice(got).map_err(|_| WireError::BadProof)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(twin: u32, sid: Option<&str>) -> SessionId {
        SessionId {
            twin,
            sid: sid.map(str::to_string),
        }
    }

    fn body(frame: &[u8]) -> Bytes {
        let len = body_len(frame[..4].try_into().unwrap());
        assert_eq!(len, frame.len() - 4, "header states the body length");
        Bytes::copy_from_slice(&frame[4..])
    }

    #[test]
    fn batches_round_trip() {
        let items = [
            (session(7, None), (Bytes::from_static(b"abc"), 100)),
            (session(8, Some("web")), (Bytes::from_static(b""), u64::MAX)),
        ];
        let mut out = Vec::new();
        encode_batch(&mut out, 41, items.iter().map(|(s, o)| (s, o)));
        let frame = decode(body(&out)).unwrap();
        let expected = Frame::Batch {
            first: 41,
            items: items
                .iter()
                .map(|(session, item)| Item {
                    session: session.clone(),
                    item: item.clone(),
                })
                .collect(),
        };
        assert_eq!(frame, expected);
    }

    #[test]
    fn acks_and_pings_round_trip() {
        let mut out = Vec::new();
        encode_ack(&mut out, 9, &[3, 5]);
        assert_eq!(
            decode(body(&out)).unwrap(),
            Frame::Ack {
                upto: 9,
                refused: vec![3, 5]
            }
        );
        out.clear();
        encode_ping(&mut out);
        assert_eq!(decode(body(&out)).unwrap(), Frame::Ping);
    }

    #[test]
    fn hostile_bodies_are_errors_not_allocations() {
        // A batch claiming four billion items in a few bytes.
        let mut claim = vec![TYPE_BATCH];
        claim.extend_from_slice(&0u64.to_be_bytes());
        claim.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode(Bytes::from(claim)), Err(WireError::Short));
        // An envelope length past the end.
        let mut out = Vec::new();
        let item = (session(1, None), (Bytes::from_static(b"xyz"), 5));
        encode_batch(&mut out, 0, std::iter::once((&item.0, &item.1)));
        let cut = Bytes::copy_from_slice(&out[4..out.len() - 1]);
        assert_eq!(decode(cut), Err(WireError::Short));
        // Trailing garbage, unknown types, empty bodies.
        let mut long = out[4..].to_vec();
        long.push(0);
        assert_eq!(decode(Bytes::from(long)), Err(WireError::Trailing));
        assert_eq!(
            decode(Bytes::from_static(&[99])),
            Err(WireError::UnknownType(99))
        );
        assert_eq!(decode(Bytes::new()), Err(WireError::Short));
        // An ack claiming more refusals than it holds.
        let mut ack = vec![TYPE_ACK];
        ack.extend_from_slice(&0u64.to_be_bytes());
        ack.extend_from_slice(&1000u32.to_be_bytes());
        assert_eq!(decode(Bytes::from(ack)), Err(WireError::Short));
    }

    #[test]
    fn the_handshake_proves_the_secret_and_cannot_be_reflected() {
        let secret = b"relay secret";
        let hello = Hello {
            id: "server".into(),
            nonce: [1; NONCE_LEN],
        };
        let mut out = Vec::new();
        encode_hello(&mut out, &hello);
        assert_eq!(decode_hello(body(&out)).unwrap(), hello);

        let proof = mac(secret, Side::Client, &hello.nonce, "client", "server");
        let prove = Prove {
            id: "client".into(),
            nonce: [2; NONCE_LEN],
            mac: proof,
        };
        out.clear();
        encode_prove(&mut out, &prove);
        let got = decode_prove(body(&out)).unwrap();
        assert_eq!(got, prove);
        verify(
            secret,
            Side::Client,
            &hello.nonce,
            "client",
            "server",
            &got.mac,
        )
        .unwrap();
        // Another secret, another nonce, swapped ids or the other side's label fail.
        let bad = [
            verify(
                b"other",
                Side::Client,
                &hello.nonce,
                "client",
                "server",
                &got.mac,
            ),
            verify(secret, Side::Client, &[3; 32], "client", "server", &got.mac),
            verify(
                secret,
                Side::Client,
                &hello.nonce,
                "server",
                "client",
                &got.mac,
            ),
            verify(
                secret,
                Side::Server,
                &hello.nonce,
                "client",
                "server",
                &got.mac,
            ),
        ];
        assert!(bad.iter().all(|r| *r == Err(WireError::BadProof)));

        let server = mac(secret, Side::Server, &prove.nonce, "server", "client");
        out.clear();
        encode_proven(&mut out, &server);
        let got = decode_proven(body(&out)).unwrap();
        verify(secret, Side::Server, &prove.nonce, "server", "client", &got).unwrap();
        assert_eq!(
            decode_hello(Bytes::from_static(b"NOTMAGIC\x00")),
            Err(WireError::BadMagic)
        );
    }
}
