//! The AEADs of rmb, in place: ChaCha20-Poly1305 (RFC 8439) and AES-256-GCM ([`Cipher`]).
//! Connections' packets use whichever the two peers agreed on in the handshake; e2e
//! payloads use the one their scheme names (`rmb_identity::e2e`: x25519 with
//! ChaCha20-Poly1305, secp256k1 with AES-256-GCM).
//!
//! Why a crate of its own, with ring's implementations rather than RustCrypto's:
//!
//! - speed, small and large: ring's assembly runs ChaCha20 and Poly1305 with vector
//!   units and little set-up, and AES-GCM with the AES and carry-less multiply
//!   instructions (about 3.5 times ChaCha20-Poly1305's speed on the x86-64 machines rmb
//!   is measured on; without those instructions ChaCha20-Poly1305 is the faster one, see
//!   [`Cipher::preferred`]). RustCrypto's Poly1305 costs either ~1.4 µs of set-up per
//!   message (AVX2) or twice ring's time on large ones (portable); measured against it,
//!   an e2e seal of 64 B took 0.40 → 0.24 µs and of 64 KiB 67 → 31 µs (secp256k1's
//!   AES-256-GCM: 0.19 → 0.15 µs and 46 → 9 µs; `cargo bench -p rmb-identity --bench
//!   crypto`);
//! - debug builds: RustCrypto's AEAD is generic, so it was compiled at rmb-peer's `-O0`
//!   in `cargo test` and moved a few MB/s. Assembly does not care, and this crate is
//!   built optimised in the dev profile too (root `Cargo.toml`), so the tests can move
//!   100 MiB without optimising all of rmb-peer.
//!
//! The wire format is the standard AEAD, whichever implementation seals or opens (the
//! tests check ring's output against RustCrypto's).

use ring::aead::{AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, Tag, UnboundKey};

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

/// An AEAD a connection can use. Both take a 32-byte key and a 12-byte nonce and add a
/// 16-byte tag, so nothing else about a packet depends on the choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cipher {
    /// RFC 8439; what every connection used before ciphers were negotiated.
    ChaCha20Poly1305,
    /// NIST SP 800-38D with a 256-bit key.
    Aes256Gcm,
}

impl Cipher {
    /// Every cipher this crate implements.
    pub const ALL: [Cipher; 2] = [Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305];

    /// The byte naming the cipher on the wire.
    pub fn id(self) -> u8 {
        match self {
            Cipher::ChaCha20Poly1305 => 1,
            Cipher::Aes256Gcm => 2,
        }
    }

    /// The cipher a wire byte names (`None`: one this build does not know).
    pub fn from_id(id: u8) -> Option<Cipher> {
        Cipher::ALL.into_iter().find(|c| c.id() == id)
    }

    /// The name used in flags and logs.
    pub fn name(self) -> &'static str {
        match self {
            Cipher::ChaCha20Poly1305 => "chacha20-poly1305",
            Cipher::Aes256Gcm => "aes-256-gcm",
        }
    }

    /// The cipher a name ([`Cipher::name`]) stands for.
    pub fn from_name(name: &str) -> Option<Cipher> {
        Cipher::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Every cipher, fastest on this CPU first: AES-256-GCM where the CPU has AES and
    /// carry-less multiply instructions (ring then runs it in hardware), else
    /// ChaCha20-Poly1305 (AES in software is slower and ring's is constant-time at a cost).
    pub fn preferred() -> Vec<Cipher> {
        if aes_in_hardware() {
            vec![Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305]
        } else {
            vec![Cipher::ChaCha20Poly1305, Cipher::Aes256Gcm]
        }
    }

    fn algorithm(self) -> &'static ring::aead::Algorithm {
        match self {
            Cipher::ChaCha20Poly1305 => &CHACHA20_POLY1305,
            Cipher::Aes256Gcm => &AES_256_GCM,
        }
    }
}

/// A cipher name that is none of [`Cipher::ALL`]'s (as a flag's value, say).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown cipher {given:?} (known: {known})")]
pub struct UnknownCipher {
    given: String,
    known: String,
}

impl std::str::FromStr for Cipher {
    type Err = UnknownCipher;

    /// A cipher by its [`name`](Cipher::name), surrounding blanks ignored (so that a
    /// flag's `a, b` reads as it looks).
    fn from_str(text: &str) -> Result<Cipher, UnknownCipher> {
        Cipher::from_name(text.trim()).ok_or_else(|| UnknownCipher {
            given: text.to_string(),
            known: Cipher::ALL.map(Cipher::name).join(", "),
        })
    }
}

impl std::fmt::Display for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(target_arch = "x86_64")]
fn aes_in_hardware() -> bool {
    std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq")
}

#[cfg(target_arch = "aarch64")]
fn aes_in_hardware() -> bool {
    std::arch::is_aarch64_feature_detected!("aes")
        && std::arch::is_aarch64_feature_detected!("pmull")
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn aes_in_hardware() -> bool {
    false
}

/// One key of one cipher (one direction of a connection).
pub struct PacketKey(LessSafeKey);

impl PacketKey {
    /// `cipher` under `key`.
    pub fn new(cipher: Cipher, key: &[u8; KEY_LEN]) -> PacketKey {
        let key = UnboundKey::new(cipher.algorithm(), key).expect("a 32-byte key");
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
            .expect("both ciphers encrypt anything below 64 GiB per packet");
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
        for cipher in Cipher::ALL {
            round_trip_and_every_alteration_fails_with(cipher);
        }
    }

    #[test]
    fn cipher_ids_and_names_round_trip_and_the_preference_holds_both() {
        for cipher in Cipher::ALL {
            assert_eq!(Cipher::from_id(cipher.id()), Some(cipher));
            assert_eq!(Cipher::from_name(cipher.name()), Some(cipher));
        }
        assert_eq!(Cipher::from_id(0), None);
        assert_eq!(Cipher::from_id(3), None);
        let mut preferred = Cipher::preferred();
        preferred.sort_by_key(|c| c.id());
        assert_eq!(preferred, [Cipher::ChaCha20Poly1305, Cipher::Aes256Gcm]);
    }

    /// A packet sealed under one cipher does not open under the other with the same key.
    #[test]
    fn the_ciphers_do_not_open_each_others_packets() {
        let nonce = [3; NONCE_LEN];
        let mut buf = b"same key, other cipher".to_vec();
        let tag =
            PacketKey::new(Cipher::Aes256Gcm, &[9; KEY_LEN]).seal_in_place(&nonce, b"", &mut buf);
        assert_eq!(
            PacketKey::new(Cipher::ChaCha20Poly1305, &[9; KEY_LEN])
                .open_in_place(&nonce, b"", &mut buf, &tag),
            Err(Unauthentic)
        );
    }

    fn round_trip_and_every_alteration_fails_with(cipher: Cipher) {
        let key = PacketKey::new(cipher, &[7; KEY_LEN]);
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
        let other = PacketKey::new(cipher, &[8; KEY_LEN]);
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
        let tag =
            PacketKey::new(Cipher::ChaCha20Poly1305, &key).seal_in_place(&nonce, &aad, &mut buf);
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

    /// The AES-256-GCM test case 16 of the GCM specification (McGrew and Viega), with
    /// RustCrypto's AES-GCM agreeing.
    #[test]
    fn aes_256_gcm_vector() {
        let hex = |s: &str| -> Vec<u8> {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect()
        };
        let key: [u8; KEY_LEN] =
            hex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308")
                .try_into()
                .unwrap();
        let nonce: [u8; NONCE_LEN] = hex("cafebabefacedbaddecaf888").try_into().unwrap();
        let aad = hex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
        let plain = hex(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
        );
        let mut buf = plain.clone();
        let tag = PacketKey::new(Cipher::Aes256Gcm, &key).seal_in_place(&nonce, &aad, &mut buf);
        assert_eq!(
            buf,
            hex(
                "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662"
            )
        );
        assert_eq!(tag.to_vec(), hex("76fc6ece0f4e1768cddf8853bb2d551b"));
        use aes_gcm::aead::{AeadInPlace, KeyInit};
        let mut other = plain.clone();
        let rc = aes_gcm::Aes256Gcm::new(&key.into())
            .encrypt_in_place_detached(&nonce.into(), &aad, &mut other)
            .unwrap();
        assert_eq!((other, <[u8; 16]>::from(rc)), (buf.clone(), tag));
        PacketKey::new(Cipher::Aes256Gcm, &key)
            .open_in_place(&nonce, &aad, &mut buf, &tag)
            .unwrap();
        assert_eq!(buf, plain);
    }
}
