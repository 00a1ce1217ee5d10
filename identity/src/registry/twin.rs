//! [`Twin`]: one registry entry, and how its relay list is written on tfchain.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::account::AccountId;

/// What the registry knows about one twin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Twin {
    /// Registry-assigned id (1, 2, 3, …).
    pub id: u32,
    /// The account (32-byte public key) that owns the twin and signs for it.
    #[serde(with = "account_ss58")]
    pub account: AccountId,
    /// Domains (or, on the embedded registry, `host:port`) of the relays it connects to.
    pub relays: BTreeSet<String>,
    /// Published encryption key: 32 bytes (x25519) or 33 (secp256k1); `None` = plain.
    #[serde(with = "hex_opt", default)]
    pub pk: Option<Vec<u8>>,
}

/// What a twin wants published about itself.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TwinUpdate {
    pub relays: BTreeSet<String>,
    pub pk: Option<Vec<u8>>,
    /// Register the twin if its account has none yet.
    pub create: bool,
}

impl Twin {
    /// True if the twin already carries what `update` asks for.
    pub fn matches(&self, update: &TwinUpdate) -> bool {
        self.relays == update.relays && self.pk == update.pk
    }
}

/// tfchain stores the relay list as one string: domains joined by `_`.
pub fn encode_relays(relays: &BTreeSet<String>) -> String {
    relays
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join("_")
}

/// Reads a tfchain relay string (`a.example_b.example`) into a set; empty parts dropped.
pub fn decode_relays(text: &str) -> BTreeSet<String> {
    text.split('_')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

pub(crate) mod account_ss58 {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use crate::account::AccountId;

    pub fn serialize<S: Serializer>(account: &AccountId, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(account)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<AccountId, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(D::Error::custom)
    }
}

pub(crate) mod hex_opt {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use crate::account::decode_hex;

    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(b) => s.serialize_str(&b.iter().map(|x| format!("{x:02x}")).collect::<String>()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(text) => decode_hex(text.trim_start_matches("0x"))
                .map(Some)
                .ok_or_else(|| D::Error::custom("pk must be hex")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_lists_use_underscores_like_rmb_rs() {
        let set: BTreeSet<String> = ["r2.example", "r1.example"].map(String::from).into();
        assert_eq!(encode_relays(&set), "r1.example_r2.example");
        assert_eq!(decode_relays("r1.example_r2.example"), set);
        assert_eq!(decode_relays("_r1.example__r2.example_"), set);
        assert!(decode_relays("").is_empty());
    }

    #[test]
    fn json_form() {
        let twin = Twin {
            id: 3,
            account: AccountId([1; 32]),
            relays: ["127.0.0.1:8081".to_string()].into(),
            pk: Some(vec![0xab, 0x01]),
        };
        let text = serde_json::to_string(&twin).unwrap();
        assert_eq!(
            text,
            format!(
                r#"{{"id":3,"account":"{}","relays":["127.0.0.1:8081"],"pk":"ab01"}}"#,
                twin.account
            )
        );
        assert_eq!(serde_json::from_str::<Twin>(&text).unwrap(), twin);
    }
}
