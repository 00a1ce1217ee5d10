//! [`RedisTarget`]: what `--redis` names — one Redis, a Redis Cluster, or a Sentinel set.
//!
//! Parsed once at start, so a mistyped value fails with an error that lists the accepted
//! forms instead of a connection error later. The password, if the URL has one, is never
//! shown again ([`RedisTarget`]'s `Display` hides it).

use std::fmt;
use std::str::FromStr;

/// Default port of a Redis node when a `+cluster` seed names none.
const REDIS_PORT: u16 = 6379;
/// Default port of a sentinel when a `+sentinel` address names none.
const SENTINEL_PORT: u16 = 26379;

/// The accepted forms, for errors and `--help`.
pub const FORMS: &str = "redis://[USER:PASSWORD@]HOST:PORT[/DB] (one Redis; rediss:// for TLS), \
redis+cluster://[USER:PASSWORD@]HOST:PORT,HOST:PORT,... (a Redis Cluster's seed nodes; rediss+cluster:// for TLS), \
redis+sentinel://[USER:PASSWORD@]HOST:PORT,HOST:PORT,.../MASTERNAME[/DB] (a Sentinel set and the name of its master; \
USER:PASSWORD are the master's; rediss+sentinel:// for TLS to the master)";

/// A `HOST:PORT` of a node or sentinel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// Host name or IP address (IPv6 in brackets, as written).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Where the relay's shared state lives (`--redis`).
#[derive(Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One Redis (`redis://` or `rediss://`): the URL as given.
    Single {
        /// The URL, as redis-rs reads it.
        url: String,
    },
    /// A Redis Cluster: any few of its nodes; the rest are discovered.
    Cluster {
        /// Seed nodes.
        seeds: Vec<HostPort>,
        /// `USER:PASSWORD` (as written in the URL, percent-encoded), if any.
        auth: Option<String>,
        /// `rediss+cluster://`.
        tls: bool,
    },
    /// A master watched by sentinels, which name it (and its successor after a failover).
    Sentinel {
        /// The sentinels.
        sentinels: Vec<HostPort>,
        /// The master's name in the sentinels' configuration.
        master: String,
        /// Database number on the master.
        db: i64,
        /// `USER:PASSWORD` of the master (as written, percent-encoded), if any.
        auth: Option<String>,
        /// `rediss+sentinel://`: TLS to the master (sentinels are asked in plain text).
        tls: bool,
    },
}

/// Why a `--redis` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad --redis value '{shown}': {reason}; accepted forms: {FORMS}")]
pub struct TargetError {
    shown: String,
    reason: String,
}

fn bad(input: &str, reason: impl Into<String>) -> TargetError {
    TargetError {
        shown: hide_password(input),
        reason: reason.into(),
    }
}

/// `input` with the password part of its user info replaced by `***`.
fn hide_password(input: &str) -> String {
    let Some((scheme, rest)) = input.split_once("://") else {
        return input.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{}", &rest[at + 1..])
        }
        None => input.to_string(),
    }
}

fn parse_hosts(input: &str, list: &str, default_port: u16) -> Result<Vec<HostPort>, TargetError> {
    let mut hosts = Vec::new();
    for item in list.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(bad(input, "an empty address in the list"));
        }
        // [v6]:port, host:port, or host alone.
        let (host, port) = match item.rfind(':') {
            Some(colon) if !item[colon..].contains(']') => {
                let port = item[colon + 1..]
                    .parse::<u16>()
                    .map_err(|_| bad(input, format!("'{item}' has no valid port")))?;
                (&item[..colon], port)
            }
            _ => (item, default_port),
        };
        if host.is_empty() {
            return Err(bad(input, format!("'{item}' has no host")));
        }
        hosts.push(HostPort {
            host: host.to_string(),
            port,
        });
    }
    Ok(hosts)
}

impl FromStr for RedisTarget {
    type Err = TargetError;

    fn from_str(input: &str) -> Result<Self, TargetError> {
        let (scheme, rest) = input
            .split_once("://")
            .ok_or_else(|| bad(input, "no scheme"))?;
        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash + 1..]),
            None => (rest, ""),
        };
        let (auth, hosts) = match authority.rfind('@') {
            Some(at) => (Some(authority[..at].to_string()), &authority[at + 1..]),
            None => (None, authority),
        };
        match scheme {
            "redis" | "rediss" | "unix" | "redis+unix" => {
                redis::Client::open(input).map_err(|e| bad(input, e.to_string()))?;
                Ok(RedisTarget::Single {
                    url: input.to_string(),
                })
            }
            "redis+cluster" | "rediss+cluster" => {
                let seeds = parse_hosts(input, hosts, REDIS_PORT)?;
                match path.trim_matches('/') {
                    "" | "0" => {}
                    _ => return Err(bad(input, "a cluster has only database 0")),
                }
                Ok(RedisTarget::Cluster {
                    seeds,
                    auth,
                    tls: scheme == "rediss+cluster",
                })
            }
            "redis+sentinel" | "rediss+sentinel" => {
                let sentinels = parse_hosts(input, hosts, SENTINEL_PORT)?;
                let mut parts = path.trim_end_matches('/').split('/');
                let master = parts.next().unwrap_or("").to_string();
                if master.is_empty() {
                    return Err(bad(input, "no master name after the sentinels"));
                }
                let db = match parts.next() {
                    None | Some("") => 0,
                    Some(db) => db
                        .parse()
                        .map_err(|_| bad(input, format!("'{db}' is not a database number")))?,
                };
                if parts.next().is_some() {
                    return Err(bad(input, "more than MASTERNAME/DB after the sentinels"));
                }
                Ok(RedisTarget::Sentinel {
                    sentinels,
                    master,
                    db,
                    auth,
                    tls: scheme == "rediss+sentinel",
                })
            }
            other => Err(bad(input, format!("unknown scheme '{other}'"))),
        }
    }
}

impl RedisTarget {
    /// The URL of one node (a cluster's or a sentinel-named master) with this target's
    /// credentials and TLS, in RESP3 when `resp3` (subscriptions need it).
    pub fn node_url(&self, node: &HostPort, resp3: bool) -> String {
        let (auth, tls, db) = match self {
            RedisTarget::Single { .. } => (None, false, 0),
            RedisTarget::Cluster { auth, tls, .. } => (auth.as_deref(), *tls, 0),
            RedisTarget::Sentinel { auth, tls, db, .. } => (auth.as_deref(), *tls, *db),
        };
        let scheme = if tls { "rediss" } else { "redis" };
        let auth = auth.map(|a| format!("{a}@")).unwrap_or_default();
        let protocol = if resp3 { "?protocol=resp3" } else { "" };
        format!("{scheme}://{auth}{node}/{db}{protocol}")
    }

    /// True for a Redis Cluster (keys of one script must share a slot; sharded pub/sub).
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisTarget::Cluster { .. })
    }
}

impl fmt::Display for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |hosts: &[HostPort]| {
            hosts
                .iter()
                .map(|h| h.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let user = |auth: &Option<String>| match auth {
            Some(a) => format!("{}:***@", a.split(':').next().unwrap_or("")),
            None => String::new(),
        };
        match self {
            RedisTarget::Single { url } => f.write_str(&hide_password(url)),
            RedisTarget::Cluster { seeds, auth, tls } => {
                let s = if *tls { "s" } else { "" };
                write!(f, "redis{s}+cluster://{}{}", user(auth), list(seeds))
            }
            RedisTarget::Sentinel {
                sentinels,
                master,
                db,
                auth,
                tls,
            } => {
                let s = if *tls { "s" } else { "" };
                write!(
                    f,
                    "redis{s}+sentinel://{}{}/{master}/{db}",
                    user(auth),
                    list(sentinels)
                )
            }
        }
    }
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisTarget({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_forms_parse() {
        let single: RedisTarget = "redis://127.0.0.1:7000/2".parse().unwrap();
        assert!(matches!(single, RedisTarget::Single { .. }));
        let cluster: RedisTarget = "redis+cluster://u:pw@a:7000,b,[::1]:7002".parse().unwrap();
        let RedisTarget::Cluster { seeds, auth, tls } = &cluster else {
            panic!("{cluster}")
        };
        assert_eq!(seeds.len(), 3);
        assert_eq!(seeds[1].port, REDIS_PORT);
        assert_eq!(seeds[2].host, "[::1]");
        assert_eq!(auth.as_deref(), Some("u:pw"));
        assert!(!tls);
        assert_eq!(
            cluster.to_string(),
            "redis+cluster://u:***@a:7000,b:6379,[::1]:7002"
        );
        assert_eq!(
            cluster.node_url(&seeds[0], true),
            "redis://u:pw@a:7000/0?protocol=resp3"
        );
        let sentinel: RedisTarget = "rediss+sentinel://s1:1,s2/mymaster/3".parse().unwrap();
        let RedisTarget::Sentinel {
            sentinels,
            master,
            db,
            tls,
            ..
        } = sentinel
        else {
            panic!()
        };
        assert_eq!(
            (sentinels[1].port, master.as_str(), db, tls),
            (SENTINEL_PORT, "mymaster", 3, true)
        );
    }

    #[test]
    fn bad_values_name_the_forms_and_hide_passwords() {
        for bad in [
            "localhost:6379",
            "http://x",
            "redis+cluster://a:1,,b:2",
            "redis+cluster://a:x",
            "redis+cluster://a:1/3",
            "redis+sentinel://s:1",
            "redis+sentinel://s:1/m/x",
        ] {
            let e = bad.parse::<RedisTarget>().unwrap_err().to_string();
            assert!(e.contains("redis+cluster://"), "{e}");
        }
        let e = "redis+sentinel://me:secret@s:1"
            .parse::<RedisTarget>()
            .unwrap_err()
            .to_string();
        assert!(!e.contains("secret"), "{e}");
    }
}
