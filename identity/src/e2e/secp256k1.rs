//! rmb-rs's e2e scheme: secp256k1 ECDH + SHA-256 + AES-256-GCM.
//!
//! Used when the recipient publishes a 33-byte (compressed SEC1) key, which is what every
//! rmb-rs peer publishes. Layout of `cipher`: `nonce (12) ‖ ciphertext ‖ tag (16)`, no
//! associated data. `key = SHA-256(X)` where X is the x-coordinate of `own secret ×
//! their public` (not libsecp256k1's default hash, which also covers the parity byte).
//! The key is the same in both directions, and the recipient must look up the sender's
//! published key to derive it.
//!
//! Envelopes sent without a signature (rmb peers only, never rmb-rs) use the same layout
//! with associated data: their binding ([`rmb_proto::Envelope::unsigned_binding`]),
//! which names sender and destination, so the symmetric key cannot be turned around.

use k256::elliptic_curve::sec1::ToEncodedPoint;
use rmb_aead::{Cipher, PacketKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{E2eError, NONCE_LEN, TAG_LEN, random_nonce};

/// Smallest valid `cipher` (empty plaintext).
pub const MIN_LEN: usize = NONCE_LEN + TAG_LEN;

/// A twin's secp256k1 key pair.
pub struct StaticKeys {
    secret: k256::SecretKey,
    public: [u8; 33],
}

impl StaticKeys {
    /// The seed itself is the secret scalar, as in rmb-rs.
    pub fn from_seed(seed: &[u8; 32]) -> Result<Self, E2eError> {
        let secret = k256::SecretKey::from_slice(seed).map_err(|_| E2eError::InvalidSeed)?;
        let point = secret.public_key().to_encoded_point(true);
        let public: [u8; 33] = point.as_bytes().try_into().expect("compressed point");
        Ok(StaticKeys { secret, public })
    }

    /// The 33-byte compressed public key to publish.
    pub fn public(&self) -> [u8; 33] {
        self.public
    }

    /// The AEAD shared with the holder of `their` (33- or 65-byte SEC1 public key).
    pub fn cipher(&self, their: &[u8]) -> Result<PacketKey, E2eError> {
        let their = k256::PublicKey::from_sec1_bytes(their)
            .map_err(|_| E2eError::InvalidPublicKey("secp256k1"))?;
        let shared = k256::ecdh::diffie_hellman(self.secret.to_nonzero_scalar(), their.as_affine());
        let key: Zeroizing<[u8; 32]> =
            Zeroizing::new(Sha256::digest(shared.raw_secret_bytes()).into());
        Ok(PacketKey::new(Cipher::Aes256Gcm, &key))
    }
}

/// Encrypts `plaintext`: `nonce ‖ ciphertext ‖ tag`.
pub fn seal(cipher: &PacketKey, plaintext: &[u8]) -> Vec<u8> {
    seal_bound(cipher, plaintext, b"")
}

/// [`seal`] with `binding` as associated data (empty: rmb-rs's layout).
pub fn seal_bound(cipher: &PacketKey, plaintext: &[u8], binding: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MIN_LEN + plaintext.len());
    out.extend_from_slice(&random_nonce());
    out.extend_from_slice(plaintext);
    let (nonce, body) = out.split_at_mut(NONCE_LEN);
    let tag = cipher.seal_in_place((&*nonce).try_into().expect("12 bytes"), binding, body);
    out.extend_from_slice(&tag);
    out
}

/// Decrypts `nonce ‖ ciphertext ‖ tag`.
pub fn open(cipher: &PacketKey, data: &[u8]) -> Result<Vec<u8>, E2eError> {
    open_bound(cipher, data, b"")
}

/// [`open`] of a ciphertext sealed with `binding` ([`seal_bound`]).
pub fn open_bound(cipher: &PacketKey, data: &[u8], binding: &[u8]) -> Result<Vec<u8>, E2eError> {
    if data.len() < MIN_LEN {
        return Err(E2eError::TooShort {
            len: data.len(),
            min: MIN_LEN,
        });
    }
    let (nonce, rest) = data.split_at(NONCE_LEN);
    let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
    let mut plain = body.to_vec();
    let (nonce, tag) = (
        nonce.try_into().expect("12 bytes"),
        tag.try_into().expect("16 bytes"),
    );
    cipher
        .open_in_place(nonce, binding, &mut plain, tag)
        .map_err(|_| E2eError::Decrypt)?;
    Ok(plain)
}
