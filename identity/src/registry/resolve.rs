//! [`RelayResolver`]: where to actually connect for a relay name from the registry.
//!
//! tfchain only accepts bare host names as relays (no scheme, no port). To run a whole
//! federated network on one machine against tfchain, relays and peers take overrides
//! in the style of curl's `--resolve`: `--resolve relay1.test=127.0.0.1:8081` makes every
//! connection to `relay1.test` go to `127.0.0.1:8081` instead. Names without an override
//! are used as they are (the embedded registry may already hold `host:port`).

use std::collections::HashMap;
use std::str::FromStr;

/// Name → address overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayResolver {
    overrides: HashMap<String, String>,
}

/// One `NAME=ADDRESS` override, as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveRule {
    pub name: String,
    pub address: String,
}

/// A `--resolve` value that is not `NAME=ADDRESS`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--resolve expects NAME=HOST:PORT, got '{0}'")]
pub struct BadResolveRule(pub String);

impl FromStr for ResolveRule {
    type Err = BadResolveRule;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('=') {
            Some((name, address)) if !name.trim().is_empty() && !address.trim().is_empty() => {
                Ok(ResolveRule {
                    name: name.trim().to_string(),
                    address: address.trim().to_string(),
                })
            }
            _ => Err(BadResolveRule(s.to_string())),
        }
    }
}

impl RelayResolver {
    /// A resolver with the given overrides (later rules win).
    pub fn new(rules: impl IntoIterator<Item = ResolveRule>) -> Self {
        RelayResolver {
            overrides: rules.into_iter().map(|r| (r.name, r.address)).collect(),
        }
    }

    /// The address to connect to for relay `name`.
    pub fn resolve<'a>(&'a self, name: &'a str) -> &'a str {
        self.overrides.get(name).map_or(name, String::as_str)
    }

    /// The addresses the overrides point to (the relay's federation trusts them: the
    /// operator chose them).
    pub fn targets(&self) -> impl Iterator<Item = &str> {
        self.overrides.values().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_apply_only_to_their_name() {
        let resolver = RelayResolver::new([
            "relay1.test=127.0.0.1:8081".parse().unwrap(),
            "relay2.test = 127.0.0.2:8080".parse().unwrap(),
        ]);
        assert_eq!(resolver.resolve("relay1.test"), "127.0.0.1:8081");
        assert_eq!(resolver.resolve("relay2.test"), "127.0.0.2:8080");
        assert_eq!(resolver.resolve("127.0.0.1:9000"), "127.0.0.1:9000");
    }

    #[test]
    fn malformed_rules_are_refused() {
        for bad in ["relay1.test", "=x", "x=", ""] {
            assert_eq!(
                bad.parse::<ResolveRule>().unwrap_err().to_string(),
                format!("--resolve expects NAME=HOST:PORT, got '{bad}'")
            );
        }
    }
}
