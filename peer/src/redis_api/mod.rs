//! The rmb-rs compatible Redis JSON API (rmb-rs-protocol §6.3–§6.8) over the core
//! [`Peer`]: apps that worked with rmb-rs's `rmb-peer` work with ours unchanged.
//!
//! - [`json`], [`keys`]: the documents and key names apps see;
//! - [`validate`]: checks on what apps push (every refusal reaches the client's `ret`
//!   when it can be read: no silent drops);
//! - [`local`]: `msgbus.system.local` / `msgbus.system.reply` → core;
//! - [`inbound`]: core → `msgbus.<cmd>` / the client's `ret`;
//! - [`pending`]: requests in flight, so a destination that never answers is reported;
//! - [`unserved`]: requests no service took from `msgbus.<cmd>` before they were about
//!   to expire are taken back and answered with an error;
//! - [`admission`]: a service that cannot keep up gets a short queue of fresh requests,
//!   and the requests it could not serve in time are refused on arrival;
//! - [`outbox`], [`scripts`]: what makes it crash-safe: requests not answered yet are
//!   kept in Redis and sent again after a restart; requests received are marked so a
//!   service sees each once, and a client gets each answer once;
//! - [`writer`], [`conn`]: pipelined writes and self-healing connections.
//!
//! Also ours: `msgbus.system.status` holds the peer's status JSON ([`ApiStatus`]),
//! refreshed every second with a 5 s expiry, for `rmb status`.

pub mod admission;
pub mod conn;
pub mod inbound;
pub mod json;
pub mod keys;
pub mod local;
pub mod outbox;
pub mod pending;
pub mod scripts;
pub mod unserved;
pub mod validate;
pub mod writer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::core::types::DEFAULT_EXPIRATION;
use crate::core::{Inbound, OutgoingResponse, Peer, PeerStatus, Reason, RemoteError, codes};
use conn::RedisConn;
use json::JsonIncomingResponse;
use local::Pump;
use pending::Pending;
use rmb_proto::Address;
use validate::Rejection;
use writer::{Write, Writer};

/// Sends (requests and replies) in flight at once before the pump waits.
pub const MAX_IN_FLIGHT: usize = 4096;
/// How often expired requests are looked for.
const SWEEP_EVERY: Duration = Duration::from_millis(200);
/// How often the status key is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// The code of the error a client gets for a destination that never answered.
pub const TIMEOUT_CODE: u32 = codes::VALIDATION;

/// Bounds on what other twins can make the API keep in the local Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes one `msgbus.<cmd>` list may hold (estimated by Redis); past it a
    /// request for that command gets an error reply.
    pub command_queue_bytes: u64,
    /// Most commands with requests waiting at once; a request for another one gets
    /// an error reply.
    pub commands: u64,
    /// How long requests may wait in a service's list before new ones are refused.
    pub admission: admission::Settings,
}

/// Default of [`Limits::command_queue_bytes`]: 64 MiB.
pub const DEFAULT_COMMAND_QUEUE_BYTES: u64 = 64 << 20;
/// Default of [`Limits::commands`].
pub const DEFAULT_COMMANDS: u64 = 1000;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            command_queue_bytes: DEFAULT_COMMAND_QUEUE_BYTES,
            commands: DEFAULT_COMMANDS,
            admission: admission::Settings::default(),
        }
    }
}

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum RedisApiError {
    #[error("cannot use redis at {url}: {source}")]
    Redis {
        url: String,
        #[source]
        source: redis::RedisError,
    },
}

/// Counters of the Redis API, shown in the status key.
#[derive(Debug, Default)]
pub struct ApiCounters {
    requests_accepted: AtomicU64,
    requests_rejected: AtomicU64,
    requests_unreadable: AtomicU64,
    undeliverable: AtomicU64,
    timeouts: AtomicU64,
    requests_delivered: AtomicU64,
    responses_delivered: AtomicU64,
    responses_expired: AtomicU64,
    replies_sent: AtomicU64,
    replies_rejected: AtomicU64,
    replies_failed: AtomicU64,
}

/// A snapshot of [`ApiCounters`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiCountersSnapshot {
    /// Client requests accepted and handed to the core.
    pub requests_accepted: u64,
    /// Client requests refused, with an error on their `ret`.
    pub requests_rejected: u64,
    /// Client requests so broken that no `ret` could be read (only logged).
    pub requests_unreadable: u64,
    /// Destinations a request could not be sent to (error on `ret`).
    pub undeliverable: u64,
    /// Destinations that did not answer before the request expired (error on `ret`).
    pub timeouts: u64,
    /// Remote requests pushed to `msgbus.<cmd>`.
    pub requests_delivered: u64,

    /// Responses pushed to a client's `ret`.
    pub responses_delivered: u64,
    /// Responses that came after their request expired (dropped, as rmb-rs).
    pub responses_expired: u64,
    /// Service replies sent.
    pub replies_sent: u64,
    /// Service replies that could not be read.
    pub replies_rejected: u64,
    /// Service replies the core could not send.
    pub replies_failed: u64,
}

/// What `msgbus.system.status` holds: the core's [`PeerStatus`] plus the API counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiStatus {
    #[serde(flatten)]
    pub peer: PeerStatus,
    pub redis_api: ApiCountersSnapshot,
}

/// Bumps an [`ApiCounters`] field.
pub(crate) struct Counter;

impl Counter {
    fn bump(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

impl ApiCounters {
    /// Current values.
    pub fn snapshot(&self) -> ApiCountersSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ApiCountersSnapshot {
            requests_accepted: r(&self.requests_accepted),
            requests_rejected: r(&self.requests_rejected),
            requests_unreadable: r(&self.requests_unreadable),
            undeliverable: r(&self.undeliverable),
            timeouts: r(&self.timeouts),
            requests_delivered: r(&self.requests_delivered),
            responses_delivered: r(&self.responses_delivered),
            responses_expired: r(&self.responses_expired),
            replies_sent: r(&self.replies_sent),
            replies_rejected: r(&self.replies_rejected),
            replies_failed: r(&self.replies_failed),
        }
    }
}

/// State shared by the API's tasks.
pub(crate) struct Shared {
    peer: Peer,
    /// Crash-safe bookkeeping in Redis (outbox, seen markers); off for `--at-most-once`.
    durable: bool,
    writer: Writer,
    pending: Mutex<Pending>,
    counters: ApiCounters,
    sends: Arc<Semaphore>,
    limits: Limits,
    /// Command lists holding requests, watched for requests no service takes.
    unserved: unserved::Watched,
    /// How long the requests in each service list have waited.
    admission: Mutex<admission::Admission>,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn admission(&self) -> MutexGuard<'_, admission::Admission> {
        self.admission.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn send_permit(&self) -> OwnedSemaphorePermit {
        Arc::clone(&self.sends)
            .acquire_owned()
            .await
            .expect("the send semaphore is never closed")
    }

    /// The write telling the client why its request was refused (`None`, with a log
    /// line, when no `ret` could be read).
    fn rejection(&self, rejection: Rejection, bytes: &[u8]) -> Option<Write> {
        if let Some(reason) = rejection.reason {
            self.peer.count_refusal(reason);
        }
        match rejection.reply_to {
            Some(ret) => {
                Counter::bump(&self.counters.requests_rejected, 1);
                tracing::debug!(ret = %ret, error = %rejection.message, "request refused");
                let response = JsonIncomingResponse::local_error(
                    rejection.reference,
                    rejection.code,
                    rejection.message,
                );
                let json = serde_json::to_string(&response).expect("a response serialises");
                Some(Write::Push { list: ret, json })
            }
            None => {
                Counter::bump(&self.counters.requests_unreadable, 1);
                tracing::error!(
                    error = %rejection.message,
                    request = %String::from_utf8_lossy(&bytes[..bytes.len().min(256)]),
                    "unreadable request on {} (no `ret` to answer on)",
                    keys::LOCAL
                );
                None
            }
        }
    }

    /// Queues an answer from (or about) `twin` to request `uid` for the client's `ret`;
    /// a durable API pushes it only if that answer was not delivered yet.
    async fn answer(&self, uid: &str, twin: u32, ret: String, response: &JsonIncomingResponse) {
        let json = match serde_json::to_string(response) {
            Ok(json) => json,
            Err(e) => return tracing::error!(error = %e, "cannot serialise a response"),
        };
        let write = if self.durable {
            Write::DeliverOnce {
                outbox: keys::outbox(uid),
                field: keys::outbox_waiting(twin),
                list: ret,
                json,
            }
        } else {
            Write::Push { list: ret, json }
        };
        self.writer.send(write).await;
    }

    /// Refuses a request received from `source`: counted under `reason`, logged at most
    /// once per 10 s per twin and reason, and answered with an error envelope (sent in
    /// its own task, bounded by the send permits that shutdown waits for).
    pub(crate) fn refuse_request(
        &self,
        uid: String,
        source: Address,
        reason: Reason,
        code: u32,
        message: String,
    ) {
        self.peer.count_refusal(reason);
        if self.peer.log_allowed(u64::from(source.twin), reason) {
            tracing::warn!(%uid, %source, reason = reason.as_str(), %message, "refused a request (logged once per 10 s per twin and reason)");
        }
        let Ok(permit) = Arc::clone(&self.sends).try_acquire_owned() else {
            // Every send permit is taken: the sender resends or times out.
            return;
        };
        let peer = self.peer.clone();
        let reply = OutgoingResponse {
            uid,
            destination: source,
            reply: Err(RemoteError::new(code, message)),
            schema: None,
            timestamp: 0,
            expiration: DEFAULT_EXPIRATION,
        };
        tokio::spawn(async move {
            if let Err(e) = peer.send_response(reply).await {
                tracing::debug!(error = %e, "could not send an error envelope back");
            }
            drop(permit);
        });
    }

    fn status(&self) -> ApiStatus {
        ApiStatus {
            peer: self.peer.status(),
            redis_api: self.counters.snapshot(),
        }
    }
}

/// A running Redis API. Stop it with [`RedisApi::shutdown`], which also stops the peer.
pub struct RedisApi {
    shared: Arc<Shared>,
    stop: CancellationToken,
    abort: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    inbound: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl RedisApi {
    /// Connects to the local Redis at `redis_url` (failing fast when it is unreachable)
    /// and starts serving: the local pump, inbound delivery, timeouts and the status key.
    pub async fn start(
        peer: Peer,
        inbound: mpsc::Receiver<Inbound>,
        redis_url: &str,
    ) -> Result<RedisApi, RedisApiError> {
        Self::start_with_limits(peer, inbound, redis_url, Limits::default()).await
    }

    /// [`start`](RedisApi::start) with the given bounds on command lists.
    pub async fn start_with_limits(
        peer: Peer,
        inbound: mpsc::Receiver<Inbound>,
        redis_url: &str,
        limits: Limits,
    ) -> Result<RedisApi, RedisApiError> {
        let error = |source| RedisApiError::Redis {
            url: redis_url.to_string(),
            source,
        };
        let mut requests = RedisConn::new(redis_url, "request pump").map_err(error)?;
        requests.connect_once().await.map_err(error)?;
        let replies = RedisConn::new(redis_url, "reply pump").map_err(error)?;
        let lookup = RedisConn::new(redis_url, "backlog lookup").map_err(error)?;
        let write = RedisConn::new(redis_url, "writer").map_err(error)?;

        let stop = CancellationToken::new();
        let abort = CancellationToken::new();
        let (writer, writer_task) = Writer::spawn(write, abort.clone(), peer.clone());
        let shared = Arc::new(Shared {
            durable: peer.is_reliable(),
            peer,
            writer,
            pending: Mutex::new(Pending::default()),
            counters: ApiCounters::default(),
            sends: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            limits,
            unserved: unserved::Watched::default(),
            admission: Mutex::new(admission::Admission::new(limits.admission)),
        });
        let mut tasks = vec![
            tokio::spawn(local::run(
                Arc::clone(&shared),
                Pump::Requests,
                requests,
                stop.clone(),
            )),
            tokio::spawn(local::run(
                Arc::clone(&shared),
                Pump::Replies,
                replies,
                stop.clone(),
            )),
            tokio::spawn(sweep_timeouts(Arc::clone(&shared), stop.clone())),
            tokio::spawn(refresh_status(Arc::clone(&shared), stop.clone())),
            tokio::spawn(unserved::run(
                Arc::clone(&shared),
                RedisConn::new(redis_url, "unserved check").map_err(error)?,
                stop.clone(),
            )),
            tokio::spawn(inbound::observe_lists(
                Arc::clone(&shared),
                RedisConn::new(redis_url, "queue lengths").map_err(error)?,
                stop.clone(),
            )),
        ];
        if shared.durable {
            let conn = RedisConn::new(redis_url, "outbox reload").map_err(error)?;
            tasks.push(tokio::spawn(resend_outbox(
                Arc::clone(&shared),
                conn,
                stop.clone(),
            )));
        }
        let inbound = tokio::spawn(inbound::run(
            Arc::clone(&shared),
            inbound,
            lookup,
            abort.clone(),
        ));
        tracing::info!(redis = %redis_url, "redis api serving {} and {}", keys::LOCAL, keys::REPLY);
        Ok(RedisApi {
            shared,
            stop,
            abort,
            tasks,
            inbound,
            writer: writer_task,
        })
    }

    /// The API's counters.
    pub fn counters(&self) -> ApiCountersSnapshot {
        self.shared.counters.snapshot()
    }

    /// The status as written to `msgbus.system.status`.
    pub fn status(&self) -> ApiStatus {
        self.shared.status()
    }

    /// Stops taking requests, stops the peer (sends still in flight stay in the outbox
    /// for the next start; at most once, they fail and their clients are told),
    /// delivers what was received, flushes writes and removes the
    /// status key. Gives up on a Redis that stays unreachable after `grace`.
    pub async fn shutdown(self, grace: Duration) {
        let deadline = Instant::now() + grace;
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        self.shared.peer.shutdown().await;
        // Delivery retries against a Redis that keeps failing give up at the deadline.
        let mut inbound = self.inbound;
        if tokio::time::timeout_at(deadline.into(), &mut inbound)
            .await
            .is_err()
        {
            self.abort.cancel();
            let _ = inbound.await;
        }
        let _ = tokio::time::timeout_at(
            deadline.into(),
            self.shared.sends.acquire_many(MAX_IN_FLIGHT as u32),
        )
        .await;
        self.shared
            .writer
            .send(Write::Del {
                key: keys::STATUS.to_string(),
            })
            .await;
        drop(self.shared);
        let mut writer = self.writer;
        if tokio::time::timeout_at(deadline.into(), &mut writer)
            .await
            .is_err()
        {
            self.abort.cancel();
            let _ = writer.await;
        }
    }
}

/// Reports destinations that never answered, once their request expired.
async fn sweep_timeouts(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let timeouts = shared.pending().expire(Instant::now());
        for t in timeouts {
            report_timeout(&shared, t).await;
        }
    }
}

/// Tells the client that a destination did not answer before its request expired.
async fn report_timeout(shared: &Shared, t: pending::Timeout) {
    Counter::bump(&shared.counters.timeouts, 1);
    tracing::debug!(uid = %t.uid, twin = t.twin, "no response before the request expired");
    let response = JsonIncomingResponse::local_error(
        t.route.reference,
        TIMEOUT_CODE,
        format!(
            "no response from twin {} before the request expired",
            t.twin
        ),
    );
    shared
        .answer(&t.uid, t.twin, t.route.reply_to, &response)
        .await;
}

/// Sends again (same uid) every request a previous run left unanswered in the outbox.
async fn resend_outbox(shared: Arc<Shared>, mut conn: RedisConn, stop: CancellationToken) {
    let found = loop {
        let Some(mut c) = conn.get(&stop).await else {
            return;
        };
        match outbox::load(&mut c, rmb_proto::time::unix_now()).await {
            Ok(found) => break found,
            Err(e) if conn::is_permanent(&e) => {
                return tracing::error!(error = %e, "cannot read the outbox; requests of a previous run are not sent again");
            }
            Err(e) => conn.failed(&e),
        }
    };
    if found.is_empty() {
        return;
    }
    tracing::info!(
        requests = found.len(),
        "sending again the requests a previous run left unanswered"
    );
    for entry in found {
        match entry.state {
            Ok(request) => local::send(&shared, entry.uid, request).await,
            Err(expired) => {
                for twin in entry.waiting {
                    let t = pending::Timeout {
                        uid: entry.uid.clone(),
                        route: pending::Route {
                            reference: expired.reference.clone(),
                            reply_to: expired.reply_to.clone(),
                        },
                        twin,
                    };
                    report_timeout(&shared, t).await;
                }
            }
        }
    }
}

/// Keeps `msgbus.system.status` fresh (every second, expiring after 5 s).
async fn refresh_status(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(STATUS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        match serde_json::to_vec(&shared.status()) {
            Ok(value) => {
                shared
                    .writer
                    .send(Write::SetEx {
                        key: keys::STATUS.to_string(),
                        value,
                        secs: keys::STATUS_TTL_SECS,
                    })
                    .await
            }
            Err(e) => tracing::error!(error = %e, "cannot serialise the status"),
        }
    }
}
