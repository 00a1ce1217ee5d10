//! Which link an outgoing envelope takes.
//!
//! Links are tried starting from the *preferred* one (the last that accepted a message),
//! then in order, wrapping around. Staying on one relay while it works keeps a
//! conversation on one path (replies come back the way requests went, caches stay warm);
//! moving the preference only on failure gives failover without flapping.

/// Link indexes in the order to try them: `preferred` first, then the rest cyclically.
pub fn candidates(count: usize, preferred: usize) -> impl Iterator<Item = usize> {
    let start = if count == 0 { 0 } else { preferred % count };
    (0..count).map(move |i| (start + i) % count)
}

/// The first link to try that is usable, per `usable(index)`.
pub fn pick(count: usize, preferred: usize, usable: impl Fn(usize) -> bool) -> Option<usize> {
    candidates(count, preferred).find(|&i| usable(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preferred_first_then_cyclic() {
        assert_eq!(candidates(4, 2).collect::<Vec<_>>(), [2, 3, 0, 1]);
        assert_eq!(candidates(3, 0).collect::<Vec<_>>(), [0, 1, 2]);
        // A stale preference beyond the list wraps instead of panicking.
        assert_eq!(candidates(2, 5).collect::<Vec<_>>(), [1, 0]);
        assert_eq!(candidates(0, 0).count(), 0);
    }

    #[test]
    fn skips_unusable_links_and_fails_when_none_is_up() {
        let up = [false, true, false, true];
        assert_eq!(pick(4, 0, |i| up[i]), Some(1));
        assert_eq!(pick(4, 2, |i| up[i]), Some(3));
        assert_eq!(pick(4, 3, |i| up[i]), Some(3), "sticky while it works");
        assert_eq!(pick(4, 1, |_| false), None);
    }
}
