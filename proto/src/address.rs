//! The text form of an [`Address`]: `"<twin>"` or `"<twin>:<sid>"`.
//!
//! rmb-rs uses this form in logs, Redis keys and the JSON API, so ours must match it:
//! split on the first `:`, the twin part is a `u32`. We refuse `"<twin>:"` (an empty
//! session id), because rmb-rs would turn it into a session distinct from `"<twin>"`
//! that no client ever means.

use std::fmt;
use std::str::FromStr;

use crate::types::Address;

/// Why a string is not an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressParseError {
    #[error("address twin id '{0}' is not a number in 0..=4294967295")]
    BadTwin(String),
    #[error("address '{0}' has an empty session id after ':'")]
    EmptySession(String),
}

impl Address {
    /// The address of a twin as a whole (no session id), as `rmb-peer` uses.
    pub fn twin(twin: u32) -> Self {
        Address {
            twin,
            connection: None,
        }
    }

    /// The address of one session of a twin (a direct client connection).
    pub fn session(twin: u32, sid: impl Into<String>) -> Self {
        Address {
            twin,
            connection: Some(sid.into()),
        }
    }

    /// The session id, treating an empty string the same as none.
    pub fn sid(&self) -> Option<&str> {
        self.connection.as_deref().filter(|s| !s.is_empty())
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.connection {
            Some(sid) => write!(f, "{}:{}", self.twin, sid),
            None => write!(f, "{}", self.twin),
        }
    }
}

impl FromStr for Address {
    type Err = AddressParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (twin, sid) = match s.split_once(':') {
            Some((twin, sid)) => (twin, Some(sid)),
            None => (s, None),
        };
        let twin: u32 = twin
            .parse()
            .map_err(|_| AddressParseError::BadTwin(twin.to_string()))?;
        match sid {
            Some("") => Err(AddressParseError::EmptySession(s.to_string())),
            Some(sid) => Ok(Address::session(twin, sid)),
            None => Ok(Address::twin(twin)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips() {
        assert_eq!(Address::twin(5).to_string(), "5");
        assert_eq!(Address::session(5, "vec").to_string(), "5:vec");
        assert_eq!("5".parse::<Address>().unwrap(), Address::twin(5));
        assert_eq!(
            "5:vec".parse::<Address>().unwrap(),
            Address::session(5, "vec")
        );
    }

    #[test]
    fn splits_on_the_first_colon_only() {
        assert_eq!(
            "7:a:b".parse::<Address>().unwrap(),
            Address::session(7, "a:b")
        );
    }

    #[test]
    fn rejects_bad_input_with_a_clear_error() {
        assert_eq!(
            "x".parse::<Address>(),
            Err(AddressParseError::BadTwin("x".into()))
        );
        assert_eq!(
            "4294967296".parse::<Address>(),
            Err(AddressParseError::BadTwin("4294967296".into()))
        );
        assert_eq!(
            "5:".parse::<Address>(),
            Err(AddressParseError::EmptySession("5:".into()))
        );
        assert!(
            "-1".parse::<Address>()
                .unwrap_err()
                .to_string()
                .contains("not a number")
        );
    }
}
