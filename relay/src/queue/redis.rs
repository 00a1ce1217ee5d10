//! [`RedisQueues`]: offline queues and session presence in Redis (`--redis`).
//!
//! Several relay processes ("replicas") behind one domain share one Redis and act as one
//! relay. Keys, all under a prefix (default `rmb:relay:`):
//!
//! | key | type | content | bounded by |
//! |---|---|---|---|
//! | `q:<session>` | list | `<deadline>|<envelope bytes>`, oldest first | cap per session; key expires after the newest deadline |
//! | `at:<session>` | string | id of the replica holding the session | expires unless renewed ([`PRESENCE_TTL`]) |
//! | `qb:<session>` | integer | bytes in `q:<session>` | expires with it |
//! | `tb:<twin>` | integer | bytes in all queues of the twin | expires after the newest deadline |
//! | `ts:<twin>` | set | session texts of the twin's queues | `--sessions-per-twin`; expires likewise |
//!
//! The byte counters are kept by the push and take scripts; entries that expire inside a
//! list are only released when pushed out or taken, so the counters err on the high side
//! until their keys expire (a bound, not an exact figure).
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
use futures_util::future::BoxFuture;
use redis::aio::ConnectionManager;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{QueueError, QueueLimits, Queues};
use crate::switch::{Outgoing, SessionId};

/// How long a replica's claim on a session lasts without renewal (a crashed replica's
/// claims lapse by themselves).
pub const PRESENCE_TTL: Duration = Duration::from_secs(60);

/// How long a queue key outlives the newest deadline in it.
const QUEUE_GRACE: u64 = 60;

/// Longest TTL given to a queue key, whatever deadline an entry claims (Redis refuses
/// expire times that overflow; routing refuses deadlines past `--max-lifetime` anyway).
const MAX_KEY_TTL: u64 = 366 * 24 * 3600;

/// Most envelopes taken from Redis per round trip.
const TAKE_BATCH: usize = 1024;

/// Queue one or more entries (see the module docs for the keys).
/// KEYS = queue, presence, session bytes, twin bytes, twin session set.
/// ARGV = cap, key ttl, fail-fast 0/1, session text, now, wake channel prefix, front 0/1,
/// session byte limit, twin byte limit, sessions per twin, entries…
/// Returns {0, length} queued, {1, length} full, {2, 0} offline (fail-fast),
/// {3, limit} session bytes, {4, limit} too many session ids, {5, limit} twin bytes.
const PUSH_SCRIPT: &str = r#"
local owner = redis.call('GET', KEYS[2])
if ARGV[3] == '1' and not owner then return {2, 0} end
local cap = tonumber(ARGV[1])
local now = tonumber(ARGV[5])
local slimit = tonumber(ARGV[8])
local tlimit = tonumber(ARGV[9])
local add = 0
for i = 11, #ARGV do add = add + #ARGV[i] end
local sbytes = tonumber(redis.call('GET', KEYS[3]) or '0')
local tbytes = tonumber(redis.call('GET', KEYS[4]) or '0')
local member = redis.call('SISMEMBER', KEYS[5], ARGV[4])
if ARGV[7] == '1' then
  for i = #ARGV, 11, -1 do redis.call('LPUSH', KEYS[1], ARGV[i]) end
else
  if member == 0 and redis.call('SCARD', KEYS[5]) >= tonumber(ARGV[10]) then
    return {4, tonumber(ARGV[10])}
  end
  local n = #ARGV - 10
  local len = redis.call('LLEN', KEYS[1])
  local freed = 0
  while len + n > cap or sbytes + add > slimit or tbytes + add > tlimit do
    local head = redis.call('LINDEX', KEYS[1], 0)
    if not head then break end
    local deadline = tonumber(string.match(head, '^(%d+)|'))
    if deadline and deadline > now then break end
    redis.call('LPOP', KEYS[1])
    len = len - 1
    sbytes = sbytes - #head
    tbytes = tbytes - #head
    freed = freed + #head
  end
  if freed > 0 then
    redis.call('DECRBY', KEYS[3], freed)
    redis.call('DECRBY', KEYS[4], freed)
  end
  if len + n > cap then return {1, len} end
  if sbytes + add > slimit then return {3, slimit} end
  if tbytes + add > tlimit then return {5, tlimit} end
  for i = 11, #ARGV do redis.call('RPUSH', KEYS[1], ARGV[i]) end
end
redis.call('INCRBY', KEYS[3], add)
redis.call('INCRBY', KEYS[4], add)
if member == 0 then redis.call('SADD', KEYS[5], ARGV[4]) end
-- The queue's TTL stands for all four keys: they are created (or emptied and made
-- again) together with it, so one check per push is enough to renew them all.
local ttl = tonumber(ARGV[2])
if redis.call('TTL', KEYS[1]) < ttl then
  for k = 1, 5 do
    if k ~= 2 then redis.call('EXPIRE', KEYS[k], ttl) end
  end
end
if owner then redis.call('PUBLISH', ARGV[6] .. owner, ARGV[4]) end
return {0, redis.call('LLEN', KEYS[1])}
"#;

/// Take entries from the head of a queue, about ARGV[1] bytes of them (at least one) and
/// at most ARGV[3], releasing their bytes. KEYS = queue, session bytes, twin bytes, twin
/// session set; ARGV[2] = session text.
const TAKE_SCRIPT: &str = r#"
local budget = tonumber(ARGV[1])
local items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[3]) - 1)
local n = 0
local total = 0
for i = 1, #items do
  local size = #items[i]
  if n > 0 and total + size > budget then break end
  n = i
  total = total + size
end
for i = #items, n + 1, -1 do items[i] = nil end
if n > 0 then
  redis.call('LTRIM', KEYS[1], n, -1)
  if redis.call('DECRBY', KEYS[2], total) <= 0 then redis.call('DEL', KEYS[2]) end
  if redis.call('DECRBY', KEYS[3], total) <= 0 then redis.call('DEL', KEYS[3]) end
end
if redis.call('LLEN', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[2])
  redis.call('SREM', KEYS[4], ARGV[2])
end
return items
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
    client: redis::Client,
    prefix: String,
    replica: String,
    limits: QueueLimits,
    push: redis::Script,
    take: redis::Script,
    claim: redis::Script,
    release: redis::Script,
    wakeups: Mutex<Option<mpsc::Receiver<SessionId>>>,
    /// The subscription that fills `wakeups`, until the server takes it to run it.
    listener: Mutex<Option<BoxFuture<'static, ()>>>,
    url: String,
}

impl RedisQueues {
    /// Connects to `url` and keeps keys under `prefix`. The listener for wake-ups
    /// addressed to this replica (until `shutdown`) is handed to the server to run
    /// ([`Queues::wakeup_listener`]).
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
        let listener = Box::pin(listen_for_wakeups(client.clone(), channel, tx, shutdown));
        Ok(RedisQueues {
            conn,
            client,
            prefix: prefix.to_string(),
            replica,
            limits: QueueLimits::with_count(per_session.max(1)),
            push: redis::Script::new(PUSH_SCRIPT),
            take: redis::Script::new(TAKE_SCRIPT),
            claim: redis::Script::new(CLAIM_SCRIPT),
            release: redis::Script::new(RELEASE_SCRIPT),
            wakeups: Mutex::new(Some(rx)),
            listener: Mutex::new(Some(listener)),
            url: url.to_string(),
        })
    }

    /// The same queues with other bounds (the total bound does not apply: Redis's own
    /// `maxmemory` is the total).
    pub fn with_limits(mut self, limits: QueueLimits) -> Self {
        self.limits = QueueLimits {
            per_session: limits.per_session.max(1),
            sessions_per_twin: limits.sessions_per_twin.max(1),
            ..limits
        };
        self
    }

    /// This process's replica id (the value of the presence keys it owns).
    pub fn replica(&self) -> &str {
        &self.replica
    }

    fn queue_key(&self, session: &SessionId) -> String {
        format!("{}q:{session}", self.prefix)
    }

    fn presence_key(&self, session: &SessionId) -> String {
        presence_key(&self.prefix, session)
    }

    /// A client for the same Redis (for subscriptions, which need their own connection).
    pub fn client(&self) -> redis::Client {
        self.client.clone()
    }

    /// The key prefix the replicas share.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn session_bytes_key(&self, session: &SessionId) -> String {
        format!("{}qb:{session}", self.prefix)
    }

    fn twin_bytes_key(&self, session: &SessionId) -> String {
        format!("{}tb:{}", self.prefix, session.twin)
    }

    fn twin_sessions_key(&self, session: &SessionId) -> String {
        format!("{}ts:{}", self.prefix, session.twin)
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
        let ttl = newest
            .saturating_sub(now)
            .saturating_add(QUEUE_GRACE)
            .min(MAX_KEY_TTL);
        let mut invocation = self.push.prepare_invoke();
        invocation
            .key(self.queue_key(session))
            .key(self.presence_key(session))
            .key(self.session_bytes_key(session))
            .key(self.twin_bytes_key(session))
            .key(self.twin_sessions_key(session))
            .arg(self.limits.per_session)
            .arg(ttl)
            .arg(u8::from(fail_fast))
            .arg(session.to_string())
            .arg(now)
            .arg(format!("{}wake:", self.prefix))
            .arg(u8::from(front))
            .arg(self.limits.session_bytes)
            .arg(self.limits.twin_bytes)
            .arg(self.limits.sessions_per_twin);
        for (bytes, deadline) in items {
            invocation.arg(encode_entry(bytes, *deadline));
        }
        let mut conn = self.conn.clone();
        let (status, value): (u8, usize) = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| QueueError::Unavailable(e.to_string()))?;
        match status {
            0 => Ok(()),
            1 => Err(QueueError::Full(value)),
            3 => Err(QueueError::SessionBytes { limit: value }),
            4 => Err(QueueError::TooManySessions {
                twin: session.twin,
                limit: value,
            }),
            5 => Err(QueueError::TwinBytes { limit: value }),
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

    async fn take(&self, session: &SessionId, now: u64, max_bytes: usize) -> Vec<Outgoing> {
        let mut conn = self.conn.clone();
        let result: Result<Vec<Vec<u8>>, _> = self
            .take
            .key(self.queue_key(session))
            .key(self.session_bytes_key(session))
            .key(self.twin_bytes_key(session))
            .key(self.twin_sessions_key(session))
            .arg(max_bytes)
            .arg(session.to_string())
            .arg(TAKE_BATCH)
            .invoke_async(&mut conn)
            .await;
        match result {
            Ok(entries) => entries
                .into_iter()
                .filter_map(|entry| decode_entry(entry, now))
                .collect(),
            Err(e) => {
                tracing::warn!(%session, error = %e, "taking the session's queue from redis failed");
                Vec::new()
            }
        }
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

    fn shared_redis(&self) -> Option<(ConnectionManager, String)> {
        Some((self.conn.clone(), self.prefix.clone()))
    }

    fn describe(&self) -> String {
        format!(
            "redis {} (replica {}, at most {} envelopes and {} bytes per session, {} bytes and {} session ids per twin)",
            self.url,
            self.replica,
            self.limits.per_session,
            self.limits.session_bytes,
            self.limits.twin_bytes,
            self.limits.sessions_per_twin
        )
    }

    fn wakeups(&self) -> Option<mpsc::Receiver<SessionId>> {
        self.wakeups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    fn wakeup_listener(&self) -> Option<BoxFuture<'static, ()>> {
        self.listener
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

/// The key naming the replica that holds `session` (the replica links read it too).
pub fn presence_key(prefix: &str, session: &SessionId) -> String {
    format!("{prefix}at:{session}")
}

/// Parses the session text published on a wake channel (`twin` or `twin:sid`).
pub fn parse_session(text: &str) -> Option<SessionId> {
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
