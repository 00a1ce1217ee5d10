//! Checking an rmb signature against a twin's account.
//!
//! An account's 32 bytes are a compressed curve point: decompressing it costs about a
//! fifth of a verification, and a peer verifies thousands of envelopes a second from
//! the same few senders. So decoded keys are kept in a small LRU ([`KEY_CACHE`] keys),
//! and a batch from one sender is verified together ([`verify_batch`]).

use std::num::NonZeroUsize;
use std::sync::{LazyLock, Mutex};

use lru::LruCache;

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

/// How many accounts keep their decoded public key.
pub const KEY_CACHE: usize = 4096;

/// A public key decoded from an account, for the scheme its signature names.
#[derive(Clone, Copy)]
enum PublicKey {
    Ed25519(ed25519_dalek::VerifyingKey),
    Sr25519(schnorrkel::PublicKey),
}

/// Decoded keys by account and scheme. Only valid keys are kept, so what a stranger
/// can put here is bounded by the accounts the registry holds.
static KEYS: LazyLock<Mutex<LruCache<(AccountId, KeyType), PublicKey>>> = LazyLock::new(|| {
    Mutex::new(LruCache::new(
        NonZeroUsize::new(KEY_CACHE).expect("the cache holds keys"),
    ))
});

/// The `key_type` public key of `account`, decoded once and then taken from [`KEYS`].
fn public_key(account: &AccountId, key_type: KeyType) -> Result<PublicKey, SignatureError> {
    let cache_key = (*account, key_type);
    let lock = || KEYS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(key) = lock().get(&cache_key) {
        return Ok(*key);
    }
    let bad = || SignatureError::BadPublicKey {
        key_type,
        account: *account,
    };
    let key = match key_type {
        KeyType::Ed25519 => PublicKey::Ed25519(
            ed25519_dalek::VerifyingKey::from_bytes(account.as_bytes()).map_err(|_| bad())?,
        ),
        KeyType::Sr25519 => PublicKey::Sr25519(
            schnorrkel::PublicKey::from_bytes(account.as_bytes()).map_err(|_| bad())?,
        ),
    };
    lock().put(cache_key, key);
    Ok(key)
}

fn ed25519_key(account: &AccountId) -> Result<ed25519_dalek::VerifyingKey, SignatureError> {
    match public_key(account, KeyType::Ed25519)? {
        PublicKey::Ed25519(key) => Ok(key),
        PublicKey::Sr25519(_) => unreachable!("cached under its own key type"),
    }
}

fn sr25519_key(account: &AccountId) -> Result<schnorrkel::PublicKey, SignatureError> {
    match public_key(account, KeyType::Sr25519)? {
        PublicKey::Sr25519(key) => Ok(key),
        PublicKey::Ed25519(_) => unreachable!("cached under its own key type"),
    }
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
            let key = ed25519_key(account)?;
            let sig = ed25519_dalek::Signature::from_bytes(raw);
            key.verify_strict(message, &sig)
                .map_err(|_| SignatureError::Mismatch {
                    key_type,
                    account: *account,
                })
        }
        SR25519_PREFIX => {
            let key_type = KeyType::Sr25519;
            let key = sr25519_key(account)?;
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

/// Verifies many signatures of one scheme at once: about half the cost each of one by
/// one, less when they share a signer (a peer pair's traffic). All must carry
/// `key_type`'s prefix and all must verify; on failure the caller can fall back to
/// [`verify`] to find the culprit.
pub fn verify_batch(
    key_type: KeyType,
    items: &[(&AccountId, &[u8], &[u8])],
) -> Result<(), SignatureError> {
    let first = items.first().map_or(AccountId([0; 32]), |i| *i.0);
    let mismatch = SignatureError::Mismatch {
        key_type,
        account: first,
    };
    let prefix_of = match key_type {
        KeyType::Ed25519 => ED25519_PREFIX,
        KeyType::Sr25519 => SR25519_PREFIX,
    };
    let mut raws = Vec::with_capacity(items.len());
    for (_, _, signature) in items {
        let (prefix, raw) = split(signature)?;
        if prefix != prefix_of {
            return Err(SignatureError::UnknownPrefix(prefix));
        }
        raws.push(raw);
    }
    match key_type {
        KeyType::Ed25519 => {
            let keys = items
                .iter()
                .map(|(account, _, _)| ed25519_key(account))
                .collect::<Result<Vec<_>, _>>()?;
            let messages: Vec<&[u8]> = items.iter().map(|(_, m, _)| *m).collect();
            let signatures: Vec<_> = raws
                .iter()
                .map(|raw| ed25519_dalek::Signature::from_bytes(raw))
                .collect();
            ed25519_dalek::verify_batch(&messages, &signatures, &keys).map_err(|_| mismatch)
        }
        KeyType::Sr25519 => {
            let keys = items
                .iter()
                .map(|(account, _, _)| sr25519_key(account))
                .collect::<Result<Vec<_>, _>>()?;
            let signatures = raws
                .iter()
                .map(|raw| schnorrkel::Signature::from_bytes(*raw))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| SignatureError::Malformed { key_type })?;
            let context = schnorrkel::signing_context(SR25519_CONTEXT);
            let transcripts = items.iter().map(|(_, m, _)| context.bytes(m));
            schnorrkel::verify_batch_rng(transcripts, &signatures, &keys, true, rand::thread_rng())
                .map_err(|_| mismatch)
        }
    }
}

/// Which of `items` verified, checked together per scheme ([`verify_batch`]). An item
/// is `false` when its signature is of neither scheme, when it is alone in its scheme,
/// or when its scheme's group did not verify: the caller checks those one by one with
/// [`verify`] (which also finds the culprit of a failed group).
pub fn verified_in_groups(items: &[(&AccountId, &[u8], &[u8])]) -> Vec<bool> {
    let mut verified = vec![false; items.len()];
    for (key_type, prefix) in [
        (KeyType::Ed25519, ED25519_PREFIX),
        (KeyType::Sr25519, SR25519_PREFIX),
    ] {
        let group: Vec<usize> = (0..items.len())
            .filter(|&i| items[i].2.len() == SIGNATURE_LEN && items[i].2[0] == prefix)
            .collect();
        if group.len() < 2 {
            continue;
        }
        let batch: Vec<_> = group.iter().map(|&i| items[i]).collect();
        if verify_batch(key_type, &batch).is_ok() {
            for i in group {
                verified[i] = true;
            }
        }
    }
    verified
}

/// [`verify_batch`] for ed25519.
pub fn verify_ed25519_batch(items: &[(&AccountId, &[u8], &[u8])]) -> Result<(), SignatureError> {
    verify_batch(KeyType::Ed25519, items)
}

fn split(signature: &[u8]) -> Result<(u8, &[u8; 64]), SignatureError> {
    if signature.len() != SIGNATURE_LEN {
        return Err(SignatureError::BadLength(signature.len()));
    }
    let raw: &[u8; 64] = signature[1..].try_into().expect("length checked above");
    Ok((signature[0], raw))
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

    #[test]
    fn sr25519_batches_from_one_signer_and_several() {
        let alice = Signer::from_secret("//Alice", KeyType::Sr25519).unwrap();
        let bob = Signer::from_secret("//Bob", KeyType::Sr25519).unwrap();
        let messages: Vec<Vec<u8>> = (0..5).map(|i| format!("m{i}").into_bytes()).collect();
        let signers = [&alice, &alice, &bob, &alice, &bob];
        let accounts: Vec<AccountId> = signers.iter().map(|s| s.account()).collect();
        let sigs: Vec<[u8; 65]> = signers
            .iter()
            .zip(&messages)
            .map(|(s, m)| s.sign(m))
            .collect();
        let items: Vec<(&AccountId, &[u8], &[u8])> = accounts
            .iter()
            .zip(&messages)
            .zip(&sigs)
            .map(|((a, m), s)| (a, m.as_slice(), s.as_slice()))
            .collect();
        verify_batch(KeyType::Sr25519, &items).unwrap();
        // Alice's key named for Bob's signature, a changed message, a changed signature.
        let mut other_signer = items.clone();
        other_signer[2].0 = &accounts[0];
        assert!(verify_batch(KeyType::Sr25519, &other_signer).is_err());
        let mut other_message = items.clone();
        other_message[4].1 = b"m0";
        assert!(verify_batch(KeyType::Sr25519, &other_message).is_err());
        let mut flipped = sigs[1];
        flipped[10] ^= 1;
        let mut other_signature = items.clone();
        other_signature[1].2 = &flipped;
        assert!(verify_batch(KeyType::Sr25519, &other_signature).is_err());
        // An ed25519 signature in an sr25519 batch is refused by its prefix.
        let ed = Signer::from_secret("//Alice", KeyType::Ed25519).unwrap();
        let ed_sig = ed.sign(b"m0");
        let mut mixed = items.clone();
        mixed[0].2 = &ed_sig;
        assert!(matches!(
            verify_batch(KeyType::Sr25519, &mixed),
            Err(SignatureError::UnknownPrefix(b'e'))
        ));
    }

    #[test]
    fn a_cached_key_is_kept_per_scheme() {
        // The same 32 bytes as an ed25519 key and as an sr25519 key: each scheme checks
        // with its own decoding, whichever was cached first.
        let sr = Signer::from_secret("//Alice", KeyType::Sr25519).unwrap();
        let sig = sr.sign(b"m");
        verify(&sr.account(), b"m", &sig).unwrap();
        let mut as_ed = sig;
        as_ed[0] = b'e';
        assert!(verify(&sr.account(), b"m", &as_ed).is_err());
        verify(&sr.account(), b"m", &sig).unwrap();
    }
}
