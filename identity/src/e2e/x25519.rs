//! rmb's own e2e scheme: X25519 + HKDF-SHA256 + ChaCha20-Poly1305.
//!
//! Used when the recipient publishes a 32-byte (x25519) key. Layout of `cipher`:
//!
//! ```text
//! version (1 byte, = 1) ‖ sender x25519 public key (32) ‖ nonce (12) ‖ ciphertext ‖ tag (16)
//! key = HKDF-SHA256(salt = "rmb-e2e-x25519-v1",
//!                   ikm  = X25519(own secret, their public),
//!                   info = sender public ‖ recipient public)        → 32 bytes
//! aad = version ‖ sender public [‖ binding]
//! ```
//!
//! `binding` is empty for signed envelopes; for envelopes sent without a signature it
//! names their direction, uid and command ([`rmb_proto::Envelope::unsigned_binding`]).
//!
//! The sender's key travels in the ciphertext, so the recipient needs no registry lookup
//! to decrypt, and a sender that publishes a secp256k1 key (for rmb-rs peers) can still
//! write to x25519 recipients. The envelope signature covers the whole `cipher`, which
//! binds that key to the signing twin. Binding both keys in `info` gives each direction
//! its own key, so a message cannot be reflected back to its sender.

use hkdf::Hkdf;
use rmb_aead::{Cipher, PacketKey};
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::{E2eError, NONCE_LEN, TAG_LEN, random_nonce};

/// Version byte of the layout above.
pub const VERSION: u8 = 1;
/// Bytes before the nonce: version and sender key.
pub const HEADER_LEN: usize = 1 + 32;
/// Smallest valid `cipher` (empty plaintext).
pub const MIN_LEN: usize = HEADER_LEN + NONCE_LEN + TAG_LEN;

/// Domain separation for deriving the x25519 secret from the twin's seed.
const SECRET_SALT: &[u8] = b"rmb-x25519-secret-v1";
const SESSION_SALT: &[u8] = b"rmb-e2e-x25519-v1";

/// A twin's static x25519 key pair.
pub struct StaticKeys {
    secret: StaticSecret,
    public: PublicKey,
}

impl StaticKeys {
    /// `secret = HKDF-SHA256(salt = "rmb-x25519-secret-v1", ikm = seed, info = "")`, so the
    /// x25519 key is unrelated to the signing and secp256k1 keys made from the same seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::new(Some(SECRET_SALT), seed)
            .expand(b"", &mut *bytes)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        let secret = StaticSecret::from(*bytes);
        let public = PublicKey::from(&secret);
        StaticKeys { secret, public }
    }

    /// The 32 bytes to publish.
    pub fn public(&self) -> [u8; 32] {
        self.public.to_bytes()
    }

    /// The AEAD for messages from `sender` to `recipient`, one of which is us.
    pub fn cipher(&self, sender: &[u8; 32], recipient: &[u8; 32]) -> Result<PacketKey, E2eError> {
        let their = if *sender == self.public() {
            recipient
        } else {
            sender
        };
        let shared = self.secret.diffie_hellman(&PublicKey::from(*their));
        if !shared.was_contributory() {
            return Err(E2eError::LowOrderKey);
        }
        let mut info = [0u8; 64];
        info[..32].copy_from_slice(sender);
        info[32..].copy_from_slice(recipient);
        let mut key = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::new(Some(SESSION_SALT), shared.as_bytes())
            .expand(&info, &mut *key)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        Ok(PacketKey::new(Cipher::ChaCha20Poly1305, &key))
    }
}

/// Encrypts `plaintext` with `cipher` (from [`StaticKeys::cipher`]) as `sender`.
pub fn seal(cipher: &PacketKey, sender: &[u8; 32], plaintext: &[u8]) -> Vec<u8> {
    seal_bound(cipher, sender, plaintext, b"")
}

/// [`seal`] with `binding` appended to the associated data, so the ciphertext opens
/// only with the same binding ([`open_bound`]).
pub fn seal_bound(
    cipher: &PacketKey,
    sender: &[u8; 32],
    plaintext: &[u8],
    binding: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(MIN_LEN + plaintext.len());
    out.push(VERSION);
    out.extend_from_slice(sender);
    out.extend_from_slice(&random_nonce());
    out.extend_from_slice(plaintext);
    let (head, body) = out.split_at_mut(HEADER_LEN + NONCE_LEN);
    let nonce = head[HEADER_LEN..].try_into().expect("12 bytes");
    let tag = cipher.seal_in_place(nonce, &aad(&head[..HEADER_LEN], binding), body);
    out.extend_from_slice(&tag);
    out
}

/// The associated data: the header, then the binding if any (signed envelopes, the
/// common case, have none and copy nothing).
fn aad<'a>(header: &'a [u8], binding: &[u8]) -> std::borrow::Cow<'a, [u8]> {
    if binding.is_empty() {
        std::borrow::Cow::Borrowed(header)
    } else {
        std::borrow::Cow::Owned([header, binding].concat())
    }
}

/// The sender key a `cipher` claims, after checking version and length.
pub fn sender_of(cipher: &[u8]) -> Result<[u8; 32], E2eError> {
    if cipher.len() < MIN_LEN {
        return Err(E2eError::TooShort {
            len: cipher.len(),
            min: MIN_LEN,
        });
    }
    if cipher[0] != VERSION {
        return Err(E2eError::UnsupportedVersion(cipher[0]));
    }
    Ok(cipher[1..HEADER_LEN].try_into().expect("32 bytes"))
}

/// Decrypts a `cipher` whose header [`sender_of`] has accepted.
pub fn open(aead: &PacketKey, cipher: &[u8]) -> Result<Vec<u8>, E2eError> {
    open_bound(aead, cipher, b"")
}

/// [`open`] of a ciphertext sealed with `binding` ([`seal_bound`]).
pub fn open_bound(aead: &PacketKey, cipher: &[u8], binding: &[u8]) -> Result<Vec<u8>, E2eError> {
    let (head, rest) = cipher.split_at(HEADER_LEN + NONCE_LEN);
    let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
    let mut plain = body.to_vec();
    let nonce = head[HEADER_LEN..].try_into().expect("12 bytes");
    let tag = tag.try_into().expect("16 bytes");
    aead.open_in_place(nonce, &aad(&head[..HEADER_LEN], binding), &mut plain, tag)
        .map_err(|_| E2eError::Decrypt)?;
    Ok(plain)
}
