//! [`Backoff`]: how long a link waits before reconnecting.
//!
//! Exponential with "equal jitter": attempt *n* waits a random time between half and all
//! of `initial · 2ⁿ` (capped), so a relay that restarts is not hit by all its peers in the
//! same millisecond, yet a peer never waits less than half the nominal delay. Pure: the
//! random factor is an input, so the schedule is tested without a clock or an RNG.

use std::time::Duration;

/// First reconnect delay after a connection is lost.
pub const INITIAL: Duration = Duration::from_millis(200);
/// Longest delay between two connection attempts.
pub const CAP: Duration = Duration::from_secs(5);

/// The reconnect schedule of one link.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    cap: Duration,
    nominal: Duration,
}

impl Default for Backoff {
    /// [`INITIAL`] doubling up to [`CAP`].
    fn default() -> Self {
        Backoff::new(INITIAL, CAP)
    }
}

impl Backoff {
    /// A schedule starting at `initial`, doubling on each failure, never above `cap`.
    pub fn new(initial: Duration, cap: Duration) -> Self {
        Backoff {
            initial,
            cap,
            nominal: initial.min(cap),
        }
    }

    /// The delay before the next attempt; `jitter` in `[0, 1]` picks where in
    /// `[nominal/2, nominal]` it falls. Doubles the nominal delay for the attempt after.
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let nominal = self.nominal;
        self.nominal = (nominal * 2).min(self.cap);
        let jitter = jitter.clamp(0.0, 1.0);
        nominal.mul_f64(0.5 + 0.5 * jitter)
    }

    /// Back to the initial delay (after a connection that worked for a while).
    pub fn reset(&mut self) {
        self.nominal = self.initial.min(self.cap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn doubles_up_to_the_cap() {
        let mut b = Backoff::default();
        let full: Vec<_> = (0..8).map(|_| b.next_delay(1.0)).collect();
        assert_eq!(
            full,
            [200, 400, 800, 1600, 3200, 5000, 5000, 5000]
                .map(ms)
                .to_vec()
        );
    }

    #[test]
    fn jitter_stays_between_half_and_all_of_the_nominal_delay() {
        let mut low = Backoff::default();
        let mut high = Backoff::default();
        for _ in 0..10 {
            let (l, h) = (low.next_delay(0.0), high.next_delay(1.0));
            assert_eq!(l * 2, h);
        }
        // Out-of-range jitter is clamped rather than producing a negative or huge delay.
        let mut b = Backoff::default();
        assert_eq!(b.next_delay(-3.0), ms(100));
        assert_eq!(b.next_delay(7.0), ms(400));
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::default();
        for _ in 0..5 {
            b.next_delay(1.0);
        }
        b.reset();
        assert_eq!(b.next_delay(1.0), ms(200));
        // An initial delay above the cap is capped too.
        let mut odd = Backoff::new(ms(900), ms(300));
        assert_eq!(odd.next_delay(1.0), ms(300));
    }
}
