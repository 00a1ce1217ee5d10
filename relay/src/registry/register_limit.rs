//! How fast one client address may register new twins on the embedded registry
//! (`--registry-register-rate`).
//!
//! A registration costs the client one signature and the registry a stored twin for
//! good; unlimited, one machine registered ten thousand twins in twenty seconds and
//! used them to fill a public topic's subscriber slots. Each address gets a bucket of
//! `rate` registrations that refills at `rate` per minute; a registration past it is
//! refused with 429. Updates of existing twins are not charged.
//!
//! [`AddressRate`] is a pure state machine (time in milliseconds passed in). IPv6
//! clients are counted per /64, the block one host usually holds. The table keeps at
//! most [`MAX_ADDRESSES`] buckets; buckets that refilled are forgotten first, and when
//! none has, a new address is refused until one does.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Default of `--registry-register-rate`: new twins per minute per client address.
pub const DEFAULT_REGISTER_RATE: u32 = 60;
/// Most addresses tracked at once.
pub const MAX_ADDRESSES: usize = 65_536;

/// Per-address buckets of registrations.
#[derive(Debug)]
pub struct AddressRate {
    /// Registrations per minute (and the bucket's size).
    rate: u32,
    /// By address: tokens left (in thousandths) at the time noted.
    buckets: HashMap<IpAddr, (u64, u64)>,
}

impl AddressRate {
    /// Buckets of `rate` registrations per minute per address (`rate` > 0).
    pub fn new(rate: u32) -> Self {
        AddressRate {
            rate: rate.max(1),
            buckets: HashMap::new(),
        }
    }

    fn full(&self) -> u64 {
        u64::from(self.rate) * 1000
    }

    /// Tokens (thousandths) of a bucket last noted at `at` with `tokens`, at `now_ms`.
    fn refilled(&self, (tokens, at): (u64, u64), now_ms: u64) -> u64 {
        // `rate` per 60,000 ms, in thousandths: rate / 60 per ms.
        let gained = now_ms
            .saturating_sub(at)
            .saturating_mul(u64::from(self.rate))
            / 60;
        tokens.saturating_add(gained).min(self.full())
    }

    /// Charges one registration to `addr` at `now_ms`; `Err(seconds)` until it may try
    /// again when its bucket is empty (or the table is full of busy addresses).
    pub fn charge(&mut self, addr: IpAddr, now_ms: u64) -> Result<(), u64> {
        let key = counted(addr);
        let tokens = match self.buckets.get(&key) {
            Some(&b) => self.refilled(b, now_ms),
            None => {
                if self.buckets.len() >= MAX_ADDRESSES {
                    let full = self.full();
                    let snapshot: Vec<(IpAddr, (u64, u64))> =
                        self.buckets.iter().map(|(k, v)| (*k, *v)).collect();
                    for (k, b) in snapshot {
                        if self.refilled(b, now_ms) >= full {
                            self.buckets.remove(&k);
                        }
                    }
                    if self.buckets.len() >= MAX_ADDRESSES {
                        return Err(self.wait_secs(0));
                    }
                }
                self.full()
            }
        };
        if tokens < 1000 {
            self.buckets.insert(key, (tokens, now_ms));
            return Err(self.wait_secs(tokens));
        }
        self.buckets.insert(key, (tokens - 1000, now_ms));
        Ok(())
    }

    /// Seconds until a bucket holding `tokens` has one registration again.
    fn wait_secs(&self, tokens: u64) -> u64 {
        let missing = 1000u64.saturating_sub(tokens);
        // Thousandths gained per second: rate * 1000 / 60.
        let per_sec = (u64::from(self.rate) * 1000 / 60).max(1);
        missing.div_ceil(per_sec).max(1)
    }

    /// Addresses tracked.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// True when none is.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// The address a client is counted as: IPv4 (also when mapped into IPv6), or the /64 of
/// an IPv6 address.
fn counted(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The limit as the registry's HTTP handler uses it: the buckets, and what to do when
/// one refuses (the relay counts it in its metrics).
pub struct RegisterLimit {
    table: Mutex<AddressRate>,
    on_refuse: Box<dyn Fn() + Send + Sync>,
}

impl RegisterLimit {
    /// `rate` registrations per minute per address; `on_refuse` runs for each refusal.
    pub fn new(rate: u32, on_refuse: impl Fn() + Send + Sync + 'static) -> Self {
        RegisterLimit {
            table: Mutex::new(AddressRate::new(rate)),
            on_refuse: Box::new(on_refuse),
        }
    }

    /// Charges a registration from `addr` now; `Err(seconds to wait)` when refused.
    pub fn charge(&self, addr: IpAddr, now_ms: u64) -> Result<(), u64> {
        let r = self
            .table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .charge(addr, now_ms);
        if r.is_err() {
            (self.on_refuse)();
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_address_gets_its_rate_then_waits_for_the_refill() {
        let mut r = AddressRate::new(3);
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            assert_eq!(r.charge(a, 1_000), Ok(()));
        }
        assert_eq!(r.charge(a, 1_000), Err(20), "3 per minute: one every 20 s");
        assert_eq!(
            r.charge(ip("192.0.2.2"), 1_000),
            Ok(()),
            "others are not held"
        );
        assert_eq!(r.charge(a, 11_000), Err(10));
        assert_eq!(r.charge(a, 21_000), Ok(()));
        assert!(r.charge(a, 21_000).is_err());
        // A long pause refills the bucket, never beyond its size.
        for _ in 0..3 {
            assert_eq!(r.charge(a, 10_000_000), Ok(()));
        }
        assert!(r.charge(a, 10_000_000).is_err());
    }

    #[test]
    fn ipv6_hosts_count_per_64_and_mapped_ipv4_as_ipv4() {
        let mut r = AddressRate::new(1);
        assert_eq!(r.charge(ip("2001:db8:1:2::1"), 0), Ok(()));
        assert!(r.charge(ip("2001:db8:1:2:ffff::9"), 0).is_err());
        assert_eq!(r.charge(ip("2001:db8:1:3::1"), 0), Ok(()));
        assert_eq!(r.charge(ip("198.51.100.7"), 0), Ok(()));
        assert!(r.charge(ip("::ffff:198.51.100.7"), 0).is_err());
    }

    #[test]
    fn the_table_is_bounded_and_forgets_refilled_buckets_first() {
        let mut r = AddressRate::new(1);
        for i in 0..MAX_ADDRESSES as u32 {
            assert_eq!(r.charge(IpAddr::V4(i.into()), 0), Ok(()));
        }
        assert!(
            r.charge(ip("203.0.113.1"), 1).is_err(),
            "full of busy addresses: a new one waits"
        );
        assert_eq!(r.len(), MAX_ADDRESSES);
        // A minute later every bucket refilled: they make room.
        assert_eq!(r.charge(ip("203.0.113.1"), 60_000), Ok(()));
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn refusals_are_reported() {
        let refused = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let seen = std::sync::Arc::clone(&refused);
        let limit = RegisterLimit::new(1, move || {
            seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        assert!(limit.charge(ip("192.0.2.1"), 0).is_ok());
        assert!(limit.charge(ip("192.0.2.1"), 0).is_err());
        assert_eq!(refused.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}
