//! [`LogThrottle`]: at most one log line per interval for events a remote party can cause.
//!
//! Anyone can open connections that time out, send broken federation POSTs or register a
//! twin whose relay refuses everything; logging each of these would let them fill the
//! operator's disk. A throttle lets one line through per interval and says how many were
//! held back since the last one (the metrics count every one of them).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Lets one event through per interval, counting the rest.
#[derive(Debug)]
pub struct LogThrottle {
    interval_secs: u64,
    /// Unix second from which the next line may be logged.
    next: AtomicU64,
    suppressed: AtomicU64,
}

impl LogThrottle {
    /// A throttle letting one line through per `interval` (whole seconds, at least 1).
    pub const fn new(interval: Duration) -> Self {
        let secs = interval.as_secs();
        LogThrottle {
            interval_secs: if secs == 0 { 1 } else { secs },
            next: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(held back since the last line)` if a line may be logged now, else `None`.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(crate::time::unix_now())
    }

    /// [`LogThrottle::allow`] at `now` (unix seconds): time as an input, for tests.
    pub fn allow_at(&self, now: u64) -> Option<u64> {
        let next = self.next.load(Ordering::Relaxed);
        if now < next
            || self
                .next
                .compare_exchange(
                    next,
                    now.saturating_add(self.interval_secs),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_and_the_rest_are_counted() {
        let throttle = LogThrottle::new(Duration::from_secs(10));
        assert_eq!(throttle.allow_at(100), Some(0));
        assert_eq!(throttle.allow_at(101), None);
        assert_eq!(throttle.allow_at(109), None);
        assert_eq!(throttle.allow_at(110), Some(2));
        assert_eq!(throttle.allow_at(110), None);
    }
}
