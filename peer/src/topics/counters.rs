//! The topics layer's counters: what was published, pushed, received, handed over,
//! resent, refused (by reason) and which subscribers were dropped, shown by
//! `GET /topics` and `rmb topic list`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Counters of the topics layer, shown by `GET /topics` and `rmb topic list`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages stored in own topics.
    pub published: AtomicU64,
    /// Messages sent to subscribers (each subscriber counts).
    pub pushed: AtomicU64,
    /// Pushes no relay took, or that a subscriber refused.
    pub push_failures: AtomicU64,
    /// Messages received from owners.
    pub received: AtomicU64,
    /// Messages handed to apps.
    pub delivered: AtomicU64,
    /// Messages received again (dropped).
    pub duplicates: AtomicU64,
    /// Gaps reported to apps.
    pub gaps: AtomicU64,
    /// Pulls asked of owners.
    pub pulls: AtomicU64,
    /// Messages a full buffer dropped (they are pulled again).
    pub evicted: AtomicU64,
    /// Pushes sent again to cumulative subscribers that did not acknowledge them.
    pub resent: AtomicU64,
    /// Cumulative acknowledgements received from subscribers.
    pub acks_received: AtomicU64,
    /// Subscribers of own topics dropped because they did not renew within the lease.
    pub leases_expired: AtomicU64,
    /// Subscribers of own topics dropped because their pushes went unacknowledged.
    pub silent_dropped: AtomicU64,
    refused: Mutex<BTreeMap<&'static str, u64>>,
}

impl Counters {
    /// Adds one to a counter.
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` to a counter.
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a refusal of a remote request by reason.
    pub fn refuse(&self, reason: &'static str) {
        *self
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(reason)
            .or_default() += 1;
    }

    /// Current values.
    pub fn snapshot(&self) -> CountersSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CountersSnapshot {
            published: r(&self.published),
            pushed: r(&self.pushed),
            push_failures: r(&self.push_failures),
            received: r(&self.received),
            delivered: r(&self.delivered),
            duplicates: r(&self.duplicates),
            gaps: r(&self.gaps),
            pulls: r(&self.pulls),
            evicted: r(&self.evicted),
            resent: r(&self.resent),
            acks_received: r(&self.acks_received),
            leases_expired: r(&self.leases_expired),
            silent_dropped: r(&self.silent_dropped),
            refused_by: self
                .refused
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
        }
    }
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountersSnapshot {
    /// Messages stored in own topics.
    pub published: u64,
    /// Messages sent to subscribers (each subscriber counts).
    pub pushed: u64,
    /// Pushes no relay took (the subscriber catches up by pulling).
    pub push_failures: u64,
    /// Messages received from owners.
    pub received: u64,
    /// Messages handed to apps.
    pub delivered: u64,
    /// Messages received again (dropped).
    pub duplicates: u64,
    /// Gaps reported to apps.
    pub gaps: u64,
    /// Pulls asked of owners.
    pub pulls: u64,
    /// Messages a full buffer dropped (they are pulled again): a subscriber that falls
    /// this far behind costs its owner pulls.
    #[serde(default)]
    pub evicted: u64,
    /// Pushes sent again to cumulative subscribers that did not acknowledge them.
    #[serde(default)]
    pub resent: u64,
    /// Cumulative acknowledgements received from subscribers.
    #[serde(default)]
    pub acks_received: u64,
    /// Subscribers of own topics dropped because they did not renew within the lease.
    #[serde(default)]
    pub leases_expired: u64,
    /// Subscribers of own topics dropped because their pushes went unacknowledged.
    #[serde(default)]
    pub silent_dropped: u64,
    /// Refused remote requests, by reason.
    pub refused_by: BTreeMap<String, u64>,
}
