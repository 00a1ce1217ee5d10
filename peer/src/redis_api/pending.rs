//! [`Pending`]: the requests this peer sent and is still waiting on, in memory.
//!
//! Two uses. Responses are routed without a Redis round trip (the backlog key in Redis
//! stays the source of truth after a restart), and a destination that never answers is
//! reported: when a request's validity ends, every destination that has not answered
//! gets one timeout error on the client's `ret`, so clients see an error, not silence.
//! A pure state machine: time is an input.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Instant;

/// Where a request's responses go: the client's list and its reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub reference: Option<String>,
    pub reply_to: String,
}

/// A destination that did not answer before the request expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeout {
    pub uid: String,
    pub route: Route,
    pub twin: u32,
}

struct Entry {
    route: Route,
    /// Destinations still expected to answer (a twin listed twice answers twice).
    waiting: Vec<u32>,
    /// The destination, when the request named exactly one.
    only: Option<u32>,
    deadline: Instant,
}

/// Requests in flight, by uid, with their deadlines.
#[derive(Default)]
pub struct Pending {
    entries: HashMap<String, Entry>,
    deadlines: BinaryHeap<Reverse<(Instant, String)>>,
}

impl Pending {
    /// Tracks a request sent to `destinations`, answerable until `deadline`.
    pub fn insert(&mut self, uid: String, route: Route, destinations: Vec<u32>, deadline: Instant) {
        self.deadlines.push(Reverse((deadline, uid.clone())));
        self.entries.insert(
            uid,
            Entry {
                route,
                only: match destinations.as_slice() {
                    [only] => Some(*only),
                    _ => None,
                },
                waiting: destinations,
                deadline,
            },
        );
    }

    /// A response to `uid` came from twin `from` (0: a relay's delivery error). Returns
    /// where to deliver it, or `None` when the request is not (or no longer) known here,
    /// and whether it is the answer of the request's sole destination (its outbox entry
    /// then holds that twin's answer only, so delivering it may drop the whole entry).
    ///
    /// A relay error does not say which destination it is about; it counts as the
    /// answer of one destination still waiting, so a client gets as many responses as
    /// it named destinations.
    pub fn answered(&mut self, uid: &str, from: u32) -> Option<(Route, bool)> {
        let entry = self.entries.get_mut(uid)?;
        let route = entry.route.clone();
        let sole = entry.only.is_some_and(|only| from == only || from == 0);
        if let Some(i) = entry.waiting.iter().position(|&t| t == from) {
            entry.waiting.swap_remove(i);
        } else if from == 0 {
            entry.waiting.pop();
        }
        if entry.waiting.is_empty() {
            self.entries.remove(uid);
        }
        Some((route, sole))
    }

    /// Sending to `twin` failed and the client was told already: stop waiting for it.
    pub fn failed(&mut self, uid: &str, twin: u32) {
        if let Some(entry) = self.entries.get_mut(uid) {
            if let Some(i) = entry.waiting.iter().position(|&t| t == twin) {
                entry.waiting.swap_remove(i);
            }
            if entry.waiting.is_empty() {
                self.entries.remove(uid);
            }
        }
    }

    /// Removes every request whose deadline is at or before `now`, returning one
    /// [`Timeout`] per destination that never answered.
    pub fn expire(&mut self, now: Instant) -> Vec<Timeout> {
        let mut out = Vec::new();
        while let Some(Reverse((deadline, _))) = self.deadlines.peek() {
            if *deadline > now {
                break;
            }
            let Some(Reverse((deadline, uid))) = self.deadlines.pop() else {
                break;
            };
            let Some(entry) = self.entries.get(&uid) else {
                continue;
            };
            if entry.deadline != deadline {
                continue;
            }
            let entry = self.entries.remove(&uid).expect("entry present");
            for twin in entry.waiting {
                out.push(Timeout {
                    uid: uid.clone(),
                    route: entry.route.clone(),
                    twin,
                });
            }
        }
        out
    }

    /// Requests still waiting for at least one answer.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn route(r: &str) -> Route {
        Route {
            reference: Some(r.into()),
            reply_to: "ret".into(),
        }
    }

    #[test]
    fn answered_destinations_do_not_time_out() {
        let t0 = Instant::now();
        let mut p = Pending::default();
        p.insert(
            "u".into(),
            route("a"),
            vec![1, 2, 3],
            t0 + Duration::from_secs(5),
        );
        assert_eq!(p.answered("u", 2), Some((route("a"), false)));
        p.failed("u", 3);
        assert!(p.expire(t0 + Duration::from_secs(4)).is_empty(), "not yet");
        let timeouts = p.expire(t0 + Duration::from_secs(5));
        assert_eq!(
            timeouts,
            vec![Timeout {
                uid: "u".into(),
                route: route("a"),
                twin: 1
            }]
        );
        assert!(p.is_empty());
        assert_eq!(p.answered("u", 1), None, "forgotten after expiry");
    }

    #[test]
    fn fully_answered_requests_are_forgotten_but_late_answers_are_not_errors() {
        let t0 = Instant::now();
        let mut p = Pending::default();
        p.insert("u".into(), route("a"), vec![7], t0 + Duration::from_secs(1));
        assert_eq!(
            p.answered("u", 7),
            Some((route("a"), true)),
            "its sole answer"
        );
        assert_eq!(p.len(), 0);
        assert_eq!(
            p.answered("u", 7),
            None,
            "the caller falls back to the Redis backlog"
        );
        assert!(p.expire(t0 + Duration::from_secs(9)).is_empty());
    }

    #[test]
    fn a_relay_error_counts_for_one_waiting_destination() {
        let t0 = Instant::now();
        let mut p = Pending::default();
        p.insert(
            "u".into(),
            route("a"),
            vec![1, 2],
            t0 + Duration::from_secs(1),
        );
        assert_eq!(p.answered("u", 0), Some((route("a"), false)), "one of two");
        assert_eq!(p.expire(t0 + Duration::from_secs(1)).len(), 1);
        p.insert("v".into(), route("b"), vec![1], t0 + Duration::from_secs(1));
        assert_eq!(
            p.answered("v", 0),
            Some((route("b"), true)),
            "about the sole one"
        );
    }

    #[test]
    fn answers_from_unlisted_twins_are_routed_without_counting() {
        let t0 = Instant::now();
        let mut p = Pending::default();
        p.insert("u".into(), route("a"), vec![1], t0 + Duration::from_secs(1));
        assert_eq!(
            p.answered("u", 9),
            Some((route("a"), false)),
            "routed, but never as the sole destination's answer"
        );
        assert_eq!(p.expire(t0 + Duration::from_secs(1)).len(), 1);
    }

    #[test]
    fn deadlines_expire_in_order() {
        let t0 = Instant::now();
        let mut p = Pending::default();
        p.insert(
            "late".into(),
            route("l"),
            vec![1],
            t0 + Duration::from_secs(9),
        );
        p.insert(
            "soon".into(),
            route("s"),
            vec![1, 1],
            t0 + Duration::from_secs(2),
        );
        let first = p.expire(t0 + Duration::from_secs(3));
        assert_eq!(first.len(), 2);
        assert!(first.iter().all(|t| t.uid == "soon"));
        assert_eq!(p.len(), 1);
        assert_eq!(p.expire(t0 + Duration::from_secs(9))[0].uid, "late");
    }
}
