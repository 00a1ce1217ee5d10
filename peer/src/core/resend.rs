//! [`Resends`]: what this peer sent and must send again until it is answered.
//!
//! A relay acknowledges nothing: an envelope handed to it can die with it (a crash of
//! an in-memory relay), with the receiving peer (killed after reading it, before its
//! app got it) or on the way back (the response lost the same ways). So the sender keeps
//! every request it sent, per destination twin, until a response or error for that uid
//! comes from that twin (or a relay reports an error for it), and sends the very same
//! bytes again when
//!
//! - its resend time comes: the timeout of the measured round trips ([`Rtt`], at least
//!   1 s, [`RESEND_AFTER`] before any was measured), doubling up to [`RESEND_MAX`], and
//!   the destination made no progress: while it keeps answering other requests sent
//!   after this one's last copy (one answer at least within the interval just waited),
//!   this one is most likely queued behind them, and a copy would only add to the
//!   queue (under a burst, fixed 2 s resends added 63–72% extra requests). A
//!   destination that answered some and then went quiet (it restarted and lost the
//!   rest) is not working through a queue: its unanswered requests go at their time.
//!   But once the destination has answered a request sent [`REORDER_MARGIN`] after
//!   this one, this one was overtaken, most likely lost (queues are first in, first
//!   out), and goes at its time. Such a request is only postponed (its interval still doubling) until it has waited
//!   [`STALL_BOUND`], and never once a link reconnected while it was in flight (its
//!   path was disrupted, so its answer may well be lost); or
//! - a relay link (re)connects ([`Resends::all_due`]): whatever was in flight through a
//!   relay that died is probably gone.
//!
//! The receiver drops the copies by uid and answers a copy of a request it already
//! answered with its cached response, so resending is always safe, between rmb peers.
//! An rmb-rs peer does not drop copies: its service would run a resent request again.
//! So only destinations that are surely rmb peers get timed resends ([`Resends::track`]
//! with `timed`): those publishing an x25519 key (rmb-rs cannot), and those that proved
//! it by answering our probe, signed ([`rmb_twins`](super::rmb_twins); what a twin
//! proves after its requests were tracked makes them timed, [`Resends::make_timed`]).
//! Others only get the resend after a relay link reconnects, where a loss is likely and
//! a duplicate is the lesser harm.
//!
//! Responses are not tracked here once a relay took them: the requester's resend of the
//! request is the signal that a response got lost. A response that could not be handed
//! to any relay at all is kept as a *one-shot* entry: sent once when a link is back,
//! then forgotten.
//!
//! A pure state machine (time is an input): the core's resend task drives it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio_tungstenite::tungstenite::Bytes;

use super::rtt::{INITIAL_RTO, Rtt};

/// First resend of an unanswered request before any round trip was measured.
pub const RESEND_AFTER: Duration = INITIAL_RTO;
/// A request not answered this long after its last copy is sent again even while its
/// destination answers others (it may be the one that got lost).
pub const STALL_BOUND: Duration = Duration::from_secs(30);
/// How much later a request must have been sent than an unanswered one for its answer
/// to show that the unanswered one was lost rather than reordered.
pub const REORDER_MARGIN: Duration = Duration::from_secs(1);
/// Longest interval between two resends of one request.
pub const RESEND_MAX: Duration = Duration::from_secs(16);
/// Most bytes of envelopes kept for resending. Past it, new requests are sent once,
/// untracked (a local app sending faster than its destinations answer would otherwise
/// grow this table without bound).
pub const DEFAULT_BUDGET: usize = 256 << 20;

/// One envelope to keep, or to send again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub uid: String,
    /// The destination twin.
    pub twin: u32,
    pub bytes: Bytes,
    /// The envelope's deadline (unix seconds).
    pub deadline: u64,
}

#[derive(Debug)]
struct Entry {
    twin: u32,
    bytes: Bytes,
    /// Unix seconds after which the envelope is refused anyway: forget it.
    deadline: u64,
    /// When to send again; `None`: only when a link (re)connects.
    next: Option<Instant>,
    interval: Duration,
    timed: bool,
    /// Forget it once it was handed to a relay (responses).
    one_shot: bool,
    /// When its last copy was sent.
    sent_at: Instant,
    /// Sent more than once: its answer is no round-trip sample (Karn's rule).
    resent: bool,
    /// Due because a link (re)connected: goes whatever the destination's progress.
    forced: bool,
    /// Was in flight when a link (re)connected: its path was disrupted, so its later
    /// resends follow the timer alone, whatever the destination's progress.
    suspect: bool,
}

/// Envelopes waiting for an answer (or, one-shot, for a relay), by uid.
#[derive(Debug)]
pub struct Resends {
    by_uid: HashMap<String, Vec<Entry>>,
    len: usize,
    bytes: usize,
    budget: usize,
    /// Envelopes not tracked because the budget was used up.
    untracked: u64,
    /// Round trips of answered requests.
    rtt: Rtt,
    /// Per destination: when it last answered a tracked request, and the latest send
    /// time of the requests it answered.
    progress: HashMap<u32, (Instant, Instant)>,
    /// Resends skipped because the destination was making progress.
    postponed: u64,
}

impl Default for Resends {
    fn default() -> Self {
        Resends::with_budget(DEFAULT_BUDGET)
    }
}

impl Resends {
    /// A table holding at most `budget` bytes of envelopes.
    pub fn with_budget(budget: usize) -> Self {
        Resends {
            by_uid: HashMap::new(),
            len: 0,
            bytes: 0,
            budget,
            untracked: 0,
            rtt: Rtt::default(),
            progress: HashMap::new(),
            postponed: 0,
        }
    }

    /// The round-trip estimate.
    pub fn rtt(&self) -> Rtt {
        self.rtt
    }

    /// Resends skipped so far because the destination was answering others.
    pub fn postponed(&self) -> u64 {
        self.postponed
    }

    /// Keeps a request until it is answered or its deadline (unix s) passes, sent again
    /// on a timer if `timed`, and whenever a relay link (re)connects. Tracking the same
    /// (uid, twin) again replaces the bytes and restarts the schedule. False when the
    /// budget is used up (it is not tracked then).
    pub fn track(&mut self, item: Due, now: Instant, timed: bool) -> bool {
        let rto = self.rtt.rto();
        let next = timed.then(|| now + rto);
        self.insert(item, now, next, false, timed)
    }

    /// Keeps an envelope no relay took, to be sent once when one is back; false when
    /// the budget is used up.
    pub fn track_once(&mut self, item: Due, now: Instant) -> bool {
        self.insert(item, now, Some(now), true, true)
    }

    fn insert(
        &mut self,
        item: Due,
        now: Instant,
        next: Option<Instant>,
        one_shot: bool,
        timed: bool,
    ) -> bool {
        let Due {
            uid,
            twin,
            bytes,
            deadline,
        } = item;
        let uid = uid.as_str();
        let entries = self.by_uid.entry(uid.to_string()).or_default();
        let existing = entries
            .iter()
            .position(|e| e.twin == twin && e.one_shot == one_shot);
        let freed = existing.map_or(0, |i| entries[i].bytes.len());
        if self.bytes - freed + bytes.len() > self.budget {
            self.untracked += 1;
            if entries.is_empty() {
                self.by_uid.remove(uid);
            }
            if self.untracked.is_power_of_two() {
                tracing::warn!(
                    untracked = self.untracked,
                    budget = self.budget,
                    "resend table full: requests are sent once, without resends"
                );
            }
            return false;
        }
        self.bytes = self.bytes - freed + bytes.len();
        let entry = Entry {
            twin,
            bytes,
            deadline,
            next,
            interval: self.rtt.rto(),
            timed,
            one_shot,
            sent_at: now,
            resent: false,
            forced: false,
            suspect: false,
        };
        match existing {
            Some(i) => entries[i] = entry,
            None => {
                entries.push(entry);
                self.len += 1;
            }
        }
        true
    }

    /// [`settle`](Self::settle), saying only whether it settled a tracked request.
    pub fn answered(&mut self, uid: &str, from: u32, now: Instant) -> bool {
        self.settle(uid, from, now).is_some()
    }

    /// An answer to `uid` came from `from` (0: a relay's error report, which does not
    /// say which destination it is about, so it settles one of them) at `now`. `Some`
    /// when it settled a tracked request, with its round trip if it was sent once (then
    /// measured); its destination counts as making progress.
    pub fn settle(&mut self, uid: &str, from: u32, now: Instant) -> Option<Option<Duration>> {
        let entries = self.by_uid.get_mut(uid)?;
        let position = entries
            .iter()
            .position(|e| !e.one_shot && (e.twin == from || from == 0));
        let entry = entries.swap_remove(position?);
        let round_trip = (!entry.resent).then(|| now.saturating_duration_since(entry.sent_at));
        if let Some(r) = round_trip {
            self.rtt.sample(r);
        }
        if from != 0 {
            let p = self
                .progress
                .entry(entry.twin)
                .or_insert((now, entry.sent_at));
            p.0 = now;
            // Which copy was answered is unknown for a resent one (Karn's rule again).
            if !entry.resent {
                p.1 = p.1.max(entry.sent_at);
            }
        }
        self.bytes -= entry.bytes.len();
        self.len -= 1;
        if entries.is_empty() {
            self.by_uid.remove(uid);
        }
        Some(round_trip)
    }

    /// The request (`uid`, `twin`) tracked earlier has just been taken by a relay link
    /// at `now` (it may have waited for room first): its round trip and timer start now.
    pub fn sent(&mut self, uid: &str, twin: u32, now: Instant) {
        let Some(entries) = self.by_uid.get_mut(uid) else {
            return;
        };
        for e in entries.iter_mut().filter(|e| e.twin == twin && !e.one_shot) {
            e.sent_at = now;
            if e.timed && !e.forced {
                e.next = Some(now + e.interval);
            }
        }
    }

    /// `twin` proved that it drops repeated requests ([`rmb_twins`](super::rmb_twins)):
    /// its requests kept for a reconnect get timed resends too, the first one interval
    /// after their last copy.
    pub fn make_timed(&mut self, twin: u32) {
        for e in self.by_uid.values_mut().flatten() {
            if e.twin == twin && !e.timed && !e.one_shot {
                e.timed = true;
                let at = e.sent_at + e.interval;
                e.next = Some(e.next.map_or(at, |next| next.min(at)));
            }
        }
    }

    /// Stops tracking (`uid`, `twin`) (its send failed for good).
    pub fn forget(&mut self, uid: &str, twin: u32) {
        if let Some(entries) = self.by_uid.get_mut(uid) {
            let before = entries.len();
            let mut freed = 0;
            entries.retain(|e| {
                let keep = e.twin != twin;
                if !keep {
                    freed += e.bytes.len();
                }
                keep
            });
            self.len -= before - entries.len();
            self.bytes -= freed;
            if entries.is_empty() {
                self.by_uid.remove(uid);
            }
        }
    }

    /// Makes every entry due now (a relay link has just connected).
    pub fn all_due(&mut self, now: Instant) {
        for entry in self.by_uid.values_mut().flatten() {
            entry.next = Some(entry.next.map_or(now, |next| next.min(now)));
            entry.forced = true;
            entry.suspect = true;
        }
    }

    /// Takes what is due at `now` (`unix_now` in seconds): expired entries are dropped,
    /// one-shot entries are handed out and forgotten, requests are rescheduled with
    /// their interval doubled. A request whose destination answered others since its
    /// last copy is postponed instead (interval doubled too), up to [`STALL_BOUND`],
    /// unless a link reconnected. Put a one-shot entry that could not be sent back
    /// with [`track_once`](Resends::track_once).
    pub fn take_due(&mut self, now: Instant, unix_now: u64) -> Vec<Due> {
        let mut due = Vec::new();
        let (mut removed, mut freed, mut postponed) = (0, 0, 0);
        let progress = &self.progress;
        self.by_uid.retain(|uid, entries| {
            entries.retain_mut(|e| {
                if e.deadline <= unix_now {
                    removed += 1;
                    freed += e.bytes.len();
                    return false;
                }
                if e.next.is_none_or(|next| next > now) {
                    return true;
                }
                // Busy: it answered others since this one's last copy, and lately (within
                // the interval just waited). One that went quiet is not working through
                // a queue: what it did not answer is lost.
                let (busy, overtaken) = match progress.get(&e.twin) {
                    Some(&(at, latest)) => (
                        at > e.sent_at && now.saturating_duration_since(at) < e.interval,
                        latest > e.sent_at + REORDER_MARGIN,
                    ),
                    None => (false, false),
                };
                if busy
                    && !overtaken
                    && !e.forced
                    && !e.suspect
                    && !e.one_shot
                    && now.saturating_duration_since(e.sent_at) < STALL_BOUND
                {
                    postponed += 1;
                    e.interval = (e.interval * 2).min(RESEND_MAX);
                    e.next = Some(now + e.interval);
                    return true;
                }
                e.forced = false;
                e.resent = true;
                e.sent_at = now;
                due.push(Due {
                    uid: uid.clone(),
                    twin: e.twin,
                    bytes: e.bytes.clone(),
                    deadline: e.deadline,
                });
                if e.one_shot {
                    removed += 1;
                    freed += e.bytes.len();
                    return false;
                }
                if e.timed {
                    e.interval = (e.interval * 2).min(RESEND_MAX);
                    e.next = Some(now + e.interval);
                } else {
                    e.next = None;
                }
                true
            });
            !entries.is_empty()
        });
        self.len -= removed;
        self.bytes -= freed;
        self.postponed += postponed;
        if self.by_uid.is_empty() {
            self.progress.clear();
        }
        due
    }

    /// True when something is tracked for (`uid`, `twin`).
    pub fn contains(&self, uid: &str, twin: u32) -> bool {
        self.by_uid
            .get(uid)
            .is_some_and(|entries| entries.iter().any(|e| e.twin == twin))
    }

    /// Bytes of the envelopes tracked.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Envelopes that were not tracked because the budget was used up.
    pub fn untracked(&self) -> u64 {
        self.untracked
    }

    /// Envelopes tracked.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing waits for an answer.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    fn due(uid: &str, twin: u32, body: &'static str, deadline: u64) -> Due {
        Due {
            uid: uid.into(),
            twin,
            bytes: bytes(body),
            deadline,
        }
    }

    fn uids(due: &[Due]) -> Vec<(&str, u32)> {
        let mut v: Vec<_> = due.iter().map(|d| (d.uid.as_str(), d.twin)).collect();
        v.sort();
        v
    }

    #[test]
    fn unanswered_requests_come_back_with_a_doubling_interval() {
        let t0 = Instant::now();
        let mut r = Resends::default();
        r.track(due("u", 7, "env", 1000), t0, true);
        assert!(r.take_due(t0, 0).is_empty(), "not at once");
        assert!(r.take_due(t0 + RESEND_AFTER / 2, 0).is_empty());
        let first = r.take_due(t0 + RESEND_AFTER, 0);
        assert_eq!(first[0].bytes, bytes("env"));
        // Next after 4 s, then 8 s, 16 s, 16 s...
        let mut at = t0 + RESEND_AFTER;
        let mut gaps = Vec::new();
        for _ in 0..5 {
            let mut probe = at;
            loop {
                probe += Duration::from_millis(500);
                if !r.take_due(probe, 0).is_empty() {
                    break;
                }
            }
            gaps.push((probe - at).as_secs());
            at = probe;
        }
        assert_eq!(gaps, [4, 8, 16, 16, 16]);
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn an_answer_settles_its_destination_only() {
        let t0 = Instant::now();
        let mut r = Resends::default();
        r.track(due("u", 1, "a", 1000), t0, true);
        r.track(due("u", 2, "b", 1000), t0, true);
        assert!(r.answered("u", 2, t0));
        assert!(!r.answered("u", 2, t0), "already settled");
        assert!(!r.answered("other", 1, t0));
        assert_eq!(uids(&r.take_due(t0 + RESEND_AFTER, 0)), [("u", 1)]);
        // A relay's error settles one remaining destination.
        assert!(r.answered("u", 0, t0));
        assert!(r.is_empty());
    }

    #[test]
    fn a_reconnect_makes_everything_due_and_expiry_forgets() {
        let t0 = Instant::now();
        let mut r = Resends::default();
        r.track(due("soon", 1, "a", 100), t0, true);
        r.track(due("late", 1, "b", 200), t0, true);
        r.all_due(t0);
        assert_eq!(uids(&r.take_due(t0, 50)), [("late", 1), ("soon", 1)]);
        // At 100 the first expired: gone without being sent.
        r.all_due(t0);
        assert_eq!(uids(&r.take_due(t0, 100)), [("late", 1)]);
        assert_eq!(r.len(), 1);
        assert!(r.take_due(t0 + RESEND_MAX * 4, 200).is_empty());
        assert!(r.is_empty());
    }

    #[test]
    fn one_shot_entries_go_once_and_do_not_count_as_requests() {
        let t0 = Instant::now();
        let mut r = Resends::default();
        r.track_once(due("u", 3, "reply", 1000), t0);
        assert!(!r.answered("u", 3, t0), "a response is not answered");
        assert_eq!(uids(&r.take_due(t0, 0)), [("u", 3)]);
        assert!(r.is_empty());
        assert!(r.take_due(t0 + RESEND_MAX, 0).is_empty());
    }

    #[test]
    fn untimed_entries_go_again_only_after_a_reconnect() {
        let t0 = Instant::now();
        let mut r = Resends::default();
        r.track(due("u", 1, "a", 1000), t0, false);
        assert!(r.take_due(t0 + RESEND_MAX * 10, 0).is_empty());
        r.all_due(t0 + RESEND_MAX * 10);
        assert_eq!(uids(&r.take_due(t0 + RESEND_MAX * 10, 0)), [("u", 1)]);
        assert!(r.take_due(t0 + RESEND_MAX * 20, 0).is_empty());
        assert!(r.answered("u", 1, t0));
    }

    #[test]
    fn a_twin_proven_rmb_gets_timed_resends_of_what_waits() {
        let t0 = Instant::now();
        let mut r = Resends::default();
        r.track(due("u", 1, "a", 1000), t0, false);
        r.track(due("v", 2, "b", 1000), t0, false);
        r.make_timed(1);
        assert!(r.take_due(t0 + RESEND_AFTER / 2, 0).is_empty());
        assert_eq!(uids(&r.take_due(t0 + RESEND_AFTER, 0)), [("u", 1)]);
        assert_eq!(uids(&r.take_due(t0 + RESEND_AFTER * 3, 0)), [("u", 1)]);
    }

    #[test]
    fn the_byte_budget_bounds_the_table() {
        let t0 = Instant::now();
        let mut r = Resends::with_budget(10);
        r.track(due("a", 1, "123456", 1000), t0, true);
        r.track(due("b", 1, "12345", 1000), t0, true);
        assert_eq!((r.len(), r.bytes(), r.untracked()), (1, 6, 1));
        assert!(!r.contains("b", 1), "over budget: sent once, not tracked");
        // Replacing an entry counts its new size only.
        r.track(due("a", 1, "1234567890", 1000), t0, true);
        assert_eq!(r.bytes(), 10);
        assert!(r.answered("a", 1, t0));
        assert_eq!(r.bytes(), 0);
        r.track_once(due("c", 2, "1234", 1000), t0);
        r.track(due("d", 3, "123", 5), t0, true);
        assert_eq!(r.bytes(), 7);
        r.take_due(t0, 10);
        assert_eq!((r.len(), r.bytes()), (0, 0), "sent once, and expired");
    }

    #[test]
    fn tracking_again_replaces_and_restarts() {
        let t0 = Instant::now();
        let mut r = Resends::default();
        r.track(due("u", 1, "old", 1000), t0, true);
        r.track(due("u", 1, "new", 1000), t0 + RESEND_AFTER, true);
        assert_eq!(r.len(), 1);
        assert!(r.take_due(t0 + RESEND_AFTER, 0).is_empty());
        assert_eq!(r.take_due(t0 + RESEND_AFTER * 2, 0)[0].bytes, bytes("new"));
    }

    #[test]
    fn measured_round_trips_set_the_first_resend() {
        let t0 = Instant::now();
        let mut r = Resends::default();
        for i in 0..10 {
            let uid = format!("fast{i}");
            r.track(due(&uid, 1, "env", 1000), t0, true);
            assert!(r.answered(&uid, 1, t0 + Duration::from_millis(10)));
        }
        assert_eq!(r.rtt().rto(), super::super::rtt::MIN_RTO);
        r.track(due("u", 2, "env", 1000), t0, true);
        assert!(r.take_due(t0 + Duration::from_millis(900), 0).is_empty());
        assert_eq!(
            uids(&r.take_due(t0 + Duration::from_secs(1), 0)),
            [("u", 2)]
        );
    }

    #[test]
    fn resent_requests_are_no_round_trip_samples() {
        let t0 = Instant::now();
        let mut r = Resends::default();
        r.track(due("u", 1, "env", 1000), t0, true);
        assert_eq!(r.take_due(t0 + RESEND_AFTER, 0).len(), 1);
        assert!(r.answered("u", 1, t0 + RESEND_AFTER + Duration::from_millis(5)));
        assert_eq!(r.rtt().srtt(), None, "Karn's rule");
    }

    #[test]
    fn no_resend_while_the_destination_answers_others_until_the_stall_bound() {
        let t0 = Instant::now();
        let mut r = Resends::default();
        r.track(due("queued", 1, "env", 1000), t0, true);
        // The destination keeps answering other requests sent at the same time (one
        // every 500 ms): progress.
        let mut at = t0;
        let mut sent = Vec::new();
        let mut n = 0;
        while at < t0 + STALL_BOUND + Duration::from_secs(10) {
            at += Duration::from_millis(250);
            if (at - t0).as_millis().is_multiple_of(500) {
                let uid = format!("other-{n}");
                n += 1;
                r.track(due(&uid, 1, "env", 1000), t0, true);
                assert!(r.answered(&uid, 1, at));
            }
            if uids(&r.take_due(at, 0)).contains(&("queued", 1)) {
                sent.push(at - t0);
            }
        }
        assert!(r.postponed() >= 1);
        assert!(sent.first() >= Some(&STALL_BOUND), "{sent:?}");
    }

    #[test]
    fn a_destination_that_went_quiet_gets_the_resend_at_its_time() {
        let t0 = Instant::now();
        let mut r = Resends::default();
        r.track(due("lost", 1, "env", 1000), t0, true);
        r.track(due("other", 1, "env", 1000), t0, true);
        // It answered a request sent at the same time, then nothing (it restarted and
        // lost "lost"): postponed once, then sent, long before the stall bound.
        assert_eq!(RESEND_AFTER, Duration::from_secs(2));
        assert!(r.answered("other", 1, t0 + Duration::from_millis(900)));
        let mut at = t0;
        let mut sent = Vec::new();
        while at < t0 + Duration::from_secs(10) {
            at += Duration::from_millis(250);
            if !r.take_due(at, 0).is_empty() {
                sent.push(at - t0);
            }
        }
        // Due at 2 s (the first timeout): it answered 1.1 s before, so postponed (next
        // in 4 s); at 6 s it has been quiet for longer than that: sent.
        assert_eq!(r.postponed(), 1);
        assert_eq!(sent.first(), Some(&(RESEND_AFTER * 3)), "{sent:?}");
    }

    #[test]
    fn an_overtaken_request_goes_at_its_time() {
        let t0 = Instant::now();
        let mut r = Resends::default();
        r.track(due("lost", 1, "env", 1000), t0, true);
        let later = t0 + Duration::from_millis(1500);
        r.track(due("later", 1, "env", 1000), later, true);
        assert!(r.answered("later", 1, later + Duration::from_millis(100)));
        assert_eq!(uids(&r.take_due(t0 + RESEND_AFTER, 0)), [("lost", 1)]);
    }

    #[test]
    fn the_timer_starts_when_a_link_takes_the_request() {
        let t0 = Instant::now();
        let mut r = Resends::default();
        r.track(due("u", 1, "env", 1000), t0, true);
        r.sent("u", 1, t0 + Duration::from_secs(1));
        assert!(r.take_due(t0 + RESEND_AFTER, 0).is_empty());
        assert_eq!(
            r.take_due(t0 + RESEND_AFTER + Duration::from_secs(1), 0)
                .len(),
            1
        );
    }

    #[test]
    fn a_reconnect_sends_even_while_the_destination_makes_progress() {
        let t0 = Instant::now();
        let mut r = Resends::default();
        r.track(due("queued", 1, "env", 1000), t0, true);
        r.track(due("other", 1, "env", 1000), t0, true);
        assert!(r.answered("other", 1, t0 + Duration::from_millis(2500)));
        let at = t0 + Duration::from_secs(3);
        assert!(r.take_due(at, 0).is_empty(), "postponed");
        r.all_due(at);
        assert_eq!(uids(&r.take_due(at, 0)), [("queued", 1)]);
        // Its path was disrupted: later resends follow the timer despite progress.
        r.track(due("later", 1, "env", 1000), at, true);
        assert!(r.answered("later", 1, at + Duration::from_millis(100)));
        let again = (1..200)
            .map(|i| at + Duration::from_millis(250 * i))
            .find(|&t| !r.take_due(t, 0).is_empty())
            .expect("sent again");
        assert!(again - at <= RESEND_MAX, "{:?}", again - at);
    }

    #[test]
    fn a_silent_destination_gets_resends_at_the_timeout() {
        let t0 = Instant::now();
        let mut r = Resends::default();
        r.track(due("u", 1, "env", 1000), t0, true);
        // Another destination's progress does not matter.
        r.track(due("v", 2, "env", 1000), t0, true);
        assert!(r.answered("v", 2, t0 + Duration::from_millis(500)));
        assert_eq!(uids(&r.take_due(t0 + RESEND_AFTER, 0)), [("u", 1)]);
    }
}
