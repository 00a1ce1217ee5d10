//! [`Directory`]: what the replicas of one relay tell each other through Redis, besides
//! the queues: where each replica listens for links, the secret that proves a link's
//! ends are replicas, where each session is, and (on the `moves` channel) which
//! sessions just connected somewhere.
//!
//! | key or channel | content | lifetime |
//! |---|---|---|
//! | `replica:<id>` | `host:port` the replica's link listener is reached at | [`ADDRESS_TTL`], renewed every third of it |
//! | `replica-secret` | 32 random bytes, hex; made once by whichever replica comes first (`SET NX`) | kept |
//! | `at:<session>` (the queues' presence key) | id of the replica holding the session | the queues' lease |
//! | channel `moves` | `<replica id> <session>`, published when a session connects to a replica | — |

use std::time::Duration;

use futures_util::StreamExt;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::queue::redis::{parse_session, presence_key};
use crate::switch::SessionId;

/// How long a replica's advertised address lasts without renewal.
pub const ADDRESS_TTL: Duration = Duration::from_secs(30);

/// The replicas' shared notes in Redis.
#[derive(Clone)]
pub struct Directory {
    conn: ConnectionManager,
    client: redis::Client,
    prefix: String,
}

/// What the `moves` subscription reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Move {
    /// This session connected to the replica with this id.
    Session { replica: String, session: SessionId },
    /// The subscription was renewed: announcements may have been missed.
    Gap,
}

impl Directory {
    /// Notes kept under `prefix` in the Redis `client` points at, through `conn`.
    pub fn new(conn: ConnectionManager, client: redis::Client, prefix: &str) -> Self {
        Directory {
            conn,
            client,
            prefix: prefix.to_string(),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The relay's replica secret, made now if no replica made it yet.
    pub async fn secret(&self) -> redis::RedisResult<Vec<u8>> {
        let mut conn = self.conn.clone();
        let key = self.key("replica-secret");
        let fresh = hex::encode(rand::random::<[u8; 32]>());
        let _: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(&fresh)
            .arg("NX")
            .query_async(&mut conn)
            .await?;
        let secret: String = conn.get(&key).await?;
        Ok(secret.into_bytes())
    }

    /// Advertises where replica `id` takes links (renew within [`ADDRESS_TTL`]).
    pub async fn advertise(&self, id: &str, address: &str) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        conn.set_ex(
            self.key(&format!("replica:{id}")),
            address,
            ADDRESS_TTL.as_secs(),
        )
        .await
    }

    /// Withdraws replica `id`'s address (at shutdown).
    pub async fn withdraw(&self, id: &str) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        conn.del(self.key(&format!("replica:{id}"))).await
    }

    /// Where replica `id` takes links, if it is alive.
    pub async fn address(&self, id: &str) -> redis::RedisResult<Option<String>> {
        let mut conn = self.conn.clone();
        conn.get(self.key(&format!("replica:{id}"))).await
    }

    /// The replica holding `session`, if any.
    pub async fn owner(&self, session: &SessionId) -> redis::RedisResult<Option<String>> {
        let mut conn = self.conn.clone();
        conn.get(presence_key(&self.prefix, session)).await
    }

    /// Tells every replica that `session` connected to replica `replica`.
    pub async fn announce_move(
        &self,
        replica: &str,
        session: &SessionId,
    ) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        conn.publish(self.key("moves"), format!("{replica} {session}"))
            .await
    }

    /// Follows the `moves` channel until `shutdown`, resubscribing after errors (with
    /// backoff) and reporting [`Move::Gap`] after each renewal.
    pub async fn follow_moves(&self, moves: mpsc::Sender<Move>, shutdown: CancellationToken) {
        let channel = self.key("moves");
        let mut backoff = Duration::from_millis(100);
        loop {
            let subscribed = async {
                let mut pubsub = self.client.get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            let mut pubsub = tokio::select! {
                _ = shutdown.cancelled() => return,
                result = subscribed => match result {
                    Ok(pubsub) => pubsub,
                    Err(e) => {
                        tracing::warn!(error = %e, "subscribing to replica moves failed; retrying");
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
            if moves.send(Move::Gap).await.is_err() {
                return;
            }
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
                let parsed = text.split_once(' ').and_then(|(replica, session)| {
                    Some(Move::Session {
                        replica: replica.to_string(),
                        session: parse_session(session)?,
                    })
                });
                if let Some(moved) = parsed
                    && moves.send(moved).await.is_err()
                {
                    return;
                }
            }
            tracing::warn!("replica moves subscription lost; resubscribing");
        }
    }
}
