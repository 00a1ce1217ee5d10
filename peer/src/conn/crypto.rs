//! The connection handshake's cryptography and the per-connection packet encryption.
//!
//! Each side makes a fresh x25519 key pair for the connection and signs the handshake
//! transcript with its twin's identity key (see [`wire::Open::transcript`] and
//! [`wire::Accept::transcript`]). The opener offers ciphers, the responder picks the first
//! of the offer it allows ([`pick`]); both are signed. The shared secret goes through
//! HKDF-SHA256 (salt: the connection id; info: the hash of both transcripts) into one key
//! of that cipher per direction. The ephemeral secrets are dropped once the keys exist, so recorded traffic
//! stays unreadable even if both identity keys leak later (forward secrecy).

use hkdf::Hkdf;
use rmb_aead::{Cipher, NONCE_LEN, PacketKey, TAG_LEN};
use rmb_identity::registry::Twin;
use rmb_identity::{Identity, SignatureError, verify};
use sha2::{Digest, Sha256};
use x25519_dalek::{EphemeralSecret, PublicKey};

use super::wire::{self, Accept, ConnId, FRAME_HEADER, Frame, Open};

/// Why a handshake did not produce keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("the handshake signature does not verify: {0}")]
    Signature(#[from] SignatureError),
    #[error("the ephemeral key exchange gave a non-contributory (low-order) result")]
    WeakKey,
    #[error("no cipher of the offer ({offered:?}) is allowed here")]
    NoCommonCipher { offered: Vec<u8> },
    #[error("the accept picks {0}, which the open did not offer")]
    CipherNotOffered(Cipher),
}

/// Why a packet could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("packet does not authenticate under this connection's key")]
    Authentication,
}

/// A fresh ephemeral key pair for one handshake.
pub struct Ephemeral {
    secret: EphemeralSecret,
    pub public: [u8; 32],
}

impl Ephemeral {
    pub fn generate() -> Ephemeral {
        let secret = EphemeralSecret::random_from_rng(rand::rngs::OsRng);
        let public = PublicKey::from(&secret).to_bytes();
        Ephemeral { secret, public }
    }
}

/// Both directions' keys of one connection, from one side's point of view.
pub struct Keys {
    seal: PacketKey,
    open: PacketKey,
    id: ConnId,
    cipher: Cipher,
}

/// Signs an open request (fills its signature).
pub fn sign_open(identity: &Identity, open: &mut Open, opener: u32, responder: u32) {
    open.signature = identity.signer().sign(&open.transcript(opener, responder));
}

/// Checks an open request's signature against the opener's registered account.
pub fn verify_open(open: &Open, opener: &Twin, responder: u32) -> Result<(), HandshakeError> {
    let transcript = open.transcript(opener.id, responder);
    verify(&opener.account, &transcript, &open.signature)?;
    Ok(())
}

fn open_hash(open: &Open, opener: u32, responder: u32) -> [u8; 32] {
    Sha256::digest(open.transcript(opener, responder)).into()
}

/// The responder's choice for `open`: `None` answers a version 1 open (ChaCha20-Poly1305
/// without a choice), else the first cipher of the offer that `allowed` holds: the
/// opener knows best which one its CPU runs fastest.
pub fn pick(open: &Open, allowed: &[Cipher]) -> Result<Option<Cipher>, HandshakeError> {
    if open.offer.is_empty() {
        return Ok(None);
    }
    open.ciphers()
        .into_iter()
        .find(|c| allowed.contains(c))
        .map(Some)
        .ok_or_else(|| HandshakeError::NoCommonCipher {
            offered: open.offer.clone(),
        })
}

/// Responder side: picks the cipher ([`pick`]), signs the accept for `open` and derives
/// the keys.
pub fn respond(
    identity: &Identity,
    open: &Open,
    opener: u32,
    responder: u32,
    window: u32,
    allowed: &[Cipher],
) -> Result<(Accept, Keys), HandshakeError> {
    let cipher = pick(open, allowed)?;
    let eph = Ephemeral::generate();
    let hash = open_hash(open, opener, responder);
    let mut accept = Accept {
        ephemeral: eph.public,
        window,
        cipher,
        signature: [0; rmb_identity::SIGNATURE_LEN],
    };
    accept.signature = identity.signer().sign(&accept.transcript(&hash));
    let keys = derive(eph.secret, open, &accept, &hash, false)?;
    Ok((accept, keys))
}

/// Opener side: checks the responder's signature and derives the keys.
pub fn complete(
    eph: Ephemeral,
    open: &Open,
    accept: &Accept,
    opener: u32,
    responder: &Twin,
) -> Result<Keys, HandshakeError> {
    let hash = open_hash(open, opener, responder.id);
    verify(
        &responder.account,
        &accept.transcript(&hash),
        &accept.signature,
    )?;
    let cipher = accept.cipher_in_use();
    if !open.ciphers().contains(&cipher) {
        return Err(HandshakeError::CipherNotOffered(cipher));
    }
    derive(eph.secret, open, accept, &hash, true)
}

fn derive(
    secret: EphemeralSecret,
    open: &Open,
    accept: &Accept,
    open_hash: &[u8; 32],
    opener: bool,
) -> Result<Keys, HandshakeError> {
    let theirs = PublicKey::from(if opener {
        accept.ephemeral
    } else {
        open.ephemeral
    });
    let shared = secret.diffie_hellman(&theirs);
    if !shared.was_contributory() {
        return Err(HandshakeError::WeakKey);
    }
    let mut info = b"rmb.conn.v1 keys".to_vec();
    info.extend_from_slice(open_hash);
    info.extend_from_slice(&Sha256::digest(accept.encode()));
    let hk = Hkdf::<Sha256>::new(Some(&open.id), shared.as_bytes());
    let mut okm = zeroize::Zeroizing::new([0u8; 64]);
    hk.expand(&info, okm.as_mut())
        .expect("64 bytes is a valid HKDF-SHA256 length");
    let (first, second) = okm.split_at(32);
    let cipher = accept.cipher_in_use();
    let to_responder = PacketKey::new(cipher, first.try_into().expect("32 bytes"));
    let to_opener = PacketKey::new(cipher, second.try_into().expect("32 bytes"));
    let (seal, open_key) = if opener {
        (to_responder, to_opener)
    } else {
        (to_opener, to_responder)
    };
    Ok(Keys {
        seal,
        open: open_key,
        id: open.id,
        cipher,
    })
}

/// Bytes of the packet of a `plain_len`-byte plaintext.
pub fn packet_len(plain_len: usize) -> usize {
    wire::PACKET_HEADER + plain_len + TAG_LEN
}

/// Bytes of the packet of `frame` ([`Keys::seal_frame_into`]).
pub fn frame_packet_len(frame: &Frame) -> usize {
    packet_len(FRAME_HEADER + frame.data.len())
}

fn nonce(pn: u64) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[4..].copy_from_slice(&pn.to_be_bytes());
    n
}

impl Keys {
    /// The cipher the two sides agreed on.
    pub fn cipher(&self) -> Cipher {
        self.cipher
    }

    /// Encrypts `plain` as packet `pn` (unique per direction): the data request's
    /// payload (`id ‖ pn ‖ ciphertext`).
    pub fn seal(&self, pn: u64, plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(packet_len(plain.len()));
        self.seal_with(pn, &mut out, |out| out.extend_from_slice(plain));
        out
    }

    /// [`seal`](Keys::seal) of an encoded frame.
    pub fn seal_frame(&self, pn: u64, frame: &Frame) -> Vec<u8> {
        let mut out = Vec::with_capacity(frame_packet_len(frame));
        self.seal_frame_into(pn, frame, &mut out);
        out
    }

    /// Appends the packet of `frame` (exactly [`frame_packet_len`] bytes) to `out`: the
    /// frame is encoded straight into it and encrypted in place, so its data is copied
    /// once.
    pub fn seal_frame_into(&self, pn: u64, frame: &Frame, out: &mut Vec<u8>) {
        self.seal_with(pn, out, |out| frame.encode_into(out));
    }

    fn seal_with(&self, pn: u64, out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
        let start = out.len();
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&pn.to_be_bytes());
        write(out);
        let (header, body) = out[start..].split_at_mut(wire::PACKET_HEADER);
        let tag = self.seal.seal_in_place(&nonce(pn), header, body);
        out.extend_from_slice(&tag);
    }

    /// Decrypts a packet's ciphertext (after [`wire::split_packet`]) into a new buffer.
    pub fn open(&self, pn: u64, cipher: &[u8]) -> Result<Vec<u8>, PacketError> {
        let mut buf = cipher.to_vec();
        let len = self.open_in_place(pn, &mut buf)?.len();
        buf.truncate(len);
        Ok(buf)
    }

    /// Decrypts a packet's ciphertext in place; the plaintext is the front of `cipher`
    /// (the tag is cut off). On failure `cipher` is garbage.
    pub fn open_in_place<'a>(
        &self,
        pn: u64,
        cipher: &'a mut [u8],
    ) -> Result<&'a [u8], PacketError> {
        let mut header = [0u8; wire::PACKET_HEADER];
        header[..wire::ID_LEN].copy_from_slice(&self.id);
        header[wire::ID_LEN..].copy_from_slice(&pn.to_be_bytes());
        let Some(split) = cipher.len().checked_sub(TAG_LEN) else {
            return Err(PacketError::Authentication);
        };
        let (body, tag) = cipher.split_at_mut(split);
        let tag: &[u8; TAG_LEN] = (&*tag).try_into().expect("TAG_LEN bytes");
        self.open
            .open_in_place(&nonce(pn), &header, body, tag)
            .map_err(|_| PacketError::Authentication)?;
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmb_identity::KeyType;

    fn twin(id: u32, identity: &Identity) -> Twin {
        Twin {
            id,
            account: identity.signer().account(),
            relays: Default::default(),
            pk: None,
        }
    }

    #[test]
    fn both_sides_derive_matching_keys_and_forgeries_fail() {
        // Version 1 (no offer: ChaCha20-Poly1305), and version 2 offers.
        let aes = Cipher::Aes256Gcm.id();
        let chacha = Cipher::ChaCha20Poly1305.id();
        for (offer, expected) in [
            (vec![], Cipher::ChaCha20Poly1305),
            (vec![aes, chacha], Cipher::Aes256Gcm),
            (vec![chacha, aes], Cipher::ChaCha20Poly1305),
            (vec![99, aes], Cipher::Aes256Gcm),
        ] {
            handshake_and_packets(offer, expected);
        }
    }

    fn handshake_and_packets(offer: Vec<u8>, expected: Cipher) {
        let alice = Identity::from_secret("//Alice", KeyType::Sr25519).unwrap();
        let bob = Identity::from_secret("//Bob", KeyType::Ed25519).unwrap();
        let eph = Ephemeral::generate();
        let mut open = Open {
            id: [5; 16],
            ephemeral: eph.public,
            window: 1000,
            protocol: "echo".into(),
            offer,
            signature: [0; rmb_identity::SIGNATURE_LEN],
        };
        sign_open(&alice, &mut open, 1, 2);
        verify_open(&open, &twin(1, &alice), 2).unwrap();
        // Bound to both twins: a replay to another twin or claimed by another fails.
        assert!(verify_open(&open, &twin(1, &alice), 3).is_err());
        assert!(verify_open(&open, &twin(1, &bob), 2).is_err());
        // The offer is signed: changing it on the way is noticed.
        let mut altered = open.clone();
        altered.offer = vec![Cipher::ChaCha20Poly1305.id()];
        if altered.offer != open.offer {
            assert!(verify_open(&altered, &twin(1, &alice), 2).is_err());
        }

        let (accept, bob_keys) = respond(&bob, &open, 1, 2, 2000, &Cipher::ALL).unwrap();
        assert_eq!(bob_keys.cipher(), expected);
        assert_eq!(accept.cipher.is_some(), !open.offer.is_empty());
        // Signed by someone else than the twin we opened to: refused.
        assert!(complete(Ephemeral::generate(), &open, &accept, 1, &twin(2, &alice)).is_err());
        let alice_keys = complete(eph, &open, &accept, 1, &twin(2, &bob)).unwrap();
        assert_eq!(alice_keys.cipher(), expected);

        let packet = alice_keys.seal(7, b"hello");
        let (id, pn, cipher) = wire::split_packet(&packet).unwrap();
        assert_eq!((id, pn), ([5; 16], 7));
        assert_eq!(bob_keys.open(pn, cipher).unwrap(), b"hello");
        // Wrong packet number, wrong direction, flipped bit: refused.
        assert!(bob_keys.open(8, cipher).is_err());
        assert!(alice_keys.open(pn, cipher).is_err());
        let mut flipped = cipher.to_vec();
        flipped[0] ^= 1;
        assert!(bob_keys.open(pn, &flipped).is_err());
        let frame = Frame {
            flags: wire::DATA,
            data: b"framed".to_vec(),
            ..Default::default()
        };
        let sealed = alice_keys.seal_frame(8, &frame);
        assert_eq!(sealed, alice_keys.seal(8, &frame.encode()));
        let back = bob_keys.seal(1, b"hi");
        let (_, pn, cipher) = wire::split_packet(&back).unwrap();
        assert_eq!(alice_keys.open(pn, cipher).unwrap(), b"hi");
    }

    /// A responder allowing none of the offer refuses it; an accept (validly signed)
    /// that picks a cipher the open did not offer is refused by the opener.
    #[test]
    fn ciphers_outside_the_offer_are_refused() {
        let alice = Identity::from_secret("//Alice", KeyType::Sr25519).unwrap();
        let bob = Identity::from_secret("//Bob", KeyType::Ed25519).unwrap();
        let eph = Ephemeral::generate();
        let mut open = Open {
            id: [6; 16],
            ephemeral: eph.public,
            window: 1000,
            protocol: "echo".into(),
            offer: vec![Cipher::Aes256Gcm.id()],
            signature: [0; rmb_identity::SIGNATURE_LEN],
        };
        sign_open(&alice, &mut open, 1, 2);
        assert!(matches!(
            respond(&bob, &open, 1, 2, 1, &[Cipher::ChaCha20Poly1305]),
            Err(HandshakeError::NoCommonCipher { .. })
        ));
        let bob_eph = Ephemeral::generate();
        let mut accept = Accept {
            ephemeral: bob_eph.public,
            window: 1,
            cipher: Some(Cipher::ChaCha20Poly1305),
            signature: [0; rmb_identity::SIGNATURE_LEN],
        };
        accept.signature = bob
            .signer()
            .sign(&accept.transcript(&open_hash(&open, 1, 2)));
        assert!(matches!(
            complete(eph, &open, &accept, 1, &twin(2, &bob)),
            Err(HandshakeError::CipherNotOffered(Cipher::ChaCha20Poly1305))
        ));
    }

    #[test]
    fn low_order_ephemeral_keys_are_refused() {
        let alice = Identity::from_secret("//Alice", KeyType::Sr25519).unwrap();
        let mut open = Open {
            id: [1; 16],
            ephemeral: [0; 32],
            window: 1,
            protocol: "p".into(),
            offer: Vec::new(),
            signature: [0; rmb_identity::SIGNATURE_LEN],
        };
        sign_open(&alice, &mut open, 1, 2);
        assert!(matches!(
            respond(&alice, &open, 1, 2, 1, &Cipher::ALL),
            Err(HandshakeError::WeakKey)
        ));
    }
}
