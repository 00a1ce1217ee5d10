//! [`RmbTwins`]: which destination twins run this implementation (rmb), learned by asking
//! each of them once, so that timed resends ([`resend`](super::resend)) go to rmb peers
//! and never to rmb-rs peers.
//!
//! A timed resend is safe only at a receiver that drops repeated requests (or answers
//! them from its reply cache, [`replay`](super::replay)); an rmb-rs peer runs the handler
//! again. A twin publishing an x25519 key is surely rmb (rmb-rs cannot use that scheme),
//! but on tfchain our peers publish secp256k1 keys as rmb-rs does, so the key says
//! nothing there. This table holds what the twin itself said:
//!
//! - The first request to a twin publishing a secp256k1 key whose kind is not known (nor
//!   being asked) queues a *probe* (a twin without a key is a client, not a peer, and is
//!   not asked): an `rmb.version` request whose plain payload is [`PROBE_PAYLOAD`], sent in
//!   the background (the request itself goes at once, with resends after a reconnect
//!   only, as for any twin not known to be rmb).
//! - rmb-rs answers every `rmb.version` with its version as a JSON string, whatever the
//!   payload. An rmb peer answers this payload with a JSON object listing
//!   [`DROPS_REPEATS`] in its `capabilities` (and its version); other payloads still get
//!   the plain string, so rmb-rs tooling sees no difference.
//! - The answer counts only as a response envelope from the twin asked, carrying the
//!   probe's uid: it went through the receive pipeline, so its signature was verified
//!   against that twin's account (a relay cannot forge it, another twin cannot claim
//!   it). Anything else (a string, an error, garbage) means "not rmb". Once a twin is
//!   known as rmb, the requests to it already waiting get timed resends as well
//!   ([`Resends::make_timed`](super::resend::Resends::make_timed)).
//! - What was learned is kept for a TTL (a twin can switch implementation; during that
//!   window a twin that went from rmb to rmb-rs could still see a resend) and for at most
//!   a number of twins, the oldest forgotten first. Past the TTL the twin is asked again
//!   and counts as not rmb until it answers. An unanswered probe may be repeated after
//!   [`PROBE_EXPIRATION`].
//!
//! The same answer says whether the twin takes RPCs without a signature
//! ([`UNSIGNED_RPC`], [`unsigned`](super::unsigned)): it lists that capability when its
//! relays route them. A twin that sent us such an RPC proved it too (its encryption
//! authenticated it); that is remembered apart, so that answers to it go unsigned
//! without a probe ([`RmbTwins::sent_unsigned_rpc`]).
//!
//! A pure state machine (time is an input); the core's probe task sends the probes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The payload of a probe (`rmb.version` request): a JSON string, ignored by rmb-rs.
pub const PROBE_PAYLOAD: &[u8] = b"\"capabilities\"";
/// The capability an rmb peer lists: repeated requests never reach its application twice.
pub const DROPS_REPEATS: &str = "drops-repeats";
/// The capability of a peer that takes RPCs and answers without a signature,
/// authenticated by their encryption ([`unsigned`](super::unsigned)), and whose relays
/// route them.
pub const UNSIGNED_RPC: &str = "unsigned-rpc";
/// Probe uids start with this (then the twin asked, then a random part).
pub const PROBE_PREFIX: &str = "rmb-probe-";
/// Validity of a probe, in seconds; one unanswered this long may be sent again.
pub const PROBE_EXPIRATION: u64 = 30;
/// How long what a twin said is believed (rmb-peer `--rmb-twin-ttl`).
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);
/// Most twins remembered (rmb-peer `--rmb-twins`).
pub const DEFAULT_MAX: usize = 10_000;
/// Longest probe answer read; an rmb peer's is well under 200 bytes.
const MAX_ANSWER: usize = 4096;

/// How much [`RmbTwins`] keeps, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long a twin's answer is believed before it is asked again.
    pub ttl: Duration,
    /// Most twins remembered; 0 turns learning off (only x25519 twins get timed resends).
    pub max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            ttl: DEFAULT_TTL,
            max: DEFAULT_MAX,
        }
    }
}

#[derive(Debug)]
enum State {
    /// A probe with this uid was queued at `since`.
    Asking { uid: String, since: Instant },
    /// The twin answered at `since`: whether it drops repeats (`rmb`) and takes
    /// unsigned RPCs.
    Known {
        rmb: bool,
        unsigned_rpc: bool,
        since: Instant,
    },
}

impl State {
    fn since(&self) -> Instant {
        match self {
            State::Asking { since, .. } | State::Known { since, .. } => *since,
        }
    }
}

/// What a twin is known to be, and the probes to send.
#[derive(Debug, Default)]
pub struct RmbTwins {
    twins: HashMap<u32, State>,
    /// Twins that sent us an unsigned RPC, and when last (at most `limits.max`).
    sent_unsigned: HashMap<u32, Instant>,
    /// Probes to send: (twin, uid). At most one per twin in `twins`.
    to_ask: Vec<(u32, String)>,
    limits: Limits,
}

impl RmbTwins {
    /// An empty table within `limits`.
    pub fn new(limits: Limits) -> Self {
        RmbTwins {
            twins: HashMap::new(),
            sent_unsigned: HashMap::new(),
            to_ask: Vec::new(),
            limits,
        }
    }

    /// True when `twin` proved lately that it runs rmb. Otherwise false, and a probe is
    /// queued for it unless one is pending ([`take_probes`](RmbTwins::take_probes)).
    pub fn is_rmb(&mut self, twin: u32, now: Instant) -> bool {
        self.known(twin, now).is_some_and(|(rmb, _)| rmb)
    }

    /// True when `twin` takes RPCs without a signature: it said so in its answer to a
    /// probe, or it sent us one lately. Otherwise false, and a probe is queued as by
    /// [`is_rmb`](RmbTwins::is_rmb).
    pub fn takes_unsigned_rpc(&mut self, twin: u32, now: Instant) -> bool {
        self.sent_unsigned_lately(twin, now) || self.known(twin, now).is_some_and(|(_, u)| u)
    }

    /// [`takes_unsigned_rpc`](RmbTwins::takes_unsigned_rpc) without queueing a probe
    /// (for answers: a twin that asked unsigned is known already).
    pub fn knows_unsigned_rpc(&self, twin: u32, now: Instant) -> bool {
        self.sent_unsigned_lately(twin, now)
            || matches!(self.twins.get(&twin), Some(State::Known { unsigned_rpc: true, since, .. })
                if now.saturating_duration_since(*since) < self.limits.ttl)
    }

    /// `twin` sent us an RPC without a signature that its encryption authenticated: it
    /// takes them too, for the TTL.
    pub fn sent_unsigned_rpc(&mut self, twin: u32, now: Instant) {
        if self.limits.max == 0 {
            return;
        }
        if !self.sent_unsigned.contains_key(&twin) && self.sent_unsigned.len() >= self.limits.max {
            let ttl = self.limits.ttl;
            self.sent_unsigned
                .retain(|_, since| now.saturating_duration_since(*since) < ttl);
            if self.sent_unsigned.len() >= self.limits.max {
                let oldest = self
                    .sent_unsigned
                    .iter()
                    .min_by_key(|(_, s)| **s)
                    .map(|(t, _)| *t);
                if let Some(oldest) = oldest {
                    self.sent_unsigned.remove(&oldest);
                }
            }
        }
        self.sent_unsigned.insert(twin, now);
    }

    fn sent_unsigned_lately(&self, twin: u32, now: Instant) -> bool {
        self.sent_unsigned
            .get(&twin)
            .is_some_and(|since| now.saturating_duration_since(*since) < self.limits.ttl)
    }

    /// What `twin` said lately: `Some((rmb, unsigned_rpc))`; `None` while it is not
    /// known, a probe being queued unless one is pending.
    fn known(&mut self, twin: u32, now: Instant) -> Option<(bool, bool)> {
        if self.limits.max == 0 {
            return None;
        }
        let probe_wait = Duration::from_secs(PROBE_EXPIRATION);
        match self.twins.get(&twin) {
            Some(State::Known {
                rmb,
                unsigned_rpc,
                since,
            }) if now.saturating_duration_since(*since) < self.limits.ttl => {
                return Some((*rmb, *unsigned_rpc));
            }
            Some(State::Asking { since, .. })
                if now.saturating_duration_since(*since) < probe_wait =>
            {
                return None;
            }
            Some(_) => {}
            None => self.make_room(now),
        }
        // Unknown, or known too long ago: not rmb until it answers again (the requests
        // waiting then get their timed resends).
        let uid = format!("{PROBE_PREFIX}{twin}-{}", uuid::Uuid::new_v4());
        self.to_ask.retain(|(t, _)| *t != twin);
        self.to_ask.push((twin, uid.clone()));
        self.twins.insert(twin, State::Asking { uid, since: now });
        None
    }

    /// True when probes wait to be taken.
    pub fn has_probes(&self) -> bool {
        !self.to_ask.is_empty()
    }

    /// Probes queued since the last call: (twin, uid).
    pub fn take_probes(&mut self) -> Vec<(u32, String)> {
        std::mem::take(&mut self.to_ask)
    }

    /// True when `uid` is the pending probe of `twin` (its answer is the core's, not the
    /// application's).
    pub fn is_probe(&self, uid: &str, twin: u32) -> bool {
        matches!(self.twins.get(&twin), Some(State::Asking { uid: u, .. }) if u == uid)
    }

    /// The answer to probe `uid` came from `twin` (its signature verified): `Ok` with the
    /// response's payload, `Err` for an error envelope. `Some(rmb)` when it settled
    /// `twin`'s pending probe; `None` when it is no answer to one (it goes to the
    /// application as any response).
    pub fn answered(
        &mut self,
        uid: &str,
        twin: u32,
        reply: Result<&[u8], ()>,
        now: Instant,
    ) -> Option<bool> {
        if !self.is_probe(uid, twin) {
            return None;
        }
        let capabilities = reply.map(capabilities).unwrap_or_default();
        let has = |c: &str| capabilities.iter().any(|have| have == c);
        let (rmb, unsigned_rpc) = (has(DROPS_REPEATS), has(UNSIGNED_RPC));
        self.twins.insert(
            twin,
            State::Known {
                rmb,
                unsigned_rpc,
                since: now,
            },
        );
        Some(rmb)
    }

    /// Twins remembered.
    pub fn len(&self) -> usize {
        self.twins.len()
    }

    /// True when no twin is remembered.
    pub fn is_empty(&self) -> bool {
        self.twins.is_empty()
    }

    /// Keeps room for one more twin: expired entries go first, then the oldest.
    fn make_room(&mut self, now: Instant) {
        if self.twins.len() < self.limits.max {
            return;
        }
        let (ttl, probe_wait) = (self.limits.ttl, Duration::from_secs(PROBE_EXPIRATION));
        self.twins.retain(|_, state| {
            let age = now.saturating_duration_since(state.since());
            match state {
                State::Known { .. } => age < ttl,
                State::Asking { .. } => age < probe_wait,
            }
        });
        while self.twins.len() >= self.limits.max {
            let oldest = self
                .twins
                .iter()
                .min_by_key(|(_, state)| state.since())
                .map(|(twin, _)| *twin);
            match oldest {
                Some(twin) => {
                    self.twins.remove(&twin);
                }
                None => break,
            }
        }
        let twins = &self.twins;
        self.to_ask.retain(|(twin, _)| twins.contains_key(twin));
    }
}

/// The answer an rmb peer gives to a probe: its version and what it guarantees.
#[derive(serde::Serialize, serde::Deserialize)]
struct ProbeAnswer {
    version: String,
    capabilities: Vec<String>,
}

/// The body answering a probe: this build's version and its capabilities (JSON), such
/// as [`DROPS_REPEATS`] and [`UNSIGNED_RPC`].
pub fn probe_answer(version: &str, capabilities: &[&str]) -> Vec<u8> {
    let answer = ProbeAnswer {
        version: version.to_string(),
        capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
    };
    serde_json::to_vec(&answer).unwrap_or_default()
}

/// The capabilities a probe answer lists (none for rmb-rs's version string, or
/// anything else that is not such an answer).
fn capabilities(body: &[u8]) -> Vec<String> {
    if body.len() > MAX_ANSWER {
        return Vec::new();
    }
    serde_json::from_slice::<ProbeAnswer>(body)
        .map(|a| a.capabilities)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(t: &mut RmbTwins) -> (u32, String) {
        let mut probes = t.take_probes();
        assert_eq!(probes.len(), 1, "{probes:?}");
        probes.pop().unwrap()
    }

    #[test]
    fn a_twin_is_asked_once_and_its_answer_is_kept_for_the_ttl() {
        let t0 = Instant::now();
        let mut t = RmbTwins::new(Limits::default());
        assert!(!t.is_rmb(7, t0));
        let (twin, uid) = probe(&mut t);
        assert_eq!(twin, 7);
        assert!(uid.starts_with("rmb-probe-7-"));
        assert!(!t.is_rmb(7, t0), "asking");
        assert!(t.take_probes().is_empty(), "one probe at a time");
        let answer = probe_answer("v1", &[DROPS_REPEATS]);
        assert_eq!(t.answered(&uid, 7, Ok(&answer), t0), Some(true));
        assert!(t.is_rmb(7, t0 + DEFAULT_TTL / 2));
        assert!(t.take_probes().is_empty());
        // Past the TTL it is asked again, and not believed until it answers.
        assert!(!t.is_rmb(7, t0 + DEFAULT_TTL));
        let (_, again) = probe(&mut t);
        assert_eq!(
            t.answered(&again, 7, Ok(b"\"v1.5.1\""), t0 + DEFAULT_TTL),
            Some(false)
        );
        assert!(!t.is_rmb(7, t0 + DEFAULT_TTL));
    }

    #[test]
    fn rmb_rs_answers_errors_and_garbage_prove_nothing() {
        let t0 = Instant::now();
        let mut t = RmbTwins::new(Limits::default());
        let answers: [Result<&[u8], ()>; 5] = [
            Ok(b"\"v1.5.1\""),
            Err(()),
            Ok(b"{\"version\":\"x\",\"capabilities\":[\"other\"]}"),
            Ok(b"\xff"),
            Ok(b""),
        ];
        for (i, answer) in answers.into_iter().enumerate() {
            let twin = i as u32 + 1;
            t.is_rmb(twin, t0);
            let (_, uid) = probe(&mut t);
            assert_eq!(t.answered(&uid, twin, answer, t0), Some(false), "{i}");
            assert!(!t.is_rmb(twin, t0));
        }
    }

    #[test]
    fn only_the_twin_asked_with_the_probe_uid_settles_it() {
        let t0 = Instant::now();
        let mut t = RmbTwins::new(Limits::default());
        t.is_rmb(7, t0);
        let (_, uid) = probe(&mut t);
        let yes = probe_answer("v1", &[DROPS_REPEATS]);
        assert_eq!(t.answered(&uid, 8, Ok(&yes), t0), None, "another twin");
        assert_eq!(
            t.answered("rmb-probe-7-other", 7, Ok(&yes), t0),
            None,
            "another uid"
        );
        assert!(!t.is_rmb(7, t0));
        assert_eq!(t.answered(&uid, 7, Ok(&yes), t0), Some(true));
        assert_eq!(t.answered(&uid, 7, Ok(&yes), t0), None, "settled already");
    }

    #[test]
    fn an_unanswered_probe_is_sent_again_after_its_expiration() {
        let t0 = Instant::now();
        let mut t = RmbTwins::new(Limits::default());
        t.is_rmb(7, t0);
        let (_, first) = probe(&mut t);
        let later = t0 + Duration::from_secs(PROBE_EXPIRATION);
        assert!(!t.is_rmb(7, later));
        let (_, second) = probe(&mut t);
        assert_ne!(first, second);
        let yes = probe_answer("v1", &[DROPS_REPEATS]);
        assert_eq!(t.answered(&first, 7, Ok(&yes), later), None, "too late");
        assert_eq!(t.answered(&second, 7, Ok(&yes), later), Some(true));
    }

    #[test]
    fn the_table_is_bounded_and_forgets_the_oldest() {
        let t0 = Instant::now();
        let mut t = RmbTwins::new(Limits {
            ttl: DEFAULT_TTL,
            max: 3,
        });
        for twin in 1..=10u32 {
            t.is_rmb(twin, t0 + Duration::from_millis(u64::from(twin)));
            assert!(t.len() <= 3);
        }
        let asked: Vec<u32> = t.take_probes().into_iter().map(|(twin, _)| twin).collect();
        assert_eq!(asked, [8, 9, 10], "probes of forgotten twins are dropped");
        let off = RmbTwins::new(Limits {
            ttl: DEFAULT_TTL,
            max: 0,
        });
        let mut off = off;
        assert!(!off.is_rmb(1, t0));
        assert!(off.take_probes().is_empty() && off.is_empty());
    }

    #[test]
    fn unsigned_rpcs_go_to_twins_that_said_so_or_sent_one() {
        let t0 = Instant::now();
        let mut t = RmbTwins::new(Limits::default());
        assert!(!t.takes_unsigned_rpc(7, t0), "unknown: asked first");
        let (_, uid) = probe(&mut t);
        let both = probe_answer("v2", &[DROPS_REPEATS, UNSIGNED_RPC]);
        assert_eq!(t.answered(&uid, 7, Ok(&both), t0), Some(true));
        assert!(t.takes_unsigned_rpc(7, t0) && t.knows_unsigned_rpc(7, t0));
        // An rmb peer whose relays do not route them (or an older one) does not list it.
        assert!(!t.takes_unsigned_rpc(8, t0));
        let (_, uid) = probe(&mut t);
        let old = probe_answer("v1", &[DROPS_REPEATS]);
        assert_eq!(t.answered(&uid, 8, Ok(&old), t0), Some(true));
        assert!(!t.takes_unsigned_rpc(8, t0) && t.is_rmb(8, t0));
        // An at-most-once peer takes them without dropping repeats.
        assert!(!t.takes_unsigned_rpc(9, t0));
        let (_, uid) = probe(&mut t);
        let once = probe_answer("v2", &[UNSIGNED_RPC]);
        assert_eq!(t.answered(&uid, 9, Ok(&once), t0), Some(false));
        assert!(t.takes_unsigned_rpc(9, t0) && !t.is_rmb(9, t0));
        // A twin that sent one is known without a probe, for the TTL, and that says
        // nothing about repeats.
        assert!(!t.knows_unsigned_rpc(10, t0));
        t.sent_unsigned_rpc(10, t0);
        assert!(t.knows_unsigned_rpc(10, t0) && t.takes_unsigned_rpc(10, t0));
        assert!(t.take_probes().is_empty());
        assert!(!t.knows_unsigned_rpc(10, t0 + DEFAULT_TTL));
        assert!(
            !t.knows_unsigned_rpc(7, t0 + DEFAULT_TTL),
            "asked again past the TTL"
        );
    }

    #[test]
    fn twins_that_sent_unsigned_rpcs_are_bounded_and_off_with_learning() {
        let t0 = Instant::now();
        let limits = Limits {
            ttl: DEFAULT_TTL,
            max: 2,
        };
        let mut t = RmbTwins::new(limits);
        for twin in 1..=3u32 {
            t.sent_unsigned_rpc(twin, t0 + Duration::from_millis(u64::from(twin)));
        }
        let now = t0 + Duration::from_millis(5);
        assert!(!t.knows_unsigned_rpc(1, now), "the oldest is forgotten");
        assert!(t.knows_unsigned_rpc(2, now) && t.knows_unsigned_rpc(3, now));
        let mut off = RmbTwins::new(Limits { max: 0, ..limits });
        off.sent_unsigned_rpc(1, t0);
        assert!(!off.takes_unsigned_rpc(1, t0) && off.take_probes().is_empty());
    }
}
