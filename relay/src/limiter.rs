//! Per-twin fixed-window rate limiting for `--limit <count> <size>`.
//!
//! A relay is shared infrastructure: one misbehaving twin must not be able to flood it.
//! rmb-rs bounds every twin to `count` messages and `size` bytes per 60-second window,
//! with windows aligned to `unix_secs / 60` (so every relay agrees on where a minute
//! starts). We keep that observable behaviour:
//!
//! * a single message larger than the whole byte budget is refused outright;
//! * every other message is counted *before* the verdict, so rejected messages still
//!   consume budget and a flooder stays blocked until the window rolls over;
//! * no `--limit` means nothing is ever limited.
//!
//! Like the rest of this crate's state machines, the [`Limiter`] does no I/O and reads no
//! clock: the caller passes `now_secs` in, which keeps it deterministic and testable. The
//! relay keeps one instance behind a mutex shared by every session, so all sessions of a
//! twin share one budget; [`Limiter::check`] is O(1) to keep that lock short.

use std::hash::Hash;
use std::num::NonZeroUsize;

use lru::LruCache;

/// The rmb-rs window length: budgets are per minute, aligned to `unix_secs / 60`.
pub const WINDOW_SECS: u64 = 60;

/// The budgets configured by `--limit <count> <size>`.
///
/// Kept as plain data so the CLI layer can build it and tests can pick small windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum number of messages a twin may send per window.
    pub count: u64,
    /// Maximum number of bytes a twin may send per window; also the largest message
    /// accepted at all.
    pub size: u64,
    /// Window length in seconds ([`WINDOW_SECS`] on the wire-compatible relay). A value of
    /// zero is treated as one second rather than dividing by zero.
    pub window: u64,
}

impl Limits {
    /// The rmb-rs configuration: `count` messages and `size` bytes per 60-second window.
    pub fn per_minute(count: u64, size: u64) -> Self {
        Self {
            count,
            size,
            window: WINDOW_SECS,
        }
    }
}

/// Why a message was refused; the `Display` text is meant for logs and error envelopes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Limited {
    /// The twin sent more messages in the current window than the count budget allows.
    #[error("rate limit exceeded: {count} messages in this {window} s window (limit {limit})")]
    Count {
        /// Messages seen in this window, the refused one included.
        count: u64,
        /// The configured message budget.
        limit: u64,
        /// The window length in seconds.
        window: u64,
    },
    /// The twin sent more bytes in the current window than the size budget allows.
    #[error("rate limit exceeded: {bytes} bytes in this {window} s window (limit {limit})")]
    Size {
        /// Bytes seen in this window, the refused message included.
        bytes: u64,
        /// The configured byte budget.
        limit: u64,
        /// The window length in seconds.
        window: u64,
    },
    /// One message alone is bigger than the whole window budget, so it can never pass.
    #[error("message of {bytes} bytes exceeds the per-window budget of {limit} bytes")]
    Oversize {
        /// Size of the refused message.
        bytes: u64,
        /// The configured byte budget.
        limit: u64,
    },
}

/// What one twin has used in its current window.
#[derive(Debug, Clone, Copy)]
struct Window {
    /// `now_secs / window` of the window these counters belong to.
    index: u64,
    count: u64,
    bytes: u64,
}

/// The relay-wide rate limiter: one fixed window per key (a twin; for unsigned
/// federated frames a claimed twin and the address that posted them), in a bounded LRU
/// map.
///
/// Memory is capped at `capacity` keys; a key pushed out of the cache simply starts a
/// fresh window when it comes back, which can only make the limiter more lenient, never
/// block an innocent twin.
#[derive(Debug)]
pub struct Limiter<K: Hash + Eq = u32> {
    limits: Option<Limits>,
    windows: LruCache<K, Window>,
}

impl<K: Hash + Eq> Limiter<K> {
    /// Builds a limiter; `None` limits means "no `--limit` given": every message passes.
    ///
    /// `capacity` bounds how many twins are tracked (rmb-rs uses twice the expected user
    /// count); zero is treated as one so construction cannot fail.
    pub fn new(limits: Option<Limits>, capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            limits,
            windows: LruCache::new(capacity),
        }
    }

    /// The configured budgets, if limiting is on; lets callers log the configuration.
    pub fn limits(&self) -> Option<Limits> {
        self.limits
    }

    /// Accounts one message of `bytes` bytes from `twin` at `now_secs` (unix seconds) and
    /// says whether it may be routed.
    ///
    /// An oversize message is refused without being counted (nothing could ever let it
    /// through, as in rmb-rs); any other message is counted first, so a refused message
    /// still uses up budget.
    pub fn check(&mut self, twin: K, bytes: u64, now_secs: u64) -> Result<(), Limited> {
        let Some(limits) = self.limits else {
            return Ok(());
        };
        if bytes > limits.size {
            return Err(Limited::Oversize {
                bytes,
                limit: limits.size,
            });
        }
        let window_secs = limits.window.max(1);
        let index = now_secs / window_secs;
        let fresh = Window {
            index,
            count: 0,
            bytes: 0,
        };
        let window = self.windows.get_or_insert_mut(twin, || fresh);
        if window.index != index {
            *window = fresh;
        }
        window.count = window.count.saturating_add(1);
        window.bytes = window.bytes.saturating_add(bytes);

        if window.count > limits.count {
            return Err(Limited::Count {
                count: window.count,
                limit: limits.count,
                window: window_secs,
            });
        }
        if window.bytes > limits.size {
            return Err(Limited::Size {
                bytes: window.bytes,
                limit: limits.size,
                window: window_secs,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(count: u64, size: u64) -> Limiter {
        Limiter::new(Some(Limits::per_minute(count, size)), 16)
    }

    fn count_err(count: u64, limit: u64) -> Limited {
        Limited::Count {
            count,
            limit,
            window: 60,
        }
    }

    fn size_err(bytes: u64, limit: u64) -> Limited {
        Limited::Size {
            bytes,
            limit,
            window: 60,
        }
    }

    #[test]
    fn count_limit() {
        let mut l = limiter(3, 1_000);
        for _ in 0..3 {
            assert_eq!(l.check(1, 10, 600), Ok(()));
        }
        let err = l.check(1, 10, 600).unwrap_err();
        assert_eq!(err, count_err(4, 3));
        assert_eq!(
            err.to_string(),
            "rate limit exceeded: 4 messages in this 60 s window (limit 3)"
        );
    }

    #[test]
    fn size_limit() {
        let mut l = limiter(100, 100);
        assert_eq!(l.check(1, 60, 600), Ok(()));
        assert_eq!(l.check(1, 40, 600), Ok(()));
        let err = l.check(1, 1, 600).unwrap_err();
        assert_eq!(err, size_err(101, 100));
        assert!(err.to_string().contains("101 bytes"));
    }

    #[test]
    fn window_resets_at_aligned_minute_boundary() {
        let mut l = limiter(1, 1_000);
        // 119 and 120 are one second apart but in different aligned windows.
        assert_eq!(l.check(1, 1, 119), Ok(()));
        assert!(l.check(1, 1, 119).is_err());
        assert_eq!(l.check(1, 1, 120), Ok(()));
        // 120 and 179 share a window even though the twin started at 120.
        assert!(l.check(1, 1, 179).is_err());
        assert_eq!(l.check(1, 1, 180), Ok(()));
    }

    #[test]
    fn oversize_message_is_refused_and_not_counted() {
        let mut l = limiter(2, 100);
        let err = l.check(1, 101, 0).unwrap_err();
        assert_eq!(
            err,
            Limited::Oversize {
                bytes: 101,
                limit: 100
            }
        );
        assert_eq!(
            err.to_string(),
            "message of 101 bytes exceeds the per-window budget of 100 bytes"
        );
        // Exactly the budget is fine, and the oversize attempt used none of it.
        assert_eq!(l.check(1, 100, 0), Ok(()));
    }

    #[test]
    fn rejected_messages_consume_budget() {
        let mut l = limiter(2, 1_000);
        assert_eq!(l.check(1, 1, 0), Ok(()));
        assert_eq!(l.check(1, 1, 0), Ok(()));
        for n in 3..10 {
            assert_eq!(l.check(1, 1, 30), Err(count_err(n, 2)));
        }
        // Bytes of refused messages count too.
        let mut l = limiter(100, 10);
        assert_eq!(l.check(1, 8, 0), Ok(()));
        assert!(l.check(1, 8, 0).is_err());
        assert_eq!(l.check(1, 1, 0), Err(size_err(17, 10)));
    }

    #[test]
    fn twins_are_independent() {
        let mut l = limiter(1, 1_000);
        assert_eq!(l.check(1, 1, 0), Ok(()));
        assert!(l.check(1, 1, 0).is_err());
        assert_eq!(l.check(2, 1, 0), Ok(()));
        assert!(l.check(2, 1, 0).is_err());
    }

    #[test]
    fn no_limits_never_limits() {
        let mut l = Limiter::new(None, 1);
        assert_eq!(l.limits(), None);
        for twin in 0..1_000 {
            assert_eq!(l.check(twin % 3, u64::MAX, 0), Ok(()));
        }
        assert!(l.windows.is_empty());
    }

    #[test]
    fn tracked_twins_are_bounded_and_evicted_twins_start_fresh() {
        let mut l = Limiter::new(Some(Limits::per_minute(1, 1_000)), 2);
        assert_eq!(l.check(1, 1, 0), Ok(()));
        assert!(l.check(1, 1, 0).is_err());
        for twin in 2..100 {
            assert_eq!(l.check(twin, 1, 0), Ok(()));
            assert!(l.windows.len() <= 2);
        }
        // Twin 1 was evicted long ago: it gets a fresh window.
        assert_eq!(l.check(1, 1, 0), Ok(()));
    }

    #[test]
    fn degenerate_configuration_does_not_panic() {
        let mut l = Limiter::new(
            Some(Limits {
                count: 0,
                size: 0,
                window: 0,
            }),
            0,
        );
        assert_eq!(
            l.check(1, 0, u64::MAX),
            Err(Limited::Count {
                count: 1,
                limit: 0,
                window: 1
            })
        );
        assert!(matches!(l.check(1, 1, 0), Err(Limited::Oversize { .. })));
    }
}
