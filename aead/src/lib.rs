//! ChaCha20-Poly1305 in place, behind functions that are not generic.
//!
//! Why a crate: RustCrypto's AEAD is generic, so its code is compiled in the crate that
//! names the concrete cipher, at that crate's optimisation level. Debug builds
//! (`cargo test`, CI) keep rmb-peer at `-O0`, where a connection's packet encryption
//! ran at a few MB/s and was most of a bulk transfer's time. Here the cipher is
//! instantiated once, in a crate the root `Cargo.toml` builds optimised in every
//! profile, so connections move bulk data quickly in tests too without optimising all
//! of rmb-peer (which would lengthen every clean build).

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};

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
#[derive(Clone)]
pub struct PacketKey(ChaCha20Poly1305);

impl PacketKey {
    /// The cipher under `key`.
    pub fn new(key: &[u8; KEY_LEN]) -> PacketKey {
        PacketKey(ChaCha20Poly1305::new(Key::from_slice(key)))
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
        self.0
            .encrypt_in_place_detached(Nonce::from_slice(nonce), aad, buf)
            .expect("ChaCha20-Poly1305 encrypts anything below 256 GiB")
            .into()
    }

    /// Checks `tag` over `buf` and `aad`, then decrypts `buf` in place. On failure
    /// `buf` is left encrypted.
    pub fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), Unauthentic> {
        self.0
            .decrypt_in_place_detached(Nonce::from_slice(nonce), aad, buf, Tag::from_slice(tag))
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

        let mut wrong = sealed.clone();
        assert_eq!(
            key.open_in_place(&nonce, b"aaD", &mut wrong, &tag),
            Err(Unauthentic)
        );
        assert_eq!(wrong, sealed, "left encrypted");
        assert!(
            key.open_in_place(&[2; NONCE_LEN], b"aad", &mut wrong, &tag)
                .is_err()
        );
        let other = PacketKey::new(&[8; KEY_LEN]);
        assert!(
            other
                .open_in_place(&nonce, b"aad", &mut wrong, &tag)
                .is_err()
        );
        wrong[0] ^= 1;
        assert!(key.open_in_place(&nonce, b"aad", &mut wrong, &tag).is_err());
    }

    /// The RFC 8439 §2.8.2 AEAD test vector.
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
        assert_eq!(
            tag,
            [
                0x1a, 0xe1, 0x0b, 0x59, 0x4f, 0x09, 0xe2, 0x6a, 0x7e, 0x90, 0x2e, 0xcb, 0xd0, 0x60,
                0x06, 0x91
            ]
        );
    }
}
