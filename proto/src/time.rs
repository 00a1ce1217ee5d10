//! Validity of an envelope in time, as rmb-rs computes it.
//!
//! An envelope carries `timestamp` (unix seconds when stamped) and `expiration` (seconds
//! of validity from then). Every function here takes "now" as an argument, so the rules
//! are tested without a clock and relays/peers can use one `now` for a whole batch.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::types::Envelope;

/// The envelope's deadline has passed (or it had no validity left to begin with).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("envelope has expired (deadline {deadline}, now {now})")]
pub struct Expired {
    /// Unix seconds at which the envelope stopped being valid.
    pub deadline: u64,
    /// The time it was checked at.
    pub now: u64,
}

/// Current unix time in seconds; the one place that reads the clock.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Re-stamps `(timestamp, expiration)` to `now`, keeping the absolute deadline.
///
/// A zero or future timestamp counts as "not stamped yet": the result is `(now, exp)`.
/// Otherwise the time already spent is taken off the expiration (never below zero).
pub fn stamp(now: u64, timestamp: u64, expiration: u64) -> (u64, u64) {
    if timestamp == 0 || timestamp > now {
        (now, expiration)
    } else {
        (now, expiration.saturating_sub(now - timestamp))
    }
}

/// Time left before the deadline `timestamp + expiration`; `None` once it is reached.
pub fn ttl(now: u64, timestamp: u64, expiration: u64) -> Option<Duration> {
    let deadline = timestamp.saturating_add(expiration);
    (deadline > now).then(|| Duration::from_secs(deadline - now))
}

impl Envelope {
    /// Stamps the envelope at `now` (see [`stamp`]); senders do this right before signing.
    pub fn stamp_at(&mut self, now: u64) {
        (self.timestamp, self.expiration) = stamp(now, self.timestamp, self.expiration);
    }

    /// Unix seconds at which this envelope stops being valid.
    pub fn deadline(&self) -> u64 {
        self.timestamp.saturating_add(self.expiration)
    }

    /// Time left at `now`, or `None` when expired.
    pub fn ttl_at(&self, now: u64) -> Option<Duration> {
        ttl(now, self.timestamp, self.expiration)
    }

    /// `Ok` while the envelope has time left at `now`.
    pub fn valid_at(&self, now: u64) -> Result<(), Expired> {
        match self.ttl_at(now) {
            Some(_) => Ok(()),
            None => Err(Expired {
                deadline: self.deadline(),
                now,
            }),
        }
    }

    /// Seconds since the envelope was stamped (zero for future timestamps).
    pub fn age_at(&self, now: u64) -> u64 {
        now.saturating_sub(self.timestamp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_matches_rmb_rs_unit_vectors() {
        assert_eq!(stamp(1, 0, 20), (1, 20));
        assert_eq!(stamp(1, 10, 20), (1, 20));
        assert_eq!(stamp(10, 1, 20), (10, 11));
        assert_eq!(stamp(21, 1, 20), (21, 0));
    }

    #[test]
    fn ttl_is_none_at_and_after_the_deadline() {
        assert_eq!(ttl(20, 0, 20), None);
        assert_eq!(ttl(21, 0, 20), None);
        assert_eq!(ttl(10, 0, 20), Some(Duration::from_secs(10)));
        assert_eq!(
            ttl(0, u64::MAX, u64::MAX),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn envelope_helpers_follow_the_free_functions() {
        let mut env = Envelope {
            timestamp: 100,
            expiration: 50,
            ..Default::default()
        };
        env.stamp_at(120);
        assert_eq!((env.timestamp, env.expiration), (120, 30));
        assert_eq!(env.deadline(), 150);
        assert!(env.valid_at(149).is_ok());
        assert_eq!(
            env.valid_at(150),
            Err(Expired {
                deadline: 150,
                now: 150
            })
        );
        assert_eq!(env.age_at(130), 10);
        assert_eq!(env.age_at(10), 0);
    }
}
