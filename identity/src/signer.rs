//! [`Signer`]: a twin's signing key, producing rmb's 65-byte prefixed signatures.
//!
//! A signature is one byte naming the scheme (`'e'` = ed25519, `'s'` = sr25519) followed
//! by the scheme's 64-byte signature, so a verifier needs only the signer's 32-byte
//! account to check it. sr25519 signs with schnorrkel's context `"substrate"`, as
//! Substrate tools do.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::Signer as _;
use zeroize::Zeroizing;

use crate::account::AccountId;
use crate::derive;
use crate::secret::{SecretError, SecretUri};

/// Length of every rmb signature: one prefix byte plus 64 signature bytes.
pub const SIGNATURE_LEN: usize = 65;
/// Prefix byte of ed25519 signatures (`'e'`).
pub const ED25519_PREFIX: u8 = b'e';
/// Prefix byte of sr25519 signatures (`'s'`).
pub const SR25519_PREFIX: u8 = b's';
/// schnorrkel signing context Substrate uses for sr25519.
pub const SR25519_CONTEXT: &[u8] = b"substrate";

/// Which signature scheme a twin uses (`--key-type`); sr25519 is rmb-rs's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KeyType {
    #[default]
    Sr25519,
    Ed25519,
}

impl KeyType {
    /// Lower-case name as used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Sr25519 => "sr25519",
            KeyType::Ed25519 => "ed25519",
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The key type name was neither `sr25519` nor `ed25519`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown key type '{0}': expected sr25519 or ed25519")]
pub struct UnknownKeyType(pub String);

impl FromStr for KeyType {
    type Err = UnknownKeyType;

    /// Case-insensitive, like rmb-rs's `--key-type`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "sr25519" => Ok(KeyType::Sr25519),
            "ed25519" => Ok(KeyType::Ed25519),
            _ => Err(UnknownKeyType(s.to_string())),
        }
    }
}

/// A signing key pair of either scheme.
pub enum Signer {
    Ed25519(ed25519_dalek::SigningKey),
    Sr25519(schnorrkel::Keypair),
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signer({}, {})", self.key_type(), self.account())
    }
}

impl Signer {
    /// Parses a secret (mnemonic, `0x` seed, optional path) and derives the key pair.
    pub fn from_secret(secret: &str, key_type: KeyType) -> Result<Self, SecretError> {
        Self::from_uri(&SecretUri::parse(secret)?, key_type)
    }

    /// Derives the key pair of `key_type` from an already parsed secret.
    pub fn from_uri(uri: &SecretUri, key_type: KeyType) -> Result<Self, SecretError> {
        match key_type {
            KeyType::Ed25519 => {
                let seed: Zeroizing<[u8; 32]> =
                    derive::ed25519_seed(uri.root_seed(), uri.junctions())?;
                Ok(Signer::Ed25519(ed25519_dalek::SigningKey::from_bytes(
                    &seed,
                )))
            }
            KeyType::Sr25519 => {
                let secret = derive::sr25519_secret(uri.root_seed(), uri.junctions())?;
                Ok(Signer::Sr25519(secret.to_keypair()))
            }
        }
    }

    /// The scheme of this key.
    pub fn key_type(&self) -> KeyType {
        match self {
            Signer::Ed25519(_) => KeyType::Ed25519,
            Signer::Sr25519(_) => KeyType::Sr25519,
        }
    }

    /// The public key, which is the twin's account on the registry.
    pub fn account(&self) -> AccountId {
        match self {
            Signer::Ed25519(key) => AccountId(key.verifying_key().to_bytes()),
            Signer::Sr25519(pair) => AccountId(pair.public.to_bytes()),
        }
    }

    /// Signs `message` and returns the 65-byte prefixed signature.
    ///
    /// ed25519 is deterministic; sr25519 signatures are randomized (both verify the same).
    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        let mut out = [0u8; SIGNATURE_LEN];
        match self {
            Signer::Ed25519(key) => {
                out[0] = ED25519_PREFIX;
                out[1..].copy_from_slice(&key.sign(message).to_bytes());
            }
            Signer::Sr25519(pair) => {
                out[0] = SR25519_PREFIX;
                out[1..].copy_from_slice(&pair.sign_simple(SR25519_CONTEXT, message).to_bytes());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_type_parsing_is_case_insensitive() {
        assert_eq!("SR25519".parse::<KeyType>().unwrap(), KeyType::Sr25519);
        assert_eq!("Ed25519".parse::<KeyType>().unwrap(), KeyType::Ed25519);
        assert_eq!(
            "rsa".parse::<KeyType>().unwrap_err().to_string(),
            "unknown key type 'rsa': expected sr25519 or ed25519"
        );
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let signer = Signer::from_secret("//Alice", KeyType::Sr25519).unwrap();
        let shown = format!("{signer:?}");
        assert_eq!(
            shown,
            "Signer(sr25519, 5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY)"
        );
    }
}
