//! ChaCha20-Poly1305 (RFC 8439) in place, for connections' packets.
//!
//! Why a crate of its own, with ring's implementation rather than RustCrypto's (which
//! the rest of rmb uses for small e2e payloads):
//!
//! - speed on bulk data: ring's assembly runs ChaCha20 and Poly1305 with vector units.
//!   RustCrypto's Poly1305 is forced to its portable backend workspace-wide
//!   (`.cargo/config.toml`: its AVX2 set-up dominates small RPC payloads), and was the
//!   largest single cost of a connection's bulk transfer (a fifth of all CPU);
//! - debug builds: RustCrypto's AEAD is generic, so it was compiled at rmb-peer's `-O0`
//!   in `cargo test` and moved a few MB/s. Assembly does not care, and this crate is
//!   built optimised in the dev profile too (root `Cargo.toml`), so the tests can move
//!   the 100 MiB without optimising all of rmb-peer.
//!
//! The wire format is the standard AEAD, whichever implementation seals or opens.

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, Tag, UnboundKey};

/// Bytes of a key.
pub const KEY_LEN: usize = 32;
/// Bytes of a nonce.
pub const NONCE_LEN: usize = 12;
/// Bytes of the authentication tag after each ciphertext.
pub const TAG_LEN: usize = 16;

/// A ciphertext that does not authenticate under the key, nonce and associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("ciphertext does not authenticate")]
pub struct Unauthentic;

/// One ChaCha20-Poly1305 key (one direction of a connection).
pub struct PacketKey(LessSafeKey);

impl PacketKey {
    /// The cipher under `key`.
    pub fn new(key: &[u8; KEY_LEN]) -> PacketKey {
        let key = UnboundKey::new(&CHACHA20_POLY1305, key).expect("a 32-byte key");
        PacketKey(LessSafeKey::new(key))
    }

    /// Encrypts `buf` in place, authenticating it with `aad`; returns the tag.
    ///
    /// The caller never reuses a nonce under one key (connections use packet numbers).
    pub fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> [u8; TAG_LEN] {
        let tag = self
            .0
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), buf)
            .expect("ChaCha20-Poly1305 encrypts anything below 256 GiB");
        tag.as_ref().try_into().expect("a 16-byte tag")
    }

    /// Checks `tag` over `buf` and `aad`, then decrypts `buf` in place. On failure
    /// the contents of `buf` are unspecified (ring zeroes them).
    pub fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), Unauthentic> {
        self.0
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                Tag::from(*tag),
                buf,
                0..,
            )
            .map(|_| ())
            .map_err(|_| Unauthentic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_alteration_fails() {
        let key = PacketKey::new(&[7; KEY_LEN]);
        let nonce = [1; NONCE_LEN];
        let mut buf = b"attack at dawn".to_vec();
        let tag = key.seal_in_place(&nonce, b"aad", &mut buf);
        assert_ne!(&buf[..], b"attack at dawn");
        let sealed = buf.clone();
        key.open_in_place(&nonce, b"aad", &mut buf, &tag).unwrap();
        assert_eq!(&buf[..], b"attack at dawn");

        let fresh = || sealed.clone();
        assert_eq!(
            key.open_in_place(&nonce, b"aaD", &mut fresh(), &tag),
            Err(Unauthentic)
        );
        let other_nonce = [2; NONCE_LEN];
        assert!(
            key.open_in_place(&other_nonce, b"aad", &mut fresh(), &tag)
                .is_err()
        );
        let other = PacketKey::new(&[8; KEY_LEN]);
        assert!(
            other
                .open_in_place(&nonce, b"aad", &mut fresh(), &tag)
                .is_err()
        );
        let mut flipped = fresh();
        flipped[0] ^= 1;
        assert!(
            key.open_in_place(&nonce, b"aad", &mut flipped, &tag)
                .is_err()
        );
        let mut bad_tag = tag;
        bad_tag[15] ^= 1;
        assert!(
            key.open_in_place(&nonce, b"aad", &mut fresh(), &bad_tag)
                .is_err()
        );
    }

    /// The RFC 8439 §2.8.2 AEAD test vector (and RustCrypto agrees: same wire format
    /// whichever implementation a peer uses).
    #[test]
    fn rfc_8439_vector() {
        let key: [u8; 32] = std::array::from_fn(|i| 0x80 + i as u8);
        let nonce = [
            0x07, 0, 0, 0, 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47,
        ];
        let aad = [
            0x50, 0x51, 0x52, 0x53, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7,
        ];
        let mut buf = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.".to_vec();
        let tag = PacketKey::new(&key).seal_in_place(&nonce, &aad, &mut buf);
        assert_eq!(&buf[..4], &[0xd3, 0x1a, 0x8d, 0x34]);
        use chacha20poly1305::aead::{AeadInPlace, KeyInit};
        let mut other = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.".to_vec();
        let rc = chacha20poly1305::ChaCha20Poly1305::new(&key.into())
            .encrypt_in_place_detached(&nonce.into(), &aad, &mut other)
            .unwrap();
        assert_eq!((other, <[u8; 16]>::from(rc)), (buf.clone(), tag));
        assert_eq!(
            tag,
            [
                0x1a, 0xe1, 0x0b, 0x59, 0x4f, 0x09, 0xe2, 0x6a, 0x7e, 0x90, 0x2e, 0xcb, 0xd0, 0x60,
                0x06, 0x91
            ]
        );
    }
}
