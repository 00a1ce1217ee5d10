//! One live subscriber of the local API (a JSON stream, an SSE stream or a WebSocket):
//! first what is stored after `since`, then each new event as it comes, in id order
//! and without repeats. A subscriber that falls behind replays from Redis again from
//! where it was, so it loses nothing.
//!
//! What a feed holds is bounded in bytes, however slowly its client reads:
//! - replay reads pages sized to fit [`BACKLOG_BYTES`], and reads the rest when the
//!   client has taken those;
//! - live events are taken off the topics' shared channel at once by a small pump task
//!   into the feed's own queue of at most [`LIVE_BYTES`]; past it the queue is emptied
//!   and the feed replays from its position instead. (Read straight from the shared
//!   channel, a client that stopped reading kept up to the channel's 8192 newest events
//!   alive, up to ~700 MiB of large messages, until it went.)

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::topics::wire::{MAX_PULL, TopicName};
use crate::topics::{Event, TopicError, Topics};

/// How often an idle stream says it is alive.
pub const KEEPALIVE: Duration = Duration::from_secs(25);

/// Most bytes of replayed messages one feed holds before handing them out.
pub const BACKLOG_BYTES: usize = 256 * 1024;

/// Most bytes of live events one feed holds before it falls back to replaying.
pub const LIVE_BYTES: usize = 512 * 1024;

/// Messages asked for by the first replay page (later pages are sized by what the last
/// page's messages weighed).
const FIRST_PAGE: u32 = 64;

/// What a feed yields next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A message or gap: its id (for a gap, its last missing id) and its JSON line.
    Event(u64, Arc<str>),
    /// Nothing happened for [`KEEPALIVE`].
    Keepalive,
    /// Replaying failed (the stream ends after it).
    Failed(String),
}

/// A live subscriber's position and source.
pub struct Feed {
    topics: Topics,
    topic: TopicName,
    pos: u64,
    live: Arc<Live>,
    /// Stops the pump when the feed goes.
    _pump: DropGuard,
    backlog: VecDeque<(u64, Arc<str>)>,
    replay: bool,
    /// Messages the next replay page asks for.
    page: u32,
    stop: CancellationToken,
    done: bool,
}

impl Feed {
    /// A feed of `topic` after `since` (listening starts before replaying, so nothing
    /// falls between the two).
    pub fn new(topics: Topics, topic: TopicName, since: u64, stop: CancellationToken) -> Self {
        let live = Arc::new(Live::default());
        let pump = stop.child_token();
        tokio::spawn(pump_events(
            topics.events(),
            topic.clone(),
            Arc::clone(&live),
            pump.clone(),
        ));
        Feed {
            live,
            _pump: pump.drop_guard(),
            topics,
            topic,
            pos: since,
            backlog: VecDeque::new(),
            replay: true,
            page: FIRST_PAGE,
            stop,
            done: false,
        }
    }

    /// The next item; `None` when the API shuts down or the feed failed.
    pub async fn next(&mut self) -> Option<Item> {
        if self.done {
            return None;
        }
        loop {
            if let Some((id, line)) = self.backlog.pop_front() {
                return Some(Item::Event(id, line));
            }
            if self.replay {
                match self.fill().await {
                    Ok(()) => continue,
                    Err(e) => {
                        self.done = true;
                        return Some(Item::Failed(e.to_string()));
                    }
                }
            }
            match self.live.take() {
                Taken::Event(event) if event.id > self.pos => {
                    self.pos = event.id;
                    return Some(Item::Event(event.id, event.json));
                }
                Taken::Event(_) => continue,
                Taken::Overflowed => {
                    self.replay = true;
                    continue;
                }
                Taken::Closed => return None,
                Taken::Nothing => {}
            }
            tokio::select! {
                _ = self.live.notify.notified() => {}
                _ = tokio::time::sleep(KEEPALIVE) => return Some(Item::Keepalive),
                _ = self.stop.cancelled() => return None,
            }
        }
    }

    /// Reads one page of stored messages after the position, keeping at most
    /// [`BACKLOG_BYTES`] of them (the position moves only past what is kept).
    async fn fill(&mut self) -> Result<(), TopicError> {
        let page = self.topics.pull(&self.topic, self.pos, self.page).await?;
        let full = page.len() == self.page as usize;
        let (mut kept, mut bytes, mut cut) = (0usize, 0usize, false);
        for message in page {
            if message.id <= self.pos {
                continue;
            }
            let json = serde_json::to_string(&message).expect("a message serialises");
            if kept > 0 && bytes + json.len() > BACKLOG_BYTES {
                cut = true;
                break;
            }
            bytes += json.len();
            kept += 1;
            self.pos = message.id;
            self.backlog.push_back((message.id, json.into()));
        }
        self.replay = full || cut;
        if let Some(each) = bytes.checked_div(kept) {
            self.page = ((BACKLOG_BYTES / each.max(1)) as u32).clamp(1, MAX_PULL);
        }
        Ok(())
    }
}

/// A feed's own queue of live events, filled by [`pump_events`].
#[derive(Debug, Default)]
struct Live {
    queue: Mutex<LiveQueue>,
    notify: Notify,
}

#[derive(Debug, Default)]
struct LiveQueue {
    events: VecDeque<Event>,
    bytes: usize,
    /// Events were dropped since the feed last looked: it must replay.
    overflowed: bool,
    /// The shared channel closed (the topics layer stopped).
    closed: bool,
}

impl LiveQueue {
    /// Drops what is queued (and the memory it held); the feed replays instead.
    fn overflow(&mut self) {
        self.events = VecDeque::new();
        self.bytes = 0;
        self.overflowed = true;
    }
}

/// What [`Live::take`] found.
enum Taken {
    Event(Event),
    Overflowed,
    Closed,
    Nothing,
}

impl Live {
    fn lock(&self) -> std::sync::MutexGuard<'_, LiveQueue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self) -> Taken {
        let mut q = self.lock();
        if q.overflowed {
            q.overflowed = false;
            return Taken::Overflowed;
        }
        match q.events.pop_front() {
            Some(event) => {
                q.bytes -= event.json.len();
                Taken::Event(event)
            }
            None if q.closed => Taken::Closed,
            None => Taken::Nothing,
        }
    }

    /// Queues `event`, or empties the queue and marks it overflowed when it would hold
    /// more than [`LIVE_BYTES`].
    fn push(&self, event: Event) {
        let mut q = self.lock();
        if q.bytes + event.json.len() > LIVE_BYTES {
            q.overflow();
        } else {
            q.bytes += event.json.len();
            q.events.push_back(event);
        }
    }

    fn overflow(&self) {
        self.lock().overflow();
    }

    fn close(&self) {
        self.lock().closed = true;
    }
}

/// Moves `topic`'s events from the shared channel into `live` as they come, so a slow
/// client never holds the shared channel's events; ends with `done` (the feed went, or
/// the API stops).
async fn pump_events(
    mut shared: broadcast::Receiver<Event>,
    topic: TopicName,
    live: Arc<Live>,
    done: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            biased;
            _ = done.cancelled() => return,
            event = shared.recv() => event,
        };
        match event {
            Ok(event) if event.topic == topic => live.push(event),
            Ok(_) => continue,
            Err(RecvError::Lagged(_)) => live.overflow(),
            Err(RecvError::Closed) => {
                live.close();
                live.notify.notify_one();
                return;
            }
        }
        live.notify.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: u64, size: usize) -> Event {
        Event {
            topic: "1/t".parse().unwrap(),
            id,
            json: "x".repeat(size).into(),
        }
    }

    #[test]
    fn the_live_queue_is_bounded_in_bytes_and_says_when_it_dropped_events() {
        let live = Live::default();
        live.push(event(1, 100));
        assert!(matches!(live.take(), Taken::Event(e) if e.id == 1));
        assert!(matches!(live.take(), Taken::Nothing));
        for id in 0..(LIVE_BYTES / 1000) as u64 {
            live.push(event(id, 1000));
        }
        assert_eq!(live.lock().bytes, (LIVE_BYTES / 1000) * 1000);
        live.push(event(9999, 1000));
        assert_eq!(live.lock().bytes, 0, "emptied, not grown");
        assert!(matches!(live.take(), Taken::Overflowed));
        assert!(
            matches!(live.take(), Taken::Nothing),
            "the feed replays instead"
        );
        live.close();
        assert!(matches!(live.take(), Taken::Closed));
    }
}
