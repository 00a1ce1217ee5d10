//! The Redis mode under load: a private `redis-server` and two in-process relay replicas
//! on it, serving the same domain. Senders log in to one replica and receivers to the
//! other, so every envelope crosses Redis (queued by one replica, handed over by the
//! other on a wake-up) — the worst case of Redis mode. Envelopes between sessions of
//! the same replica take the in-memory path and cost what the in-memory mode costs.
//! [`RedisUsage`] (in `redis_servers.rs`) reads what Redis itself did (commands by name, its CPU) so the bench
//! can print Redis's cost per envelope.

use std::sync::Arc;
use std::time::Duration;

use rmb_identity::registry::Registry;
use rmb_relay::queue::{Queues, RedisQueues};
use rmb_relay::{Config, RelayServer, RelayState};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use crate::redis_servers::{RedisChild, RedisUsage};

/// Two replicas of the relay `domain` on one Redis.
pub struct Replicas {
    pub ws_urls: [String; 2],
    servers: Vec<RelayServer>,
    redis: RedisChild,
}

impl Replicas {
    /// Starts them; twins must already list `domain` as their relay in `registry`.
    pub async fn start(domain: &str, registry: Arc<dyn Registry>) -> anyhow::Result<Self> {
        let redis = RedisChild::start()?;
        let mut servers = Vec::new();
        let mut ws_urls = Vec::new();
        for _ in 0..2 {
            let shutdown = CancellationToken::new();
            let config = Config {
                domains: [domain.to_string()].into(),
                // Every bench client connects (and registers) from 127.0.0.1.
                max_connections_per_ip: 0,
                registry_register_rate: 0,
                max_connections: usize::MAX,
                ..Config::default()
            };
            let queues: Arc<dyn Queues> = Arc::new(
                RedisQueues::connect(
                    &redis.url,
                    "rmb:relay:",
                    config.queue_per_session,
                    shutdown.clone(),
                )
                .await?,
            );
            let state =
                RelayState::with_queues(config, Arc::clone(&registry), None, queues, shutdown);
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            ws_urls.push(format!("ws://{}/", listener.local_addr()?));
            servers.push(RelayServer::start(state, listener)?);
        }
        Ok(Replicas {
            ws_urls: [ws_urls[0].clone(), ws_urls[1].clone()],
            servers,
            redis,
        })
    }

    /// What their Redis has done so far.
    pub async fn redis_usage(&self) -> anyhow::Result<RedisUsage> {
        RedisUsage::read(&self.redis.url).await
    }

    /// Stops both replicas (before their Redis goes away).
    pub async fn shutdown(self) {
        for server in self.servers {
            let _ = tokio::time::timeout(Duration::from_secs(10), server.shutdown()).await;
        }
    }
}
