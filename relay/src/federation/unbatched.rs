//! Relays that do not take batches, remembered for a while.
//!
//! A relay that answers `POST /federation/batch` as something that does not know the
//! path (rmb-rs answers 404; a web server in front of a relay may answer anything) is
//! posted to one envelope at a time (`POST /`) for [`UNBATCHED_FOR`], instead of
//! finding that out again with every batch. The memory is bounded: past
//! [`MAX_UNBATCHED`] relays the least recently refused is forgotten (and found out
//! again by its next batch).

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::Duration;

use axum::http::StatusCode;
use lru::LruCache;
use prometheus::IntCounter;

/// How long a relay that does not batch is posted to one envelope at a time.
pub const UNBATCHED_FOR: Duration = Duration::from_secs(600);
/// Most relays remembered as not batching; the least recently refused is forgotten first.
pub const MAX_UNBATCHED: usize = 1024;

/// Relays (by base URL) that do not batch, until when (unix seconds).
pub struct Unbatched {
    until: Mutex<LruCache<String, u64>>,
    /// `relay_federation_unbatched_relays_total`: relays found not to batch.
    found: IntCounter,
}

impl Unbatched {
    /// An empty memory; each relay newly found not to batch counts in `found`.
    pub fn new(found: IntCounter) -> Self {
        Unbatched {
            until: Mutex::new(LruCache::new(
                NonZeroUsize::new(MAX_UNBATCHED).expect("non-zero"),
            )),
            found,
        }
    }

    /// True if the relay at `base` is known, at `now` (unix seconds), not to batch.
    pub fn knows(&self, base: &str, now: u64) -> bool {
        let mut until = self.until.lock().unwrap_or_else(|p| p.into_inner());
        match until.get(base) {
            Some(&deadline) if now < deadline => true,
            Some(_) => {
                until.pop(base);
                false
            }
            None => false,
        }
    }

    /// Notes at `now` that the relay at `base` does not batch.
    pub fn remember(&self, base: &str, now: u64) {
        let deadline = now.saturating_add(UNBATCHED_FOR.as_secs());
        let mut until = self.until.lock().unwrap_or_else(|p| p.into_inner());
        if until.put(base.to_string(), deadline).is_none() {
            self.found.inc();
            tracing::debug!(relay = %base, "relay does not take batches; posting to it one envelope at a time");
        }
    }
}

/// True if a relay answering a batch with `status` does not take batches: it does not
/// know the path (404, 405, 501: rmb-rs answers 404), it took the batch for something
/// else (400: a relay of ours never refuses a well-formed batch so), or it answered
/// with another success than a batch's (a 2xx other than 200).
pub fn does_not_batch(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::NOT_FOUND
            | StatusCode::METHOD_NOT_ALLOWED
            | StatusCode::NOT_IMPLEMENTED
            | StatusCode::BAD_REQUEST
    ) || (status.is_success() && status != StatusCode::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relays_that_do_not_know_batches_are_told_apart_from_refused_batches() {
        for status in [404, 405, 501, 400, 202, 204] {
            assert!(
                does_not_batch(StatusCode::from_u16(status).unwrap()),
                "{status}"
            );
        }
        for status in [200, 413, 429, 500, 503] {
            assert!(
                !does_not_batch(StatusCode::from_u16(status).unwrap()),
                "{status}"
            );
        }
    }
}
