//! Which relays federation may connect to.
//!
//! A twin's relay list comes from the registry, i.e. from whoever registered the twin. If
//! the relay POSTed wherever that list points, any twin could aim it at `127.0.0.1:6379`
//! or an internal service and use it as a port scanner. So by default a federation target
//! must be a **domain name** (no IP literal, no port), and it is only connected to at
//! addresses that are public: the name is resolved by [`GuardedResolver`], which drops
//! loopback, private, link-local, unspecified and other special addresses, and the HTTP
//! client connects to exactly the addresses it returned (so DNS rebinding between a check
//! and the connect cannot swap them).
//!
//! The operator can widen this (tests, private networks):
//! - `--federation-allow NAME` (a relay name as registered, `host` or `host:port`): that
//!   relay is used as it is and its addresses are not checked;
//! - `--federation-allow ADDRESS[/PREFIX]` (an IP address or network): IP-literal relay
//!   names in it (any port) are accepted, and names resolving into it pass the check;
//! - `--resolve NAME=ADDRESS` overrides: the operator chose the address, it is used.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use rmb_identity::registry::RelayResolver;

/// Why a relay name is not a federation target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("relay {0:?} is an IP address (only domain names are federated to)")]
    IpLiteral(String),
    #[error("relay {0:?} has a port (only bare domain names are federated to)")]
    Port(String),
    #[error("relay {0:?} is not a domain name")]
    NotADomain(String),
    #[error("relay {0:?} resolves only to non-public addresses")]
    NonPublic(String),
}

/// One `--federation-allow` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowEntry {
    /// An IP address or network: IP-literal relays in it, and addresses in it, are allowed.
    Net(IpNet),
    /// A relay name exactly as registered (`host` or `host:port`): used as it is.
    Name(String),
}

/// A `--federation-allow` value that is neither an address, a network nor a name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--federation-allow expects a relay name, an IP address or ADDRESS/PREFIX, got {0:?}")]
pub struct BadAllowEntry(pub String);

impl FromStr for AllowEntry {
    type Err = BadAllowEntry;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(AllowEntry::Net(net));
        }
        if s.is_empty() || s.contains(['/', ' ', '@']) {
            return Err(BadAllowEntry(s.to_string()));
        }
        Ok(AllowEntry::Name(s.to_ascii_lowercase()))
    }
}

/// An IP network (`10.0.0.0/8`, `::1/128`); a bare address is a single-address network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl FromStr for IpNet {
    type Err = BadAllowEntry;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadAllowEntry(s.to_string());
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix.parse::<u8>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(IpNet { addr, prefix })
    }
}

impl IpNet {
    /// True if `ip` is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:127.0.0.1`) as the IPv4 address they are.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// True for addresses on the public internet: not loopback, private, link-local,
/// unspecified, shared (CGNAT), multicast, broadcast, documentation or reserved.
pub fn is_public(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || a >= 240
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (18..20).contains(&b)))
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    // NAT64 (64:ff9b::/96) carries an IPv4 address: judge that one.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [a, b] = s[6].to_be_bytes();
        let [c, d] = s[7].to_be_bytes();
        return is_public_v4(Ipv4Addr::new(a, b, c, d));
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || s[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible and other ::/96
}

/// True if `name` is a domain name a public relay can have: dot-separated labels of
/// letters, digits and inner hyphens, with a top-level label that is not all digits (so
/// `127.1` or `2130706433`, which resolvers read as IPv4, are not names).
pub fn is_domain_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    let labels: Vec<&str> = name.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    labels.len() >= 2
        && labels.iter().all(label_ok)
        && labels
            .last()
            .is_some_and(|tld| tld.bytes().any(|b| b.is_ascii_alphabetic()))
}

/// The IP address of an IP-literal relay name (`1.2.3.4`, `1.2.3.4:80`, `[::1]:80`, `::1`).
fn ip_literal(relay: &str) -> Option<IpAddr> {
    if let Ok(addr) = relay.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    let bare = relay
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(relay);
    bare.parse::<IpAddr>().ok()
}

/// The host part of `host:port` (or `host`).
fn host_of(name: &str) -> &str {
    match name.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => name,
    }
}

/// The operator's rules for federation targets.
#[derive(Debug, Clone, Default)]
pub struct TargetPolicy {
    names: BTreeSet<String>,
    nets: Vec<IpNet>,
    /// Hosts whose addresses are not checked: allowed names and `--resolve` targets.
    trusted_hosts: BTreeSet<String>,
    resolver: RelayResolver,
}

impl TargetPolicy {
    /// The policy for `--federation-allow` entries and `--resolve` overrides.
    pub fn new(allow: &[AllowEntry], resolver: RelayResolver) -> Self {
        let mut policy = TargetPolicy {
            resolver,
            ..TargetPolicy::default()
        };
        for entry in allow {
            match entry {
                AllowEntry::Net(net) => policy.nets.push(*net),
                AllowEntry::Name(name) => {
                    policy.trusted_hosts.insert(host_of(name).to_string());
                    policy.names.insert(name.clone());
                }
            }
        }
        policy
    }

    /// Where to connect for `relay` (`host` or `host:port` for the URL), or why not.
    pub fn target(&self, relay: &str) -> Result<String, TargetError> {
        let resolved = self.resolver.resolve(relay);
        if resolved != relay {
            return Ok(resolved.to_string());
        }
        let relay_lc = relay.to_ascii_lowercase();
        if self.names.contains(&relay_lc) {
            return Ok(relay.to_string());
        }
        if let Some(ip) = ip_literal(relay) {
            if self.nets.iter().any(|n| n.contains(ip)) {
                return Ok(relay.to_string());
            }
            return Err(TargetError::IpLiteral(relay.to_string()));
        }
        if relay.contains(':') {
            return Err(TargetError::Port(relay.to_string()));
        }
        if !is_domain_name(relay) {
            return Err(TargetError::NotADomain(relay.to_string()));
        }
        Ok(relay.to_string())
    }

    /// True if the addresses of `host` are not checked (an allowed name or a
    /// `--resolve` target).
    fn trusts(&self, host: &str) -> bool {
        self.trusted_hosts.contains(&host.to_ascii_lowercase()) || self.resolver_targets_host(host)
    }

    fn resolver_targets_host(&self, host: &str) -> bool {
        // `--resolve` targets are few; the names that map to them are in the trusted set
        // only through this check.
        self.resolver
            .targets()
            .any(|t| host_of(t).eq_ignore_ascii_case(host))
    }

    /// True if federation may connect to `ip` (public, or in an allowed network).
    pub fn address_allowed(&self, ip: IpAddr) -> bool {
        is_public(ip) || self.nets.iter().any(|n| n.contains(ip))
    }
}

/// DNS for federation: system resolution, minus the addresses [`TargetPolicy`] refuses.
/// The HTTP client connects only to what this returns.
pub struct GuardedResolver {
    policy: Arc<TargetPolicy>,
}

impl GuardedResolver {
    /// A resolver applying `policy`.
    pub fn new(policy: Arc<TargetPolicy>) -> Self {
        GuardedResolver { policy }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = Arc::clone(&self.policy);
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let trusted = policy.trusts(&host);
            let allowed: Vec<SocketAddr> = found
                .filter(|a| trusted || policy.address_allowed(a.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(Box::new(TargetError::NonPublic(host)) as _);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// True if `error` (from the HTTP client) is a refusal by [`GuardedResolver`].
pub fn refused_by_resolver(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.downcast_ref::<TargetError>().is_some() {
            return true;
        }
        cause = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], resolve: &[&str]) -> TargetPolicy {
        let allow: Vec<AllowEntry> = allow.iter().map(|a| a.parse().unwrap()).collect();
        let resolver = RelayResolver::new(resolve.iter().map(|r| r.parse().unwrap()));
        TargetPolicy::new(&allow, resolver)
    }

    #[test]
    fn by_default_only_domain_names_are_targets() {
        let p = policy(&[], &[]);
        assert_eq!(p.target("relay.grid.tf").unwrap(), "relay.grid.tf");
        assert_eq!(p.target("Relay.Grid.TF.").unwrap(), "Relay.Grid.TF.");
        for ip in ["127.0.0.1", "127.0.0.1:6379", "[::1]:80", "::1", "10.0.0.1"] {
            assert!(
                matches!(p.target(ip), Err(TargetError::IpLiteral(_))),
                "{ip}"
            );
        }
        assert!(matches!(
            p.target("relay.grid.tf:6379"),
            Err(TargetError::Port(_))
        ));
        for bad in [
            "localhost",
            "redis",
            "127.1",
            "0x7f.1",
            "a..b",
            "-a.b",
            "a.b/c",
            "a b.c",
            "",
            "user@host.tf",
        ] {
            assert!(p.target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_operator_can_allow_names_networks_and_overrides() {
        let p = policy(
            &["127.0.0.1", "relay.internal:8080", "10.1.0.0/16"],
            &["relay1.test=127.0.0.1:9000"],
        );
        assert_eq!(p.target("127.0.0.1:8081").unwrap(), "127.0.0.1:8081");
        assert_eq!(p.target("10.1.2.3").unwrap(), "10.1.2.3");
        assert!(p.target("10.2.0.1").is_err());
        assert_eq!(
            p.target("relay.internal:8080").unwrap(),
            "relay.internal:8080"
        );
        assert!(p.target("relay.internal:8081").is_err());
        assert_eq!(p.target("relay1.test").unwrap(), "127.0.0.1:9000");
        assert!(p.trusts("relay.internal"));
        assert!(!p.trusts("relay.grid.tf"));
        assert!(p.address_allowed("10.1.9.9".parse().unwrap()));
        assert!(!p.address_allowed("10.2.9.9".parse().unwrap()));
    }

    #[test]
    fn special_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
            "::127.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "1.1.1.1",
            "185.69.166.1",
            "2a02:1802:5e::1",
            "64:ff9b::101:101",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn allow_entries_parse() {
        assert!(matches!("10.0.0.0/8".parse(), Ok(AllowEntry::Net(_))));
        assert!(matches!("::1".parse(), Ok(AllowEntry::Net(_))));
        assert!(matches!("relay.lan".parse(), Ok(AllowEntry::Name(_))));
        assert!("10.0.0.0/33".parse::<AllowEntry>().is_err());
        assert!("".parse::<AllowEntry>().is_err());
    }
}
