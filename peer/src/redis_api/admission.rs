//! Admission of remote requests to a service's `msgbus.<cmd>` list, so a service that
//! cannot keep up serves fresh requests from a short queue instead of old ones from a
//! long one, and the callers it cannot serve hear so at once instead of at their expiry.
//!
//! Services take requests oldest first (`BRPOP`), so the list is a FIFO queue whose
//! waiting time can be read off its head: the peer remembers when it pushed each
//! request still in the list (the newest `len` pushes, `len` read back from Redis after
//! each push and by a periodic `LLEN`), so the head's *sojourn* is `now - its push`.
//! Requests taken by a service or taken back as unserved leave from the head, the
//! oldest end, which keeps that bookkeeping exact.
//!
//! A request is refused on arrival (an error envelope to its sender, nothing pushed):
//! - [`Verdict::Late`]: the queue ahead of it would make it start after its deadline
//!   (minus the margin an error needs to reach its caller in time, as for unserved
//!   requests);
//! - [`Verdict::Overloaded`]: the list is *shedding*, its head has waited longer than
//!   [`Settings::target`] and its service took a request within the last
//!   [`Settings::interval`]. A list starts shedding when its head waited longer than
//!   the target for a whole interval while its service kept taking requests (a burst
//!   the service works off within the interval is queued in full), and stops once it
//!   is seen empty. A service that takes nothing (stopped, restarting) is not
//!   overloaded: its requests queue as they always did, until the queue would make
//!   them late.
//!
//! Under a steady overload that keeps the head's wait near the target: the service
//! runs at capacity on requests at most about `target` old, and the excess is refused
//! within milliseconds of arriving. A repeat of an answered request is never refused
//! here: the delivery script checks for repeats first.
//!
//! A pure state machine: time is an input; [`super::inbound`] drives it.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Default of [`Settings::target`].
pub const DEFAULT_TARGET: Duration = Duration::from_millis(500);
/// Default of [`Settings::interval`].
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// Most push times remembered per list; past it the oldest are forgotten (the head's
/// wait is then underestimated, never overestimated).
const MAX_TRACKED: usize = 1 << 20;
/// Shortest span over which a busy service's rate is measured.
const RATE_WINDOW: Duration = Duration::from_millis(250);
/// Weight of a new rate measurement in the smoothed rate.
const RATE_WEIGHT: f64 = 0.3;

/// How long requests may wait in a service's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Longest wait at the head of a list that an overloaded service is allowed
    /// (`Duration::ZERO`: no shedding; only requests that would start after their
    /// deadline are refused).
    pub target: Duration,
    /// How long the head's wait must stay above `target` before the list sheds.
    pub interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            target: DEFAULT_TARGET,
            interval: DEFAULT_INTERVAL,
        }
    }
}

/// What to do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Push it.
    Admit,
    /// It would wait about `wait` and start after its deadline: refuse it now.
    Late { wait: Duration },
    /// The service is overloaded: its list's head has waited `wait`.
    Overloaded { wait: Duration },
}

/// One service list as the peer last saw it.
#[derive(Debug, Default)]
struct List {
    /// When each request believed still in the list was pushed, oldest first.
    pushed: VecDeque<Instant>,
    /// Since when the head's wait has been above the target, without a break.
    above_since: Option<Instant>,
    /// Whether requests are refused while the head's wait is above the target.
    shedding: bool,
    /// When the list was last seen shorter than before, less what was pushed since: a
    /// service took something.
    last_take: Option<Instant>,
    /// Pushes recorded so far: a length read elsewhere applies only if no push was
    /// recorded meanwhile ([`Admission::observed`]).
    pushes: u64,
    /// Requests its service takes per second while busy (smoothed), once measured.
    rate: Option<f64>,
    /// The current measuring window: its start and the takes seen since; reset when
    /// the list is seen empty (the service was not busy all along).
    window: Option<(Instant, u64)>,
}

impl List {
    fn head_wait(&self, now: Instant) -> Duration {
        self.pushed
            .front()
            .map_or(Duration::ZERO, |&at| now.saturating_duration_since(at))
    }

    /// How long a request pushed now would wait: the queue ahead at the service's
    /// measured rate (the head's wait lags a growing queue by that wait itself), or the
    /// head's wait before any rate was measured.
    fn expected_wait(&self, now: Instant) -> Duration {
        match self.rate {
            Some(rate) => Duration::from_secs_f64(self.pushed.len() as f64 / rate),
            None => self.head_wait(now),
        }
    }

    /// Counts `takes` seen at `now` into the rate measurement (a list is busy while it
    /// holds requests: its service takes as fast as it can).
    fn measure(&mut self, now: Instant, takes: u64) {
        let (start, counted) = self.window.get_or_insert((now, 0));
        *counted += takes;
        let span = now.saturating_duration_since(*start);
        if span < RATE_WINDOW {
            return;
        }
        // A window without a take is a stalled service (or takes hidden behind requests
        // another run pushed), and a long one spans such a time: neither is measured.
        if *counted > 0 && span <= RATE_WINDOW * 4 {
            let sample = *counted as f64 / span.as_secs_f64();
            self.rate = Some(match self.rate {
                Some(rate) => rate + RATE_WEIGHT * (sample - rate),
                None => sample,
            })
            .filter(|r| *r > 0.0);
        }
        self.window = Some((now, 0));
    }
}

/// The admission state of every service list that holds requests.
#[derive(Debug, Default)]
pub struct Admission {
    settings: Settings,
    lists: HashMap<String, List>,
}

impl Admission {
    /// No list known yet.
    pub fn new(settings: Settings) -> Self {
        Admission {
            settings,
            lists: HashMap::new(),
        }
    }

    /// Whether a request for `list` that must start before unix second `latest_start`
    /// is pushed, at `now` (monotonic) and `unix_now` (wall clock, seconds).
    pub fn decide(&self, list: &str, now: Instant, unix_now: u64, latest_start: u64) -> Verdict {
        let Some(state) = self.lists.get(list) else {
            return if unix_now > latest_start {
                Verdict::Late {
                    wait: Duration::ZERO,
                }
            } else {
                Verdict::Admit
            };
        };
        let wait = state.expected_wait(now);
        // Late only when the head's own wait agrees: a rate measured wrong must not
        // refuse what the old queue would have served in time.
        let late_wait = wait.min(state.head_wait(now));
        let starts = unix_now.saturating_add(late_wait.as_secs_f64().ceil() as u64);
        if starts > latest_start {
            return Verdict::Late { wait: late_wait };
        }
        if state.shedding && wait > self.settings.target && self.taking(state, now) {
            return Verdict::Overloaded { wait };
        }
        Verdict::Admit
    }

    /// A request was pushed to `list` at `now`, which then held `len` items (read in
    /// the same atomic step as the push).
    pub fn pushed(&mut self, list: &str, now: Instant, len: u64) {
        let state = self.lists.entry(list.to_string()).or_default();
        state.pushed.push_back(now);
        state.pushes += 1;
        if state.pushed.len() > MAX_TRACKED {
            state.pushed.pop_front();
        }
        self.seen(list, now, len);
    }

    /// `list` was seen holding `len` items at `now`, by a read issued when
    /// [`watched`](Admission::watched) gave `pushes` for it. Ignored if a push was
    /// recorded since: the read may have missed it, and would make the requests still
    /// waiting look taken.
    pub fn observed(&mut self, list: &str, now: Instant, len: u64, pushes: u64) {
        if self.lists.get(list).is_some_and(|s| s.pushes == pushes) {
            self.seen(list, now, len);
        }
    }

    fn seen(&mut self, list: &str, now: Instant, len: u64) {
        let Some(state) = self.lists.get_mut(list) else {
            return;
        };
        // Items leave from the oldest end: the ones still there are the newest `len`.
        let keep = usize::try_from(len).unwrap_or(usize::MAX);
        let takes = state.pushed.len().saturating_sub(keep) as u64;
        if takes > 0 {
            state.last_take = Some(now);
        }
        while state.pushed.len() > keep {
            state.pushed.pop_front();
        }
        state.measure(now, takes);
        if state.pushed.is_empty() {
            // Nothing waits (or nothing we pushed): forget the list.
            self.lists.remove(list);
            return;
        }
        let target = self.settings.target;
        if target.is_zero() {
            return;
        }
        if state.head_wait(now) > target {
            let since = *state.above_since.get_or_insert(now);
            let taking = Self::recent(self.settings, state, now);
            if now.saturating_duration_since(since) >= self.settings.interval && taking {
                state.shedding = true;
            }
        } else {
            state.above_since = None;
        }
    }

    /// Whether the service of `state` took a request within the last interval (and
    /// shedding is on at all).
    fn taking(&self, state: &List, now: Instant) -> bool {
        !self.settings.target.is_zero() && Self::recent(self.settings, state, now)
    }

    fn recent(settings: Settings, state: &List, now: Instant) -> bool {
        state
            .last_take
            .is_some_and(|at| now.saturating_duration_since(at) <= settings.interval)
    }

    /// The lists holding requests the peer pushed, to be looked at with `LLEN`, each
    /// with its count of pushes for [`observed`](Admission::observed).
    pub fn watched(&self) -> Vec<(String, u64)> {
        self.lists
            .iter()
            .map(|(list, state)| (list.clone(), state.pushes))
            .collect()
    }

    /// Whether `list` is shedding (for tests and the status).
    pub fn shedding(&self, list: &str) -> bool {
        self.lists.get(list).is_some_and(|s| s.shedding)
    }

    /// How many lists are shedding now.
    pub fn shedding_lists(&self) -> usize {
        self.lists.values().filter(|s| s.shedding).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: &str = "msgbus.work";
    const FAR: u64 = u64::MAX;

    /// A length read with no push in between.
    fn look(a: &mut Admission, now: Instant, len: u64) {
        let pushes = a.lists.get(L).map_or(0, |s| s.pushes);
        a.observed(L, now, len, pushes);
    }

    #[test]
    fn a_length_read_while_a_push_was_recorded_is_ignored() {
        let mut a = Admission::new(Settings::default());
        let t0 = Instant::now();
        a.pushed(L, t0, 1);
        let (_, pushes) = a.watched()[0].clone();
        // The read saw 0 items, but a push was recorded before its answer came.
        a.pushed(L, t0 + ms(10), 2);
        a.observed(L, t0 + ms(20), 0, pushes);
        assert_eq!(
            a.lists[L].pushed.len(),
            2,
            "the oldest is not taken for gone"
        );
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_burst_worked_off_within_the_interval_is_queued_in_full() {
        let mut a = Admission::new(Settings::default());
        let t0 = Instant::now();
        for i in 0..100u64 {
            assert_eq!(a.decide(L, t0, 1000, FAR), Verdict::Admit);
            a.pushed(L, t0, i + 1);
        }
        // The service drains it within 900 ms: its head waited above the target, but
        // not for a whole interval.
        look(&mut a, t0 + ms(600), 40);
        assert_eq!(a.decide(L, t0 + ms(600), 1000, FAR), Verdict::Admit);
        look(&mut a, t0 + ms(900), 0);
        assert!(!a.shedding(L));
    }

    #[test]
    fn a_standing_queue_sheds_down_to_the_target_and_being_seen_empty_ends_it() {
        let mut a = Admission::new(Settings::default());
        let t0 = Instant::now();
        // 40 requests/s offered to a service taking 20/s, for 10 s, then nothing.
        let (mut len, mut refused, mut first_refusal) = (0u64, 0, None);
        for tick in 1..=300u64 {
            let now = t0 + ms(50 * tick);
            if tick <= 200 {
                for _ in 0..2 {
                    match a.decide(L, now, 1000, FAR) {
                        Verdict::Admit => {
                            len += 1;
                            a.pushed(L, now, len);
                        }
                        Verdict::Overloaded { .. } => {
                            refused += 1;
                            first_refusal.get_or_insert(tick);
                        }
                        Verdict::Late { .. } => panic!("nothing is late here"),
                    }
                }
            }
            if len > 0 {
                len -= 1;
                look(&mut a, now, len);
            }
            if tick == 200 {
                assert!(a.shedding(L));
                let wait = a.lists[L].expected_wait(now);
                assert!(wait <= ms(600), "the queue stands at {wait:?}");
            }
        }
        // Shedding began after the head waited over 500 ms for a whole second...
        let first = first_refusal.expect("the excess was refused");
        assert!((25..=45).contains(&first), "first refusal at tick {first}");
        // ...and refused about the excess (half of what came after).
        assert!((150..=200).contains(&refused), "refused {refused}");
        assert_eq!(len, 0);
        assert!(!a.shedding(L), "seen empty: shedding over");
        assert!(a.watched().is_empty());
    }

    #[test]
    fn a_request_that_would_start_after_its_deadline_is_late() {
        let mut a = Admission::new(Settings::default());
        let t0 = Instant::now();
        a.pushed(L, t0, 1);
        // The head waited 3 s: a request due to start by 1002 would start at 1003.
        let now = t0 + Duration::from_secs(3);
        look(&mut a, now, 1);
        assert_eq!(
            a.decide(L, now, 1000, 1002),
            Verdict::Late {
                wait: Duration::from_secs(3)
            }
        );
        assert_eq!(a.decide(L, now, 1000, 1003), Verdict::Admit);
        // With no queue, only a deadline already past is late.
        assert_eq!(a.decide("msgbus.other", now, 1000, 1000), Verdict::Admit);
        assert!(matches!(
            a.decide("msgbus.other", now, 1001, 1000),
            Verdict::Late { .. }
        ));
    }

    #[test]
    fn a_service_that_takes_nothing_is_stalled_not_overloaded_its_requests_queue() {
        let mut a = Admission::new(Settings::default());
        let t0 = Instant::now();
        for i in 0..10u64 {
            a.pushed(L, t0 + ms(100 * i), i + 1);
        }
        // Five seconds without a take (the service restarts): still admitted.
        let now = t0 + Duration::from_secs(5);
        look(&mut a, now, 10);
        assert!(!a.shedding(L));
        assert_eq!(a.decide(L, now, 1000, FAR), Verdict::Admit);
        // ...unless the queue would make the request late.
        assert!(matches!(a.decide(L, now, 1000, 1004), Verdict::Late { .. }));
        // It is back and takes one: the standing queue sheds at once.
        look(&mut a, now + ms(10), 9);
        assert!(a.shedding(L));
        assert!(matches!(
            a.decide(L, now + ms(10), 1000, FAR),
            Verdict::Overloaded { .. }
        ));
    }

    #[test]
    fn a_new_request_waits_the_queue_ahead_at_the_measured_rate() {
        let mut a = Admission::new(Settings::default());
        let t0 = Instant::now();
        // 200 queued at once; the service takes 100 per second, read every 10 ms.
        for i in 0..200u64 {
            a.pushed(L, t0, i + 1);
        }
        for step in 1..=50u64 {
            look(&mut a, t0 + ms(10 * step), 200 - step);
        }
        // After 0.5 s: 150 left at 100/s is 1.5 s for a newcomer, though the head
        // waited only 0.5 s.
        match a.decide(L, t0 + ms(500), 1000, FAR) {
            Verdict::Admit => {}
            other => panic!("not shedding yet: {other:?}"),
        }
        let wait = a.lists[L].expected_wait(t0 + ms(500));
        assert!(
            (1.4..1.6).contains(&wait.as_secs_f64()),
            "expected about 1.5 s, got {wait:?}"
        );
        // Late needs the head's own wait to agree (0.5 s here).
        assert_eq!(a.decide(L, t0 + ms(500), 1000, 1001), Verdict::Admit);
        assert!(matches!(
            a.decide(L, t0 + ms(500), 1000, 1000),
            Verdict::Late { .. }
        ));
    }

    #[test]
    fn takes_hidden_behind_requests_another_run_pushed_do_not_make_a_slow_rate() {
        let mut a = Admission::new(Settings::default());
        let t0 = Instant::now();
        // A restarted peer: 50 requests of its previous run wait ahead of its own push,
        // and the service works them off at 100/s without a take the peer can see.
        a.pushed(L, t0, 51);
        for step in 1..=50u64 {
            look(&mut a, t0 + ms(10 * step), 51 - step);
        }
        // Then its own request is taken.
        look(&mut a, t0 + ms(510), 0);
        a.pushed(L, t0 + ms(520), 1);
        look(&mut a, t0 + ms(530), 1);
        assert!(
            a.lists[L].rate.is_none_or(|r| r > 1.0),
            "a rate of {:?}/s",
            a.lists[L].rate
        );
        assert_eq!(a.decide(L, t0 + ms(530), 1000, 1001), Verdict::Admit);
    }

    #[test]
    fn a_zero_target_never_sheds() {
        let mut a = Admission::new(Settings {
            target: Duration::ZERO,
            interval: Duration::ZERO,
        });
        let t0 = Instant::now();
        a.pushed(L, t0, 1);
        look(&mut a, t0 + Duration::from_secs(10), 1);
        assert!(!a.shedding(L));
        assert_eq!(
            a.decide(L, t0 + Duration::from_secs(10), 1000, FAR),
            Verdict::Admit
        );
    }

    #[test]
    fn items_pushed_by_others_do_not_make_the_head_look_older() {
        let mut a = Admission::new(Settings::default());
        let t0 = Instant::now();
        // Redis already held 5 items someone else pushed: only ours are timed.
        a.pushed(L, t0, 6);
        look(&mut a, t0 + ms(200), 6);
        assert_eq!(a.lists[L].pushed.len(), 1);
        assert_eq!(a.lists[L].head_wait(t0 + ms(200)), ms(200));
    }
}
