//! Where a reader starts in a topic (`?since=` of the HTTP API, `rmb sub --since`): a
//! message id, `all`, `latest` (the newest kept message, then what comes), a duration
//! back from now (`10m`) or a unix time. Times are turned into an id by a binary search
//! over the stored messages ([`TimeSearch`]), a few reads however long the topic is.
//!
//! A plain number is ambiguous (ids and unix times are both numbers): it is a unix time
//! when it is at least [`UNIX_TIME_FROM`] and beyond the topic's newest id, else an id.
//! Values from the client are clamped, never trusted: a duration longer than
//! [`MAX_AGO_SECS`] means "everything kept", a time in the future means "new messages
//! only".

use std::str::FromStr;

/// Smallest number read as a unix time (2001-09-09); smaller ones are message ids.
pub const UNIX_TIME_FROM: u64 = 1_000_000_000;

/// Longest duration back from now that `since` takes (100 years: everything kept).
pub const MAX_AGO_SECS: u64 = 100 * 365 * 86_400;

/// A parsed `since`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// After this message id (`all` is 0: from the oldest kept).
    Id(u64),
    /// A plain number at or above [`UNIX_TIME_FROM`]: a unix time, unless the topic
    /// already has an id that high.
    Number(u64),
    /// Only the newest kept message, then new ones.
    Latest,
    /// Messages published at most this many seconds ago (clamped to [`MAX_AGO_SECS`]).
    Ago(u64),
}

/// Why a `since` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "since is a message id, \"all\", \"latest\", a duration (30s, 10m, 2h, 1d) or a unix time, not {0:?}"
)]
pub struct SinceError(pub String);

impl FromStr for Since {
    type Err = SinceError;

    fn from_str(text: &str) -> Result<Since, SinceError> {
        let bad = || SinceError(text.chars().take(64).collect());
        match text {
            "all" => return Ok(Since::Id(0)),
            "latest" => return Ok(Since::Latest),
            "" => return Err(bad()),
            _ => {}
        }
        if text.bytes().all(|b| b.is_ascii_digit()) {
            // Too many digits for any id or time: clamp rather than refuse.
            let n = text.parse::<u64>().unwrap_or(u64::MAX);
            return Ok(if n >= UNIX_TIME_FROM {
                Since::Number(n)
            } else {
                Since::Id(n)
            });
        }
        // The unit is the last character, which may be any character: split before it,
        // not one byte from the end (a multi-byte last character is refused, not a panic).
        let unit = text.chars().next_back().ok_or_else(bad)?;
        let digits = &text[..text.len() - unit.len_utf8()];
        let per = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let n = digits.parse::<u64>().unwrap_or(u64::MAX);
        Ok(Since::Ago(n.saturating_mul(per).min(MAX_AGO_SECS)))
    }
}

impl Since {
    /// The unix time this `since` starts at, when it is one: `Ago` from `now`, a
    /// `Number` above `newest` (the topic's newest id); a time after `now` is the next
    /// second (no stored message is that new).
    pub fn cutoff(self, newest: u64, now: u64) -> Option<u64> {
        match self {
            Since::Ago(secs) => Some(now.saturating_sub(secs.min(MAX_AGO_SECS))),
            Since::Number(n) if n > newest => Some(n.min(now.saturating_add(1))),
            _ => None,
        }
    }
}

/// A binary search for the position just before the first message published at or
/// after `cutoff`, probing "the first message after id X" (message times only grow
/// with ids, up to the owner's clock: a clock stepped back moves the answer by the
/// messages of that step, nothing worse).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeSearch {
    lo: u64,
    hi: u64,
    cutoff: u64,
}

impl TimeSearch {
    /// A search among ids up to `newest`.
    pub fn new(newest: u64, cutoff: u64) -> TimeSearch {
        TimeSearch {
            lo: 0,
            hi: newest,
            cutoff,
        }
    }

    /// The id to probe next (ask for the first message after it), or `None` when done.
    pub fn probe(&self) -> Option<u64> {
        (self.lo < self.hi).then(|| self.lo + (self.hi - self.lo) / 2)
    }

    /// What the probe after `after` found: the first message's id and time, or none.
    pub fn found(&mut self, after: u64, message: Option<(u64, u64)>) {
        match message {
            Some((id, time)) if time < self.cutoff && id > after => self.lo = id.min(self.hi),
            // At or after the cutoff, nothing after it, or an answer that makes no
            // progress (a hostile or broken store): the answer is at most `after`.
            _ => self.hi = after,
        }
    }

    /// The position to start after (every message after it is at or after the cutoff).
    pub fn answer(&self) -> u64 {
        self.lo
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multi_byte_last_character_is_refused_not_a_panic() {
        // Found by the http_bodies fuzz target (fuzz/regressions/http_bodies/): the unit
        // was cut one byte from the end, inside the character.
        for text in ["10\u{20ac}", "\u{e9}", "5\u{1f600}", "m\u{e9}"] {
            assert!(text.parse::<Since>().is_err(), "{text:?}");
        }
        assert_eq!(
            "10\u{20ac}".parse::<Since>(),
            Err(SinceError("10\u{20ac}".into()))
        );
    }

    #[test]
    fn since_parses_ids_words_durations_and_times_and_clamps_what_is_huge() {
        assert_eq!("all".parse(), Ok(Since::Id(0)));
        assert_eq!("0".parse(), Ok(Since::Id(0)));
        assert_eq!("42".parse(), Ok(Since::Id(42)));
        assert_eq!("latest".parse(), Ok(Since::Latest));
        assert_eq!("30s".parse(), Ok(Since::Ago(30)));
        assert_eq!("10m".parse(), Ok(Since::Ago(600)));
        assert_eq!("2h".parse(), Ok(Since::Ago(7200)));
        assert_eq!("1d".parse(), Ok(Since::Ago(86_400)));
        assert_eq!("1764650000".parse(), Ok(Since::Number(1_764_650_000)));
        assert_eq!(
            "99999999999999999999999999d".parse(),
            Ok(Since::Ago(MAX_AGO_SECS))
        );
        assert_eq!(
            "99999999999999999999999999".parse(),
            Ok(Since::Number(u64::MAX))
        );
        for bad in ["", "abc", "-5", "10x", "m", "1.5h", "10 m", "+3"] {
            assert!(bad.parse::<Since>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_number_is_a_time_only_beyond_the_newest_id_and_never_in_the_future() {
        let now = 1_800_000_000;
        assert_eq!(
            Since::Number(1_700_000_000).cutoff(5, now),
            Some(1_700_000_000)
        );
        assert_eq!(
            Since::Number(1_700_000_000).cutoff(1_700_000_001, now),
            None
        );
        assert_eq!(Since::Number(u64::MAX).cutoff(5, now), Some(now + 1));
        assert_eq!(Since::Ago(60).cutoff(5, now), Some(now - 60));
        assert_eq!(Since::Ago(u64::MAX).cutoff(5, 10), Some(0));
        assert_eq!(Since::Id(3).cutoff(5, now), None);
        assert_eq!(Since::Latest.cutoff(5, now), None);
    }

    /// Runs a search over messages `(id, time)` as the store would answer it.
    fn search(messages: &[(u64, u64)], cutoff: u64) -> (u64, usize) {
        let newest = messages.last().map_or(0, |m| m.0);
        let mut s = TimeSearch::new(newest, cutoff);
        let mut probes = 0;
        while let Some(after) = s.probe() {
            probes += 1;
            s.found(after, messages.iter().copied().find(|m| m.0 > after));
        }
        (s.answer(), probes)
    }

    #[test]
    fn the_time_search_finds_the_position_before_the_first_message_at_the_cutoff() {
        // Ids 5..=1004 (older ones dropped by retention), one per second from t=100.
        let messages: Vec<(u64, u64)> = (5..=1004).map(|id| (id, 95 + id)).collect();
        assert_eq!(search(&messages, 0).0, 0, "everything");
        assert_eq!(search(&messages, 100).0, 0, "from the oldest kept");
        assert_eq!(search(&messages, 600).0, 504);
        assert_eq!(search(&messages, 1099).0, 1003, "only the newest");
        assert_eq!(
            search(&messages, 5000).0,
            1004,
            "nothing yet: new ones only"
        );
        let (_, probes) = search(&messages, 600);
        assert!(probes <= 12, "{probes} probes");
        // Several messages per second, and holes in the ids.
        let messages = [(1, 10), (2, 10), (3, 11), (7, 11), (8, 12), (20, 13)];
        assert_eq!(search(&messages, 11).0, 2);
        assert_eq!(search(&messages, 12).0, 7);
        assert_eq!(search(&messages, 13).0, 8);
        assert_eq!(search(&[], 13).0, 0);
        // A store that answers nonsense ends the search all the same.
        let mut s = TimeSearch::new(100, 50);
        let mut steps = 0;
        while let Some(after) = s.probe() {
            s.found(after, Some((1, 0)));
            steps += 1;
            assert!(steps < 100);
        }
    }
}
