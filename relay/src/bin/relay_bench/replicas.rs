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
use rmb_relay::replicas::LinkSettings;
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

/// Two replicas of the relay `domain` on one Redis, on a runtime of their own whose
/// threads are named [`REPLICA_THREADS`], so their CPU time can be told apart from the
/// load generator's ([`Replicas::cpu_secs`]).
pub struct Replicas {
    pub ws_urls: [String; 2],
    servers: Vec<RelayServer>,
    redis: RedisChild,
    runtime: Option<tokio::runtime::Runtime>,
}

/// The name of the replicas' runtime threads.
pub const REPLICA_THREADS: &str = "rmb-replica";
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
    /// Starts them; twins must already list `domain` as their relay in `registry`. With
    /// `links` the replicas hand each other envelopes over replica links (the default of
    /// `rmb-relay --redis`); without, every envelope between them goes through the Redis
    /// queue (`--replica-listen off`).
    pub async fn start(
        domain: &str,
        registry: Arc<dyn Registry>,
        links: bool,
    ) -> anyhow::Result<Self> {
        let redis = RedisChild::start()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(REPLICA_THREADS)
            .enable_all()
            .build()?;
        let mut servers = Vec::new();
        let mut ws_urls = Vec::new();
        for _ in 0..2 {
            let (domain, registry, url) =
                (domain.to_string(), Arc::clone(&registry), redis.url.clone());
            let started =
                runtime.spawn(async move { start_one(&domain, registry, &url, links).await });
            let (server, ws_url) = started.await??;
            servers.push(server);
            ws_urls.push(ws_url);
        }
        Ok(Replicas {
            ws_urls: [ws_urls[0].clone(), ws_urls[1].clone()],
            servers,
            redis,
            runtime: Some(runtime),
        })
    }

    /// What their Redis has done so far.
    pub async fn redis_usage(&self) -> anyhow::Result<RedisUsage> {
        RedisUsage::read(&self.redis.url).await
    }

    /// CPU seconds the replicas' threads have used so far (Linux; 0 elsewhere).
    pub fn cpu_secs() -> f64 {
        thread_cpu_secs(REPLICA_THREADS)
    }

    /// Stops both replicas (before their Redis goes away).
    pub async fn shutdown(mut self) {
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        for server in std::mem::take(&mut self.servers) {
            let stopping = runtime.spawn(server.shutdown());
            let _ = tokio::time::timeout(Duration::from_secs(10), stopping).await;
        }
        runtime.shutdown_background();
    }
}

/// One replica on the current runtime; returns it and its WebSocket URL.
async fn start_one(
    domain: &str,
    registry: Arc<dyn Registry>,
    redis_url: &str,
    links: bool,
) -> anyhow::Result<(RelayServer, String)> {
    let shutdown = CancellationToken::new();
    let config = Config {
        domains: [domain.to_string()].into(),
        // Every bench client connects (and registers) from 127.0.0.1.
        max_connections_per_ip: 0,
        registry_register_rate: 0,
        max_connections: usize::MAX,
        ..Config::default()
    };
    let queues = Arc::new(
        RedisQueues::connect(
            redis_url,
            "rmb:relay:",
            config.queue_per_session,
            shutdown.clone(),
        )
        .await?,
    );
    let settings = LinkSettings {
        listen: "127.0.0.1:0".parse()?,
        advertise: None,
        window: rmb_relay::replicas::DEFAULT_WINDOW,
        presence_entries: rmb_relay::replicas::DEFAULT_PRESENCE_ENTRIES,
        max_frame: config.max_envelope_size + (2 << 20),
        write_timeout: config.write_timeout,
    };
    let state = RelayState::with_queues(
        config,
        registry,
        None,
        Arc::clone(&queues) as Arc<dyn Queues>,
        shutdown,
    );
    if links {
        rmb_relay::server::replicas::start(&state, &queues, settings).await?;
    }
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let ws_url = format!("ws://{}/", listener.local_addr()?);
    Ok((RelayServer::start(state, listener)?, ws_url))
}

/// CPU seconds (user + system) of this process's threads whose name starts with `name`,
/// from /proc/self/task/*/stat.
fn thread_cpu_secs(name: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut total = 0u64;
    for task in tasks.flatten() {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if !comm.starts_with(&name[..name.len().min(15)]) {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0);
        let stime: u64 = fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
        total += utime + stime;
    }
    total as f64 / ticks
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
