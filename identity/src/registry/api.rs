//! The embedded registry's HTTP API: the JSON both its server (in `rmb-relay`) and its
//! client ([`super::http`]) speak, and the rules for signed updates.
//!
//! | request | answer |
//! |---|---|
//! | `GET /twins/{id}` | 200 [`Twin`], 404 [`ErrorBody`] |
//! | `GET /twins/by-account/{ss58 or 0x-hex}` | 200 [`Twin`], 404 [`ErrorBody`] |
//! | `POST /twins` with [`PublishRequest`] | 200 [`Twin`] (created or updated), 4xx [`ErrorBody`] |
//! | `GET /changes?since=V&epoch=E&wait=S` | 200 [`ChangesResponse`] (long poll, up to S seconds) |
//!
//! A [`PublishRequest`] is signed by the account it is about, over a canonical JSON
//! array that starts with a domain tag, so it can never be confused with an envelope or
//! a login token. Its millisecond timestamp must be close to the server's clock and later
//! than the last one accepted for that account: an old request cannot be replayed, even
//! across a server restart, without the server keeping a nonce list.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::twin::{Twin, TwinUpdate, hex_opt};
use crate::account::AccountId;
use crate::e2e::E2eScheme;
use crate::signer::Signer;
use crate::verify::{SignatureError, verify};

/// Domain tag at the start of every signed publish request.
pub const PUBLISH_TAG: &str = "rmb-registry-publish-v1";
/// How far a publish request's timestamp may be from the server's clock.
pub const MAX_CLOCK_SKEW_MS: u64 = 120_000;
/// Longest relay entry accepted (a DNS name plus `:port`).
pub const MAX_RELAY_LEN: usize = 260;
/// Most relays one twin may list.
pub const MAX_RELAYS: usize = 16;

/// A request to create or update the signer's twin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishRequest {
    /// The account the twin belongs to; also the key that signed this request.
    #[serde(with = "super::twin::account_ss58")]
    pub account: AccountId,
    pub relays: BTreeSet<String>,
    #[serde(with = "hex_opt", default)]
    pub pk: Option<Vec<u8>>,
    /// Create the twin if the account has none.
    pub create: bool,
    /// Unix milliseconds when signed.
    pub timestamp_ms: u64,
    /// 65-byte rmb signature over [`PublishRequest::signing_bytes`], hex.
    #[serde(with = "hex_opt")]
    pub signature: Option<Vec<u8>>,
}

impl PublishRequest {
    /// Builds and signs a request for `update` at `now_ms`.
    pub fn signed(signer: &Signer, update: &TwinUpdate, now_ms: u64) -> Self {
        let mut request = PublishRequest {
            account: signer.account(),
            relays: update.relays.clone(),
            pk: update.pk.clone(),
            create: update.create,
            timestamp_ms: now_ms,
            signature: None,
        };
        request.signature = Some(signer.sign(&request.signing_bytes()).to_vec());
        request
    }

    /// The canonical bytes that are signed: a JSON array with the domain tag first.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let pk = self
            .pk
            .as_ref()
            .map(|pk| pk.iter().map(|b| format!("{b:02x}")).collect::<String>());
        serde_json::to_vec(&(
            PUBLISH_TAG,
            self.account.to_hex(),
            &self.relays,
            pk,
            self.create,
            self.timestamp_ms,
        ))
        .expect("plain values always serialize")
    }

    /// Checks the signature against the request's own account.
    pub fn verify_signature(&self) -> Result<(), SignatureError> {
        let signature = self.signature.as_deref().ok_or(SignatureError::Missing)?;
        verify(&self.account, &self.signing_bytes(), signature)
    }

    /// Checks the content: relay entries and key are well formed.
    pub fn check_content(&self) -> Result<(), String> {
        if self.relays.len() > MAX_RELAYS {
            return Err(format!(
                "at most {MAX_RELAYS} relays, got {}",
                self.relays.len()
            ));
        }
        for relay in &self.relays {
            check_relay(relay)?;
        }
        if let Some(pk) = &self.pk {
            E2eScheme::of_public_key(pk).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The update this request asks for.
    pub fn update(&self) -> TwinUpdate {
        TwinUpdate {
            relays: self.relays.clone(),
            pk: self.pk.clone(),
            create: self.create,
        }
    }
}

/// A relay entry is `host` or `host:port`: no scheme, path, spaces or `_` (which tfchain
/// uses as the list separator).
pub fn check_relay(relay: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("relay '{relay}' {why}"));
    if relay.is_empty() || relay.len() > MAX_RELAY_LEN {
        return bad(&format!("must be 1..={MAX_RELAY_LEN} characters"));
    }
    if relay.contains("://") || relay.contains('/') {
        return bad("must be host or host:port, without scheme or path");
    }
    if relay.contains('_') || relay.chars().any(char::is_whitespace) {
        return bad("must not contain '_' or spaces");
    }
    if let Some((_, port)) = relay.rsplit_once(':')
        && !relay.starts_with('[')
        && relay.matches(':').count() == 1
        && port.parse::<u16>().is_err()
    {
        return bad("has an invalid port");
    }
    Ok(())
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// The answer to `GET /changes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangesResponse {
    /// Identifies one run of the server; a new epoch means versions restarted.
    pub epoch: String,
    /// Version after the twins below; pass it as `since` next time.
    pub version: u64,
    /// The caller must forget what it cached (unknown epoch, or too far behind).
    pub reset: bool,
    /// Twins changed since `since`, newest value each.
    pub twins: Vec<Twin>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signer::KeyType;

    fn update() -> TwinUpdate {
        TwinUpdate {
            relays: ["127.0.0.1:8081".to_string(), "relay.example".to_string()].into(),
            pk: Some(vec![9; 32]),
            create: true,
        }
    }

    #[test]
    fn signed_requests_verify_for_both_key_types() {
        for key_type in [KeyType::Ed25519, KeyType::Sr25519] {
            let signer = Signer::from_secret("//Alice", key_type).unwrap();
            let request = PublishRequest::signed(&signer, &update(), 1_700_000_000_000);
            request.verify_signature().unwrap();
            request.check_content().unwrap();
            let json = serde_json::to_string(&request).unwrap();
            let back: PublishRequest = serde_json::from_str(&json).unwrap();
            back.verify_signature().unwrap();
        }
    }

    #[test]
    fn any_changed_field_breaks_the_signature() {
        let signer = Signer::from_secret("//Alice", KeyType::Sr25519).unwrap();
        let good = PublishRequest::signed(&signer, &update(), 1_700_000_000_000);
        let mut changes: Vec<PublishRequest> = vec![good.clone(); 5];
        changes[0].relays.insert("evil.example".into());
        changes[1].pk = None;
        changes[2].create = false;
        changes[3].timestamp_ms += 1;
        changes[4].account = Signer::from_secret("//Bob", KeyType::Sr25519)
            .unwrap()
            .account();
        for (i, changed) in changes.iter().enumerate() {
            assert!(changed.verify_signature().is_err(), "change {i} verified");
        }
    }

    #[test]
    fn relay_entries_are_checked() {
        for ok in ["relay.example", "127.0.0.1:8081", "[::1]:8080", "localhost"] {
            check_relay(ok).unwrap();
        }
        for bad in [
            "",
            "wss://relay.example",
            "a_b",
            "relay.example:99999",
            "a b",
            "r/x",
        ] {
            assert!(check_relay(bad).is_err(), "{bad:?}");
        }
        let signer = Signer::from_secret("//Alice", KeyType::Sr25519).unwrap();
        let mut u = update();
        u.pk = Some(vec![1; 20]);
        assert!(
            PublishRequest::signed(&signer, &u, 1)
                .check_content()
                .unwrap_err()
                .contains("20 bytes")
        );
    }
}
