//! [`RedisConn`]: one connection to the local Redis that comes back after Redis restarts.
//!
//! Each task of the API owns one (the blocking `BRPOP` must not share a socket with
//! writes). A failed command drops the connection; the next use reconnects with backoff,
//! logging each failure, until it works or the API shuts down.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client};
use tokio_util::sync::CancellationToken;

/// Keys asked for per `SCAN` step.
const SCAN_COUNT: usize = 1000;

/// Every key matching `pattern`, by `SCAN` (never `KEYS`, which blocks a busy Redis).
pub async fn scan_keys<C>(conn: &mut C, pattern: &str) -> redis::RedisResult<Vec<String>>
where
    C: redis::aio::ConnectionLike + Send,
{
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query_async(conn)
            .await?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

/// Longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A lazily (re)connected Redis connection.
pub struct RedisConn {
    client: Client,
    conn: Option<MultiplexedConnection>,
    /// Who uses it, for logs.
    role: &'static str,
}

impl RedisConn {
    /// Prepares a connection to `url` (nothing is dialled until first use).
    pub fn new(url: &str, role: &'static str) -> Result<Self, redis::RedisError> {
        Ok(RedisConn {
            client: Client::open(url)?,
            conn: None,
            role,
        })
    }

    /// Dials once, failing fast: used at start to report a wrong `--redis` clearly.
    pub async fn connect_once(&mut self) -> Result<(), redis::RedisError> {
        let conn = self.dial().await?;
        self.conn = Some(conn);
        Ok(())
    }

    async fn dial(&self) -> Result<MultiplexedConnection, redis::RedisError> {
        // No response timeout: BRPOP blocks for as long as it was asked to.
        let config = AsyncConnectionConfig::new().set_connection_timeout(Duration::from_secs(5));
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        redis::cmd("PING").query_async::<()>(&mut conn).await?;
        Ok(conn)
    }

    /// The connection, reconnecting (with backoff) as long as needed; `None` once
    /// `shutdown` is cancelled.
    pub async fn get(&mut self, shutdown: &CancellationToken) -> Option<MultiplexedConnection> {
        let mut backoff = Duration::from_millis(100);
        while self.conn.is_none() {
            if shutdown.is_cancelled() {
                return None;
            }
            match self.dial().await {
                Ok(conn) => {
                    tracing::info!(role = self.role, "connected to redis");
                    self.conn = Some(conn);
                }
                Err(e) => {
                    tracing::error!(role = self.role, error = %e, retry_in = ?backoff, "cannot reach redis");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => return None,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        self.conn.clone()
    }

    /// Forgets the connection after an error so the next [`get`](Self::get) redials.
    pub fn failed(&mut self, error: &redis::RedisError) {
        tracing::warn!(role = self.role, %error, "redis command failed; reconnecting");
        self.conn = None;
    }
}
