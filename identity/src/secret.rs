//! Reading a twin's secret: a Substrate "secret URI".
//!
//! Accepted forms (the subset of Substrate's SURI grammar rmb needs):
//!
//! ```text
//! <mnemonic words>[<path>][///<password>]
//! 0x<64 hex digits>[<path>]
//! <path>                      e.g. //Alice: the public Substrate dev phrase + path
//! path = ( "//" hard-junction | "/" soft-junction )*
//! ```
//!
//! A mnemonic becomes a 32-byte *root seed* the substrate-bip39 way: PBKDF2-HMAC-SHA512
//! over the mnemonic's **entropy** (not its words), salt `"mnemonic" ‖ password`, 2048
//! rounds, first 32 bytes. A hex seed is the root seed itself. Signing keys then apply
//! the path ([`crate::derive`]); encryption keys use [`SecretUri::e2e_seed`].

use bip39::{Language, Mnemonic};
use hkdf::Hkdf;
use sha2::{Sha256, Sha512};
use zeroize::Zeroizing;

use crate::account::decode_hex;
use crate::derive::Junction;

/// The public Substrate development mnemonic; `//Alice` etc. derive from it.
pub const DEV_PHRASE: &str =
    "bottom drive obey lake curtain smoke basket hold race lonely fit walk";

/// Why a secret could not be read. Messages never include the secret itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("secret is empty: give a BIP-39 mnemonic or a 0x-prefixed 32-byte hex seed")]
    Empty,
    #[error("hex seed is not valid hex")]
    SeedNotHex,
    #[error("hex seed must be 32 bytes (64 hex digits), got {0} bytes")]
    SeedLength(usize),
    #[error("mnemonic checksum invalid")]
    MnemonicChecksum,
    #[error("mnemonic has {0} words; expected 12, 15, 18, 21 or 24")]
    MnemonicWordCount(usize),
    #[error("mnemonic word #{0} is not in the English BIP-39 word list")]
    MnemonicUnknownWord(usize),
    #[error("mnemonic is invalid: {0}")]
    Mnemonic(String),
    #[error("derivation path is malformed: {0}")]
    BadPath(String),
    #[error("ed25519 keys support only hard derivation ('//'), found a soft junction ('/')")]
    SoftJunctionOnEd25519,
    #[error("secret is not a valid key for {0}")]
    InvalidKey(&'static str),
}

/// The phrase part of a secret URI.
enum Phrase {
    Mnemonic { entropy: Zeroizing<Vec<u8>> },
    Seed(Zeroizing<[u8; 32]>),
}

/// A parsed secret: a root seed plus an optional derivation path.
pub struct SecretUri {
    root_seed: Zeroizing<[u8; 32]>,
    junctions: Vec<Junction>,
    path_text: Zeroizing<String>,
}

impl std::fmt::Debug for SecretUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretUri")
            .field("junctions", &self.junctions.len())
            .finish_non_exhaustive()
    }
}

impl SecretUri {
    /// Parses a mnemonic, `0x` seed, or dev path, each optionally followed by a path.
    pub fn parse(input: &str) -> Result<Self, SecretError> {
        let input = input.trim();
        let (phrase_text, rest) = match input.find('/') {
            Some(i) => (input[..i].trim(), &input[i..]),
            None => (input, ""),
        };
        let (path_text, password) = match rest.find("///") {
            Some(i) => (&rest[..i], Some(&rest[i + 3..])),
            None => (rest, None),
        };
        let junctions = parse_path(path_text)?;

        let phrase = if let Some(hex) = phrase_text.strip_prefix("0x") {
            let bytes = Zeroizing::new(decode_hex(hex).ok_or(SecretError::SeedNotHex)?);
            let seed: [u8; 32] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| SecretError::SeedLength(bytes.len()))?;
            Phrase::Seed(Zeroizing::new(seed))
        } else if phrase_text.is_empty() {
            if junctions.is_empty() {
                return Err(SecretError::Empty);
            }
            parse_mnemonic(DEV_PHRASE)?
        } else {
            parse_mnemonic(phrase_text)?
        };

        let root_seed = match phrase {
            Phrase::Seed(seed) => seed,
            Phrase::Mnemonic { entropy } => seed_from_entropy(&entropy, password.unwrap_or("")),
        };
        Ok(SecretUri {
            root_seed,
            junctions,
            path_text: Zeroizing::new(path_text.to_string()),
        })
    }

    /// The 32-byte seed before any derivation path (mini-secret / ed25519 seed).
    pub fn root_seed(&self) -> &[u8; 32] {
        &self.root_seed
    }

    /// The derivation path, in order.
    pub fn junctions(&self) -> &[Junction] {
        &self.junctions
    }

    /// The seed the encryption keys are derived from.
    ///
    /// Without a path this is the root seed, which makes the secp256k1 key identical to
    /// rmb-rs's (it refuses paths altogether). With a path, each path gets its own seed:
    /// `HKDF-SHA256(salt = "rmb-e2e-path-v1", ikm = root seed, info = path text)`, so
    /// `//Alice` and `//Bob` never share an encryption key.
    pub fn e2e_seed(&self) -> Zeroizing<[u8; 32]> {
        let mut out = Zeroizing::new([0u8; 32]);
        if self.junctions.is_empty() {
            out.copy_from_slice(&*self.root_seed);
        } else {
            Hkdf::<Sha256>::new(Some(b"rmb-e2e-path-v1"), &*self.root_seed)
                .expand(self.path_text.as_bytes(), &mut *out)
                .expect("32 bytes is a valid HKDF-SHA256 output length");
        }
        out
    }
}

fn parse_mnemonic(text: &str) -> Result<Phrase, SecretError> {
    let normalized = Zeroizing::new(text.split_whitespace().collect::<Vec<_>>().join(" "));
    let mnemonic =
        Mnemonic::parse_in_normalized(Language::English, &normalized).map_err(|e| match e {
            bip39::Error::InvalidChecksum => SecretError::MnemonicChecksum,
            bip39::Error::BadWordCount(n) => SecretError::MnemonicWordCount(n),
            bip39::Error::UnknownWord(i) => SecretError::MnemonicUnknownWord(i + 1),
            other => SecretError::Mnemonic(other.to_string()),
        })?;
    Ok(Phrase::Mnemonic {
        entropy: Zeroizing::new(mnemonic.to_entropy()),
    })
}

/// substrate-bip39: PBKDF2-HMAC-SHA512(entropy, "mnemonic" ‖ password, 2048), first 32 bytes.
fn seed_from_entropy(entropy: &[u8], password: &str) -> Zeroizing<[u8; 32]> {
    let salt = Zeroizing::new(format!("mnemonic{password}"));
    let mut seed64 = Zeroizing::new([0u8; 64]);
    pbkdf2::pbkdf2_hmac::<Sha512>(entropy, salt.as_bytes(), 2048, &mut *seed64);
    let mut seed = Zeroizing::new([0u8; 32]);
    seed.copy_from_slice(&seed64[..32]);
    seed
}

fn parse_path(mut path: &str) -> Result<Vec<Junction>, SecretError> {
    let mut junctions = Vec::new();
    while !path.is_empty() {
        let (hard, rest) = if let Some(rest) = path.strip_prefix("//") {
            (true, rest)
        } else if let Some(rest) = path.strip_prefix('/') {
            (false, rest)
        } else {
            return Err(SecretError::BadPath("junctions must start with '/'".into()));
        };
        let end = rest.find('/').unwrap_or(rest.len());
        let code = &rest[..end];
        if code.is_empty() {
            return Err(SecretError::BadPath("empty junction".into()));
        }
        junctions.push(Junction::new(code, hard));
        path = &rest[end..];
    }
    Ok(junctions)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TACKLE: &str =
        "tackle blouse grain dawn adult loyal tattoo price access tilt chimney silk";

    #[test]
    fn hex_seed_is_the_root_seed() {
        let uri = SecretUri::parse(&format!("0x{}", "11".repeat(32))).unwrap();
        assert_eq!(uri.root_seed(), &[0x11; 32]);
        assert_eq!(*uri.e2e_seed(), [0x11; 32]);
    }

    #[test]
    fn mnemonic_whitespace_is_normalized() {
        let a = SecretUri::parse(TACKLE).unwrap();
        let b = SecretUri::parse(&format!("  {}  ", TACKLE.replace(' ', "   "))).unwrap();
        assert_eq!(a.root_seed(), b.root_seed());
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let bad_checksum = TACKLE.replace("silk", "tackle");
        let cases = [
            ("", "secret is empty"),
            ("0xzz", "not valid hex"),
            ("0x1234", "must be 32 bytes (64 hex digits), got 2 bytes"),
            (bad_checksum.as_str(), "mnemonic checksum invalid"),
            ("tackle blouse grain", "has 3 words"),
            (
                "tackle blouse grain dawn adult loyal tattoo price access tilt chimney sulk",
                "word #12 is not in the English",
            ),
            ("//", "empty junction"),
        ];
        for (input, want) in cases {
            let err = SecretUri::parse(input).unwrap_err().to_string();
            assert!(err.contains(want), "{input:?}: got {err:?}, want {want:?}");
        }
    }

    #[test]
    fn paths_and_passwords_are_split() {
        let uri = SecretUri::parse("//Alice/soft//7///pw").unwrap();
        let kinds: Vec<bool> = uri.junctions().iter().map(|j| j.hard).collect();
        assert_eq!(kinds, [true, false, true]);
        let with_pw = SecretUri::parse(&format!("{TACKLE}///pw")).unwrap();
        let without = SecretUri::parse(TACKLE).unwrap();
        assert_ne!(with_pw.root_seed(), without.root_seed());
        assert!(with_pw.junctions().is_empty());
    }

    #[test]
    fn each_path_gets_its_own_e2e_seed() {
        let alice = SecretUri::parse("//Alice").unwrap();
        let bob = SecretUri::parse("//Bob").unwrap();
        assert_eq!(alice.root_seed(), bob.root_seed());
        assert_ne!(*alice.e2e_seed(), *bob.e2e_seed());
        assert_ne!(&*alice.e2e_seed(), alice.root_seed());
    }
}
