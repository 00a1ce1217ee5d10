//! [`RelayUrl`]: a relay to connect to, and the name the twin publishes for it.

use std::fmt;

use rmb_identity::registry::RegistryKind;

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
    host: String,
    /// The port, when the URL names one other than its scheme's default.
    port: Option<u16>,
}

impl RelayUrl {
    /// Parses a relay URL as given on the command line.
    ///
    /// The token is appended as the query, so the URL may not have one. See
    /// [`RelayUrl::name`] for the name published for it.
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
        Ok(RelayUrl {
            host: host.to_string(),
            port: parsed.port(),
            url: parsed.to_string(),
        })
    }

    /// The URL to connect to (normalised, e.g. with a trailing `/`).
    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// The name published in the twin's relay list on a registry of `kind`.
    ///
    /// tfchain takes the host only, as rmb-rs publishes it (the chain refuses a port:
    /// `InvalidRelayAddress`): `ws://relay.example:8280` → `relay.example`. The embedded
    /// registry keeps a non-default port, because that is how an embedded-registry relay
    /// names itself (`--domain 127.0.0.1:8080`). A default port is never written:
    /// `wss://relay.grid.tf:443` → `relay.grid.tf` on both.
    pub fn name(&self, kind: RegistryKind) -> String {
        kind.relay_name(&self.host, self.port)
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
    fn embedded_names_drop_default_ports_only() {
        let name = |url: &str| RelayUrl::parse(url).unwrap().name(RegistryKind::Embedded);
        let r = RelayUrl::parse("wss://relay.grid.tf:443").unwrap();
        assert_eq!(r.as_str(), "wss://relay.grid.tf/");
        assert_eq!(name("wss://relay.grid.tf:443"), "relay.grid.tf");
        assert_eq!(name("ws://127.0.0.1:8080"), "127.0.0.1:8080");
        let r = RelayUrl::parse("ws://relay.test/path").unwrap();
        assert_eq!(r.as_str(), "ws://relay.test/path");
        assert_eq!(name("ws://relay.test/path"), "relay.test");
    }

    #[test]
    fn tfchain_names_are_hosts_only() {
        let name = |url: &str| RelayUrl::parse(url).unwrap().name(RegistryKind::Tfchain);
        assert_eq!(name("ws://relay.example:8280"), "relay.example");
        assert_eq!(name("wss://relay.grid.tf:443"), "relay.grid.tf");
        assert_eq!(name("ws://relay.localtest:9000/"), "relay.localtest");
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
