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

/// Default longest an envelope may stay valid from the moment it is checked: one day.
///
/// Deadlines come from the network (`timestamp + expiration`, both chosen by the sender).
/// Without a bound, a deadline near `u64::MAX` overflows time arithmetic downstream
/// (Redis `EX`, sleeps, queue expiry) or keeps bytes resident forever. Relays and peers
/// refuse envelopes whose deadline lies further ahead than their limit (a flag).
pub const DEFAULT_MAX_LIFETIME_SECS: u64 = 24 * 3600;

/// Why an envelope's times are not acceptable at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    /// The deadline has passed.
    #[error(transparent)]
    Expired(#[from] Expired),
    /// The deadline is further ahead than the receiver accepts.
    #[error("envelope deadline {deadline} is more than {max_lifetime} s ahead of now ({now})")]
    TooFar {
        /// Unix seconds of the claimed deadline (saturated at `u64::MAX`).
        deadline: u64,
        /// The time it was checked at.
        now: u64,
        /// The receiver's limit, in seconds from `now`.
        max_lifetime: u64,
    },
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

    /// `Ok` while the envelope has time left at `now` and its deadline is at most
    /// `max_lifetime` seconds ahead: the check every receiver runs before it does any
    /// arithmetic with the envelope's times.
    pub fn check_time(&self, now: u64, max_lifetime: u64) -> Result<(), TimeError> {
        self.valid_at(now)?;
        let deadline = self.deadline();
        if deadline > now.saturating_add(max_lifetime) {
            return Err(TimeError::TooFar {
                deadline,
                now,
                max_lifetime,
            });
        }
        Ok(())
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
        assert_eq!(env.check_time(149, 1), Ok(()));
        assert!(matches!(
            env.check_time(100, 49),
            Err(TimeError::TooFar { deadline: 150, .. })
        ));
        assert!(matches!(
            env.check_time(150, 99),
            Err(TimeError::Expired(_))
        ));
        let far = Envelope {
            timestamp: u64::MAX - 5,
            expiration: u64::MAX,
            ..Default::default()
        };
        assert!(matches!(
            far.check_time(100, DEFAULT_MAX_LIFETIME_SECS),
            Err(TimeError::TooFar {
                deadline: u64::MAX,
                ..
            })
        ));
        assert_eq!(env.age_at(10), 0);
    }
}
