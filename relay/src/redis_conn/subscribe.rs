//! Subscriptions that survive failovers: [`RedisConn::subscription`](super::RedisConn::subscription).
//!
//! Each subscription has a connection of its own (RESP3, messages arrive as pushes) to
//! the node that carries its channel: the single Redis, the master the sentinels name,
//! or, on a cluster, the master owning the channel's slot (sharded pub/sub, `SSUBSCRIBE`).
//! The connection is pinged every [`PING_EVERY`]; when it drops, stops answering, or the
//! node gives the channel away (`sunsubscribe` after a slot moved), the node is looked up
//! again and the channel subscribed again, backing off from [`MIN_BACKOFF`] to
//! [`MAX_BACKOFF`]. Messages published in between are lost, so each renewed subscription
//! is reported as [`Delivery::Resubscribed`]: the caller re-checks whatever the messages
//! were about.

use std::time::Duration;

use redis::{PushKind, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::RedisConn;

/// How often an idle subscription connection is pinged (a dead node is noticed within
/// this plus [`PING_TIMEOUT`]).
pub const PING_EVERY: Duration = Duration::from_secs(3);
/// How long a ping may take before the connection is given up.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// First wait before subscribing again after a failure.
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What a subscription hands its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A message published on the channel.
    Message(Vec<u8>),
    /// The subscription was lost and is back: messages may have been missed.
    Resubscribed,
}

/// Runs the subscription until `shutdown` or until `out` is closed.
pub(super) async fn run(
    conn: RedisConn,
    channel: String,
    out: mpsc::Sender<Delivery>,
    shutdown: CancellationToken,
) {
    let mut backoff = MIN_BACKOFF;
    let mut first = true;
    loop {
        let subscribed = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = subscribe_once(&conn, &channel) => result,
        };
        let (mut node_conn, mut pushes) = match subscribed {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(%channel, error = %e, retry_ms = backoff.as_millis() as u64, "subscribing to a redis channel failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = MIN_BACKOFF;
        if !first {
            tracing::info!(%channel, "redis subscription renewed");
            if out.send(Delivery::Resubscribed).await.is_err() {
                return;
            }
        }
        first = false;
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(
                        PING_TIMEOUT,
                        redis::cmd("PING").query_async::<Value>(&mut node_conn),
                    )
                    .await;
                    if !matches!(pong, Ok(Ok(_))) {
                        tracing::warn!(%channel, "redis subscription connection does not answer; subscribing again");
                        break;
                    }
                }
                push = pushes.recv() => {
                    let Some(push) = push else { break };
                    match push.kind {
                        PushKind::Message | PushKind::SMessage => {
                            // data = [channel, payload]
                            if let Some(Value::BulkString(payload)) = push.data.into_iter().nth(1)
                                && out.send(Delivery::Message(payload)).await.is_err()
                            {
                                return;
                            }
                        }
                        PushKind::Disconnection => {
                            tracing::warn!(%channel, "redis subscription connection lost; subscribing again");
                            break;
                        }
                        PushKind::SUnsubscribe | PushKind::Unsubscribe => {
                            tracing::warn!(%channel, "redis dropped the subscription (slot moved?); subscribing again");
                            break;
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

/// Connects to the node carrying `channel` and subscribes there.
async fn subscribe_once(
    conn: &RedisConn,
    channel: &str,
) -> redis::RedisResult<(
    redis::aio::MultiplexedConnection,
    mpsc::UnboundedReceiver<redis::PushInfo>,
)> {
    let url = conn.node_url_for_channel(channel).await?;
    let client = redis::Client::open(url)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(super::CONNECT_TIMEOUT)
        .set_response_timeout(PING_TIMEOUT)
        .set_push_sender(tx);
    let mut node_conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let verb = if conn.is_cluster() {
        "SSUBSCRIBE"
    } else {
        "SUBSCRIBE"
    };
    redis::cmd(verb)
        .arg(channel)
        .exec_async(&mut node_conn)
        .await?;
    Ok((node_conn, rx))
}
