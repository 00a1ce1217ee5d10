//! One live subscriber of the local API (a JSON stream, an SSE stream or a WebSocket):
//! first what is stored after `since`, then each new event as it comes, in id order
//! and without repeats. A subscriber that falls behind the live channel replays from
//! Redis again from where it was, so it loses nothing.
//!
//! What a feed holds is bounded in bytes ([`BACKLOG_BYTES`]): replay reads pages sized to
//! fit, and the rest is read again when the client has taken those, so a client that
//! reads slowly costs the peer a fixed amount of memory however much is stored.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::topics::wire::{MAX_PULL, TopicName};
use crate::topics::{Event, TopicError, Topics};

/// How often an idle stream says it is alive.
pub const KEEPALIVE: Duration = Duration::from_secs(25);

/// Most bytes of replayed messages one feed holds before handing them out.
pub const BACKLOG_BYTES: usize = 256 * 1024;

/// Messages asked for by the first replay page (later pages are sized by what the last
/// page's messages weighed).
const FIRST_PAGE: u32 = 64;

/// What a feed yields next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A message or gap, as its JSON line.
    Event(Arc<str>),
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
    live: broadcast::Receiver<Event>,
    backlog: VecDeque<Arc<str>>,
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
        Feed {
            live: topics.events(),
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
            if let Some(line) = self.backlog.pop_front() {
                return Some(Item::Event(line));
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
            let event = tokio::select! {
                event = self.live.recv() => event,
                _ = tokio::time::sleep(KEEPALIVE) => return Some(Item::Keepalive),
                _ = self.stop.cancelled() => return None,
            };
            match event {
                Ok(event) if event.topic == self.topic && event.id > self.pos => {
                    self.pos = event.id;
                    return Some(Item::Event(event.json));
                }
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => self.replay = true,
                Err(RecvError::Closed) => return None,
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
            self.backlog.push_back(json.into());
        }
        self.replay = full || cut;
        if let Some(each) = bytes.checked_div(kept) {
            self.page = ((BACKLOG_BYTES / each.max(1)) as u32).clamp(1, MAX_PULL);
        }
        Ok(())
    }
}
