//! A deadline a `select!` loop can move, kept in one timer registration.
//!
//! A loop that turns once per message and writes `sleep_until(deadline)` in its
//! `select!` builds, registers and drops a timer entry every turn. The subscriber task
//! turns once per push and had three such deadlines (records, answers, cumulative
//! acknowledgements): with 100 subscriptions on one thread that churn was a few percent
//! of the thread. An [`Alarm`] keeps one pinned timer and only moves it when the
//! deadline really changes.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Where an unset alarm's timer waits: far enough never to fire.
const UNSET: Duration = Duration::from_secs(86_400 * 365);

/// One deadline that is either set or not.
pub(crate) struct Alarm {
    sleep: Pin<Box<Sleep>>,
    set: bool,
}

impl Default for Alarm {
    fn default() -> Self {
        Alarm {
            sleep: Box::pin(tokio::time::sleep(UNSET)),
            set: false,
        }
    }
}

impl Alarm {
    /// Sets the deadline to `at` (moving it if it was set to another time).
    pub(crate) fn set(&mut self, at: Instant) {
        if !self.set || self.sleep.deadline() != at {
            self.sleep.as_mut().reset(at);
        }
        self.set = true;
    }

    /// Whether a deadline is set (and has not rung yet).
    pub(crate) fn is_set(&self) -> bool {
        self.set
    }

    /// Resolves once the deadline is reached, and unsets it. Pending while unset: use
    /// it behind an `if alarm.is_set()` guard in `select!`.
    pub(crate) fn ring(&mut self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if !self.set {
                return std::task::Poll::Pending;
            }
            match self.sleep.as_mut().poll(cx) {
                std::task::Poll::Ready(()) => {
                    self.set = false;
                    std::task::Poll::Ready(())
                }
                std::task::Poll::Pending => std::task::Poll::Pending,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rings_once_at_the_latest_deadline_set() {
        let mut alarm = Alarm::default();
        assert!(!alarm.is_set());
        let start = Instant::now();
        alarm.set(start + Duration::from_millis(30));
        alarm.set(start + Duration::from_millis(120));
        alarm.ring().await;
        assert!(start.elapsed() >= Duration::from_millis(120), "moved later");
        assert!(!alarm.is_set(), "ringing unsets it");

        // Unset, it stays pending.
        let waited = tokio::time::timeout(Duration::from_millis(50), alarm.ring()).await;
        assert!(waited.is_err());
    }

    #[tokio::test]
    async fn moves_to_an_earlier_deadline_and_rings_at_once_when_past() {
        let mut alarm = Alarm::default();
        alarm.set(Instant::now() + Duration::from_secs(600));
        alarm.set(Instant::now() + Duration::from_millis(10));
        let rang = tokio::time::timeout(Duration::from_secs(5), alarm.ring()).await;
        assert!(rang.is_ok(), "moved earlier");

        alarm.set(Instant::now() - Duration::from_millis(1));
        let rang = tokio::time::timeout(Duration::from_secs(5), alarm.ring()).await;
        assert!(rang.is_ok(), "a past deadline rings");
    }
}
