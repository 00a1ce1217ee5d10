//! [`Directory`]: what the replicas of one relay tell each other through Redis, besides
//! the queues: where each replica listens for links, the secret that proves a link's
//! ends are replicas, where each session is, and (on the `moves` channel) which
//! sessions just connected somewhere.
//!
//! | key or channel | content | lifetime |
//! |---|---|---|
//! | `replica:<id>` | `host:port` the replica's link listener is reached at | [`ADDRESS_TTL`], renewed every third of it |
//! | `replica-secret` | 32 random bytes, hex; made once by whichever replica comes first (`SET NX`) | kept |
//! | `at:{<twin>}[:<sid>]` (the queues' presence key) | id of the replica holding the session | the queues' lease |
//! | channel `moves` | `<replica id> <session>`, published when a session connects to a replica | — |
//!
//! On a Redis Cluster each key is its own slot (single-key commands only) and `moves` is
//! a sharded channel (see [`RedisConn::publish`] and [`RedisConn::subscription`]).

use std::time::Duration;

use redis::AsyncCommands;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::queue::redis::{parse_session, presence_key};
use crate::redis_conn::{Delivery, RedisConn};
use crate::switch::SessionId;

/// `moves` announcements waiting to be read (beyond it, the subscription waits).
const MOVES_BUFFER: usize = 4096;

/// How long a replica's advertised address lasts without renewal.
pub const ADDRESS_TTL: Duration = Duration::from_secs(30);

/// The replicas' shared notes in Redis.
#[derive(Clone)]
pub struct Directory {
    conn: RedisConn,
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
    /// Notes kept under `prefix` in the Redis `conn` reaches (single, cluster or
    /// Sentinel set).
    pub fn new(conn: RedisConn, prefix: &str) -> Self {
        Directory {
            conn,
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
        self.conn
            .publish(&self.key("moves"), format!("{replica} {session}"))
            .await
    }

    /// Follows the `moves` channel until `shutdown`, resubscribing after errors (with
    /// backoff) and reporting [`Move::Gap`] first and after each renewal.
    pub async fn follow_moves(&self, moves: mpsc::Sender<Move>, shutdown: CancellationToken) {
        let (subscription, mut deliveries) =
            self.conn
                .subscription(self.key("moves"), shutdown, MOVES_BUFFER);
        let forward = async move {
            if moves.send(Move::Gap).await.is_err() {
                return;
            }
            while let Some(delivery) = deliveries.recv().await {
                let moved = match delivery {
                    Delivery::Resubscribed => Some(Move::Gap),
                    Delivery::Message(payload) => std::str::from_utf8(&payload)
                        .ok()
                        .and_then(|text| text.split_once(' '))
                        .and_then(|(replica, session)| {
                            Some(Move::Session {
                                replica: replica.to_string(),
                                session: parse_session(session)?,
                            })
                        }),
                };
                if let Some(moved) = moved
                    && moves.send(moved).await.is_err()
                {
                    return;
                }
            }
        };
        tokio::join!(subscription, forward);
    }
}
