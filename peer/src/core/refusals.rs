//! Refusals counted by reason, and a limiter for the log lines remote parties trigger.
//!
//! A single "rejected" total hides what is going on (and was left at 0 by refusals made
//! outside the receive pipeline): every place that refuses something names a [`Reason`]
//! and bumps [`RefusalCounters`], which `msgbus.system.status` shows as `rejected_by`.
//! Anything a remote twin can make us log is logged through a [`LogLimiter`], at most
//! once per interval per (source, reason), so a flood of bad envelopes cannot flood the
//! log as well.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Why something was refused: the label of a counter in [`RefusalCounters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// A relay frame that is not a (small enough) envelope.
    Undecodable,
    /// Its deadline has passed.
    Expired,
    /// Its deadline is beyond the peer's `--max-lifetime`.
    TooFar,
    /// Addressed to another twin.
    Misaddressed,
    /// No (valid) message type, or a non-error from twin 0.
    InvalidMessage,
    /// The source twin is not in the registry.
    UnknownTwin,
    /// The registry could not be asked.
    RegistryDown,
    /// Bad signature or a shape the signature cannot see.
    BadSignature,
    /// The sender publishes no key to decrypt with.
    NoPublicKey,
    /// Decryption failed.
    Crypto,
    /// The replay store could not answer.
    ReplayStore,
    /// A repeated request whose cached reply was not sent again (another path, or too
    /// many repeats of that uid).
    ReplayLimited,
    /// Redis refused to store it for good (not a connection problem): dropped.
    RedisError,
    /// It would not fit in an envelope.
    Oversize,
    /// Its command queue is full (bytes) or too many commands are unserved.
    CommandLimit,
    /// A reply that could not be encrypted to its requester (whose key we cannot write
    /// to): an error envelope went instead.
    ReplyNotEncrypted,
    /// No service took the request from its `msgbus.<cmd>` list before it was about to
    /// expire: taken back and answered with an error.
    Unserved,
    /// Its service's queue is shedding: refused on arrival (`--queue-wait-target-ms`).
    Overloaded,
    /// The queue ahead of it would make it start after its deadline: refused on arrival.
    Late,
}

impl Reason {
    /// Every reason, in the order of the counters.
    pub const ALL: [Reason; 19] = [
        Reason::Undecodable,
        Reason::Expired,
        Reason::TooFar,
        Reason::Misaddressed,
        Reason::InvalidMessage,
        Reason::UnknownTwin,
        Reason::RegistryDown,
        Reason::BadSignature,
        Reason::NoPublicKey,
        Reason::Crypto,
        Reason::ReplayStore,
        Reason::ReplayLimited,
        Reason::RedisError,
        Reason::Oversize,
        Reason::CommandLimit,
        Reason::ReplyNotEncrypted,
        Reason::Unserved,
        Reason::Overloaded,
        Reason::Late,
    ];

    /// The counter's label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Undecodable => "undecodable",
            Reason::Expired => "expired",
            Reason::TooFar => "too_far",
            Reason::Misaddressed => "misaddressed",
            Reason::InvalidMessage => "invalid_message",
            Reason::UnknownTwin => "unknown_twin",
            Reason::RegistryDown => "registry_down",
            Reason::BadSignature => "bad_signature",
            Reason::NoPublicKey => "no_public_key",
            Reason::Crypto => "crypto",
            Reason::ReplayStore => "replay_store",
            Reason::ReplayLimited => "replay_limited",
            Reason::RedisError => "redis_error",
            Reason::Oversize => "oversize",
            Reason::CommandLimit => "command_limit",
            Reason::ReplyNotEncrypted => "reply_not_encrypted",
            Reason::Unserved => "unserved",
            Reason::Overloaded => "overloaded",
            Reason::Late => "late",
        }
    }
}

/// One counter per [`Reason`].
#[derive(Debug, Default)]
pub struct RefusalCounters {
    counts: [AtomicU64; Reason::ALL.len()],
}

impl RefusalCounters {
    /// Counts one refusal.
    pub fn bump(&self, reason: Reason) {
        self.counts[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The count of one reason.
    pub fn get(&self, reason: Reason) -> u64 {
        self.counts[reason as usize].load(Ordering::Relaxed)
    }

    /// The non-zero counts by label (what the status shows).
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        Reason::ALL
            .iter()
            .map(|&r| (r.as_str().to_string(), self.get(r)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// The source to log under for what proves nothing about its sender (an unsigned
/// envelope or frame that does not authenticate, a bad signature): its claimed source
/// is the attacker's choice, so all of them share one line per interval per reason.
pub const UNPROVEN_SOURCE: u64 = u64::MAX - 1;

/// How often one (source, reason) may write a log line.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Most (source, reason) pairs remembered; past it one shared slot per reason is used.
const LOG_KEYS: usize = 4096;

/// Allows one log line per interval per (source, reason); the rest are only counted.
#[derive(Debug)]
pub struct LogLimiter {
    interval: Duration,
    last: Mutex<HashMap<(u64, Reason), Instant>>,
}

impl Default for LogLimiter {
    fn default() -> Self {
        LogLimiter::new(LOG_INTERVAL)
    }
}

impl LogLimiter {
    /// A limiter allowing one line per `interval` per key.
    pub fn new(interval: Duration) -> Self {
        LogLimiter {
            interval,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// True when a line about `reason` from `source` (a twin id, or any other number
    /// naming the party, e.g. a link index) may be logged at `now`.
    pub fn allow(&self, source: u64, reason: Reason, now: Instant) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let mut key = (source, reason);
        if !last.contains_key(&key) && last.len() >= LOG_KEYS {
            let interval = self.interval;
            last.retain(|_, at| now.saturating_duration_since(*at) < interval);
            if last.len() >= LOG_KEYS {
                key = (u64::MAX, reason);
            }
        }
        match last.get(&key) {
            Some(at) if now.saturating_duration_since(*at) < self.interval => false,
            _ => {
                last.insert(key, now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_counted_apart() {
        let c = RefusalCounters::default();
        c.bump(Reason::TooFar);
        c.bump(Reason::TooFar);
        c.bump(Reason::Oversize);
        let snap = c.snapshot();
        assert_eq!(snap.get("too_far"), Some(&2));
        assert_eq!(snap.get("oversize"), Some(&1));
        assert_eq!(snap.len(), 2, "zero counts are left out");
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "ALL follows the declaration order");
        }
    }

    #[test]
    fn one_line_per_interval_per_source_and_reason() {
        let limiter = LogLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(limiter.allow(7, Reason::TooFar, t0));
        assert!(!limiter.allow(7, Reason::TooFar, t0 + Duration::from_secs(9)));
        assert!(limiter.allow(7, Reason::Expired, t0), "another reason");
        assert!(limiter.allow(8, Reason::TooFar, t0), "another source");
        assert!(limiter.allow(7, Reason::TooFar, t0 + Duration::from_secs(10)));
    }

    #[test]
    fn many_sources_share_one_slot_past_the_table_size() {
        let limiter = LogLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        for s in 0..LOG_KEYS as u64 {
            assert!(limiter.allow(s, Reason::Crypto, t0));
        }
        assert!(
            limiter.allow(u64::MAX - 1, Reason::Crypto, t0),
            "shared slot"
        );
        assert!(!limiter.allow(u64::MAX - 2, Reason::Crypto, t0));
    }
}
