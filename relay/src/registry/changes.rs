//! [`ChangeLog`]: which twins changed, in order, for the `/changes` long poll.
//!
//! Each accepted write gets a version number (1, 2, 3, … per run of the server). A client
//! asks "what changed since version V?" and gets the ids, or, if the log no longer reaches
//! back that far or the server restarted (a new random *epoch*), an instruction to forget
//! its cache. Bounded: only the newest entries are kept.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use rand::RngCore;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Entries kept by default.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// The recent history of changed twin ids.
pub struct ChangeLog {
    epoch: String,
    entries: Mutex<VecDeque<(u64, u32)>>,
    capacity: usize,
    version: watch::Sender<u64>,
    /// Cancelled when the server shuts down: long polls answer at once then, so the
    /// process is not kept alive by clients waiting for changes.
    closed: CancellationToken,
}

impl ChangeLog {
    /// An empty log for a new run of the server, keeping `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        let mut epoch = [0u8; 8];
        rand::thread_rng().fill_bytes(&mut epoch);
        ChangeLog {
            epoch: hex::encode(epoch),
            entries: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            version: watch::Sender::new(0),
            closed: CancellationToken::new(),
        }
    }

    /// Identifies this run; versions from another epoch mean nothing here.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The newest version.
    pub fn version(&self) -> u64 {
        *self.version.borrow()
    }

    /// Records that twin `id` changed; returns the new version.
    pub fn record(&self, id: u32) -> u64 {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let version = self.version() + 1;
        entries.push_back((version, id));
        while entries.len() > self.capacity {
            entries.pop_front();
        }
        self.version.send_replace(version);
        version
    }

    /// Ids changed after `since` (each once, oldest change first), or `None` when the
    /// log cannot answer (too far back, or a version this run never issued).
    pub fn since(&self, since: u64) -> Option<Vec<u32>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let newest = entries.back().map_or(0, |e| e.0);
        if since > newest {
            return None;
        }
        if since == newest {
            return Some(Vec::new());
        }
        let oldest = entries.front().map_or(1, |e| e.0);
        if oldest > since + 1 {
            return None;
        }
        let mut ids: Vec<u32> = Vec::new();
        for &(_, id) in entries.iter().filter(|(v, _)| *v > since) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        Some(ids)
    }

    /// Waits until the version passes `since`, `timeout` elapses or the log is closed.
    pub async fn wait_past(&self, since: u64, timeout: Duration) {
        let mut rx = self.version.subscribe();
        tokio::select! {
            _ = tokio::time::timeout(timeout, rx.wait_for(|v| *v > since)) => {}
            _ = self.closed.cancelled() => {}
        }
    }

    /// Ends every wait now and makes later ones return at once (server shutdown).
    pub fn close(&self) {
        self.closed.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_what_changed_since_a_version() {
        let log = ChangeLog::new(3);
        assert_eq!(log.since(0), Some(vec![]));
        assert_eq!(log.record(7), 1);
        assert_eq!(log.record(8), 2);
        assert_eq!(log.record(7), 3);
        assert_eq!(log.since(0), Some(vec![7, 8]));
        assert_eq!(log.since(1), Some(vec![8, 7]));
        assert_eq!(log.since(3), Some(vec![]));
        assert_eq!(log.since(4), None, "a version never issued");
        log.record(9);
        assert_eq!(log.since(0), None, "entry 1 was trimmed");
        assert_eq!(log.since(1), Some(vec![8, 7, 9]));
    }

    #[tokio::test]
    async fn waiting_wakes_on_a_change() {
        let log = std::sync::Arc::new(ChangeLog::new(10));
        let writer = log.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            writer.record(1);
        });
        let start = std::time::Instant::now();
        log.wait_past(0, Duration::from_secs(5)).await;
        assert!(start.elapsed() < Duration::from_secs(4));
        assert_eq!(log.version(), 1);
    }

    #[tokio::test]
    async fn closing_ends_waits() {
        let log = std::sync::Arc::new(ChangeLog::new(10));
        let closer = log.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            closer.close();
        });
        let start = std::time::Instant::now();
        log.wait_past(0, Duration::from_secs(30)).await;
        assert!(start.elapsed() < Duration::from_secs(4));
        log.wait_past(0, Duration::from_secs(30)).await;
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "closed: no more waiting"
        );
    }
}
