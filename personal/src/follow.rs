//! Following a topic for as long as it takes: the live stream of [`Api::follow`],
//! reopened after the last id seen whenever it breaks (a peer restart, a dead stream),
//! with a pause that grows while it keeps failing. Plugins, sinks and trigger waits read
//! topics this way; only a refusal (no such topic, not allowed) ends it.

use std::time::Duration;

use serde_json::Value;

use crate::api::{Api, ApiError, Stream};

/// First pause before reopening; doubled per failure up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(200);
/// Longest pause between attempts.
const MAX_PAUSE: Duration = Duration::from_secs(10);

/// A topic's messages after an id, across broken streams.
pub struct Follower<'a> {
    api: &'a Api,
    topic: String,
    since: u64,
    pause: Duration,
    stream: Option<Stream>,
}

impl<'a> Follower<'a> {
    /// Follows `topic` from after id `since`.
    pub fn new(api: &'a Api, topic: &str, since: u64) -> Follower<'a> {
        Follower {
            api,
            topic: topic.to_string(),
            since,
            pause: FIRST_PAUSE,
            stream: None,
        }
    }

    /// The next message (or gap) event; an error only when the peer refuses the topic.
    pub async fn next(&mut self) -> Result<Value, ApiError> {
        loop {
            let stream = match &mut self.stream {
                Some(stream) => stream,
                None => match self.api.follow(&self.topic, self.since).await {
                    Ok(stream) => self.stream.insert(stream),
                    Err(e @ ApiError::Refused { .. }) => return Err(e),
                    Err(e) => {
                        self.wait(&e).await;
                        continue;
                    }
                },
            };
            match stream.next().await {
                Ok(event) => {
                    self.pause = FIRST_PAUSE;
                    if let Some(id) = event["id"].as_u64() {
                        self.since = self.since.max(id);
                    }
                    return Ok(event);
                }
                Err(e) => {
                    self.stream = None;
                    self.wait(&e).await;
                }
            }
        }
    }

    async fn wait(&mut self, e: &ApiError) {
        tracing::warn!(
            "following {}: {e}; reopening in {:?}",
            self.topic,
            self.pause
        );
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(MAX_PAUSE);
    }
}
