//! Where every subscriber notes its deliveries, so that measuring costs the system under
//! test as little as possible.
//!
//! The first version sent each delivery over a channel to the measuring task, which woke
//! once per delivery (100 wake-ups and 100 timers per message at 100 subscribers, about
//! a tenth of the bench process's CPU). Here a subscriber appends to a shared list and
//! bumps a counter; the measuring task is woken once, when the count it waits for is
//! reached. Both rmb and NATS are measured through it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// A message seen by a subscriber.
#[derive(Debug, Clone, Copy)]
pub struct Delivered {
    pub id: u64,
    pub at: Instant,
}

/// Deliveries of ids above a floor, counted and kept.
#[derive(Debug, Default)]
pub struct Tally {
    /// Deliveries of ids at or below this are ignored (earlier phases).
    floor: AtomicU64,
    counted: AtomicUsize,
    /// The count the measuring task waits for.
    target: AtomicUsize,
    reached: Notify,
    seen: Mutex<Vec<Delivered>>,
}

impl Tally {
    /// Notes that a subscriber's app got message `id` now.
    pub fn note(&self, id: u64) {
        let at = Instant::now();
        if id <= self.floor.load(Ordering::Acquire) {
            return;
        }
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Delivered { id, at });
        let counted = self.counted.fetch_add(1, Ordering::AcqRel) + 1;
        if counted == self.target.load(Ordering::Acquire) {
            self.reached.notify_one();
        }
    }

    /// Starts a phase: only ids above `floor` count from now on, from zero.
    pub fn start(&self, floor: u64) {
        self.floor.store(floor, Ordering::Release);
        self.counted.store(0, Ordering::Release);
        self.target.store(usize::MAX, Ordering::Release);
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Waits until `count` deliveries of this phase were noted; false when `limit`
    /// passed first.
    pub async fn wait_for(&self, count: usize, limit: Duration) -> bool {
        self.target.store(count, Ordering::Release);
        let deadline = tokio::time::Instant::now() + limit;
        while self.counted.load(Ordering::Acquire) < count {
            // `notify_one` leaves a permit when nobody waits, so a count reached between
            // the check and this wait is not missed.
            if tokio::time::timeout_at(deadline, self.reached.notified())
                .await
                .is_err()
            {
                return self.counted.load(Ordering::Acquire) >= count;
            }
        }
        true
    }

    /// Takes the deliveries noted in this phase.
    pub fn take(&self) -> Vec<Delivered> {
        std::mem::take(&mut *self.seen.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_the_count_of_its_phase_only() {
        let tally = std::sync::Arc::new(Tally::default());
        tally.start(5);
        tally.note(5); // an earlier phase's id
        tally.note(6);
        assert!(tally.wait_for(1, Duration::from_millis(20)).await);
        assert!(!tally.wait_for(2, Duration::from_millis(20)).await);
        let t = std::sync::Arc::clone(&tally);
        let noter = tokio::spawn(async move { t.note(7) });
        assert!(tally.wait_for(2, Duration::from_secs(5)).await);
        noter.await.unwrap();
        let ids: Vec<u64> = tally.take().iter().map(|d| d.id).collect();
        assert_eq!(ids.len(), 2);
        assert!(ids.contains(&6) && ids.contains(&7));
    }
}
