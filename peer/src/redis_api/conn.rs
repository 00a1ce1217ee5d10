//! [`RedisConn`]: one connection to the local Redis that comes back after Redis restarts.
//!
//! Each task of the API owns one (the blocking `BRPOP` must not share a socket with
//! writes). A failed command drops the connection; the next use reconnects with backoff,
//! logging each failure, until it works or the API shuts down. Failures in a row back
//! off exponentially even when reconnecting succeeds at once (a command Redis keeps
//! refusing must not become thousands of connections a second), and every wait ends
//! when the API shuts down.
//!
//! A Redis *error reply* to a well-formed connection (a script or argument error) is not
//! a connection problem: retrying cannot help, so [`RedisConn::query`] reports it as
//! [`QueryError::Permanent`] and callers drop (and count) what caused it instead of
//! retrying forever.

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

use super::scripts::{DELIVER_ONCE, DELIVER_REQUEST};
use redis::{AsyncConnectionConfig, Client, ErrorKind, FromRedisValue, Pipeline, RedisError};
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
/// First pause after a failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// A failure this long after the previous one starts the backoff over.
const FAILURES_FORGOTTEN_AFTER: Duration = Duration::from_secs(30);

/// True for errors that retrying the same command cannot fix: Redis answered, and said
/// no (a script error such as "invalid expire time", a wrong argument, a type error).
/// Connection problems, timeouts and the transient states of a Redis (loading, read
/// only replica, out of memory, busy script, script cache emptied) are not permanent.
pub fn is_permanent(e: &RedisError) -> bool {
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() {
        return false;
    }
    match e.kind() {
        ErrorKind::ResponseError | ErrorKind::ExecAbortError | ErrorKind::TypeError => true,
        ErrorKind::ExtensionError => !matches!(e.code(), Some("OOM" | "BUSY" | "NOREPLICAS")),
        _ => false,
    }
}

/// Why [`RedisConn::query`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The API is shutting down (and Redis did not answer before).
    #[error("shutting down")]
    Shutdown,
    /// Redis refused the command for good (see [`is_permanent`]).
    #[error("redis refused the command: {0}")]
    Permanent(RedisError),
}

/// The pause before the next attempt after `failures` failures in a row.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    FIRST_BACKOFF.saturating_mul(1 << exp).min(MAX_BACKOFF)
}

/// A lazily (re)connected Redis connection.
pub struct RedisConn {
    client: Client,
    conn: Option<MultiplexedConnection>,
    /// Who uses it, for logs.
    role: &'static str,
    /// Failures in a row (forgotten [`FAILURES_FORGOTTEN_AFTER`] after the last one).
    failures: u32,
    last_failure: Option<Instant>,
}

impl RedisConn {
    /// Prepares a connection to `url` (nothing is dialled until first use).
    pub fn new(url: &str, role: &'static str) -> Result<Self, redis::RedisError> {
        Ok(RedisConn {
            client: Client::open(url)?,
            conn: None,
            role,
            failures: 0,
            last_failure: None,
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
        // The delivery scripts are loaded here, not in every pipeline (a batch would
        // send and hash their 2.4 KB of text each time); a Redis that forgot them
        // (restarted, `SCRIPT FLUSH`) answers NOSCRIPT, which is not permanent: the
        // connection is dropped and this runs again.
        let mut load = redis::pipe();
        load.cmd("PING").ignore();
        for script in [&*DELIVER_REQUEST, &*DELIVER_ONCE] {
            load.load_script(script).ignore();
        }
        load.query_async::<()>(&mut conn).await?;
        Ok(conn)
    }

    /// The connection, reconnecting (with backoff) as long as needed; `None` once
    /// `shutdown` is cancelled.
    pub async fn get(&mut self, shutdown: &CancellationToken) -> Option<MultiplexedConnection> {
        if shutdown.is_cancelled() {
            return None;
        }
        let mut backoff = backoff(self.failures.max(1));
        if self.conn.is_none() && self.failures > 0 {
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.cancelled() => return None,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
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

    /// Forgets the connection after an error so the next [`get`](Self::get) redials,
    /// after a pause that grows with the failures in a row.
    pub fn failed(&mut self, error: &redis::RedisError) {
        let now = Instant::now();
        if self
            .last_failure
            .is_some_and(|at| now.duration_since(at) > FAILURES_FORGOTTEN_AFTER)
        {
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
        self.last_failure = Some(now);
        tracing::warn!(role = self.role, %error, failures = self.failures, retry_in = ?backoff(self.failures), "redis command failed; reconnecting");
        self.conn = None;
    }

    /// Runs `pipe` until it works: connection failures are retried (with backoff, see
    /// [`failed`](Self::failed)); a permanent refusal is returned, as is shutdown.
    pub async fn query<T: FromRedisValue>(
        &mut self,
        pipe: &Pipeline,
        shutdown: &CancellationToken,
    ) -> Result<T, QueryError> {
        loop {
            let Some(mut c) = self.get(shutdown).await else {
                return Err(QueryError::Shutdown);
            };
            match pipe.query_async(&mut c).await {
                Ok(value) => return Ok(value),
                Err(e) if is_permanent(&e) => return Err(QueryError::Permanent(e)),
                Err(e) => self.failed(&e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_a_cap() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(6), Duration::from_millis(3200));
        assert_eq!(backoff(7), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn error_replies_are_permanent_and_connection_trouble_is_not() {
        let script = RedisError::from((
            ErrorKind::ResponseError,
            "An error was signalled by the server",
            "ERR Error running script: invalid expire time in 'set' command".to_string(),
        ));
        assert!(is_permanent(&script));
        let io = RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        ));
        assert!(!is_permanent(&io));
        let loading = RedisError::from((ErrorKind::BusyLoadingError, "loading"));
        assert!(!is_permanent(&loading));
    }

    #[test]
    fn redis_sockets_have_nagle_off() {
        // The workspace enables redis-rs's `tcp_nodelay`: with Nagle on, a 64 KiB
        // payload's push waited for Redis's delayed ACK (40 ms) before its last bytes
        // left. Settings are private; their Debug form shows them.
        let settings = format!("{:?}", redis::io::tcp::TcpSettings::default());
        assert!(settings.contains("nodelay: true"), "{settings}");
    }
}
