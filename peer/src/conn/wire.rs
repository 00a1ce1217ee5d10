//! Byte layouts of a connection: the open request, the accept reply, and the frames
//! carried (encrypted) in `rmb.conn.data` requests.
//!
//! Everything here parses hostile input: lengths are checked before slicing, and a
//! malformed message is a [`WireError`], never a panic.

use rmb_aead::Cipher;
use rmb_identity::SIGNATURE_LEN;

/// Command of the request that opens a connection (answered with accept or an error).
pub const OPEN_COMMAND: &str = "rmb.conn.open";
/// Command of the requests that carry frames (never answered, sent unsigned).
pub const DATA_COMMAND: &str = crate::core::CONN_DATA_COMMAND;
/// Prefix of every command this layer reserves.
pub const COMMAND_PREFIX: &str = "rmb.conn.";
/// Version byte of an open request or accept reply without a cipher choice (the
/// connection uses ChaCha20-Poly1305): what every peer sent before ciphers were
/// negotiated, and still understands.
pub const VERSION: u8 = 1;
/// Version byte of an open request that offers ciphers, and of the accept that picks one.
pub const VERSION_CIPHERS: u8 = 2;
/// Most ciphers an open request may offer.
pub const MAX_OFFERED: usize = 8;
/// Longest protocol name, in bytes.
pub const MAX_PROTOCOL_LEN: usize = 64;
/// Connection id length: 16 random bytes chosen by the opener.
pub const ID_LEN: usize = 16;
/// Length of an x25519 public key.
pub const KEY_LEN: usize = 32;
/// Bytes of a frame header (flags, ack, max_data, offset, code).
pub const FRAME_HEADER: usize = 1 + 8 + 8 + 8 + 4;
/// Bytes before the ciphertext in a data request: connection id and packet number.
pub const PACKET_HEADER: usize = ID_LEN + 8;

/// A connection id.
pub type ConnId = [u8; ID_LEN];

/// Why a message of this layer could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message too short: {0} bytes")]
    Short(usize),
    #[error("unsupported connection protocol version {0}")]
    Version(u8),
    #[error("protocol name is empty, longer than {MAX_PROTOCOL_LEN} bytes or not UTF-8")]
    ProtocolName,
    #[error("{0} bytes left over after the message")]
    Trailing(usize),
    #[error("the open offers no cipher, or more than {MAX_OFFERED}")]
    Offer,
    #[error("the accept picks cipher {0}, which is not one we know")]
    UnknownCipher(u8),
}

/// The open request: who we are (the envelope says), what we want, our ephemeral key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    pub id: ConnId,
    pub ephemeral: [u8; KEY_LEN],
    /// Bytes the opener lets the responder send before its first window update.
    pub window: u32,
    pub protocol: String,
    /// Ids of the ciphers the opener can use, its preferred first ([`VERSION_CIPHERS`];
    /// [`Cipher::id`]). Empty: a [`VERSION`] 1 open, which means ChaCha20-Poly1305 (from
    /// a peer that predates the choice, or an opener trying again for one). Kept as sent,
    /// ids this build does not know included, since the signature covers them.
    pub offer: Vec<u8>,
    /// The opener's identity signature over [`Open::transcript`].
    pub signature: [u8; SIGNATURE_LEN],
}

/// The accept reply: the responder's ephemeral key and signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accept {
    pub ephemeral: [u8; KEY_LEN],
    pub window: u32,
    /// The cipher the responder picked from the offer ([`VERSION_CIPHERS`]); `None` for
    /// a [`VERSION`] 1 accept, the answer to an open without an offer (ChaCha20-Poly1305).
    pub cipher: Option<Cipher>,
    /// The responder's identity signature over [`Accept::transcript`].
    pub signature: [u8; SIGNATURE_LEN],
}

/// Checks a protocol name: 1 to [`MAX_PROTOCOL_LEN`] bytes.
pub fn check_protocol(name: &str) -> Result<(), WireError> {
    if name.is_empty() || name.len() > MAX_PROTOCOL_LEN {
        return Err(WireError::ProtocolName);
    }
    Ok(())
}

struct Reader<'a>(&'a [u8], usize);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Short(self.1));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn end(&self) -> Result<(), WireError> {
        match self.0.len() {
            0 => Ok(()),
            n => Err(WireError::Trailing(n)),
        }
    }
}

/// Reads the version byte: whether the message carries a cipher choice.
fn version(r: &mut Reader<'_>) -> Result<bool, WireError> {
    match r.u8()? {
        VERSION => Ok(false),
        VERSION_CIPHERS => Ok(true),
        v => Err(WireError::Version(v)),
    }
}

impl Open {
    /// What the opener signs: a domain tag, both twins, and every field but the signature
    /// (the offer too, in version 2, so nobody on the way can change it unnoticed).
    pub fn transcript(&self, opener: u32, responder: u32) -> Vec<u8> {
        let tag: &[u8] = if self.offer.is_empty() {
            b"rmb.conn.open.v1"
        } else {
            b"rmb.conn.open.v2"
        };
        let mut out = tag.to_vec();
        out.extend_from_slice(&opener.to_be_bytes());
        out.extend_from_slice(&responder.to_be_bytes());
        self.encode_fields(&mut out);
        out
    }

    /// Every field after the version byte and before the signature.
    fn encode_fields(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&self.ephemeral);
        out.extend_from_slice(&self.window.to_be_bytes());
        out.push(self.protocol.len() as u8);
        out.extend_from_slice(self.protocol.as_bytes());
        if !self.offer.is_empty() {
            out.push(self.offer.len() as u8);
            out.extend_from_slice(&self.offer);
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let version = if self.offer.is_empty() {
            VERSION
        } else {
            VERSION_CIPHERS
        };
        let mut out = vec![version];
        self.encode_fields(&mut out);
        out.extend_from_slice(&self.signature);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Open, WireError> {
        let mut r = Reader(bytes, bytes.len());
        let offers = version(&mut r)?;
        let id = r.array()?;
        let ephemeral = r.array()?;
        let window = r.u32()?;
        let len = r.u8()? as usize;
        let protocol = std::str::from_utf8(r.take(len)?)
            .map_err(|_| WireError::ProtocolName)?
            .to_string();
        check_protocol(&protocol)?;
        let mut offer = Vec::new();
        if offers {
            let n = r.u8()? as usize;
            if n == 0 || n > MAX_OFFERED {
                return Err(WireError::Offer);
            }
            offer = r.take(n)?.to_vec();
        }
        let signature = r.array()?;
        r.end()?;
        Ok(Open {
            id,
            ephemeral,
            window,
            protocol,
            offer,
            signature,
        })
    }

    /// The offer as ciphers this build knows, in the opener's order; a version 1 open
    /// offers ChaCha20-Poly1305 alone.
    pub fn ciphers(&self) -> Vec<Cipher> {
        if self.offer.is_empty() {
            return vec![Cipher::ChaCha20Poly1305];
        }
        self.offer
            .iter()
            .filter_map(|&id| Cipher::from_id(id))
            .collect()
    }
}

impl Accept {
    /// What the responder signs: a domain tag, the hash of the open transcript (binding
    /// the opener's ephemeral key, its offer and both twins), its ephemeral key, window
    /// and (version 2) the cipher it picked.
    pub fn transcript(&self, open_hash: &[u8; 32]) -> Vec<u8> {
        let tag: &[u8] = match self.cipher {
            None => b"rmb.conn.accept.v1",
            Some(_) => b"rmb.conn.accept.v2",
        };
        let mut out = tag.to_vec();
        out.extend_from_slice(open_hash);
        self.encode_fields(&mut out);
        out
    }

    fn encode_fields(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.ephemeral);
        out.extend_from_slice(&self.window.to_be_bytes());
        if let Some(cipher) = self.cipher {
            out.push(cipher.id());
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let version = match self.cipher {
            None => VERSION,
            Some(_) => VERSION_CIPHERS,
        };
        let mut out = vec![version];
        self.encode_fields(&mut out);
        out.extend_from_slice(&self.signature);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Accept, WireError> {
        let mut r = Reader(bytes, bytes.len());
        let picks = version(&mut r)?;
        let ephemeral = r.array()?;
        let window = r.u32()?;
        let cipher = if picks {
            let id = r.u8()?;
            Some(Cipher::from_id(id).ok_or(WireError::UnknownCipher(id))?)
        } else {
            None
        };
        let signature = r.array()?;
        r.end()?;
        Ok(Accept {
            ephemeral,
            window,
            cipher,
            signature,
        })
    }

    /// The cipher the connection uses: the one picked, or ChaCha20-Poly1305 for a
    /// version 1 accept.
    pub fn cipher_in_use(&self) -> Cipher {
        self.cipher.unwrap_or(Cipher::ChaCha20Poly1305)
    }
}

/// Frame flag: `offset + data.len()` is the end of the sender's stream (half-close).
pub const FIN: u8 = 1;
/// Frame flag: answer with a frame now (keep-alive probe, or a FIN that wants its ack).
pub const PING: u8 = 2;
/// Frame flag: the sender aborted the connection; `code` says why. No more frames.
pub const RESET: u8 = 4;
/// Frame flag: the frame carries stream data at `offset` (possibly empty with FIN).
pub const DATA: u8 = 8;

/// One frame (the plaintext inside a data request). Every frame carries the sender's
/// cumulative acknowledgement and flow-control limit.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frame {
    pub flags: u8,
    /// Next stream offset the sender expects from us (+1 once our FIN arrived).
    pub ack: u64,
    /// We may send stream bytes below this offset.
    pub max_data: u64,
    /// Stream offset of `data` (meaningful with [`DATA`]).
    pub offset: u64,
    /// Reset code (meaningful with [`RESET`]).
    pub code: u32,
    pub data: Vec<u8>,
}

impl Frame {
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FRAME_HEADER + self.data.len() + 16);
        self.encode_into(&mut out);
        out
    }

    /// Appends the encoding to `out` (so a packet header can come first).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(self.flags);
        out.extend_from_slice(&self.ack.to_be_bytes());
        out.extend_from_slice(&self.max_data.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(&self.code.to_be_bytes());
        out.extend_from_slice(&self.data);
    }

    pub fn decode(bytes: &[u8]) -> Result<Frame, WireError> {
        let mut r = Reader(bytes, bytes.len());
        let flags = r.u8()?;
        let ack = r.u64()?;
        let max_data = r.u64()?;
        let offset = r.u64()?;
        let code = r.u32()?;
        Ok(Frame {
            flags,
            ack,
            max_data,
            offset,
            code,
            data: r.0.to_vec(),
        })
    }
}

/// Splits a data request's payload into connection id, packet number and ciphertext.
pub fn split_packet(payload: &[u8]) -> Result<(ConnId, u64, &[u8]), WireError> {
    let mut r = Reader(payload, payload.len());
    let id = r.array()?;
    let pn = r.u64()?;
    Ok((id, pn, r.0))
}

/// [`split_packet`] with the ciphertext mutable (to decrypt it in place).
pub fn split_packet_mut(payload: &mut [u8]) -> Result<(ConnId, u64, &mut [u8]), WireError> {
    let (id, pn, _) = split_packet(payload)?;
    Ok((id, pn, &mut payload[PACKET_HEADER..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_truncations_are_errors() {
        let open = Open {
            id: [7; ID_LEN],
            ephemeral: [9; KEY_LEN],
            window: 1 << 20,
            protocol: "ssh".into(),
            offer: Vec::new(),
            signature: [3; SIGNATURE_LEN],
        };
        let bytes = open.encode();
        assert_eq!(Open::decode(&bytes).unwrap(), open);
        for cut in 0..bytes.len() {
            assert!(Open::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(Open::decode(&long), Err(WireError::Trailing(1)));
        let mut v3 = bytes;
        v3[0] = 3;
        assert_eq!(Open::decode(&v3), Err(WireError::Version(3)));

        let accept = Accept {
            ephemeral: [1; KEY_LEN],
            window: 5,
            cipher: None,
            signature: [2; SIGNATURE_LEN],
        };
        assert_eq!(Accept::decode(&accept.encode()).unwrap(), accept);

        let frame = Frame {
            flags: DATA | FIN,
            ack: 1,
            max_data: 2,
            offset: 3,
            code: 4,
            data: b"abc".to_vec(),
        };
        assert_eq!(Frame::decode(&frame.encode()).unwrap(), frame);
        assert!(Frame::decode(&frame.encode()[..FRAME_HEADER - 1]).is_err());
        assert!(check_protocol("").is_err());
        assert!(check_protocol(&"p".repeat(65)).is_err());
    }

    /// The version 1 layouts are what peers from before the cipher choice send and
    /// expect, byte for byte (recorded from that build): an open without an offer and
    /// an accept without a pick keep them.
    #[test]
    fn version_1_layouts_are_unchanged() {
        let open = Open {
            id: [0x11; ID_LEN],
            ephemeral: [0x22; KEY_LEN],
            window: 0x0102_0304,
            protocol: "p".into(),
            offer: Vec::new(),
            signature: [0x33; SIGNATURE_LEN],
        };
        let mut expected = vec![1];
        expected.extend([0x11; ID_LEN]);
        expected.extend([0x22; KEY_LEN]);
        expected.extend([1, 2, 3, 4, 1, b'p']);
        expected.extend([0x33; SIGNATURE_LEN]);
        assert_eq!(open.encode(), expected);
        let mut transcript = b"rmb.conn.open.v1".to_vec();
        transcript.extend([0, 0, 0, 7, 0, 0, 0, 9]);
        transcript.extend_from_slice(&expected[1..expected.len() - SIGNATURE_LEN]);
        assert_eq!(open.transcript(7, 9), transcript);
        assert_eq!(open.ciphers(), [Cipher::ChaCha20Poly1305]);

        let accept = Accept {
            ephemeral: [0x44; KEY_LEN],
            window: 9,
            cipher: None,
            signature: [0x55; SIGNATURE_LEN],
        };
        let mut expected = vec![1];
        expected.extend([0x44; KEY_LEN]);
        expected.extend([0, 0, 0, 9]);
        expected.extend([0x55; SIGNATURE_LEN]);
        assert_eq!(accept.encode(), expected);
        assert_eq!(accept.cipher_in_use(), Cipher::ChaCha20Poly1305);
    }

    #[test]
    fn offers_and_picks_round_trip_and_bad_ones_are_errors() {
        let open = Open {
            id: [7; ID_LEN],
            ephemeral: [9; KEY_LEN],
            window: 1 << 20,
            protocol: "ssh".into(),
            // 200: a cipher of a newer build, kept (it is signed) and skipped.
            offer: vec![200, Cipher::Aes256Gcm.id(), Cipher::ChaCha20Poly1305.id()],
            signature: [3; SIGNATURE_LEN],
        };
        let bytes = open.encode();
        assert_eq!(bytes[0], VERSION_CIPHERS);
        let back = Open::decode(&bytes).unwrap();
        assert_eq!(back, open);
        assert_eq!(
            back.ciphers(),
            [Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305]
        );
        assert!(open.transcript(1, 2).starts_with(b"rmb.conn.open.v2"));
        for cut in 0..bytes.len() {
            assert!(Open::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let offer_at = 1 + ID_LEN + KEY_LEN + 4 + 1 + 3;
        let mut empty = bytes.clone();
        empty[offer_at] = 0;
        assert_eq!(Open::decode(&empty), Err(WireError::Offer));
        let mut many = bytes.clone();
        many[offer_at] = MAX_OFFERED as u8 + 1;
        assert_eq!(Open::decode(&many), Err(WireError::Offer));

        let accept = Accept {
            ephemeral: [1; KEY_LEN],
            window: 5,
            cipher: Some(Cipher::Aes256Gcm),
            signature: [2; SIGNATURE_LEN],
        };
        let bytes = accept.encode();
        assert_eq!(bytes[0], VERSION_CIPHERS);
        assert_eq!(Accept::decode(&bytes).unwrap(), accept);
        assert_ne!(
            accept.transcript(&[0; 32]),
            Accept {
                cipher: None,
                ..accept.clone()
            }
            .transcript(&[0; 32])
        );
        let mut unknown = bytes.clone();
        unknown[1 + KEY_LEN + 4] = 200;
        assert_eq!(Accept::decode(&unknown), Err(WireError::UnknownCipher(200)));
        for cut in 0..bytes.len() {
            assert!(Accept::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }
}
