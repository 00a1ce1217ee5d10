//! End-to-end encryption of envelope payloads between twins.
//!
//! Every twin holds keys for both schemes, derived from its seed; it *publishes* one of
//! them on the registry. A sender picks the scheme from the length of the recipient's
//! published key:
//!
//! | published key | scheme | module |
//! |---|---|---|
//! | 32 bytes | X25519 + HKDF-SHA256 + ChaCha20-Poly1305 (rmb's own) | [`x25519`] |
//! | 33 or 65 bytes | secp256k1 ECDH + SHA-256 + AES-256-GCM (rmb-rs) | [`secp256k1`] |
//!
//! Relays never see plaintext. [`E2eKeys`] caches the derived cipher per remote key, so
//! the elliptic-curve work happens once per correspondent, not once per message.

pub mod secp256k1;
pub mod x25519;

use std::fmt;
use std::num::NonZeroUsize;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use lru::LruCache;
use rand::RngCore;
use rmb_aead::PacketKey;

/// Length of the random nonce both schemes put in front of the ciphertext.
pub const NONCE_LEN: usize = 12;
/// Length of the authentication tag both schemes append.
pub const TAG_LEN: usize = 16;
/// How many remote keys keep their derived cipher cached.
pub const CACHE_CAPACITY: usize = 4096;

/// Which e2e scheme a key or ciphertext belongs to (`--e2e`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum E2eScheme {
    /// rmb's default: X25519 + ChaCha20-Poly1305.
    #[default]
    X25519,
    /// rmb-rs compatible: secp256k1 + AES-256-GCM.
    Secp256k1,
}

impl E2eScheme {
    /// The scheme a published public key belongs to, by its length.
    pub fn of_public_key(key: &[u8]) -> Result<Self, E2eError> {
        match key.len() {
            32 => Ok(E2eScheme::X25519),
            33 | 65 => Ok(E2eScheme::Secp256k1),
            n => Err(E2eError::UnknownKeyLength(n)),
        }
    }

    /// Lower-case name as used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            E2eScheme::X25519 => "x25519",
            E2eScheme::Secp256k1 => "secp256k1",
        }
    }
}

impl fmt::Display for E2eScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for E2eScheme {
    type Err = E2eError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "x25519" => Ok(E2eScheme::X25519),
            "secp256k1" => Ok(E2eScheme::Secp256k1),
            _ => Err(E2eError::UnknownScheme(s.to_string())),
        }
    }
}

/// Why a payload could not be encrypted or decrypted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum E2eError {
    #[error("unknown e2e scheme '{0}': expected x25519 or secp256k1")]
    UnknownScheme(String),
    #[error("public key of {0} bytes is neither x25519 (32) nor secp256k1 (33 or 65)")]
    UnknownKeyLength(usize),
    #[error("public key is not a valid {0} point")]
    InvalidPublicKey(&'static str),
    #[error("x25519 public key has low order: no shared secret is possible")]
    LowOrderKey,
    #[error("seed is not a valid secp256k1 secret key")]
    InvalidSeed,
    #[error("ciphertext of {len} bytes is shorter than the {min}-byte minimum")]
    TooShort { len: usize, min: usize },
    #[error("x25519 ciphertext version {0} is not supported (expected 1)")]
    UnsupportedVersion(u8),
    #[error("secp256k1 ciphertext can only be opened with the sender's published key")]
    MissingSenderKey,
    #[error("decryption failed: the ciphertext was altered or is not meant for this key")]
    Decrypt,
    #[error("the ciphertext was not made with the sender twin's published key")]
    NotFromSender,
}

/// A cached cipher, keyed by what it was derived from.
#[derive(Clone, PartialEq, Eq, Hash)]
enum CacheKey {
    /// Us → recipient (x25519 public key).
    X25519To([u8; 32]),
    /// Sender (x25519 public key) → us.
    X25519From([u8; 32]),
    /// Either direction with a secp256k1 key (the key is symmetric).
    Secp256k1(Vec<u8>),
}

/// A twin's encryption keys for both schemes, with a per-correspondent cipher cache.
pub struct E2eKeys {
    x25519: x25519::StaticKeys,
    secp256k1: secp256k1::StaticKeys,
    /// Derived keys (ring's: assembly for both AEADs, fast at 64 B and at 64 KiB),
    /// shared by reference: an AES-256-GCM key holds its expanded key schedule.
    cache: Mutex<LruCache<CacheKey, Arc<PacketKey>>>,
}

impl fmt::Debug for E2eKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("E2eKeys").finish_non_exhaustive()
    }
}

impl E2eKeys {
    /// Derives both key pairs from a 32-byte seed (see `SecretUri::e2e_seed`).
    pub fn from_seed(seed: &[u8; 32]) -> Result<Self, E2eError> {
        Ok(E2eKeys {
            x25519: x25519::StaticKeys::from_seed(seed),
            secp256k1: secp256k1::StaticKeys::from_seed(seed)?,
            cache: Mutex::new(LruCache::new(
                NonZeroUsize::new(CACHE_CAPACITY).expect("non-zero"),
            )),
        })
    }

    /// The public key of `scheme` to publish on the registry (32 or 33 bytes).
    pub fn public_key(&self, scheme: E2eScheme) -> Vec<u8> {
        match scheme {
            E2eScheme::X25519 => self.x25519.public().to_vec(),
            E2eScheme::Secp256k1 => self.secp256k1.public().to_vec(),
        }
    }

    /// Encrypts `plaintext` for the holder of `recipient_key` (its published key).
    pub fn seal(&self, recipient_key: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, E2eError> {
        self.seal_bound(recipient_key, plaintext, b"")
    }

    /// [`seal`](E2eKeys::seal) with `binding` in the associated data, for envelopes
    /// sent without a signature: the ciphertext opens only with the same binding
    /// ([`open_from`](E2eKeys::open_from)), so whatever `binding` names (the envelope's
    /// direction, uid and command) cannot be changed on the way. Empty: the signed
    /// layout, rmb-rs's for secp256k1.
    pub fn seal_bound(
        &self,
        recipient_key: &[u8],
        plaintext: &[u8],
        binding: &[u8],
    ) -> Result<Vec<u8>, E2eError> {
        match E2eScheme::of_public_key(recipient_key)? {
            E2eScheme::X25519 => {
                let recipient: [u8; 32] = recipient_key.try_into().expect("length checked");
                let own = self.x25519.public();
                let aead = self.cached(CacheKey::X25519To(recipient), || {
                    self.x25519.cipher(&own, &recipient)
                })?;
                Ok(x25519::seal_bound(&aead, &own, plaintext, binding))
            }
            E2eScheme::Secp256k1 => {
                let aead = self.aes(recipient_key)?;
                Ok(secp256k1::seal_bound(&aead, plaintext, binding))
            }
        }
    }

    /// Decrypts a payload sent to our `scheme` key.
    ///
    /// `sender_key` is the sender's published key; secp256k1 needs it, x25519 carries the
    /// sender's key inside the ciphertext and ignores it.
    pub fn open(
        &self,
        scheme: E2eScheme,
        sender_key: Option<&[u8]>,
        cipher: &[u8],
    ) -> Result<Vec<u8>, E2eError> {
        self.open_bound(scheme, sender_key, cipher, b"")
    }

    fn open_bound(
        &self,
        scheme: E2eScheme,
        sender_key: Option<&[u8]>,
        cipher: &[u8],
        binding: &[u8],
    ) -> Result<Vec<u8>, E2eError> {
        match scheme {
            E2eScheme::X25519 => {
                let sender = x25519::sender_of(cipher)?;
                let own = self.x25519.public();
                let aead = self.cached(CacheKey::X25519From(sender), || {
                    self.x25519.cipher(&sender, &own)
                })?;
                x25519::open_bound(&aead, cipher, binding)
            }
            E2eScheme::Secp256k1 => {
                let sender_key = sender_key.ok_or(E2eError::MissingSenderKey)?;
                let aead = self.aes(sender_key)?;
                secp256k1::open_bound(&aead, cipher, binding)
            }
        }
    }

    /// Decrypts a payload sealed to our `scheme` key with `binding`
    /// ([`seal_bound`](E2eKeys::seal_bound)) and proves it came from the holder of
    /// `sender_key` (the source twin's *published* key), so the decryption
    /// authenticates the sender as a signature would (used for envelopes sent without
    /// one).
    ///
    /// secp256k1 derives the key from `sender_key` already. x25519 carries the sender's
    /// key in the ciphertext, so it must equal `sender_key`: otherwise anyone could
    /// encrypt to us with a key of their own and claim any source. The binding names
    /// what the key alone cannot: which twin sent it to which (the secp256k1 key is the
    /// same both ways, and two twins may publish the same key), and its uid and command.
    pub fn open_from(
        &self,
        scheme: E2eScheme,
        sender_key: &[u8],
        cipher: &[u8],
        binding: &[u8],
    ) -> Result<Vec<u8>, E2eError> {
        if E2eScheme::of_public_key(sender_key)? != scheme {
            return Err(E2eError::NotFromSender);
        }
        if scheme == E2eScheme::X25519 && x25519::sender_of(cipher)?[..] != *sender_key {
            return Err(E2eError::NotFromSender);
        }
        self.open_bound(scheme, Some(sender_key), cipher, binding)
    }

    fn aes(&self, their: &[u8]) -> Result<Arc<PacketKey>, E2eError> {
        self.cached(CacheKey::Secp256k1(their.to_vec()), || {
            self.secp256k1.cipher(their)
        })
    }

    /// The key cached under `key`, derived (and cached) on a miss.
    fn cached(
        &self,
        key: CacheKey,
        derive: impl FnOnce() -> Result<PacketKey, E2eError>,
    ) -> Result<Arc<PacketKey>, E2eError> {
        if let Some(hit) = self.lock_cache().get(&key) {
            return Ok(Arc::clone(hit));
        }
        let fresh = Arc::new(derive()?);
        self.lock_cache().put(key, Arc::clone(&fresh));
        Ok(fresh)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, LruCache<CacheKey, Arc<PacketKey>>> {
        // A panic while holding the lock cannot leave the cache inconsistent.
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Number of correspondents with a cached cipher (for tests and metrics).
    pub fn cached_ciphers(&self) -> usize {
        self.lock_cache().len()
    }
}

/// 12 fresh random bytes from the thread's CSPRNG.
fn random_nonce() -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    rand::thread_rng().fill_bytes(&mut nonce);
    nonce
}

#[cfg(test)]
mod tests;
