//! The owner's record of how far each subscriber has acknowledged, for subscribers that
//! acknowledge cumulatively ([`AckMode::Cumulative`]): their pushes are not answered,
//! so nothing else would notice a push lost on the way.
//!
//! A pure state machine, time passed in: the fan-out task records what it pushed, the
//! router what was acknowledged ([`wire::ACK`](super::wire::ACK)), and the fan-out
//! task's tick asks what is [`due`](Progress::due) again: the messages after the last
//! acknowledged id, once nothing moved for [`RESEND_AFTER`], then after twice as long,
//! up to [`MAX_RESENDS`] times (a subscriber that stays silent catches up by its own
//! renewals and pulls; the next new message starts the count again).
//!
//! Entries exist only for current subscribers (the owner adds them as it learns a
//! subscriber's mode, and forgets them when it drops one), so the table is bounded by
//! the subscriber lists.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::wire::AckMode;

/// Time without an acknowledgement after which unacknowledged messages are sent again.
pub const RESEND_AFTER: Duration = Duration::from_secs(1);
/// Resends of one stretch of unacknowledged messages (waits 1, 2, 4 … 32 s) before
/// the owner leaves it to the subscriber's renewals and pulls.
pub const MAX_RESENDS: u32 = 6;

/// One subscriber of one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    mode: AckMode,
    /// Newest id pushed to it.
    pushed: u64,
    /// Newest id it acknowledged.
    acked: u64,
    /// Since when it has been waited for (`None`: nothing is, or the owner gave up).
    waiting_since: Option<Instant>,
    /// Resends of the current stretch.
    resends: u32,
}

impl Entry {
    fn new(mode: AckMode) -> Self {
        Entry {
            mode,
            pushed: 0,
            acked: 0,
            waiting_since: None,
            resends: 0,
        }
    }
}

/// Messages to send again to one subscriber: those after `after`, up to `last`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resend {
    /// The topic name (own topic).
    pub topic: String,
    pub twin: u32,
    /// The last id it acknowledged.
    pub after: u64,
    /// The newest id pushed to it.
    pub last: u64,
}

/// Every subscriber's acknowledgement state, by (topic name, twin).
#[derive(Debug, Default)]
pub struct Progress {
    entries: HashMap<(String, u32), Entry>,
}

impl Progress {
    /// How `twin` acknowledges pushes of `topic` (`Each` until it said otherwise).
    pub fn mode(&self, topic: &str, twin: u32) -> AckMode {
        self.entries
            .get(&(topic.to_string(), twin))
            .map_or(AckMode::Each, |e| e.mode)
    }

    /// `twin`, a subscriber of `topic`, said how it acknowledges (its subscribe or
    /// renewal, or its answer to a push).
    pub fn learn(&mut self, topic: &str, twin: u32, mode: AckMode) {
        let key = (topic.to_string(), twin);
        match self.entries.get_mut(&key) {
            Some(entry) => entry.mode = mode,
            None if mode == AckMode::Cumulative => {
                self.entries.insert(key, Entry::new(mode));
            }
            None => {}
        }
    }

    /// Messages up to `last` were pushed to `twin` at `now` (cumulative subscribers only;
    /// a push that failed counts too: it is sent again like a lost one).
    pub fn pushed(&mut self, topic: &str, twin: u32, last: u64, now: Instant) {
        let Some(entry) = self.entries.get_mut(&(topic.to_string(), twin)) else {
            return;
        };
        entry.pushed = entry.pushed.max(last);
        if entry.pushed > entry.acked && entry.waiting_since.is_none() {
            entry.waiting_since = Some(now);
            entry.resends = 0;
        }
    }

    /// `twin` acknowledged every message of `topic` up to `last`. False when it is not
    /// a cumulative subscriber known here (the acknowledgement is ignored).
    pub fn acked(&mut self, topic: &str, twin: u32, last: u64, now: Instant) -> bool {
        let Some(entry) = self.entries.get_mut(&(topic.to_string(), twin)) else {
            return false;
        };
        // It acknowledges only cumulatively, whatever was last said.
        entry.mode = AckMode::Cumulative;
        if last <= entry.acked {
            // Old news (a repeat, or one that crossed a newer one).
            return true;
        }
        entry.acked = last;
        // It may be ahead of what we pushed (it pulled, or we restarted).
        entry.pushed = entry.pushed.max(last);
        entry.resends = 0;
        entry.waiting_since = (entry.pushed > entry.acked).then_some(now);
        true
    }

    /// Subscribers whose unacknowledged messages are due again at `now`; each one's
    /// next resend is then twice as far off.
    pub fn due(&mut self, now: Instant) -> Vec<Resend> {
        let mut out = Vec::new();
        for ((topic, twin), entry) in &mut self.entries {
            let Some(since) = entry.waiting_since else {
                continue;
            };
            if entry.pushed <= entry.acked || now < since + backoff(entry.resends) {
                continue;
            }
            if entry.resends >= MAX_RESENDS {
                entry.waiting_since = None;
                entry.resends = 0;
                continue;
            }
            entry.resends += 1;
            entry.waiting_since = Some(now);
            out.push(Resend {
                topic: topic.clone(),
                twin: *twin,
                after: entry.acked,
                last: entry.pushed,
            });
        }
        out
    }

    /// `twin` is no subscriber of `topic` anymore.
    pub fn forget(&mut self, topic: &str, twin: u32) {
        self.entries.remove(&(topic.to_string(), twin));
    }

    /// Subscribers tracked.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when none is.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The wait before resend number `resends + 1`: 1 s, 2 s, 4 s …
fn backoff(resends: u32) -> Duration {
    RESEND_AFTER * 2u32.saturating_pow(resends.min(16))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn subscribers_are_each_until_they_say_cumulative() {
        let mut p = Progress::default();
        assert_eq!(p.mode("t", 5), AckMode::Each);
        p.learn("t", 5, AckMode::Each);
        assert!(p.is_empty(), "an Each subscriber needs no entry");
        p.learn("t", 5, AckMode::Cumulative);
        assert_eq!(p.mode("t", 5), AckMode::Cumulative);
        assert_eq!(p.mode("u", 5), AckMode::Each);
        p.learn("t", 5, AckMode::Each);
        assert_eq!(
            p.mode("t", 5),
            AckMode::Each,
            "a renewal may say Each again"
        );
        p.forget("t", 5);
        assert!(p.is_empty());
        let t0 = Instant::now();
        assert!(
            !p.acked("t", 5, 3, t0),
            "an unknown subscriber's ack is ignored"
        );
        assert!(p.is_empty(), "and adds nothing");
    }

    #[test]
    fn acknowledged_pushes_are_never_sent_again() {
        let mut p = Progress::default();
        let t0 = Instant::now();
        p.learn("t", 5, AckMode::Cumulative);
        p.pushed("t", 5, 1, t0);
        p.pushed("t", 5, 2, t0 + S / 2);
        assert!(p.acked("t", 5, 2, t0 + S / 2));
        assert!(p.due(t0 + 100 * S).is_empty());
    }

    #[test]
    fn unacknowledged_pushes_are_sent_again_with_backoff_then_left_to_the_subscriber() {
        let mut p = Progress::default();
        let t0 = Instant::now();
        p.learn("t", 5, AckMode::Cumulative);
        p.pushed("t", 5, 3, t0);
        assert!(p.due(t0 + S / 2).is_empty(), "not yet");
        let want = vec![Resend {
            topic: "t".into(),
            twin: 5,
            after: 0,
            last: 3,
        }];
        assert_eq!(p.due(t0 + S), want);
        assert!(p.due(t0 + 2 * S).is_empty(), "the next one waits 2 s");
        assert_eq!(p.due(t0 + 3 * S), want);
        // 4, 8, 16, 32 s more: six resends in all, then it gives up.
        let mut at = t0 + 3 * S;
        for wait in [4, 8, 16, 32] {
            at += wait * S;
            assert_eq!(p.due(at).len(), 1, "after {wait} s");
        }
        at += 64 * S;
        assert!(p.due(at).is_empty(), "given up");
        assert!(p.due(at + 1000 * S).is_empty());
        // A new message starts over.
        p.pushed("t", 5, 4, at);
        assert_eq!(p.due(at + S)[0].last, 4);
    }

    #[test]
    fn a_partial_ack_restarts_the_wait_from_where_it_got() {
        let mut p = Progress::default();
        let t0 = Instant::now();
        p.learn("t", 5, AckMode::Cumulative);
        p.pushed("t", 5, 10, t0);
        assert_eq!(p.due(t0 + S).len(), 1);
        assert!(p.acked("t", 5, 6, t0 + S + S / 2));
        assert!(p.due(t0 + 2 * S).is_empty(), "it moved: wait again");
        let again = p.due(t0 + 3 * S);
        assert_eq!((again[0].after, again[0].last), (6, 10));
        // An old ack changes nothing; one past what was pushed (it pulled) settles all.
        assert!(p.acked("t", 5, 2, t0 + 3 * S));
        assert!(p.acked("t", 5, 12, t0 + 3 * S));
        assert!(p.due(t0 + 100 * S).is_empty());
        p.pushed("t", 5, 11, t0 + 100 * S);
        assert!(
            p.due(t0 + 200 * S).is_empty(),
            "11 was acknowledged already (12 covers it)"
        );
    }
}
