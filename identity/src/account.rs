//! [`AccountId`]: a twin's 32-byte public signing key, its identity on the registry.

use std::fmt;
use std::str::FromStr;

use crate::ss58::{self, Ss58Error, TFCHAIN_PREFIX};

/// The raw 32-byte public key of an ed25519 or sr25519 key pair.
///
/// The same 32 bytes verify both schemes; a signature's prefix byte says which to use.
/// Shown as SS58 (prefix 42), read from SS58 or `0x` hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(pub [u8; 32]);

/// Why a string is not an account.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountParseError {
    #[error("account hex must be 32 bytes (64 hex digits) after 0x")]
    BadHex,
    #[error(transparent)]
    Ss58(#[from] Ss58Error),
}

impl AccountId {
    /// The raw bytes (what registries store and signatures verify against).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The SS58 form for a given network prefix.
    pub fn to_ss58(&self, prefix: u16) -> String {
        ss58::encode(prefix, &self.0)
    }

    /// Lower-case hex without `0x`.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl From<[u8; 32]> for AccountId {
    fn from(bytes: [u8; 32]) -> Self {
        AccountId(bytes)
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_ss58(TFCHAIN_PREFIX))
    }
}

impl fmt::Debug for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountId({self})")
    }
}

impl FromStr for AccountId {
    type Err = AccountParseError;

    /// Accepts SS58 (any network prefix) or `0x` followed by 64 hex digits.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(hex) = s.strip_prefix("0x") {
            let bytes = decode_hex(hex).ok_or(AccountParseError::BadHex)?;
            let array: [u8; 32] = bytes.try_into().map_err(|_| AccountParseError::BadHex)?;
            return Ok(AccountId(array));
        }
        let (_prefix, account) = ss58::decode(s)?;
        Ok(AccountId(account))
    }
}

/// Decodes hex digits (either case); `None` on odd length or a non-hex character.
pub(crate) fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ss58_and_hex_to_the_same_account() {
        let a: AccountId = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
            .parse()
            .unwrap();
        let b: AccountId = "0xd43593c715fdd31c61141abd04a99fd6822c8558854ccde39a5684e7a56da27d"
            .parse()
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(
            a.to_string(),
            "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
        );
        assert_eq!(
            a.to_hex(),
            "d43593c715fdd31c61141abd04a99fd6822c8558854ccde39a5684e7a56da27d"
        );
    }

    #[test]
    fn bad_hex_is_refused() {
        assert_eq!("0x12".parse::<AccountId>(), Err(AccountParseError::BadHex));
        assert_eq!(
            "0xzz".repeat(16).parse::<AccountId>(),
            Err(AccountParseError::BadHex)
        );
    }
}
