//! [`SentinelConn`]: a connection to the master a set of sentinels names, that follows
//! failovers.
//!
//! The sentinels are asked (`SENTINEL get-master-addr-by-name`) for the master's address,
//! and the node found is checked with `ROLE` (a demoted master that came back is a
//! replica until the sentinels say otherwise). On a connection error, or a `READONLY`
//! reply (the node was demoted under us), the connection is dropped, the sentinels are
//! asked again and the command is tried once more on the master they name (so a command
//! cut off by a failover may run twice, as with redis-rs's cluster retries). Later
//! commands ask the sentinels at most once per backoff step (doubling from
//! [`MIN_BACKOFF`] to [`MAX_BACKOFF`]), so a Redis that is down is not hammered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use tokio::sync::Mutex;

use super::target::{HostPort, RedisTarget};

/// First wait between two failed resolutions.
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between two failed resolutions.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Time allowed to connect to one sentinel or master.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A cloneable connection to the current master of a Sentinel set.
#[derive(Clone)]
pub struct SentinelConn {
    shared: Arc<Shared>,
    db: i64,
}

struct Shared {
    target: RedisTarget,
    sentinels: Vec<HostPort>,
    master: String,
    current: Mutex<Current>,
}

struct Current {
    conn: Option<MultiplexedConnection>,
    /// No resolution before this instant (after a failed one).
    next_try: Instant,
    backoff: Duration,
}

impl SentinelConn {
    /// Finds the master and connects to it; fails if no sentinel names a reachable master.
    pub async fn connect(target: &RedisTarget) -> RedisResult<Self> {
        let RedisTarget::Sentinel {
            sentinels,
            master,
            db,
            ..
        } = target
        else {
            return Err(RedisError::from((
                ErrorKind::InvalidClientConfig,
                "not a sentinel target",
            )));
        };
        let conn = SentinelConn {
            shared: Arc::new(Shared {
                target: target.clone(),
                sentinels: sentinels.clone(),
                master: master.clone(),
                current: Mutex::new(Current {
                    conn: None,
                    next_try: Instant::now(),
                    backoff: MIN_BACKOFF,
                }),
            }),
            db: *db,
        };
        conn.get().await?;
        Ok(conn)
    }

    /// The master's address as the sentinels name it now (checked with `ROLE`).
    pub async fn resolve(&self) -> RedisResult<HostPort> {
        resolve(&self.shared).await.map(|(node, _)| node)
    }

    /// The connection to the master, resolving it if there is none (within backoff).
    async fn get(&self) -> RedisResult<MultiplexedConnection> {
        let mut current = self.shared.current.lock().await;
        if let Some(conn) = &current.conn {
            return Ok(conn.clone());
        }
        let now = Instant::now();
        if now < current.next_try {
            return Err(RedisError::from((
                ErrorKind::IoError,
                "redis master unavailable (asking the sentinels again shortly)",
            )));
        }
        match resolve(&self.shared).await {
            Ok((node, conn)) => {
                tracing::info!(master = %self.shared.master, %node, "redis master found through the sentinels");
                current.conn = Some(conn.clone());
                current.backoff = MIN_BACKOFF;
                Ok(conn)
            }
            Err(e) => {
                current.next_try = Instant::now() + current.backoff;
                current.backoff = (current.backoff * 2).min(MAX_BACKOFF);
                Err(e)
            }
        }
    }

    /// Drops the connection after an error that says the master is gone or demoted;
    /// true if it did (the caller may try once more).
    async fn check(&self, error: &RedisError) -> bool {
        if !is_failover_error(error) {
            return false;
        }
        let mut current = self.shared.current.lock().await;
        if current.conn.take().is_some() {
            tracing::warn!(master = %self.shared.master, error = %error, "lost the redis master; asking the sentinels again");
        }
        true
    }
}

/// True if `error` means the node is unreachable or no longer the master.
pub fn is_failover_error(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || matches!(error.kind(), ErrorKind::ReadOnly | ErrorKind::MasterDown)
}

async fn resolve(shared: &Shared) -> RedisResult<(HostPort, MultiplexedConnection)> {
    let mut last = RedisError::from((ErrorKind::IoError, "no sentinel answered"));
    for sentinel in &shared.sentinels {
        match ask(shared, sentinel).await {
            Ok(found) => return Ok(found),
            Err(e) => {
                tracing::debug!(%sentinel, error = %e, "sentinel gave no usable master");
                last = e;
            }
        }
    }
    Err(last)
}

async fn ask(
    shared: &Shared,
    sentinel: &HostPort,
) -> RedisResult<(HostPort, MultiplexedConnection)> {
    let client = redis::Client::open(format!("redis://{sentinel}/"))?;
    let mut conn = within(client.get_multiplexed_async_connection()).await?;
    let (host, port): (String, u16) = within(
        redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&shared.master)
            .query_async(&mut conn),
    )
    .await?;
    let node = HostPort { host, port };
    let client = redis::Client::open(shared.target.node_url(&node, false))?;
    let mut master = within(client.get_multiplexed_async_connection()).await?;
    let role: Vec<Value> = within(redis::cmd("ROLE").query_async(&mut master)).await?;
    match role.first() {
        Some(Value::BulkString(r)) if r == b"master" => Ok((node, master)),
        Some(Value::SimpleString(r)) if r == "master" => Ok((node, master)),
        _ => Err(RedisError::from((
            ErrorKind::ReadOnly,
            "the node the sentinel named is not a master (yet)",
        ))),
    }
}

async fn within<T>(f: impl std::future::Future<Output = RedisResult<T>>) -> RedisResult<T> {
    tokio::time::timeout(CONNECT_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| Err(RedisError::from((ErrorKind::IoError, "timed out"))))
}

impl ConnectionLike for SentinelConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let mut conn = self.get().await?;
            let result = conn.req_packed_command(cmd).await;
            match &result {
                Err(e) if self.check(e).await => {
                    // Once more on the master the sentinels name now (as redis-rs's
                    // cluster connection retries after a lost node). A command that did
                    // run before the connection broke may run twice.
                    self.get().await?.req_packed_command(cmd).await
                }
                _ => result,
            }
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let mut conn = self.get().await?;
            let result = conn.req_packed_commands(cmd, offset, count).await;
            match &result {
                Err(e) if self.check(e).await => {
                    self.get()
                        .await?
                        .req_packed_commands(cmd, offset, count)
                        .await
                }
                _ => result,
            }
        })
    }

    fn get_db(&self) -> i64 {
        self.db
    }
}
