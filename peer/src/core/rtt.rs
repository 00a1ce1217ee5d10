//! [`Rtt`]: the round-trip estimate behind the resend timer (SRTT/RTTVAR, as TCP's
//! RFC 6298).
//!
//! A fixed resend time is wrong both ways: too long on a fast path (a lost request waits
//! for nothing), far too short under load (a burst of requests merely queued at the
//! destination is sent again, and the copies add to the queue: congestion feeding
//! itself). The estimate follows the measured round trips of answered requests; only
//! requests that were never resent are measured (Karn's rule: an answer to a resent
//! request could be for either copy).
//!
//! Pure: samples and durations in, timeout out.

use std::time::Duration;

/// Resend timeout before any round trip was measured.
pub const INITIAL_RTO: Duration = Duration::from_secs(2);
/// Shortest resend timeout, whatever the measurements.
pub const MIN_RTO: Duration = Duration::from_secs(1);
/// Longest resend timeout (before backoff).
pub const MAX_RTO: Duration = Duration::from_secs(16);

/// Smoothed round-trip time and its variation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rtt {
    /// `(srtt, rttvar)` once a sample was taken.
    estimate: Option<(Duration, Duration)>,
}

impl Rtt {
    /// Takes one measured round trip into the estimate.
    pub fn sample(&mut self, r: Duration) {
        self.estimate = Some(match self.estimate {
            None => (r, r / 2),
            Some((srtt, rttvar)) => {
                let delta = srtt.abs_diff(r);
                (srtt * 7 / 8 + r / 8, rttvar * 3 / 4 + delta / 4)
            }
        });
    }

    /// The smoothed round trip, once measured.
    pub fn srtt(&self) -> Option<Duration> {
        self.estimate.map(|(srtt, _)| srtt)
    }

    /// How long to wait for an answer before sending again: SRTT + 4·RTTVAR within
    /// [`MIN_RTO`]..=[`MAX_RTO`] ([`INITIAL_RTO`] before any sample).
    pub fn rto(&self) -> Duration {
        match self.estimate {
            None => INITIAL_RTO,
            Some((srtt, rttvar)) => srtt.saturating_add(rttvar * 4).clamp(MIN_RTO, MAX_RTO),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn before_any_sample_the_initial_timeout_holds() {
        assert_eq!(Rtt::default().rto(), INITIAL_RTO);
        assert_eq!(Rtt::default().srtt(), None);
    }

    #[test]
    fn fast_round_trips_give_the_floor() {
        let mut rtt = Rtt::default();
        for _ in 0..20 {
            rtt.sample(MS(5));
        }
        assert_eq!(rtt.srtt(), Some(MS(5)));
        assert_eq!(rtt.rto(), MIN_RTO);
    }

    #[test]
    fn the_first_sample_sets_srtt_and_half_of_it_as_variation() {
        let mut rtt = Rtt::default();
        rtt.sample(MS(800));
        // 800 + 4 * 400
        assert_eq!(rtt.rto(), MS(2400));
        rtt.sample(MS(800));
        // srtt 800, rttvar 300 + 0 = 300
        assert_eq!(rtt.rto(), MS(2000));
    }

    #[test]
    fn slow_and_jittery_round_trips_raise_the_timeout_up_to_the_cap() {
        let mut rtt = Rtt::default();
        for i in 0..50 {
            rtt.sample(MS(if i % 2 == 0 { 1000 } else { 5000 }));
        }
        assert!(rtt.rto() > MS(5000), "{:?}", rtt.rto());
        for _ in 0..50 {
            rtt.sample(Duration::from_secs(60));
        }
        assert_eq!(rtt.rto(), MAX_RTO);
    }
}
