//! [`RelayUrl`]: a relay to connect to, and the name the twin publishes for it.

use std::fmt;

/// Why a `--relay` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayUrlError {
    #[error("relay URL '{url}' is invalid: {reason}")]
    Invalid { url: String, reason: String },
}

/// A relay's WebSocket URL (`ws://` or `wss://`) and its registry name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayUrl {
    url: String,
    name: String,
}

impl RelayUrl {
    /// Parses a relay URL as given on the command line.
    ///
    /// The registry name is the host, plus `:port` when the URL names a non-default port:
    /// `wss://relay.grid.tf:443` → `relay.grid.tf` (what rmb-rs publishes), while
    /// `ws://127.0.0.1:8080` → `127.0.0.1:8080` (what an embedded-registry relay serves as
    /// its `--domain`). The token is appended as the query, so the URL may not have one.
    pub fn parse(text: &str) -> Result<Self, RelayUrlError> {
        let invalid = |reason: &str| RelayUrlError::Invalid {
            url: text.to_string(),
            reason: reason.to_string(),
        };
        let parsed = url::Url::parse(text).map_err(|e| invalid(&e.to_string()))?;
        if !matches!(parsed.scheme(), "ws" | "wss") {
            return Err(invalid("the scheme must be ws:// or wss://"));
        }
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| invalid("it has no host"))?;
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(invalid(
                "it may not have a query or fragment (the login token goes there)",
            ));
        }
        let name = match parsed.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        Ok(RelayUrl {
            url: parsed.to_string(),
            name,
        })
    }

    /// The URL to connect to (normalised, e.g. with a trailing `/`).
    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// The name published in the twin's relay list.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for RelayUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_drop_default_ports_only() {
        let r = RelayUrl::parse("wss://relay.grid.tf:443").unwrap();
        assert_eq!(
            (r.as_str(), r.name()),
            ("wss://relay.grid.tf/", "relay.grid.tf")
        );
        let r = RelayUrl::parse("ws://127.0.0.1:8080").unwrap();
        assert_eq!(r.name(), "127.0.0.1:8080");
        let r = RelayUrl::parse("ws://relay.test/path").unwrap();
        assert_eq!(
            (r.as_str(), r.name()),
            ("ws://relay.test/path", "relay.test")
        );
    }

    #[test]
    fn refuses_what_cannot_be_a_relay() {
        for bad in [
            "http://relay.test",
            "relay.test",
            "ws://relay.test/?x=1",
            "ws://relay.test/#frag",
            "",
        ] {
            let err = RelayUrl::parse(bad).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("relay URL '{bad}' is invalid")),
                "{err}"
            );
        }
    }
}
