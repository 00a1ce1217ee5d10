//! The peers' delivery counters, read from their status keys and summed over restarts.

use super::*;

/// A peer counter summed over the peer's restarts (each restart starts from zero).
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) started_at: Option<u64>,
    pub(crate) banked: u64,
    pub(crate) last: u64,
}

/// Counters of both peers ([`Counters::FIELDS`]), sampled from their status keys and
/// summed over restarts (so up to a second of counting before a SIGKILL can be missed).
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) tallies: HashMap<(&'static str, &'static str), Tally>,
}

impl Counters {
    /// The new peer's delivery counters, then the current peer's failure counters
    /// (reported as information).
    pub(crate) const FIELDS: [&'static str; 7] = [
        "resent",
        "duplicates",
        "replayed",
        "undeliverable",
        "timeouts",
        "rejected",
        "responses_expired",
    ];

    pub(crate) fn update(&mut self, peer: &'static str, status: &Value) {
        let started_at = status["started_at"].as_u64();
        for field in Self::FIELDS {
            let value = find_u64(status, field).unwrap_or(0);
            let tally = self.tallies.entry((peer, field)).or_default();
            if tally.started_at != started_at || value < tally.last {
                tally.banked += tally.last;
                tally.last = 0;
                tally.started_at = started_at;
            }
            tally.last = value;
        }
    }

    pub(crate) fn peer_total(&self, peer: &str, field: &str) -> u64 {
        self.tallies
            .iter()
            .filter(|((p, f), _)| *p == peer && *f == field)
            .map(|(_, t)| t.banked + t.last)
            .sum()
    }

    pub(crate) fn total(&self, field: &str) -> u64 {
        self.tallies
            .iter()
            .filter(|((_, f), _)| *f == field)
            .map(|(_, t)| t.banked + t.last)
            .sum()
    }
}

/// The first number called `key` anywhere in `v` (the new counters' place in the status
/// JSON is not fixed yet).
pub(crate) fn find_u64(v: &Value, key: &str) -> Option<u64> {
    match v {
        Value::Object(map) => map
            .get(key)
            .and_then(Value::as_u64)
            .or_else(|| map.values().find_map(|v| find_u64(v, key))),
        Value::Array(items) => items.iter().find_map(|v| find_u64(v, key)),
        _ => None,
    }
}

/// Reads a peer's status key (`None` if absent or its Redis is down).
pub(crate) fn read_status(url: &str) -> Option<Value> {
    match Link::new(url).cmd(&[b"GET", STATUS.as_bytes()]) {
        Ok(Reply::Bulk(bytes)) => serde_json::from_slice(&bytes).ok(),
        _ => None,
    }
}

pub(crate) fn connected(status: &Value) -> bool {
    status["relays"]
        .as_array()
        .is_some_and(|r| r.iter().any(|l| l["connected"] == true))
}
