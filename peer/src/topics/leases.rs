//! The owner's hold on its subscriber lists: a subscription is a lease that ends unless
//! the subscriber renews it, a subscriber whose pushes go unacknowledged is dropped, and
//! new subscriptions are admitted at a bounded pace per source relay and in all.
//!
//! Without these, "anyone may subscribe" let a stranger fill a topic's slots with twins
//! registered for free that never renewed and never answered a push: real subscribers
//! were refused for good, and every publish still went out once per listed stranger.
//!
//! A pure state machine with time (unix seconds) passed in: the owner task records
//! subscribes and renewals ([`Leases::renew`], after [`Leases::admit`] for a twin that is
//! new), the fan-out task records pushes ([`Leases::pushed`]), the router answers and
//! acknowledgements ([`Leases::answered`], [`Leases::acked`]), and the owner task's tick asks which
//! subscribers are gone ([`Leases::sweep`]). Entries exist only for current subscribers,
//! so the table is bounded by the subscriber lists; the admission counters are bounded
//! by [`MAX_RELAYS_TRACKED`].

use std::collections::HashMap;

/// Default of `--topic-lease`: seconds a subscription lasts unless renewed. Subscribers
/// renew every 30 s by default (and at least three times per lease the owner gives).
pub const DEFAULT_LEASE_SECS: u64 = 300;
/// Default of `--topic-unanswered`: pushes left unacknowledged before a subscriber may
/// be dropped (with [`DEFAULT_UNANSWERED_SECS`]).
pub const DEFAULT_UNANSWERED_PUSHES: u32 = 30;
/// Default of `--topic-unanswered-secs`: seconds the oldest unacknowledged push waits
/// before its subscriber may be dropped. A subscriber acknowledges within a quarter of a
/// second; one offline longer than this is dropped and subscribes again when it renews.
pub const DEFAULT_UNANSWERED_SECS: u64 = 120;
/// Default of `--topic-new-per-relay`: new subscriptions admitted per window from twins
/// registered on one relay.
pub const DEFAULT_NEW_PER_RELAY: u32 = 600;
/// Default of `--topic-new-total`: new subscriptions admitted per window in all.
pub const DEFAULT_NEW_TOTAL: u32 = 2000;
/// Default of `--topic-new-window`: seconds of the admission window.
pub const DEFAULT_NEW_WINDOW_SECS: u64 = 60;
/// Relays counted separately in one window; sources on relays beyond these share one
/// count, so a stranger naming a fresh relay for every twin gains nothing.
pub const MAX_RELAYS_TRACKED: usize = 4096;
/// The shared count of [`MAX_RELAYS_TRACKED`], and of twins listing no relay.
const OTHER_RELAYS: &str = "*";

/// The owner's limits (`rmb-peer --topic-*` flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSettings {
    /// Seconds a subscription lasts unless renewed.
    pub lease_secs: u64,
    /// Pushes without an acknowledgement before a subscriber may be dropped (0: never).
    pub unanswered_pushes: u32,
    /// Seconds the oldest unacknowledged push must have waited as well.
    pub unanswered_secs: u64,
    /// New subscriptions per window from twins on one relay (0: no limit).
    pub new_per_relay: u32,
    /// New subscriptions per window in all (0: no limit).
    pub new_total: u32,
    /// Seconds of the admission window.
    pub window_secs: u64,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        LeaseSettings {
            lease_secs: DEFAULT_LEASE_SECS,
            unanswered_pushes: DEFAULT_UNANSWERED_PUSHES,
            unanswered_secs: DEFAULT_UNANSWERED_SECS,
            new_per_relay: DEFAULT_NEW_PER_RELAY,
            new_total: DEFAULT_NEW_TOTAL,
            window_secs: DEFAULT_NEW_WINDOW_SECS,
        }
    }
}

/// Why a new subscription was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Crowded {
    /// Twins on `relay` subscribed `limit` times this window.
    Relay {
        /// The relay, as counted ([`relay_key`]).
        relay: String,
        /// `--topic-new-per-relay`.
        limit: u32,
        /// Seconds until the window ends.
        retry_secs: u64,
    },
    /// `limit` new subscriptions this window in all.
    Total {
        /// `--topic-new-total`.
        limit: u32,
        /// Seconds until the window ends.
        retry_secs: u64,
    },
}

impl std::fmt::Display for Crowded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Crowded::Relay {
                relay,
                limit,
                retry_secs,
            } => write!(
                f,
                "{limit} new subscriptions from twins on relay {relay} already; try again in {retry_secs} s"
            ),
            Crowded::Total { limit, retry_secs } => write!(
                f,
                "{limit} new subscriptions already; try again in {retry_secs} s"
            ),
        }
    }
}

/// Why a subscriber left the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Gone {
    /// It did not renew within the lease.
    Expired,
    /// Its pushes went unacknowledged.
    Silent,
}

/// One subscriber of one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// Unix seconds of its last subscribe or renewal (or when the owner learnt of it).
    renewed: u64,
    /// The highest id it acknowledged.
    acked: u64,
    /// Pushes since it last acknowledged progress.
    unanswered: u32,
    /// When the oldest of those was sent.
    since: Option<u64>,
}

/// Leases, silence and admissions of every own topic's subscribers.
#[derive(Debug)]
pub struct Leases {
    settings: LeaseSettings,
    /// By topic name, then twin (the fan-out looks a topic up once per batch).
    entries: HashMap<String, HashMap<u32, Entry>>,
    /// Start of the current admission window.
    window_start: u64,
    admitted: u32,
    per_relay: HashMap<String, u32>,
}

impl Leases {
    /// An empty table with these limits.
    pub fn new(settings: LeaseSettings) -> Self {
        Leases {
            settings,
            entries: HashMap::new(),
            window_start: 0,
            admitted: 0,
            per_relay: HashMap::new(),
        }
    }

    /// The limits.
    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }

    /// True when `twin` holds a lease on `topic`.
    pub fn contains(&self, topic: &str, twin: u32) -> bool {
        self.entries
            .get(topic)
            .is_some_and(|subs| subs.contains_key(&twin))
    }

    fn entry(&mut self, topic: &str, twin: u32) -> Option<&mut Entry> {
        self.entries.get_mut(topic)?.get_mut(&twin)
    }

    /// Admits a new subscription of a twin registered on `relays` at `now`, counting it;
    /// or says why not. Renewals of a lease held are not new and need no admission.
    pub fn admit(&mut self, relays: &[String], now: u64) -> Result<(), Crowded> {
        let window = self.settings.window_secs.max(1);
        if now >= self.window_start.saturating_add(window) || now < self.window_start {
            self.window_start = now;
            self.admitted = 0;
            self.per_relay.clear();
        }
        let retry_secs = (self.window_start + window).saturating_sub(now).max(1);
        let total = self.settings.new_total;
        if total > 0 && self.admitted >= total {
            return Err(Crowded::Total {
                limit: total,
                retry_secs,
            });
        }
        let keys = self.relay_keys(relays);
        let per_relay = self.settings.new_per_relay;
        if per_relay > 0 {
            for key in &keys {
                if self.per_relay.get(key).copied().unwrap_or(0) >= per_relay {
                    return Err(Crowded::Relay {
                        relay: key.clone(),
                        limit: per_relay,
                        retry_secs,
                    });
                }
            }
        }
        self.admitted += 1;
        for key in keys {
            *self.per_relay.entry(key).or_default() += 1;
        }
        Ok(())
    }

    /// The counts a twin on `relays` is charged to: each relay's (a twin listing
    /// several relays is charged to every one, so naming a busy relay beside fresh
    /// names does not escape its count), or the shared count.
    fn relay_keys(&self, relays: &[String]) -> Vec<String> {
        let mut keys: Vec<String> = relays.iter().map(|r| relay_key(r)).collect();
        keys.sort();
        keys.dedup();
        let room = MAX_RELAYS_TRACKED.saturating_sub(self.per_relay.len());
        let mut new = 0;
        for key in &mut keys {
            if !self.per_relay.contains_key(key.as_str()) {
                new += 1;
                if new > room {
                    *key = OTHER_RELAYS.to_string();
                }
            }
        }
        if keys.is_empty() {
            keys.push(OTHER_RELAYS.to_string());
        }
        keys.sort();
        keys.dedup();
        keys
    }

    /// `twin` subscribed to `topic`, or renewed, at `now`: its lease starts again.
    pub fn renew(&mut self, topic: &str, twin: u32, now: u64) {
        if let Some(e) = self.entry(topic, twin) {
            e.renewed = now;
            return;
        }
        let fresh = Entry {
            renewed: now,
            acked: 0,
            unanswered: 0,
            since: None,
        };
        match self.entries.get_mut(topic) {
            Some(subs) => {
                subs.insert(twin, fresh);
            }
            None => {
                self.entries
                    .insert(topic.to_string(), HashMap::from([(twin, fresh)]));
            }
        }
    }

    /// A push of `topic` went to each of `twins` at `now`.
    pub fn pushed(&mut self, topic: &str, twins: impl IntoIterator<Item = u32>, now: u64) {
        let Some(subs) = self.entries.get_mut(topic) else {
            return;
        };
        for twin in twins {
            if let Some(e) = subs.get_mut(&twin) {
                e.unanswered = e.unanswered.saturating_add(1);
                e.since.get_or_insert(now);
            }
        }
    }

    /// `twin` answered a push of `topic` it was to answer (a subscriber acknowledging
    /// each push).
    pub fn answered(&mut self, topic: &str, twin: u32) {
        if let Some(e) = self.entry(topic, twin) {
            e.unanswered = 0;
            e.since = None;
        }
    }

    /// `twin` acknowledged `topic` up to `last` (a cumulative subscriber). Only progress
    /// counts: repeating an old acknowledgement does not keep a subscriber that receives
    /// nothing.
    pub fn acked(&mut self, topic: &str, twin: u32, last: u64) {
        if let Some(e) = self.entry(topic, twin)
            && last > e.acked
        {
            e.acked = last;
            e.unanswered = 0;
            e.since = None;
        }
    }

    /// `twin` left `topic` (unsubscribed, or said it is not subscribed).
    pub fn forget(&mut self, topic: &str, twin: u32) {
        if let Some(subs) = self.entries.get_mut(topic) {
            subs.remove(&twin);
            if subs.is_empty() {
                self.entries.remove(topic);
            }
        }
    }

    /// Removes and returns the subscribers gone at `now`: whose lease ran out, or whose
    /// pushes went unacknowledged for at least `unanswered_pushes` pushes and
    /// `unanswered_secs` seconds.
    pub fn sweep(&mut self, now: u64) -> Vec<(String, u32, Gone)> {
        let s = &self.settings;
        let mut gone = Vec::new();
        for (topic, subs) in &mut self.entries {
            subs.retain(|twin, e| {
                let why = if now >= e.renewed.saturating_add(s.lease_secs) {
                    Some(Gone::Expired)
                } else if s.unanswered_pushes > 0
                    && e.unanswered >= s.unanswered_pushes
                    && e.since
                        .is_some_and(|t| now >= t.saturating_add(s.unanswered_secs))
                {
                    Some(Gone::Silent)
                } else {
                    None
                };
                match why {
                    Some(why) => {
                        gone.push((topic.clone(), *twin, why));
                        false
                    }
                    None => true,
                }
            });
        }
        self.entries.retain(|_, subs| !subs.is_empty());
        gone.sort();
        gone
    }

    /// Subscribers tracked.
    pub fn len(&self) -> usize {
        self.entries.values().map(HashMap::len).sum()
    }

    /// True when none is.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A registered relay name as counted: trimmed and lower-cased (`Relay.Example` and
/// `relay.example` are one relay). Ports stay: relays of one machine differ by port.
pub fn relay_key(relay: &str) -> String {
    relay.trim().to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> LeaseSettings {
        LeaseSettings {
            lease_secs: 10,
            unanswered_pushes: 3,
            unanswered_secs: 5,
            new_per_relay: 2,
            new_total: 3,
            window_secs: 60,
        }
    }

    fn relays(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_lease_ends_unless_renewed() {
        let mut l = Leases::new(settings());
        l.renew("t", 5, 100);
        l.renew("t", 6, 100);
        assert!(l.sweep(109).is_empty());
        l.renew("t", 6, 105);
        assert_eq!(l.sweep(110), vec![("t".into(), 5, Gone::Expired)]);
        assert!(!l.contains("t", 5) && l.contains("t", 6));
        assert!(l.sweep(114).is_empty(), "renewed at 105: good until 115");
        assert_eq!(l.sweep(115), vec![("t".into(), 6, Gone::Expired)]);
        assert!(l.is_empty());
    }

    #[test]
    fn a_subscriber_whose_pushes_go_unanswered_is_dropped() {
        let mut l = Leases::new(settings());
        l.renew("t", 5, 100);
        l.renew("t", 6, 100);
        for at in [100, 101, 102, 103] {
            l.pushed("t", [5, 6], at);
            // 6 acknowledges each push a moment later (ids 1, 2, 3, 4).
            l.acked("t", 6, at - 99);
        }
        assert!(l.sweep(104).is_empty(), "4 pushes, but only 4 s");
        // Renewing keeps the lease, not a silent subscriber.
        l.renew("t", 5, 104);
        assert_eq!(l.sweep(105), vec![("t".into(), 5, Gone::Silent)]);
        assert!(l.contains("t", 6));
    }

    #[test]
    fn only_acknowledged_progress_counts() {
        let mut l = Leases::new(settings());
        l.renew("t", 5, 100);
        l.acked("t", 5, 7);
        for at in 100..104 {
            l.pushed("t", [5], at);
            // The same old acknowledgement, again and again.
            l.acked("t", 5, 7);
        }
        assert_eq!(l.sweep(105), vec![("t".into(), 5, Gone::Silent)]);
        // An answer to a push it had to answer always counts, and leaves what it
        // acknowledged cumulatively as it was.
        l.renew("t", 5, 105);
        l.acked("t", 5, 3);
        for at in 105..109 {
            l.pushed("t", [5], at);
        }
        l.answered("t", 5);
        assert!(l.sweep(114).is_empty());
        for at in 109..113 {
            l.pushed("t", [5], at);
        }
        l.acked("t", 5, 4);
        assert!(l.sweep(114).is_empty(), "4 is progress after 3");
        // Few pushes never drop anyone, however old.
        l.pushed("t", [5], 114);
        l.renew("t", 5, 200);
        assert!(l.sweep(205).is_empty());
    }

    #[test]
    fn unknown_subscribers_are_not_tracked() {
        let mut l = Leases::new(settings());
        l.pushed("t", [5], 100);
        l.acked("t", 5, 3);
        l.answered("t", 5);
        assert!(l.is_empty());
        l.renew("t", 5, 100);
        l.renew("u", 5, 100);
        assert_eq!(l.len(), 2);
        l.forget("t", 5);
        assert!(!l.contains("t", 5) && l.contains("u", 5));
        l.forget("u", 5);
        assert!(l.is_empty() && l.sweep(1000).is_empty());
        assert!(l.entries.is_empty(), "no empty topic is kept");
    }

    #[test]
    fn admissions_are_capped_per_relay_and_in_all_per_window() {
        let mut l = Leases::new(settings());
        let a = relays(&["relay-a.example"]);
        assert_eq!(l.admit(&a, 1000), Ok(()));
        assert_eq!(l.admit(&relays(&["Relay-A.example "]), 1001), Ok(()));
        assert_eq!(
            l.admit(&a, 1002),
            Err(Crowded::Relay {
                relay: "relay-a.example".into(),
                limit: 2,
                retry_secs: 58
            })
        );
        // Naming a fresh relay beside the busy one does not escape its count.
        assert!(
            l.admit(&relays(&["relay-a.example", "fresh.example"]), 1003)
                .is_err()
        );
        assert_eq!(l.admit(&relays(&["relay-b.example"]), 1004), Ok(()));
        assert_eq!(
            l.admit(&relays(&["relay-c.example"]), 1005),
            Err(Crowded::Total {
                limit: 3,
                retry_secs: 55
            })
        );
        // The next window starts afresh.
        assert_eq!(l.admit(&a, 1060), Ok(()));
        assert_eq!(l.admit(&a, 1061), Ok(()));
        assert!(l.admit(&a, 1062).is_err());
    }

    #[test]
    fn zero_means_no_admission_limit() {
        let mut l = Leases::new(LeaseSettings {
            new_per_relay: 0,
            new_total: 0,
            ..settings()
        });
        for i in 0..10_000 {
            assert_eq!(l.admit(&relays(&["one.example"]), 1000 + i / 1000), Ok(()));
        }
    }

    #[test]
    fn fresh_relay_names_share_one_count_past_the_tracked_ones() {
        let mut l = Leases::new(LeaseSettings {
            new_per_relay: 1,
            new_total: 0,
            ..settings()
        });
        for i in 0..MAX_RELAYS_TRACKED {
            assert_eq!(l.admit(&relays(&[&format!("r{i}.example")]), 1000), Ok(()));
        }
        assert_eq!(l.admit(&relays(&["another.example"]), 1000), Ok(()));
        assert!(
            l.admit(&relays(&["yet-another.example"]), 1000).is_err(),
            "untracked relays share one count"
        );
        assert!(l.admit(&[], 1000).is_err(), "so do twins with no relay");
        assert!(l.per_relay.len() <= MAX_RELAYS_TRACKED + 1);
    }

    #[test]
    fn relay_keys() {
        assert_eq!(relay_key(" Relay.Grid.TF"), "relay.grid.tf");
        assert_eq!(relay_key("127.0.0.1:8081"), "127.0.0.1:8081");
    }
}
