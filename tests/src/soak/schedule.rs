//! The soak's schedule of faults: SIGKILLs (with relaunch) cycling through the
//! processes, and between two kills a SIGSTOP of a relay or a peer for a few seconds.

use std::time::Duration;

use crate::chaos::{Crash, Target};

/// One fault of the schedule, at a time counted from the first request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Event {
    /// SIGKILL, keep down, relaunch.
    Kill(Crash),
    /// SIGSTOP, then SIGCONT `secs` later: the process holds its sockets but answers
    /// nothing, as a stalled machine or a partition looks to the others.
    Pause {
        at: Duration,
        target: Target,
        secs: f64,
    },
}

impl Event {
    /// When it starts.
    pub fn at(&self) -> Duration {
        match self {
            Event::Kill(c) => c.at,
            Event::Pause { at, .. } => *at,
        }
    }
}

/// Kills every `kill_every` (first at `kill_every`), cycling through `kills`, each kept
/// down `down`; pauses of `pause_secs` halfway between (first at `kill_every / 2`),
/// cycling through `pauses`. Nothing starts in the last `kill_every / 2` of `duration`,
/// so the last fault is over before sending stops. An empty list or a zero period turns
/// that kind off.
pub fn schedule(
    duration: Duration,
    kill_every: Duration,
    down: Duration,
    kills: &[Target],
    pauses: &[Target],
    pause_secs: f64,
) -> Vec<Event> {
    let mut events = Vec::new();
    if kill_every.is_zero() {
        return events;
    }
    let half = kill_every / 2;
    let (mut n_kill, mut n_pause) = (0, 0);
    let mut at = half;
    let mut is_kill = false;
    while at + half <= duration {
        if is_kill && !kills.is_empty() {
            events.push(Event::Kill(Crash {
                at,
                target: kills[n_kill % kills.len()],
                down,
            }));
            n_kill += 1;
        } else if !is_kill && !pauses.is_empty() {
            events.push(Event::Pause {
                at,
                target: pauses[n_pause % pauses.len()],
                secs: pause_secs,
            });
            n_pause += 1;
        }
        is_kill = !is_kill;
        at += half;
    }
    events
}
