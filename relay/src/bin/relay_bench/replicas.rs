//! The Redis mode under load: a private `redis-server` and two in-process relay replicas
//! on it, serving the same domain. Senders log in to one replica and receivers to the
//! other, so every envelope crosses Redis (queued by one replica, handed over by the
//! other on a wake-up) — the worst case of Redis mode. Envelopes between sessions of
//! the same replica take the in-memory path and cost what the in-memory mode costs.

use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rmb_identity::registry::Registry;
use rmb_relay::queue::{Queues, RedisQueues};
use rmb_relay::{Config, RelayServer, RelayState};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A `redis-server` on a free loopback port, persisting nothing; killed on drop.
pub struct RedisChild {
    child: Child,
    pub url: String,
}

impl RedisChild {
    /// Starts it, or explains that `redis-server` is missing.
    pub fn start() -> anyhow::Result<Self> {
        let port = StdListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (install it, e.g. apt-get install redis-server)")?;
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not come up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(RedisChild {
            child,
            url: format!("redis://127.0.0.1:{port}/"),
        })
    }
}

impl Drop for RedisChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two replicas of the relay `domain` on one Redis.
pub struct Replicas {
    pub ws_urls: [String; 2],
    servers: Vec<RelayServer>,
    _redis: RedisChild,
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
            _redis: redis,
        })
    }

    /// Stops both replicas (before their Redis goes away).
    pub async fn shutdown(self) {
        for server in self.servers {
            let _ = tokio::time::timeout(Duration::from_secs(10), server.shutdown()).await;
        }
    }
}
