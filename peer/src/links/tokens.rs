//! [`TokenTimes`]: the issue and expiry times of this peer's login tokens, never the same
//! twice.
//!
//! Relays refuse a login token they have seen before (it could only be a captured copy
//! replayed). A token is its claims `{sub, sid, iat, exp}` signed, and `iat` counts
//! seconds, so a link that reconnects within the second it last logged in (a relay that
//! dropped it at once, the 200 ms first backoff) would make the same token again and be
//! refused. Each token made in the same second therefore expires one second sooner than
//! the one before it; the lifetime stays within a few minutes of [`TOKEN_TTL`], so relays
//! of rmb-rs (which check only expiry) and ours accept them alike. One of these is
//! shared by all links of a peer, since two relays may be replicas sharing one memory.
//!
//! Another process of the same twin and session (a peer restarted in place, its
//! replacement started while it stops) counts on its own: each process starts its count
//! at a random step, so two of them logging in within one second rarely make the same
//! token (and when they do, the relay refuses the second and its link logs in again a
//! moment later, in the next second).

use std::sync::Mutex;

use super::actor::TOKEN_TTL;

/// Tokens made in one second before the lifetime stops shrinking (a link reconnects at
/// most a few times a second; past this the relay refuses the repeat and the link's
/// backoff moves it to the next second).
const MAX_PER_SECOND: u64 = TOKEN_TTL / 2;

/// The `(iat, ttl)` of the next login token.
#[derive(Debug)]
pub struct TokenTimes {
    /// The second of the last token, and how many were made in it.
    last: Mutex<(u64, u64)>,
    /// Where this process's count starts each second.
    start: u64,
}

impl Default for TokenTimes {
    fn default() -> Self {
        TokenTimes::starting_at(rand::Rng::gen_range(
            &mut rand::thread_rng(),
            0..MAX_PER_SECOND / 2,
        ))
    }
}

impl TokenTimes {
    /// Counts from `start` each second (tests give it; [`Default`] picks it at random).
    pub fn starting_at(start: u64) -> TokenTimes {
        TokenTimes {
            last: Mutex::new((0, 0)),
            start: start.min(MAX_PER_SECOND / 2),
        }
    }

    /// The issue time and lifetime of a token made at `now` (unix seconds): `now` and
    /// [`TOKEN_TTL`], less one second for each token already made in this second.
    pub fn next(&self, now: u64) -> (u64, u64) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let made = if last.0 == now { last.1 } else { self.start };
        *last = (now, made.saturating_add(1));
        (now, TOKEN_TTL - made.min(MAX_PER_SECOND))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_of_one_second_differ_and_the_next_second_starts_afresh() {
        let times = TokenTimes::starting_at(0);
        assert_eq!(times.next(100), (100, TOKEN_TTL));
        assert_eq!(times.next(100), (100, TOKEN_TTL - 1));
        assert_eq!(times.next(100), (100, TOKEN_TTL - 2));
        assert_eq!(times.next(101), (101, TOKEN_TTL));
        // A clock stepped back: a new second too (iat differs from the last token's).
        assert_eq!(times.next(99), (99, TOKEN_TTL));
    }

    #[test]
    fn the_lifetime_never_shrinks_below_half() {
        let times = TokenTimes::starting_at(0);
        let last = (0..1000).map(|_| times.next(7).1).last().unwrap();
        assert_eq!(last, TOKEN_TTL - MAX_PER_SECOND);
    }

    #[test]
    fn processes_start_their_count_at_different_steps() {
        let starts: std::collections::HashSet<u64> = (0..50)
            .map(|_| TOKEN_TTL - TokenTimes::default().next(7).1)
            .collect();
        assert!(starts.len() > 10, "{starts:?}");
        assert!(starts.iter().all(|s| *s < MAX_PER_SECOND / 2));
        let times = TokenTimes::starting_at(5);
        assert_eq!(times.next(9), (9, TOKEN_TTL - 5));
        assert_eq!(times.next(9), (9, TOKEN_TTL - 6));
    }
}
