//! One connection type for the relay's shared state in Redis, whatever `--redis` names:
//! a single Redis, a Redis Cluster, or a master watched by sentinels ([`RedisTarget`]).
//!
//! [`RedisConn`] is cheap to clone and implements [`redis::aio::ConnectionLike`], so
//! commands, pipelines and [`redis::Script::invoke_async`] work alike on all three:
//!
//! - single: redis-rs's `ConnectionManager` (reconnects by itself);
//! - cluster: redis-rs's cluster connection, which routes each command by its first key,
//!   follows `MOVED`/`ASK` and refreshes its slot map after a failover. Every script's
//!   keys must therefore share one hash slot: callers give keys that belong together the
//!   same hash tag (`{…}`, see [`key_slot`]);
//! - sentinel: [`SentinelConn`], which asks the sentinels for the master and asks again
//!   after connection errors.
//!
//! Besides commands: [`RedisConn::publish`] and [`RedisConn::subscription`] (plain
//! pub/sub on one Redis, sharded pub/sub — `SPUBLISH`/`SSUBSCRIBE` on the node owning
//! the channel's slot — on a cluster), and [`RedisConn::wait_replicas`] (`WAIT` on the
//! node that took a write).

pub mod sentinel;
pub mod subscribe;
pub mod target;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{
    Cmd, ConnectionInfo, ErrorKind, IntoConnectionInfo, Pipeline, ProtocolVersion, RedisError,
    RedisFuture, RedisResult, ToRedisArgs, Value,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use sentinel::SentinelConn;
pub use subscribe::Delivery;
pub use target::{FORMS, HostPort, RedisTarget, TargetError};

/// Time allowed to open one connection to a node.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Times a cluster command is retried (after `MOVED`, `TRYAGAIN`, a lost node, …).
/// With the waits below a command gives up after about 2.5 s: long enough to ride out a
/// redirect or a slot map refresh, short enough that a sender whose destination's master
/// is down hears an error instead of its traffic stalling until the failover ends.
pub const CLUSTER_RETRIES: u32 = 6;
/// Shortest wait before a cluster retry, in milliseconds.
pub const CLUSTER_MIN_RETRY_WAIT_MS: u64 = 50;
/// Longest wait before a cluster retry, in milliseconds (the waits double from 50).
pub const CLUSTER_MAX_RETRY_WAIT_MS: u64 = 1000;

/// Number of hash slots of a Redis Cluster.
const SLOTS: u16 = 16384;

/// A connection to the relay's Redis, of whichever kind `--redis` names.
#[derive(Clone)]
pub struct RedisConn {
    inner: Inner,
    target: Arc<RedisTarget>,
}

#[derive(Clone)]
enum Inner {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(SentinelConn),
}

impl RedisConn {
    /// Connects to `target`; fails if it cannot be reached now.
    pub async fn connect(target: &RedisTarget) -> RedisResult<Self> {
        let inner = match target {
            RedisTarget::Single { url } => {
                let client = redis::Client::open(url.as_str())?;
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(CONNECT_TIMEOUT);
                Inner::Single(ConnectionManager::new_with_config(client, config).await?)
            }
            RedisTarget::Cluster { seeds, .. } => {
                let urls: Vec<String> = seeds.iter().map(|s| target.node_url(s, false)).collect();
                let client = redis::cluster::ClusterClientBuilder::new(urls)
                    .connection_timeout(CONNECT_TIMEOUT)
                    .retries(CLUSTER_RETRIES)
                    .min_retry_wait(CLUSTER_MIN_RETRY_WAIT_MS)
                    .max_retry_wait(CLUSTER_MAX_RETRY_WAIT_MS)
                    .retry_wait_formula(CLUSTER_MIN_RETRY_WAIT_MS, 2)
                    .build()?;
                Inner::Cluster(client.get_async_connection().await?)
            }
            RedisTarget::Sentinel { .. } => Inner::Sentinel(SentinelConn::connect(target).await?),
        };
        Ok(RedisConn {
            inner,
            target: Arc::new(target.clone()),
        })
    }

    /// Connects to the `--redis` value `url` (any of the [`FORMS`]).
    pub async fn open(url: &str) -> RedisResult<Self> {
        let target: RedisTarget = url.parse().map_err(|e: TargetError| {
            RedisError::from((
                ErrorKind::InvalidClientConfig,
                "bad redis URL",
                e.to_string(),
            ))
        })?;
        Self::connect(&target).await
    }

    /// What this connects to.
    pub fn target(&self) -> &RedisTarget {
        &self.target
    }

    /// True on a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.target.is_cluster()
    }

    /// The single Redis's connection manager (`None` on a cluster or Sentinel set), for
    /// code written before the other kinds existed.
    pub fn single_manager(&self) -> Option<ConnectionManager> {
        match &self.inner {
            Inner::Single(manager) => Some(manager.clone()),
            _ => None,
        }
    }

    /// Publishes `payload` on `channel` (`SPUBLISH` on a cluster: only the shard owning
    /// the channel's slot carries it).
    pub async fn publish(&self, channel: &str, payload: impl ToRedisArgs) -> RedisResult<()> {
        let verb = if self.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        redis::cmd(verb)
            .arg(channel)
            .arg(payload)
            .exec_async(&mut self.clone())
            .await
    }

    /// A subscription to `channel` that renews itself after errors and failovers: the
    /// returned task feeds the receiver (at most `capacity` deliveries waiting) until
    /// `shutdown`; run it under the caller's supervisor. See [`subscribe`].
    pub fn subscription(
        &self,
        channel: String,
        shutdown: CancellationToken,
        capacity: usize,
    ) -> (BoxFuture<'static, ()>, mpsc::Receiver<Delivery>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let task = Box::pin(subscribe::run(self.clone(), channel, tx, shutdown));
        (task, rx)
    }

    /// `WAIT replicas timeout` on the node that holds `key` (the node this connection
    /// wrote `key` to), after writes to it: how many replicas acknowledged them.
    pub async fn wait_replicas(
        &self,
        key: &str,
        replicas: u32,
        timeout: Duration,
    ) -> RedisResult<u32> {
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(replicas).arg(timeout.as_millis() as u64);
        let value = match &self.inner {
            Inner::Cluster(conn) => {
                let route = Route::new(key_slot(key.as_bytes()), SlotAddr::Master);
                conn.clone()
                    .route_command(
                        &cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await?
            }
            _ => cmd.query_async::<Value>(&mut self.clone()).await?,
        };
        redis::from_redis_value(&value)
    }

    /// Loads `script` on every node that may run it (all masters of a cluster), so
    /// `EVALSHA` of it works in pipelines.
    pub async fn load_script(&self, text: &str) -> RedisResult<()> {
        redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(text)
            .exec_async(&mut self.clone())
            .await
    }

    /// How to connect, in RESP3, to the node that carries `channel` now.
    pub(crate) async fn node_url_for_channel(&self, channel: &str) -> RedisResult<ConnectionInfo> {
        let url = match (&self.inner, self.target.as_ref()) {
            (Inner::Single(_), RedisTarget::Single { url }) => url.clone(),
            (Inner::Sentinel(conn), target) => target.node_url(&conn.resolve().await?, true),
            (Inner::Cluster(conn), target) => {
                let node = slot_owner(conn, key_slot(channel.as_bytes())).await?;
                target.node_url(&node, true)
            }
            _ => unreachable!("the connection kind follows the target"),
        };
        let mut info = url.into_connection_info()?;
        info.redis.protocol = ProtocolVersion::RESP3;
        Ok(info)
    }
}

/// The master serving `slot`, from `CLUSTER SLOTS` asked of any node.
async fn slot_owner(conn: &ClusterConnection, slot: u16) -> RedisResult<HostPort> {
    let slots = conn
        .clone()
        .route_command(
            redis::cmd("CLUSTER").arg("SLOTS"),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
        )
        .await?;
    let Value::Array(ranges) = slots else {
        return Err(RedisError::from((
            ErrorKind::TypeError,
            "CLUSTER SLOTS: not an array",
        )));
    };
    for range in ranges {
        let Value::Array(fields) = range else {
            continue;
        };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
            (fields.first(), fields.get(1), fields.get(2))
        else {
            continue;
        };
        if !(*start..=*end).contains(&i64::from(slot)) {
            continue;
        }
        let host: String = redis::from_redis_value(master.first().unwrap_or(&Value::Nil))?;
        let port: u16 = redis::from_redis_value(master.get(1).unwrap_or(&Value::Nil))?;
        return Ok(HostPort { host, port });
    }
    Err(RedisError::from((
        ErrorKind::ClusterDown,
        "no node serves the slot",
    )))
}

/// The cluster hash slot of `key`: CRC16 (XMODEM) of its hash tag — the part between the
/// first `{` and the next `}`, if not empty — or of the whole key, modulo 16384.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16_xmodem(hashed) % SLOTS
}

/// CRC-16/XMODEM: polynomial 0x1021, initial value 0, no reflection.
fn crc16_xmodem(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.inner {
            Inner::Single(c) => c.req_packed_command(cmd),
            Inner::Cluster(c) => c.req_packed_command(cmd),
            Inner::Sentinel(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.inner {
            Inner::Single(c) => c.req_packed_commands(cmd, offset, count),
            Inner::Cluster(c) => c.req_packed_commands(cmd, offset, count),
            Inner::Sentinel(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.inner {
            Inner::Single(c) => c.get_db(),
            Inner::Cluster(c) => c.get_db(),
            Inner::Sentinel(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_hash_tags_as_redis_computes_them() {
        // Values from CLUSTER KEYSLOT on Redis 7.
        assert_eq!(key_slot(b"123456789"), 12739);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(
            key_slot(b"rmb:relay:q:{7}:web"),
            key_slot(b"rmb:relay:tw:{7}")
        );
        // An empty tag does not count: the whole key is hashed.
        assert_eq!(key_slot(b"foo{}{bar}"), crc16_xmodem(b"foo{}{bar}") % SLOTS);
    }
}
