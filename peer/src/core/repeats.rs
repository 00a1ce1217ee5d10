//! [`RepeatLimiter`]: how often one request's cached reply may be sent again.
//!
//! A repeated request is answered from the reply cache so a requester whose reply was
//! lost gets it (issue #7). But a signed request is the same bytes whoever posts it:
//! anyone who captured it (a relay, an observer of a `ws://` link) can post it again to
//! any relay's federation ingress, and each copy would make us send the reply again: a
//! reflector. Nothing in the envelope tells the original sender's resend from such a
//! replay, so repeats are rate-limited per (source twin, uid): a few per window are
//! answered (enough for a genuine sender's backed-off resends), the rest are dropped
//! and counted (`replay_limited`).
//!
//! Pure state machine: time is an input.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Repeats of one request answered per [`WINDOW`].
pub const REPEATS_PER_WINDOW: u32 = 4;
/// The window of [`REPEATS_PER_WINDOW`].
pub const WINDOW: Duration = Duration::from_secs(60);
/// Most requests tracked; past it (all within their window) repeats are not answered.
pub const CAPACITY: usize = 100_000;

/// Counts repeats per (twin, uid) in fixed windows.
#[derive(Debug)]
pub struct RepeatLimiter {
    per_window: u32,
    window: Duration,
    capacity: usize,
    seen: HashMap<(u32, String), (Instant, u32)>,
}

impl Default for RepeatLimiter {
    fn default() -> Self {
        RepeatLimiter::new(REPEATS_PER_WINDOW, WINDOW, CAPACITY)
    }
}

impl RepeatLimiter {
    /// At most `per_window` answers per `window` per request, `capacity` requests tracked.
    pub fn new(per_window: u32, window: Duration, capacity: usize) -> Self {
        RepeatLimiter {
            per_window,
            window,
            capacity,
            seen: HashMap::new(),
        }
    }

    /// True when the repeat of request `uid` from `twin` at `now` may be answered.
    pub fn allow(&mut self, twin: u32, uid: &str, now: Instant) -> bool {
        let key = (twin, uid.to_string());
        if !self.seen.contains_key(&key) && self.seen.len() >= self.capacity {
            let window = self.window;
            self.seen
                .retain(|_, (start, _)| now.saturating_duration_since(*start) < window);
            if self.seen.len() >= self.capacity {
                return false;
            }
        }
        let entry = self.seen.entry(key).or_insert((now, 0));
        if now.saturating_duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        if entry.1 >= self.per_window {
            return false;
        }
        entry.1 += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_repeats_per_window_are_answered() {
        let mut l = RepeatLimiter::new(2, Duration::from_secs(60), 10);
        let t0 = Instant::now();
        assert!(l.allow(1, "u", t0));
        assert!(l.allow(1, "u", t0 + Duration::from_secs(1)));
        assert!(!l.allow(1, "u", t0 + Duration::from_secs(2)));
        assert!(l.allow(1, "v", t0), "another uid");
        assert!(l.allow(2, "u", t0), "another twin");
        assert!(
            l.allow(1, "u", t0 + Duration::from_secs(60)),
            "a new window"
        );
    }

    #[test]
    fn a_full_table_refuses_new_requests_until_windows_pass() {
        let mut l = RepeatLimiter::new(2, Duration::from_secs(60), 2);
        let t0 = Instant::now();
        assert!(l.allow(1, "a", t0));
        assert!(l.allow(1, "b", t0));
        assert!(!l.allow(1, "c", t0));
        assert!(l.allow(1, "a", t0), "tracked ones go on");
        assert!(l.allow(1, "c", t0 + Duration::from_secs(60)));
    }
}
