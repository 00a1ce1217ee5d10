//! Substrate hierarchical key derivation (HDKD) for `//hard` and `/soft` junctions.
//!
//! Implemented from Substrate's published rules so dev accounts (`//Alice`) and derived
//! accounts match every Substrate tool:
//!
//! - A junction's 32-byte *chain code* is the SCALE encoding of its text (a `u64` in
//!   little-endian if the text is a number, else a compact-length-prefixed string),
//!   zero-padded to 32 bytes, or BLAKE2b-256 of it when longer than 32 bytes.
//! - ed25519 (hard only): `seed' = BLAKE2b-256(SCALE(("Ed25519HDKD", seed, chain_code)))`.
//! - sr25519: hard junctions use schnorrkel's `hard_derive_mini_secret_key`, soft junctions
//!   `derived_key_simple`, both with an empty extra input.

use blake2::digest::consts::U32;
use blake2::{Blake2b, Digest};
use schnorrkel::derive::{ChainCode, Derivation};
use schnorrkel::{ExpansionMode, MiniSecretKey, SecretKey};
use zeroize::Zeroizing;

use crate::secret::SecretError;

type Blake2b256 = Blake2b<U32>;

/// One step of a derivation path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Junction {
    /// `//` (hard: the child's secret cannot be linked to the parent's public key) or `/`.
    pub hard: bool,
    /// The 32-byte chain code computed from the junction text.
    pub chain_code: [u8; 32],
}

impl Junction {
    /// A junction from its text, e.g. `"Alice"` or `"7"`.
    pub fn new(code: &str, hard: bool) -> Self {
        let encoded = match code.parse::<u64>() {
            Ok(number) => number.to_le_bytes().to_vec(),
            Err(_) => {
                let mut out = compact_len(code.len());
                out.extend_from_slice(code.as_bytes());
                out
            }
        };
        let mut chain_code = [0u8; 32];
        if encoded.len() > 32 {
            chain_code.copy_from_slice(&Blake2b256::digest(&encoded));
        } else {
            chain_code[..encoded.len()].copy_from_slice(&encoded);
        }
        Junction { hard, chain_code }
    }
}

/// SCALE compact encoding of a length.
fn compact_len(len: usize) -> Vec<u8> {
    let n = len as u32;
    match n {
        0..=0x3f => vec![(n << 2) as u8],
        0x40..=0x3fff => ((n << 2) as u16 | 0b01).to_le_bytes().to_vec(),
        0x4000..=0x3fff_ffff => ((n << 2) | 0b10).to_le_bytes().to_vec(),
        _ => {
            let mut out = vec![0b11];
            out.extend_from_slice(&n.to_le_bytes());
            out
        }
    }
}

/// Applies a path to an ed25519 seed.
pub fn ed25519_seed(
    root: &[u8; 32],
    path: &[Junction],
) -> Result<Zeroizing<[u8; 32]>, SecretError> {
    let mut seed = Zeroizing::new(*root);
    for junction in path {
        if !junction.hard {
            return Err(SecretError::SoftJunctionOnEd25519);
        }
        let mut hasher = Blake2b256::new();
        hasher.update(compact_len(11));
        hasher.update(b"Ed25519HDKD");
        hasher.update(*seed);
        hasher.update(junction.chain_code);
        seed.copy_from_slice(&hasher.finalize());
    }
    Ok(seed)
}

/// Applies a path to an sr25519 mini-secret and returns the expanded secret key.
pub fn sr25519_secret(root: &[u8; 32], path: &[Junction]) -> Result<SecretKey, SecretError> {
    let mini = MiniSecretKey::from_bytes(root).map_err(|_| SecretError::InvalidKey("sr25519"))?;
    let mut secret = mini.expand(ExpansionMode::Ed25519);
    for junction in path {
        let chain_code = ChainCode(junction.chain_code);
        secret = if junction.hard {
            let (child, _) = secret.hard_derive_mini_secret_key(Some(chain_code), b"");
            child.expand(ExpansionMode::Ed25519)
        } else {
            secret.derived_key_simple(chain_code, b"").0
        };
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_codes_follow_scale_encoding() {
        let alice = Junction::new("Alice", true);
        let mut want = [0u8; 32];
        want[0] = 5 << 2;
        want[1..6].copy_from_slice(b"Alice");
        assert_eq!(alice.chain_code, want);

        let seven = Junction::new("7", false);
        let mut want = [0u8; 32];
        want[0] = 7;
        assert_eq!(seven.chain_code, want);

        let long = Junction::new(&"x".repeat(40), true);
        let mut encoded = vec![40 << 2];
        encoded.extend_from_slice(&[b'x'; 40]);
        assert_eq!(
            long.chain_code.as_slice(),
            Blake2b256::digest(&encoded).as_slice()
        );
    }

    #[test]
    fn compact_lengths() {
        assert_eq!(compact_len(11), [0x2c]);
        assert_eq!(compact_len(64), [0x01, 0x01]);
        assert_eq!(compact_len(0x4000), [0x02, 0x00, 0x01, 0x00]);
    }

    #[test]
    fn ed25519_refuses_soft_junctions() {
        let soft = Junction::new("x", false);
        assert_eq!(
            ed25519_seed(&[0; 32], &[soft]).unwrap_err(),
            SecretError::SoftJunctionOnEd25519
        );
    }
}
