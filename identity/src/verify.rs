//! Checking an rmb signature against a twin's account.

use crate::account::AccountId;
use crate::signer::{ED25519_PREFIX, KeyType, SIGNATURE_LEN, SR25519_CONTEXT, SR25519_PREFIX};

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("signature is missing")]
    Missing,
    #[error("invalid signature length: expected {SIGNATURE_LEN} bytes, found {0}")]
    BadLength(usize),
    #[error(
        "signature prefix 0x{0:02x} unknown (expected 0x65 'e' for ed25519 or 0x73 's' for sr25519)"
    )]
    UnknownPrefix(u8),
    #[error("account {account} is not a valid {key_type} public key")]
    BadPublicKey {
        key_type: KeyType,
        account: AccountId,
    },
    #[error("{key_type} signature is malformed")]
    Malformed { key_type: KeyType },
    #[error("{key_type} signature does not verify for account {account}")]
    Mismatch {
        key_type: KeyType,
        account: AccountId,
    },
}

/// Verifies a 65-byte prefixed `signature` of `message` by `account`.
///
/// The prefix byte selects the scheme; the account's 32 bytes serve as the public key of
/// either. ed25519 uses strict verification (no malleable or small-order signatures).
pub fn verify(account: &AccountId, message: &[u8], signature: &[u8]) -> Result<(), SignatureError> {
    let (prefix, raw) = split(signature)?;
    match prefix {
        ED25519_PREFIX => {
            let key_type = KeyType::Ed25519;
            let key =
                ed25519_dalek::VerifyingKey::from_bytes(account.as_bytes()).map_err(|_| {
                    SignatureError::BadPublicKey {
                        key_type,
                        account: *account,
                    }
                })?;
            let sig = ed25519_dalek::Signature::from_bytes(raw);
            key.verify_strict(message, &sig)
                .map_err(|_| SignatureError::Mismatch {
                    key_type,
                    account: *account,
                })
        }
        SR25519_PREFIX => {
            let key_type = KeyType::Sr25519;
            let key = schnorrkel::PublicKey::from_bytes(account.as_bytes()).map_err(|_| {
                SignatureError::BadPublicKey {
                    key_type,
                    account: *account,
                }
            })?;
            let sig = schnorrkel::Signature::from_bytes(raw)
                .map_err(|_| SignatureError::Malformed { key_type })?;
            key.verify_simple(SR25519_CONTEXT, message, &sig)
                .map_err(|_| SignatureError::Mismatch {
                    key_type,
                    account: *account,
                })
        }
        other => Err(SignatureError::UnknownPrefix(other)),
    }
}

fn split(signature: &[u8]) -> Result<(u8, &[u8; 64]), SignatureError> {
    if signature.len() != SIGNATURE_LEN {
        return Err(SignatureError::BadLength(signature.len()));
    }
    let raw: &[u8; 64] = signature[1..].try_into().expect("length checked above");
    Ok((signature[0], raw))
}

/// Verifies many ed25519 signatures at once (faster than one by one for a relay or peer
/// that drains a batch). All must be ed25519 (`'e'` prefix) and all must verify; on
/// failure the caller can fall back to [`verify`] to find the culprit.
pub fn verify_ed25519_batch(items: &[(&AccountId, &[u8], &[u8])]) -> Result<(), SignatureError> {
    let mut messages = Vec::with_capacity(items.len());
    let mut signatures = Vec::with_capacity(items.len());
    let mut keys = Vec::with_capacity(items.len());
    for (account, message, signature) in items {
        let (prefix, raw) = split(signature)?;
        if prefix != ED25519_PREFIX {
            return Err(SignatureError::UnknownPrefix(prefix));
        }
        let key = ed25519_dalek::VerifyingKey::from_bytes(account.as_bytes()).map_err(|_| {
            SignatureError::BadPublicKey {
                key_type: KeyType::Ed25519,
                account: **account,
            }
        })?;
        messages.push(*message);
        signatures.push(ed25519_dalek::Signature::from_bytes(raw));
        keys.push(key);
    }
    ed25519_dalek::verify_batch(&messages, &signatures, &keys).map_err(|_| {
        SignatureError::Mismatch {
            key_type: KeyType::Ed25519,
            account: items.first().map_or(AccountId([0; 32]), |i| *i.0),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signer::Signer;

    #[test]
    fn both_schemes_sign_and_verify() {
        for key_type in [KeyType::Ed25519, KeyType::Sr25519] {
            let signer = Signer::from_secret("//Alice", key_type).unwrap();
            let sig = signer.sign(b"hello");
            assert_eq!(
                sig[0],
                if key_type == KeyType::Ed25519 {
                    b'e'
                } else {
                    b's'
                }
            );
            verify(&signer.account(), b"hello", &sig).unwrap();
            assert!(matches!(
                verify(&signer.account(), b"hellO", &sig),
                Err(SignatureError::Mismatch { .. })
            ));
        }
    }

    #[test]
    fn errors_name_the_problem() {
        let signer = Signer::from_secret("//Alice", KeyType::Ed25519).unwrap();
        let account = signer.account();
        let mut sig = signer.sign(b"m");
        assert_eq!(
            verify(&account, b"m", &sig[..64]).unwrap_err().to_string(),
            "invalid signature length: expected 65 bytes, found 64"
        );
        sig[0] = 0x41;
        assert!(
            verify(&account, b"m", &sig)
                .unwrap_err()
                .to_string()
                .starts_with("signature prefix 0x41 unknown")
        );
        // An ed25519 signature presented as sr25519 must not verify.
        sig[0] = b's';
        assert!(verify(&account, b"m", &sig).is_err());
    }

    #[test]
    fn a_signature_by_another_key_is_refused() {
        let alice = Signer::from_secret("//Alice", KeyType::Sr25519).unwrap();
        let bob = Signer::from_secret("//Bob", KeyType::Sr25519).unwrap();
        let sig = bob.sign(b"m");
        assert!(verify(&alice.account(), b"m", &sig).is_err());
    }

    #[test]
    fn batch_verification() {
        let signers: Vec<Signer> = ["//A", "//B", "//C"]
            .iter()
            .map(|s| Signer::from_secret(s, KeyType::Ed25519).unwrap())
            .collect();
        let accounts: Vec<AccountId> = signers.iter().map(Signer::account).collect();
        let sigs: Vec<[u8; 65]> = signers.iter().map(|s| s.sign(b"batch")).collect();
        let items: Vec<(&AccountId, &[u8], &[u8])> = accounts
            .iter()
            .zip(&sigs)
            .map(|(a, s)| (a, b"batch".as_slice(), s.as_slice()))
            .collect();
        verify_ed25519_batch(&items).unwrap();
        let mut bad = items.clone();
        bad[1].1 = b"other";
        assert!(verify_ed25519_batch(&bad).is_err());
    }
}
