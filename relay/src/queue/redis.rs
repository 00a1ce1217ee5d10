//! [`RedisQueues`]: offline queues and session presence in Redis (`--redis`), on a single
//! Redis, a Redis Cluster or a Sentinel set ([`RedisConn`]).
//!
//! Several relay processes ("replicas") behind one domain share the store and act as one
//! relay. Keys, all under a prefix (default `rmb:relay:`); every key of twin `<twin>`
//! carries the hash tag `{<twin>}`, so the scripts that touch several of them run on one
//! cluster node:
//!
//! | key | type | content | bounded by |
//! |---|---|---|---|
//! | `q:{<twin>}[:<sid>]` | list | `<deadline>|<envelope bytes>`, oldest first | cap per session; expires after the newest deadline |
//! | `at:{<twin>}[:<sid>]` | string | id of the replica holding the session | expires unless renewed ([`PRESENCE_TTL`]) |
//! | `tw:{<twin>}` | hash | per session id: bytes queued (`b:<sid>`) and queue expiry (`e:<sid>`); `t`: the hash's expiry | `--sessions-per-twin`; expires with the last queue |
//!
//! (Before clusters were supported the keys were `q:<session>`, `at:<session>`,
//! `qb:<session>`, `tb:<twin>` and `ts:<twin>`; queues left under those names by an
//! older relay are not read.)
//!
//! The byte counters are kept by the push and take scripts ([`scripts`]); entries that
//! expire inside a list are only released when pushed out or taken, so the counters err
//! on the high side until their keys expire (a bound, not an exact figure).
//!
//! Queueing and looking up presence happen in one script. When some replica holds the
//! session, that replica is woken on its channel `<prefix>wake:<replica>` with the
//! session's text: on a single Redis (or Sentinel) the script PUBLISHes it itself; on a
//! cluster the script returns the holder and the relay SPUBLISHes to the shard owning the
//! channel (the channel's slot is the holder's, not the twin's, so the script cannot).
//! The replica with the connection then takes the envelope out and hands it over
//! ([`super::handoff`]). A session that connects first announces itself, then takes its
//! queue: whichever order a sender and a connecting session reach Redis in, the envelope
//! is delivered.
//!
//! With [`RedisQueues::with_wait`] (`--redis-wait-replicas N`), a push is acknowledged
//! only once `WAIT` says N replicas of the node have it; otherwise the sender is told
//! [`QueueError::NotReplicated`].

mod scripts;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Bytes;
use futures_util::future::BoxFuture;
use redis::aio::ConnectionManager;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{QueueError, QueueLimits, Queues};
use crate::redis_conn::{Delivery, RedisConn};
use crate::switch::{Outgoing, SessionId};

/// How long a replica's claim on a session lasts without renewal (a crashed replica's
/// claims lapse by themselves).
pub const PRESENCE_TTL: Duration = Duration::from_secs(60);

/// How long a queue key outlives the newest deadline in it.
const QUEUE_GRACE: u64 = 60;

/// Seconds added to a queue key's expiry when it is renewed, so that later pushes with
/// similar deadlines need not renew it again (one `EXPIRE` per key per this many
/// seconds of traffic, instead of one per push).
pub const RENEW_SLACK: u64 = 60;

/// Longest TTL given to a queue key, whatever deadline an entry claims (Redis refuses
/// expire times that overflow; routing refuses deadlines past `--max-lifetime` anyway).
const MAX_KEY_TTL: u64 = 366 * 24 * 3600;

/// Most envelopes taken from Redis per round trip.
const TAKE_BATCH: usize = 1024;

/// Wake-ups waiting to be handed to the server (beyond it, the subscription waits).
const WAKEUP_BUFFER: usize = 4096;

/// Sessions renewed per pipelined round trip.
const REFRESH_CHUNK: usize = 512;

/// `WAIT` settings: how many replicas must have a push before it counts as accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitPolicy {
    /// Replicas that must acknowledge (`--redis-wait-replicas`); 0 waits for none.
    pub replicas: u32,
    /// Longest wait (`--redis-wait-timeout-ms`).
    pub timeout: Duration,
}

/// Offline queues and presence shared by the replicas of one relay through Redis.
pub struct RedisQueues {
    conn: RedisConn,
    prefix: String,
    replica: String,
    limits: QueueLimits,
    wait: WaitPolicy,
    push: redis::Script,
    take: redis::Script,
    claim: redis::Script,
    release: redis::Script,
    wakeups: Mutex<Option<mpsc::Receiver<SessionId>>>,
    /// The subscription that fills `wakeups`, until the server takes it to run it.
    listener: Mutex<Option<BoxFuture<'static, ()>>>,
    empty: Arc<EmptyQueues>,
}

/// The queues of sessions connected here that this replica saw empty, so that the take
/// a session makes after emptying its queue (it takes until a take returns nothing)
/// costs no round trip. Anything that may put an envelope in a session's queue bumps its
/// epoch first: a wake-up naming it (every push to a held session publishes one), a
/// push by this replica, a renewed subscription (all are forgotten). A take skips Redis
/// only if the queue was seen empty at the current epoch. Entries live from a session's
/// first take until it detaches.
#[derive(Default)]
pub struct EmptyQueues {
    seen: Mutex<HashMap<SessionId, Seen>>,
}

#[derive(Default)]
struct Seen {
    epoch: u64,
    empty_at: Option<u64>,
}

impl EmptyQueues {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Seen>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Something may have been queued for `session`.
    fn touch(&self, session: &SessionId) {
        if let Some(seen) = self.lock().get_mut(session) {
            seen.epoch += 1;
        }
    }

    /// Anything may have been queued for anyone.
    fn touch_all(&self) {
        self.lock().clear();
    }

    /// `None` if `session`'s queue is known to be empty, else the epoch to pass to
    /// [`EmptyQueues::taken`].
    fn start(&self, session: &SessionId) -> Option<u64> {
        let mut seen = self.lock();
        let entry = seen.entry(session.clone()).or_default();
        match entry.empty_at {
            Some(at) if at == entry.epoch => None,
            _ => Some(entry.epoch),
        }
    }

    /// A take that started at `epoch` found the queue `emptied` (or not).
    fn taken(&self, session: &SessionId, epoch: u64, emptied: bool) {
        if let Some(seen) = self.lock().get_mut(session) {
            seen.empty_at = emptied.then_some(epoch);
        }
    }

    fn forget(&self, session: &SessionId) {
        self.lock().remove(session);
    }
}

/// Why [`RedisQueues`] could not start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The key prefix has a brace, which would change the keys' hash tags.
    #[error("the redis key prefix '{0}' must not contain '{{' or '}}' (keys carry hash tags)")]
    Prefix(String),
    /// Redis could not be reached, or the URL is wrong.
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

impl RedisQueues {
    /// Connects to the `--redis` value `url` (any accepted form) and keeps keys under
    /// `prefix`. The listener for wake-ups stops on `shutdown`.
    pub async fn connect(
        url: &str,
        prefix: &str,
        per_session: usize,
        shutdown: CancellationToken,
    ) -> Result<Self, SetupError> {
        let conn = RedisConn::open(url).await?;
        Self::with_conn(conn, prefix, per_session, shutdown)
    }

    /// Uses an open connection (shared with the rest of the relay) and keeps keys under
    /// `prefix`. The listener for wake-ups stops on `shutdown`.
    pub fn with_conn(
        conn: RedisConn,
        prefix: &str,
        per_session: usize,
        shutdown: CancellationToken,
    ) -> Result<Self, SetupError> {
        if prefix.contains(['{', '}']) {
            return Err(SetupError::Prefix(prefix.to_string()));
        }
        let replica = hex::encode(rand::random::<[u8; 8]>());
        let (tx, rx) = mpsc::channel(WAKEUP_BUFFER);
        let channel = format!("{prefix}wake:{replica}");
        let (subscription, deliveries) = conn.subscription(channel, shutdown, WAKEUP_BUFFER);
        let empty = Arc::new(EmptyQueues::default());
        let touched = Arc::clone(&empty);
        let listener = Box::pin(async move {
            tokio::join!(subscription, forward_wakeups(deliveries, tx, touched));
        });
        Ok(RedisQueues {
            conn,
            prefix: prefix.to_string(),
            replica,
            limits: QueueLimits::with_count(per_session.max(1)),
            wait: WaitPolicy {
                replicas: 0,
                timeout: Duration::ZERO,
            },
            push: redis::Script::new(scripts::PUSH),
            take: redis::Script::new(scripts::TAKE),
            claim: redis::Script::new(scripts::CLAIM),
            release: redis::Script::new(scripts::RELEASE),
            wakeups: Mutex::new(Some(rx)),
            listener: Mutex::new(Some(listener)),
            empty,
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

    /// The same queues, acknowledging a push only once `wait.replicas` Redis replicas
    /// have it (see the module docs).
    pub fn with_wait(mut self, wait: WaitPolicy) -> Self {
        self.wait = wait;
        self
    }

    /// This process's replica id (the value of the presence keys it owns).
    pub fn replica(&self) -> &str {
        &self.replica
    }

    fn queue_key(&self, session: &SessionId) -> String {
        session_key(&self.prefix, "q", session)
    }

    fn presence_key(&self, session: &SessionId) -> String {
        presence_key(&self.prefix, session)
    }

    /// The key prefix the replicas share.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn twin_key(&self, session: &SessionId) -> String {
        twin_key(&self.prefix, session.twin)
    }

    async fn run_push(
        &self,
        session: &SessionId,
        items: &[Outgoing],
        now: u64,
        fail_fast: bool,
        front: bool,
    ) -> Result<(), QueueError> {
        self.empty.touch(session);
        let newest = items.iter().map(|(_, d)| *d).max().unwrap_or(now);
        let ttl = newest
            .saturating_sub(now)
            .saturating_add(QUEUE_GRACE)
            .min(MAX_KEY_TTL);
        let cluster = self.conn.is_cluster();
        let text = session.to_string();
        let wake_prefix = format!("{}wake:", self.prefix);
        let queue_key = self.queue_key(session);
        let mut invocation = self.push.prepare_invoke();
        invocation
            .key(&queue_key)
            .key(self.presence_key(session))
            .key(self.twin_key(session))
            .arg(self.limits.per_session)
            .arg(ttl)
            .arg(u8::from(fail_fast))
            .arg(&text)
            .arg(now)
            .arg(if cluster { "" } else { wake_prefix.as_str() })
            .arg(u8::from(front))
            .arg(self.limits.session_bytes)
            .arg(self.limits.twin_bytes)
            .arg(self.limits.sessions_per_twin)
            .arg(session.sid.as_deref().unwrap_or(""))
            .arg(RENEW_SLACK);
        for (bytes, deadline) in items {
            invocation.arg(encode_entry(bytes, *deadline));
        }
        let mut conn = self.conn.clone();
        let (status, value, owner): (u8, usize, String) = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| QueueError::Unavailable(e.to_string()))?;
        match status {
            0 => {}
            1 => return Err(QueueError::Full(value)),
            3 => return Err(QueueError::SessionBytes { limit: value }),
            4 => {
                return Err(QueueError::TooManySessions {
                    twin: session.twin,
                    limit: value,
                });
            }
            5 => return Err(QueueError::TwinBytes { limit: value }),
            _ => return Err(QueueError::Offline),
        }
        let waited = if self.wait.replicas > 0 {
            Some(
                self.conn
                    .wait_replicas(&queue_key, self.wait.replicas, self.wait.timeout)
                    .await,
            )
        } else {
            None
        };
        if cluster && !owner.is_empty() {
            let channel = format!("{wake_prefix}{owner}");
            if let Err(e) = self.conn.publish(&channel, &text).await {
                // The holder re-checks its sessions after it resubscribes; until then the
                // envelope waits in the queue.
                tracing::debug!(%session, error = %e, "publishing a wake-up failed");
            }
        }
        match waited {
            None => Ok(()),
            Some(Ok(acked)) if acked >= self.wait.replicas => Ok(()),
            Some(Ok(acked)) => Err(QueueError::NotReplicated {
                wanted: self.wait.replicas,
                acked,
            }),
            Some(Err(e)) => Err(QueueError::Unavailable(format!(
                "waiting for redis replicas: {e}"
            ))),
        }
    }

    /// Renews presence claims of `chunk` in one pipelined round trip.
    async fn refresh_chunk(&self, chunk: &[SessionId]) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
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
        pipe.query_async::<()>(&mut self.conn.clone()).await
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
            tracing::error!(%session, count, error = %e, "could not put undelivered envelopes back into redis; they may be lost (peers resend)");
        }
    }

    async fn take(&self, session: &SessionId, now: u64, max_bytes: usize) -> Vec<Outgoing> {
        let Some(epoch) = self.empty.start(session) else {
            return Vec::new();
        };
        let mut conn = self.conn.clone();
        let result: Result<(u8, Vec<Vec<u8>>), _> = self
            .take
            .key(self.queue_key(session))
            .key(self.twin_key(session))
            .arg(max_bytes)
            .arg(TAKE_BATCH)
            .arg(session.sid.as_deref().unwrap_or(""))
            .invoke_async(&mut conn)
            .await;
        match result {
            Ok((emptied, entries)) => {
                self.empty.taken(session, epoch, emptied == 1);
                entries
                    .into_iter()
                    .filter_map(|entry| decode_entry(entry, now))
                    .collect()
            }
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
        self.empty.forget(session);
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
        for chunk in sessions.chunks(REFRESH_CHUNK) {
            // Run by hash; Redis (or a promoted replica, or a new cluster node) may not
            // know the script yet: load it everywhere once and try again.
            let mut result = self.refresh_chunk(chunk).await;
            if matches!(&result, Err(e) if e.kind() == redis::ErrorKind::NoScriptError) {
                result = match self.conn.load_script(scripts::CLAIM).await {
                    Ok(()) => self.refresh_chunk(chunk).await,
                    Err(e) => Err(e),
                };
            }
            if let Err(e) = result {
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
        self.conn
            .single_manager()
            .map(|manager| (manager, self.prefix.clone()))
    }

    fn shared_store(&self) -> Option<(RedisConn, String)> {
        Some((self.conn.clone(), self.prefix.clone()))
    }

    fn describe(&self) -> String {
        format!(
            "redis {} (replica {}, at most {} envelopes and {} bytes per session, {} bytes and {} session ids per twin, waiting for {} redis replicas)",
            self.conn.target(),
            self.replica,
            self.limits.per_session,
            self.limits.session_bytes,
            self.limits.twin_bytes,
            self.limits.sessions_per_twin,
            self.wait.replicas
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

/// `<prefix><kind>:{<twin>}[:<sid>]`: a key of one session, tagged with its twin.
fn session_key(prefix: &str, kind: &str, session: &SessionId) -> String {
    match &session.sid {
        Some(sid) => format!("{prefix}{kind}:{{{}}}:{sid}", session.twin),
        None => format!("{prefix}{kind}:{{{}}}", session.twin),
    }
}

/// `<prefix>tw:{<twin>}`: the twin's hash of byte counters and expiries.
fn twin_key(prefix: &str, twin: u32) -> String {
    format!("{prefix}tw:{{{twin}}}")
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
pub fn decode_entry(entry: Vec<u8>, now: u64) -> Option<Outgoing> {
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
    session_key(prefix, "at", session)
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

/// Turns what this replica's wake channel delivers into sessions to poke: each message
/// names one; a renewed subscription (messages may have been missed) is [`WAKE_ALL`].
/// Each is noted in `empty` before the session hears of it.
async fn forward_wakeups(
    mut deliveries: mpsc::Receiver<Delivery>,
    wakeups: mpsc::Sender<SessionId>,
    empty: Arc<EmptyQueues>,
) {
    while let Some(delivery) = deliveries.recv().await {
        let session = match delivery {
            Delivery::Resubscribed => {
                empty.touch_all();
                WAKE_ALL.clone()
            }
            Delivery::Message(payload) => {
                match std::str::from_utf8(&payload).ok().and_then(parse_session) {
                    Some(session) => session,
                    None => {
                        tracing::debug!(len = payload.len(), "malformed wake-up ignored");
                        continue;
                    }
                }
            }
        };
        if session != WAKE_ALL {
            empty.touch(&session);
        }
        if wakeups.send(session).await.is_err() {
            return;
        }
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

    #[test]
    fn keys_of_one_twin_share_a_slot() {
        use crate::redis_conn::key_slot;
        let session = SessionId {
            twin: 7,
            sid: Some("web".into()),
        };
        assert_eq!(presence_key("rmb:relay:", &session), "rmb:relay:at:{7}:web");
        let twin = twin_key("rmb:relay:", 7);
        assert_eq!(twin, "rmb:relay:tw:{7}");
        assert_eq!(
            session_key("rmb:relay:", "q", &session),
            "rmb:relay:q:{7}:web"
        );
        let slot = key_slot(twin.as_bytes());
        for kind in ["q", "at"] {
            for s in [&session, &SessionId { twin: 7, sid: None }] {
                assert_eq!(
                    key_slot(session_key("rmb:relay:", kind, s).as_bytes()),
                    slot
                );
            }
        }
        assert_ne!(key_slot(twin_key("rmb:relay:", 8).as_bytes()), slot);
    }
}
