//! Any bytes given to both decryptors: no panic, and nothing opens without the key.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rmb_identity::{E2eScheme, Identity, KeyType};

fn keys() -> &'static (Identity, Vec<u8>) {
    static KEYS: OnceLock<(Identity, Vec<u8>)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let sender = Identity::from_secret("//Alice", KeyType::Sr25519).unwrap();
        let receiver = Identity::from_secret("//Bob", KeyType::Sr25519).unwrap();
        (receiver, sender.e2e_public_key(E2eScheme::Secp256k1))
    })
}

fuzz_target!(|data: &[u8]| {
    let (receiver, sender_key) = keys();
    assert!(receiver.e2e().open(E2eScheme::X25519, None, data).is_err());
    assert!(receiver.e2e().open(E2eScheme::Secp256k1, Some(sender_key), data).is_err());
});
