//! [`ChainSigner`]: lets our [`Signer`] sign tfchain extrinsics.
//!
//! A twin signs its registry updates with the same key that signs its envelopes, whether
//! ed25519 or sr25519. `subxt-signer` has no ed25519 signer, and we already hold the key
//! pair, so this adapter turns our 65-byte prefixed signature into the chain's
//! `MultiSignature` instead.

use subxt::PolkadotConfig;
use subxt::utils::{AccountId32, MultiSignature};

use crate::signer::{KeyType, SIGNATURE_LEN, Signer};

/// Signs extrinsics for `subxt` with one of our key pairs.
pub struct ChainSigner<'a>(pub &'a Signer);

impl subxt::tx::Signer<PolkadotConfig> for ChainSigner<'_> {
    fn account_id(&self) -> AccountId32 {
        AccountId32(self.0.account().0)
    }

    /// `payload` is already hashed by subxt when longer than 256 bytes, as Substrate wants.
    fn sign(&self, payload: &[u8]) -> MultiSignature {
        let prefixed: [u8; SIGNATURE_LEN] = self.0.sign(payload);
        let mut raw = [0u8; 64];
        raw.copy_from_slice(&prefixed[1..]);
        match self.0.key_type() {
            KeyType::Ed25519 => MultiSignature::Ed25519(raw),
            // Our sr25519 already signs with Substrate's context ("substrate").
            KeyType::Sr25519 => MultiSignature::Sr25519(raw),
        }
    }
}

#[cfg(test)]
mod tests {
    use subxt::tx::Signer as _;

    use super::*;

    #[test]
    fn signatures_verify_with_the_account() {
        let message = b"extrinsic payload";

        let ed = Signer::from_secret("//Alice", KeyType::Ed25519).unwrap();
        let adapter = ChainSigner(&ed);
        assert_eq!(adapter.account_id().0, ed.account().0);
        let MultiSignature::Ed25519(sig) = adapter.sign(message) else {
            panic!("ed25519 key must give an ed25519 signature");
        };
        let key = ed25519_dalek::VerifyingKey::from_bytes(&ed.account().0).unwrap();
        key.verify_strict(message, &ed25519_dalek::Signature::from_bytes(&sig))
            .unwrap();

        let sr = Signer::from_secret("//Alice", KeyType::Sr25519).unwrap();
        let MultiSignature::Sr25519(sig) = ChainSigner(&sr).sign(message) else {
            panic!("sr25519 key must give an sr25519 signature");
        };
        let public = schnorrkel::PublicKey::from_bytes(&sr.account().0).unwrap();
        let sig = schnorrkel::Signature::from_bytes(&sig).unwrap();
        public.verify_simple(b"substrate", message, &sig).unwrap();
    }
}
