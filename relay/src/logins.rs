//! [`UsedLogins`]: the login tokens this relay has accepted, so none is accepted twice.
//!
//! A token is a bearer credential: whoever holds a copy (a proxy log, a packet capture)
//! could log in as its twin, and a second connection of a session replaces the first, so
//! a replay would disconnect the twin and take its traffic. Clients make a fresh token
//! for every connection, so a token shown a second time is refused.
//!
//! What is remembered is a digest of the token's signed part (`header.claims`), not its
//! text: the same claims with other signature bytes (sr25519 signs with a random nonce,
//! base64 may carry padding) are the same login. It is remembered only once the
//! signature verified, so nobody can spend a token of someone else's in advance, and
//! until the last second the time rules could accept it
//! ([`Token::last_valid_second`]), after which they refuse it by themselves.
//!
//! Where: in this process's memory, bounded by `--login-memory` entries (a full memory
//! refuses new logins rather than forgetting tokens that could still be replayed), or,
//! with `--redis`, in Redis (`SET NX` with an expiry), so a token used on one replica of a
//! relay is refused on every other replica of it. Each token is one key
//! (`<prefix>login:<hex>`) touched by one command, so on a Redis Cluster the keys spread
//! over all nodes and no command spans two slots.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::sync::Mutex;

use crate::redis_conn::RedisConn;
use rmb_identity::{JwtPolicy, Token};
use sha2::{Digest, Sha256};

/// Default of `--login-memory`: tokens remembered at once in memory (50 to 80 bytes
/// each). Each is kept at most `--login-max-age` + `--login-clock-skew` seconds (three
/// minutes by default), so this takes over 5 000 logins a second, sustained.
pub const DEFAULT_CAPACITY: usize = 1_000_000;

/// Extra seconds a token is kept in Redis beyond its last valid second, for replicas
/// whose clocks are a little ahead of the one that accepted it.
const REPLICA_CLOCK_MARGIN: u64 = 30;

/// 128 bits of the SHA-256 of a token's signed part.
type Key = [u8; 16];

/// What [`UsedLogins::first_use`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstUse {
    /// Not seen before; now remembered.
    First,
    /// Accepted before (here, or on another replica): refuse it.
    Replayed,
    /// The memory holds `--login-memory` tokens that may still be replayed: refuse the
    /// login for now.
    Full,
    /// Redis did not answer: the login cannot be checked.
    Unavailable(String),
}

/// Tokens accepted recently, in memory or in Redis.
pub struct UsedLogins {
    store: Store,
}

enum Store {
    Memory(Mutex<Memory>),
    Redis { conn: RedisConn, prefix: String },
}

/// Bounded memory of keys, each with the second from which it may be forgotten.
struct Memory {
    capacity: usize,
    keys: HashSet<Key>,
    by_expiry: BinaryHeap<Reverse<(u64, Key)>>,
}

impl Memory {
    fn forget_expired(&mut self, now: u64) {
        while let Some(Reverse((forget_at, key))) = self.by_expiry.peek().copied() {
            if forget_at > now {
                break;
            }
            self.by_expiry.pop();
            self.keys.remove(&key);
        }
    }

    fn first_use(&mut self, key: Key, forget_at: u64, now: u64) -> FirstUse {
        self.forget_expired(now);
        if self.keys.contains(&key) {
            return FirstUse::Replayed;
        }
        if self.keys.len() >= self.capacity {
            return FirstUse::Full;
        }
        self.keys.insert(key);
        self.by_expiry.push(Reverse((forget_at, key)));
        FirstUse::First
    }
}

impl UsedLogins {
    /// Remembers tokens in this process, at most `capacity` at once.
    pub fn in_memory(capacity: usize) -> Self {
        UsedLogins {
            store: Store::Memory(Mutex::new(Memory {
                capacity: capacity.max(1),
                keys: HashSet::new(),
                by_expiry: BinaryHeap::new(),
            })),
        }
    }

    /// Remembers tokens in Redis under `prefix` (`<prefix>login:<hex>`), shared by
    /// every replica that uses the same Redis and prefix.
    pub fn in_redis(conn: RedisConn, prefix: &str) -> Self {
        UsedLogins {
            store: Store::Redis {
                conn,
                prefix: prefix.to_string(),
            },
        }
    }

    /// Records that `token` (whose signature verified and whose time rules passed under
    /// `policy` at `now`) is being used, unless it was used before.
    pub async fn first_use(&self, token: &Token, policy: &JwtPolicy, now: u64) -> FirstUse {
        let key = key_of(token);
        // Past its last valid second the time rules refuse it; until then it is kept.
        let forget_at = token.last_valid_second(policy).saturating_add(1);
        match &self.store {
            Store::Memory(memory) => memory
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .first_use(key, forget_at, now),
            Store::Redis { conn, prefix } => {
                let ttl = forget_at
                    .saturating_sub(now)
                    .saturating_add(REPLICA_CLOCK_MARGIN)
                    .max(1);
                let set: Result<Option<String>, _> = redis::cmd("SET")
                    .arg(format!("{prefix}login:{}", hex::encode(key)))
                    .arg(1)
                    .arg("NX")
                    .arg("EX")
                    .arg(ttl)
                    .query_async(&mut conn.clone())
                    .await;
                match set {
                    Ok(Some(_)) => FirstUse::First,
                    Ok(None) => FirstUse::Replayed,
                    Err(e) => FirstUse::Unavailable(e.to_string()),
                }
            }
        }
    }

    /// Tokens remembered in this process (`None` when they are in Redis), for `/health`.
    pub fn remembered(&self) -> Option<usize> {
        match &self.store {
            Store::Memory(memory) => {
                Some(memory.lock().unwrap_or_else(|p| p.into_inner()).keys.len())
            }
            Store::Redis { .. } => None,
        }
    }

    /// Where tokens are remembered, for `/health` and logs.
    pub fn describe(&self) -> &'static str {
        match &self.store {
            Store::Memory(_) => "memory",
            Store::Redis { .. } => "redis",
        }
    }
}

fn key_of(token: &Token) -> Key {
    let digest = Sha256::digest(token.signed_part().as_bytes());
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmb_identity::{KeyType, Signer};

    const NOW: u64 = 1_800_000_000;

    fn token(iat: u64, ttl: u64) -> Token {
        let signer = Signer::from_secret("//Alice", KeyType::Sr25519).unwrap();
        Token::parse(&Token::create(&signer, 7, None, iat, ttl)).unwrap()
    }

    #[tokio::test]
    async fn a_token_is_accepted_once_until_it_could_no_longer_pass() {
        let used = UsedLogins::in_memory(10);
        let policy = JwtPolicy::default();
        let t = token(NOW, 300);
        assert_eq!(used.first_use(&t, &policy, NOW).await, FirstUse::First);
        assert_eq!(used.first_use(&t, &policy, NOW).await, FirstUse::Replayed);
        // The same claims signed again (sr25519: other signature bytes) are the same login.
        let again = token(NOW, 300);
        assert_eq!(
            used.first_use(&again, &policy, NOW + 120).await,
            FirstUse::Replayed
        );
        // Past max_age (120 s) the time rules refuse it, so it is forgotten.
        assert_eq!(
            used.first_use(&token(NOW, 299), &policy, NOW + 121).await,
            FirstUse::First
        );
        assert_eq!(used.remembered(), Some(1));
    }

    #[tokio::test]
    async fn a_full_memory_refuses_instead_of_forgetting() {
        let used = UsedLogins::in_memory(2);
        let policy = JwtPolicy::default();
        assert_eq!(
            used.first_use(&token(NOW, 300), &policy, NOW).await,
            FirstUse::First
        );
        assert_eq!(
            used.first_use(&token(NOW, 299), &policy, NOW).await,
            FirstUse::First
        );
        assert_eq!(
            used.first_use(&token(NOW, 298), &policy, NOW).await,
            FirstUse::Full
        );
        // Both were still replayable; once they are not, there is room again.
        assert_eq!(
            used.first_use(&token(NOW + 200, 300), &policy, NOW + 200)
                .await,
            FirstUse::First
        );
        assert_eq!(
            used.first_use(&token(NOW, 300), &policy, NOW + 200).await,
            FirstUse::First
        );
    }
}
