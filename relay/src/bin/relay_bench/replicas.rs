//! The Redis mode under load: a private `redis-server` and two in-process relay replicas
//! on it, serving the same domain. Senders log in to one replica and receivers to the
//! other, so every envelope crosses Redis (queued by one replica, handed over by the
//! other on a wake-up) — the worst case of Redis mode. Envelopes between sessions of
//! the same replica take the in-memory path and cost what the in-memory mode costs.
//! [`RedisUsage`] reads what Redis itself did (commands by name, its CPU) so the bench
//! can print Redis's cost per envelope.

use std::collections::BTreeMap;
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
    redis: RedisChild,
}

/// What Redis has done since it started: calls per command (commands run inside scripts
/// included, as Redis counts them) and its CPU time, from `INFO commandstats` and
/// `INFO cpu`.
#[derive(Debug, Clone, Default)]
pub struct RedisUsage {
    /// Calls by command name (lower case, as INFO names them).
    pub calls: BTreeMap<String, u64>,
    /// Seconds of CPU, user and system.
    pub cpu_secs: f64,
}

impl RedisUsage {
    /// Reads it from the Redis at `url`.
    pub async fn read(url: &str) -> anyhow::Result<RedisUsage> {
        let client = redis::Client::open(url)?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await?;
        let cpu: String = redis::cmd("INFO").arg("cpu").query_async(&mut conn).await?;
        Ok(RedisUsage::parse(&stats, &cpu))
    }

    /// Parses the two INFO sections.
    pub fn parse(commandstats: &str, cpu: &str) -> RedisUsage {
        let mut usage = RedisUsage::default();
        for line in commandstats.lines() {
            let Some((name, fields)) = line
                .trim()
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            let calls = fields
                .split(',')
                .find_map(|f| f.strip_prefix("calls="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            usage.calls.insert(name.to_string(), calls);
        }
        for line in cpu.lines() {
            if let Some((key, value)) = line.trim().split_once(':')
                && (key == "used_cpu_sys" || key == "used_cpu_user")
            {
                usage.cpu_secs += value.parse::<f64>().unwrap_or(0.0);
            }
        }
        usage
    }

    /// What was done between `before` and this reading.
    pub fn since(&self, before: &RedisUsage) -> RedisUsage {
        let calls = self
            .calls
            .iter()
            .map(|(name, n)| {
                (
                    name.clone(),
                    n.saturating_sub(*before.calls.get(name).unwrap_or(&0)),
                )
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        RedisUsage {
            calls,
            cpu_secs: (self.cpu_secs - before.cpu_secs).max(0.0),
        }
    }

    /// All calls, and those that were scripts (EVAL, EVALSHA, FCALL).
    pub fn totals(&self) -> (u64, u64) {
        let scripts = [
            "eval",
            "evalsha",
            "eval_ro",
            "evalsha_ro",
            "fcall",
            "fcall_ro",
        ];
        let all = self.calls.values().sum();
        let script_calls = self
            .calls
            .iter()
            .filter(|(name, _)| scripts.contains(&name.as_str()))
            .map(|(_, n)| n)
            .sum();
        (all, script_calls)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_sections_parse_and_subtract() {
        let before = RedisUsage::parse(
            "# Commandstats\r\ncmdstat_evalsha:calls=10,usec=50,usec_per_call=5.00\r\ncmdstat_lpush:calls=3,usec=1\r\n",
            "# CPU\r\nused_cpu_sys:1.5\r\nused_cpu_user:2.0\r\nused_cpu_sys_children:9\r\n",
        );
        assert_eq!(before.calls["evalsha"], 10);
        assert!((before.cpu_secs - 3.5).abs() < 1e-9);
        let after = RedisUsage::parse(
            "cmdstat_evalsha:calls=30,usec=90\r\ncmdstat_lpush:calls=3,usec=1\r\ncmdstat_publish:calls=7,usec=2\r\n",
            "used_cpu_sys:2.0\r\nused_cpu_user:2.5\r\n",
        );
        let used = after.since(&before);
        assert_eq!(used.calls.len(), 2, "lpush did not move: {used:?}");
        assert_eq!(used.totals(), (27, 20));
        assert!((used.cpu_secs - 1.0).abs() < 1e-9);
    }
}
