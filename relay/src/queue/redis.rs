//! [`RedisQueues`]: offline queues and session presence in Redis (`--redis`).
//!
//! Several relay processes ("replicas") behind one domain share one Redis and act as one
//! relay. Keys, all under a prefix (default `rmb:relay:`):
//!
//! | key | type | content | bounded by |
//! |---|---|---|---|
//! | `q:<session>` | list | `<deadline>|<envelope bytes>`, oldest first | cap per session; key expires after the newest deadline |
//! | `at:<session>` | string | id of the replica holding the session | expires unless renewed ([`PRESENCE_TTL`]) |
//!
//! Queueing and looking up presence happen in one script, which also publishes the
//! session on `wake:<replica>` when some replica holds it, so the replica that has the
//! connection takes the envelope out and hands it over (see [`super::handoff`]). A session
//! that connects first announces itself, then takes its queue: whichever order a sender
//! and a connecting session reach Redis in, the envelope is delivered.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Bytes;
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{QueueError, Queues};
use crate::switch::{Outgoing, SessionId};

/// How long a replica's claim on a session lasts without renewal (a crashed replica's
/// claims lapse by themselves).
pub const PRESENCE_TTL: Duration = Duration::from_secs(60);

/// How long a queue key outlives the newest deadline in it.
const QUEUE_GRACE: u64 = 60;

/// Envelopes taken from Redis per round trip.
const TAKE_BATCH: usize = 256;

/// Queue one or more entries (see the module docs for the keys).
/// KEYS[1] = queue, KEYS[2] = presence.
/// ARGV = cap, key ttl, fail-fast 0/1, session text, now, wake channel prefix, front 0/1,
/// entries…
/// Returns {0, length} queued, {1, length} full, {2, 0} offline (fail-fast).
const PUSH_SCRIPT: &str = r#"
local owner = redis.call('GET', KEYS[2])
if ARGV[3] == '1' and not owner then return {2, 0} end
local cap = tonumber(ARGV[1])
local now = tonumber(ARGV[5])
if ARGV[7] == '1' then
  for i = #ARGV, 8, -1 do redis.call('LPUSH', KEYS[1], ARGV[i]) end
else
  local n = #ARGV - 7
  local len = redis.call('LLEN', KEYS[1])
  while len + n > cap do
    local head = redis.call('LINDEX', KEYS[1], 0)
    if not head then break end
    local deadline = tonumber(string.match(head, '^(%d+)|'))
    if deadline and deadline > now then break end
    redis.call('LPOP', KEYS[1])
    len = len - 1
  end
  if len + n > cap then return {1, len} end
  for i = 8, #ARGV do redis.call('RPUSH', KEYS[1], ARGV[i]) end
end
local ttl = tonumber(ARGV[2])
if redis.call('TTL', KEYS[1]) < ttl then redis.call('EXPIRE', KEYS[1], ttl) end
if owner then redis.call('PUBLISH', ARGV[6] .. owner, ARGV[4]) end
return {0, redis.call('LLEN', KEYS[1])}
"#;

/// Claim a session for a replica unless another replica holds it (renewal), or always
/// (ARGV[3] = 1, a fresh connection). KEYS[1] = presence; ARGV = replica, ttl s, force.
const CLAIM_SCRIPT: &str = r#"
local owner = redis.call('GET', KEYS[1])
if ARGV[3] == '1' or not owner or owner == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
return 0
"#;

/// Release a session if this replica still holds it. KEYS[1] = presence; ARGV[1] = replica.
const RELEASE_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// Offline queues and presence shared by the replicas of one relay through Redis.
pub struct RedisQueues {
    conn: ConnectionManager,
    prefix: String,
    replica: String,
    per_session: usize,
    push: redis::Script,
    claim: redis::Script,
    release: redis::Script,
    wakeups: Mutex<Option<mpsc::Receiver<SessionId>>>,
    url: String,
}

impl RedisQueues {
    /// Connects to `url`, keeps keys under `prefix`, and listens for wake-ups addressed
    /// to this replica until `shutdown`.
    pub async fn connect(
        url: &str,
        prefix: &str,
        per_session: usize,
        shutdown: CancellationToken,
    ) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let conn = ConnectionManager::new(client.clone()).await?;
        let replica = hex::encode(rand::random::<[u8; 8]>());
        let (tx, rx) = mpsc::channel(4096);
        let channel = format!("{prefix}wake:{replica}");
        tokio::spawn(listen_for_wakeups(client, channel, tx, shutdown));
        Ok(RedisQueues {
            conn,
            prefix: prefix.to_string(),
            replica,
            per_session: per_session.max(1),
            push: redis::Script::new(PUSH_SCRIPT),
            claim: redis::Script::new(CLAIM_SCRIPT),
            release: redis::Script::new(RELEASE_SCRIPT),
            wakeups: Mutex::new(Some(rx)),
            url: url.to_string(),
        })
    }

    /// This process's replica id (the value of the presence keys it owns).
    pub fn replica(&self) -> &str {
        &self.replica
    }

    fn queue_key(&self, session: &SessionId) -> String {
        format!("{}q:{session}", self.prefix)
    }

    fn presence_key(&self, session: &SessionId) -> String {
        format!("{}at:{session}", self.prefix)
    }

    async fn run_push(
        &self,
        session: &SessionId,
        items: &[Outgoing],
        now: u64,
        fail_fast: bool,
        front: bool,
    ) -> Result<(), QueueError> {
        let newest = items.iter().map(|(_, d)| *d).max().unwrap_or(now);
        let ttl = newest.saturating_sub(now) + QUEUE_GRACE;
        let mut invocation = self.push.prepare_invoke();
        invocation
            .key(self.queue_key(session))
            .key(self.presence_key(session))
            .arg(self.per_session)
            .arg(ttl)
            .arg(u8::from(fail_fast))
            .arg(session.to_string())
            .arg(now)
            .arg(format!("{}wake:", self.prefix))
            .arg(u8::from(front));
        for (bytes, deadline) in items {
            invocation.arg(encode_entry(bytes, *deadline));
        }
        let mut conn = self.conn.clone();
        let (status, length): (u8, usize) = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| QueueError::Unavailable(e.to_string()))?;
        match status {
            0 => Ok(()),
            1 => Err(QueueError::Full(length)),
            _ => Err(QueueError::Offline),
        }
    }
}

#[async_trait]
impl Queues for RedisQueues {
    async fn push(
        &self,
        session: &SessionId,
        item: Outgoing,
        now: u64,
        fail_fast: bool,
    ) -> Result<(), QueueError> {
        self.run_push(session, std::slice::from_ref(&item), now, fail_fast, false)
            .await
    }

    async fn push_front(&self, session: &SessionId, items: Vec<Outgoing>) {
        if items.is_empty() {
            return;
        }
        let now = rmb_proto::time::unix_now();
        let count = items.len();
        if let Err(e) = self.run_push(session, &items, now, false, true).await {
            tracing::error!(%session, count, error = %e, "could not put undelivered envelopes back into redis; they are lost (peers resend)");
        }
    }

    async fn take(&self, session: &SessionId, now: u64) -> Vec<Outgoing> {
        let key = self.queue_key(session);
        let mut conn = self.conn.clone();
        let mut taken = Vec::new();
        loop {
            let batch: Option<Vec<Vec<u8>>> = match redis::cmd("LPOP")
                .arg(&key)
                .arg(TAKE_BATCH)
                .query_async(&mut conn)
                .await
            {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(%session, error = %e, "taking the session's queue from redis failed");
                    break;
                }
            };
            let Some(batch) = batch else { break };
            let full = batch.len() == TAKE_BATCH;
            taken.extend(
                batch
                    .into_iter()
                    .filter_map(|entry| decode_entry(entry, now)),
            );
            if !full {
                break;
            }
        }
        taken
    }

    async fn attach(&self, session: &SessionId) {
        let mut conn = self.conn.clone();
        let result: Result<i64, _> = self
            .claim
            .key(self.presence_key(session))
            .arg(&self.replica)
            .arg(PRESENCE_TTL.as_secs())
            .arg(1)
            .invoke_async(&mut conn)
            .await;
        if let Err(e) = result {
            tracing::warn!(%session, error = %e, "announcing the session in redis failed; other replicas cannot reach it");
        }
    }

    async fn detach(&self, session: &SessionId) {
        let mut conn = self.conn.clone();
        let result: Result<i64, _> = self
            .release
            .key(self.presence_key(session))
            .arg(&self.replica)
            .invoke_async(&mut conn)
            .await;
        if let Err(e) = result {
            tracing::warn!(%session, error = %e, "releasing the session in redis failed; its claim lapses by itself");
        }
    }

    async fn refresh(&self, sessions: Vec<SessionId>) {
        let mut conn = self.conn.clone();
        for chunk in sessions.chunks(512) {
            // Load the script once per round trip (Redis may have restarted and lost it),
            // then run it by hash instead of sending its text for every session.
            let mut pipe = redis::pipe();
            pipe.cmd("SCRIPT").arg("LOAD").arg(CLAIM_SCRIPT).ignore();
            for session in chunk {
                pipe.cmd("EVALSHA")
                    .arg(self.claim.get_hash())
                    .arg(1)
                    .arg(self.presence_key(session))
                    .arg(&self.replica)
                    .arg(PRESENCE_TTL.as_secs())
                    .arg(0)
                    .ignore();
            }
            if let Err(e) = pipe.query_async::<()>(&mut conn).await {
                tracing::warn!(error = %e, "renewing session presence in redis failed");
                return;
            }
        }
    }

    async fn sweep(&self, _now: u64) -> usize {
        // Queue keys expire after their newest deadline; expired entries are skipped on take.
        0
    }

    fn depth(&self) -> Option<usize> {
        None
    }

    fn describe(&self) -> String {
        format!(
            "redis {} (replica {}, at most {} per session)",
            self.url, self.replica, self.per_session
        )
    }

    fn wakeups(&self) -> Option<mpsc::Receiver<SessionId>> {
        self.wakeups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

/// `<deadline>|<bytes>`: a prefix the push script can read to drop expired heads.
fn encode_entry(bytes: &[u8], deadline: u64) -> Vec<u8> {
    let mut entry = Vec::with_capacity(bytes.len() + 21);
    entry.extend_from_slice(deadline.to_string().as_bytes());
    entry.push(b'|');
    entry.extend_from_slice(bytes);
    entry
}

/// The envelope of an entry if it is well formed and still valid at `now`.
fn decode_entry(entry: Vec<u8>, now: u64) -> Option<Outgoing> {
    let bar = entry.iter().position(|&b| b == b'|')?;
    let deadline: u64 = std::str::from_utf8(&entry[..bar]).ok()?.parse().ok()?;
    if deadline <= now {
        return None;
    }
    let mut bytes = Bytes::from(entry);
    Some((bytes.split_off(bar + 1), deadline))
}

/// Parses the session text published on a wake channel (`twin` or `twin:sid`).
fn parse_session(text: &str) -> Option<SessionId> {
    let (twin, sid) = match text.split_once(':') {
        Some((twin, sid)) => (twin, Some(sid.to_string())),
        None => (text, None),
    };
    Some(SessionId {
        twin: twin.parse().ok()?,
        sid: sid.filter(|s| !s.is_empty()),
    })
}

/// Subscribes to this replica's wake channel and forwards the sessions named there,
/// resubscribing after errors; after a renewed subscription it sends [`WAKE_ALL`], since
/// wake-ups published in between were missed.
async fn listen_for_wakeups(
    client: redis::Client,
    channel: String,
    wakeups: mpsc::Sender<SessionId>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    loop {
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let mut pubsub = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = subscribed => match result {
                Ok(pubsub) => pubsub,
                Err(e) => {
                    tracing::warn!(error = %e, "subscribing to redis wake-ups failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            },
        };
        backoff = Duration::from_millis(100);
        if !first {
            // Wake-ups published while we were away are lost: re-check every session.
            tracing::info!("redis wake-up subscription renewed");
            let _ = wakeups.send(WAKE_ALL.clone()).await;
        }
        first = false;
        let mut messages = pubsub.on_message();
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => return,
                message = messages.next() => message,
            };
            let Some(message) = message else { break };
            let Ok(text) = message.get_payload::<String>() else {
                continue;
            };
            match parse_session(&text) {
                Some(session) => {
                    if wakeups.send(session).await.is_err() {
                        return;
                    }
                }
                None => tracing::warn!(%text, "malformed wake-up ignored"),
            }
        }
        tracing::warn!("redis wake-up subscription lost; resubscribing");
    }
}

/// A wake-up meaning "re-check every session connected here" (twin 0 never logs in).
pub static WAKE_ALL: SessionId = SessionId { twin: 0, sid: None };

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_expire() {
        let entry = encode_entry(b"a|b", 100);
        assert_eq!(entry, b"100|a|b");
        let (bytes, deadline) = decode_entry(entry.clone(), 99).unwrap();
        assert_eq!((&bytes[..], deadline), (&b"a|b"[..], 100));
        assert!(decode_entry(entry, 100).is_none());
        assert!(decode_entry(b"garbage".to_vec(), 0).is_none());
    }

    #[test]
    fn wake_texts_name_sessions() {
        assert_eq!(parse_session("7"), Some(SessionId { twin: 7, sid: None }));
        assert_eq!(
            parse_session("7:web:x"),
            Some(SessionId {
                twin: 7,
                sid: Some("web:x".into())
            })
        );
        assert_eq!(parse_session("x"), None);
    }
}
