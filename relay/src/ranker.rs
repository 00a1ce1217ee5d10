//! Orders a twin's relay domains for federation by their recent failure rate.
//!
//! A twin may list several relays; when we federate a message to it we want to try the
//! relays that have been working first. rmb-rs remembers, per domain, when federation to it
//! failed, counts the failures within `--ranker-period` (default one hour) as failures per
//! hour, and sorts the domains ascending by that rate, ties broken at random so load
//! spreads across equally healthy relays. A domain "heals" as its failures age out.
//!
//! rmb-rs breaks ties with a random comparator, which is inconsistent and may make modern
//! sorts panic; we shuffle and then stable-sort instead, which gives the same distribution
//! of outcomes with a well-defined ordering.
//!
//! Like the other state machines here, the [`Ranker`] does no I/O and reads no clock: time
//! (`now_secs`, unix seconds) and randomness are inputs, so it is deterministic under test.
//!
//! Memory is bounded two ways. Failures close in time are coalesced into buckets of
//! `period / 256` seconds (rounded up), so a relay failing thousands of times a second
//! costs at most ~258 buckets; and at most [`MAX_DOMAINS`] domains are tracked, the one
//! downvoted least recently being forgotten first.

use std::collections::VecDeque;
use std::num::NonZeroUsize;

use lru::LruCache;
use rand::seq::SliceRandom;

/// The default `--ranker-period`: failures are remembered for one hour.
pub const DEFAULT_PERIOD_SECS: u64 = 3600;

/// How many domains the ranker remembers failures for, at most.
pub const MAX_DOMAINS: usize = 10_000;

/// Buckets per period: the resolution at which failures age out.
const BUCKETS_PER_PERIOD: u64 = 256;

/// Failures of one domain that happened in the same bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Time of the latest failure in the bucket; the bucket expires one period after it.
    last: u64,
    count: u64,
}

/// Recent federation failures per domain, used to try healthy relays first.
#[derive(Debug)]
pub struct Ranker {
    period: u64,
    granularity: u64,
    /// Per domain, buckets ordered oldest first; least recently downvoted domain first out.
    failures: LruCache<String, VecDeque<Bucket>>,
}

impl Ranker {
    /// Builds a ranker that remembers failures for `period_secs` (`--ranker-period`).
    ///
    /// A period of zero remembers nothing, so every domain ranks equal (random order).
    pub fn new(period_secs: u64) -> Self {
        Self::with_max_domains(period_secs, MAX_DOMAINS)
    }

    fn with_max_domains(period_secs: u64, max_domains: usize) -> Self {
        let cap = NonZeroUsize::new(max_domains).unwrap_or(NonZeroUsize::MIN);
        Self {
            period: period_secs,
            granularity: period_secs.div_ceil(BUCKETS_PER_PERIOD).max(1),
            failures: LruCache::new(cap),
        }
    }

    /// Records that federating to `domain` failed at `now_secs`, so it ranks lower until
    /// the failure ages out of the period.
    pub fn downvote(&mut self, domain: &str, now_secs: u64) {
        if self.period == 0 {
            return;
        }
        let granularity = self.granularity;
        if let Some(buckets) = self.failures.get_mut(domain) {
            match buckets.back_mut() {
                // Same bucket, or the clock went backwards: coalesce.
                Some(back) if now_secs / granularity <= back.last / granularity => {
                    back.count = back.count.saturating_add(1);
                    back.last = back.last.max(now_secs);
                }
                _ => buckets.push_back(Bucket {
                    last: now_secs,
                    count: 1,
                }),
            }
            Self::prune(buckets, self.period, now_secs);
        } else {
            let buckets = VecDeque::from([Bucket {
                last: now_secs,
                count: 1,
            }]);
            self.failures.put(domain.to_owned(), buckets);
        }
    }

    /// Failures per hour of `domain` over the period ending at `now_secs`, as rmb-rs
    /// computes it (`failures_in_period / (period_secs / 3600)`); 0 for a healthy domain.
    pub fn failure_rate(&mut self, domain: &str, now_secs: u64) -> f64 {
        if self.period == 0 {
            return 0.0;
        }
        self.failures(domain, now_secs) as f64 / (self.period as f64 / 3600.0)
    }

    /// Orders `domains` in place, healthiest (lowest failure rate) first, equally healthy
    /// domains in random order so load spreads across them. Prunes aged-out failures.
    pub fn order<S: AsRef<str>>(
        &mut self,
        domains: &mut [S],
        now_secs: u64,
        rng: &mut impl rand::Rng,
    ) {
        domains.shuffle(rng);
        // The rate is proportional to the count, and this sort is stable: shuffled ties stay.
        domains.sort_by_cached_key(|domain| self.failures(domain.as_ref(), now_secs));
    }

    /// Failures of `domain` within the period; forgets the domain once it has none left.
    fn failures(&mut self, domain: &str, now_secs: u64) -> u64 {
        let Some(buckets) = self.failures.peek_mut(domain) else {
            return 0;
        };
        Self::prune(buckets, self.period, now_secs);
        let count = buckets
            .iter()
            .fold(0u64, |sum, b| sum.saturating_add(b.count));
        if buckets.is_empty() {
            self.failures.pop(domain);
        }
        count
    }

    /// Drops buckets whose latest failure is a full period old or older.
    fn prune(buckets: &mut VecDeque<Bucket>, period: u64, now_secs: u64) {
        while buckets
            .front()
            .is_some_and(|b| now_secs.saturating_sub(b.last) >= period)
        {
            buckets.pop_front();
        }
    }
}

impl Default for Ranker {
    /// A ranker with the rmb-rs default period of one hour.
    fn default() -> Self {
        Self::new(DEFAULT_PERIOD_SECS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn names(domains: &[&str]) -> Vec<String> {
        domains.iter().map(|d| d.to_string()).collect()
    }

    #[test]
    fn orders_by_failure_rate() {
        let mut ranker = Ranker::default();
        for _ in 0..3 {
            ranker.downvote("bad.example", 100);
        }
        ranker.downvote("flaky.example", 100);
        assert_eq!(ranker.failure_rate("bad.example", 100), 3.0);
        assert_eq!(ranker.failure_rate("flaky.example", 100), 1.0);
        assert_eq!(ranker.failure_rate("good.example", 100), 0.0);
        for seed in 0..20 {
            let mut domains = names(&["bad.example", "flaky.example", "good.example"]);
            ranker.order(&mut domains, 200, &mut StdRng::seed_from_u64(seed));
            assert_eq!(
                domains,
                names(&["good.example", "flaky.example", "bad.example"])
            );
        }
    }

    #[test]
    fn rate_is_per_hour_of_period() {
        let mut ranker = Ranker::new(2 * 3600);
        for t in 0..4 {
            ranker.downvote("a", t * 1000);
        }
        assert_eq!(ranker.failure_rate("a", 4000), 2.0);
    }

    #[test]
    fn heals_after_the_period() {
        let mut ranker = Ranker::new(3600);
        ranker.downvote("a", 1000);
        assert_eq!(ranker.failure_rate("a", 1000 + 3599), 1.0);
        assert_eq!(ranker.failure_rate("a", 1000 + 3600), 0.0);
        // The empty entry is forgotten, not kept around.
        assert!(ranker.failures.is_empty());
        // Healed domains go back to random order with the others.
        ranker.downvote("a", 10_000);
        let mut domains = names(&["a", "b"]);
        ranker.order(&mut domains, 10_000 + 3600, &mut StdRng::seed_from_u64(7));
        assert!(ranker.failures.is_empty());
    }

    #[test]
    fn failures_age_out_one_by_one() {
        let mut ranker = Ranker::new(3600);
        ranker.downvote("a", 0);
        ranker.downvote("a", 1800);
        assert_eq!(ranker.failure_rate("a", 3000), 2.0);
        assert_eq!(ranker.failure_rate("a", 3600), 1.0);
        assert_eq!(ranker.failure_rate("a", 5400), 0.0);
    }

    #[test]
    fn ties_come_out_both_ways_across_seeds() {
        let mut ranker = Ranker::default();
        ranker.downvote("c", 0);
        let (mut ab, mut ba) = (false, false);
        for seed in 0..64 {
            let mut domains = vec!["a", "b", "c"];
            ranker.order(&mut domains, 1, &mut StdRng::seed_from_u64(seed));
            assert_eq!(domains[2], "c");
            ab |= domains[..2] == ["a", "b"];
            ba |= domains[..2] == ["b", "a"];
        }
        assert!(ab && ba, "both tie orders should appear");
    }

    #[test]
    fn same_seed_same_order() {
        let ranker_order = |seed| {
            let mut ranker = Ranker::default();
            let mut domains = names(&["a", "b", "c", "d", "e"]);
            ranker.order(&mut domains, 0, &mut StdRng::seed_from_u64(seed));
            domains
        };
        assert_eq!(ranker_order(42), ranker_order(42));
    }

    #[test]
    fn failures_per_domain_are_coalesced() {
        let mut ranker = Ranker::new(3600);
        for t in 0..100_000u64 {
            ranker.downvote("a", t / 10);
        }
        let buckets = ranker.failures.peek("a").map_or(0, VecDeque::len);
        assert!(
            buckets <= (BUCKETS_PER_PERIOD + 2) as usize,
            "{buckets} buckets"
        );
        // Failures from the last period (secs 6400..10000) are all still counted, give or
        // take one bucket of those that have just aged out.
        let rate = ranker.failure_rate("a", 9_999);
        let slack = 10.0 * ranker.granularity as f64;
        assert!((36_000.0..=36_000.0 + slack).contains(&rate), "{rate}");
    }

    #[test]
    fn tracked_domains_are_bounded() {
        let mut ranker = Ranker::with_max_domains(3600, 3);
        for i in 0..100 {
            ranker.downvote(&format!("d{i}.example"), i);
            assert!(ranker.failures.len() <= 3);
        }
        // The least recently downvoted are forgotten; the latest are kept.
        assert_eq!(ranker.failure_rate("d0.example", 100), 0.0);
        assert_eq!(ranker.failure_rate("d99.example", 100), 1.0);
    }

    #[test]
    fn zero_period_remembers_nothing() {
        let mut ranker = Ranker::new(0);
        ranker.downvote("a", 5);
        assert_eq!(ranker.failure_rate("a", 5), 0.0);
        assert!(ranker.failures.is_empty());
    }

    #[test]
    fn clock_going_backwards_is_harmless() {
        let mut ranker = Ranker::new(3600);
        ranker.downvote("a", 1_000);
        ranker.downvote("a", 10);
        assert_eq!(ranker.failure_rate("a", 0), 2.0);
        assert_eq!(ranker.failure_rate("a", 4_600), 0.0);
    }
}
