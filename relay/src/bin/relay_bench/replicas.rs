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
use rmb_relay::replicas::LinkSettings;
use rmb_relay::{Config, RelayServer, RelayState};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use crate::redis_servers::{RedisChild, RedisUsage};

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
    let config = bench_config(domain);
    let queues = Arc::new(
        RedisQueues::connect(
            redis_url,
            "rmb:relay:",
            config.queue_per_session,
            shutdown.clone(),
        )
        .await?,
    );
    let state = replica_state(config, registry, queues, shutdown, links).await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let ws_url = format!("ws://{}/", listener.local_addr()?);
    Ok((RelayServer::start(state, listener)?, ws_url))
}

/// The settings of a bench replica serving `domain`: every bench client connects (and
/// registers) from 127.0.0.1, so the per-address limits are off.
pub fn bench_config(domain: &str) -> Config {
    Config {
        domains: [domain.to_string()].into(),
        max_connections_per_ip: 0,
        registry_register_rate: 0,
        max_connections: usize::MAX,
        ..Config::default()
    }
}

/// A replica's state on `queues`, with replica links on loopback when `links` (as
/// `rmb-relay --redis` has by default).
pub async fn replica_state(
    config: Config,
    registry: Arc<dyn Registry>,
    queues: Arc<RedisQueues>,
    shutdown: CancellationToken,
    links: bool,
) -> anyhow::Result<Arc<RelayState>> {
    let settings = LinkSettings::new("127.0.0.1:0".parse()?, &config);
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
    Ok(state)
}

/// utime + stime in seconds from the text of a `/proc/…/stat` file (0 if unreadable).
pub fn stat_cpu_secs(stat: &str) -> f64 {
    // Fields after the command name (which may hold spaces and parentheses): the state
    // is the first, utime the 12th and stime the 13th.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / per_sec
}

/// CPU seconds (user + system) of this process's threads whose name starts with `name`,
/// from /proc/self/task/*/stat.
fn thread_cpu_secs(name: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    tasks
        .flatten()
        .map(|task| task.path())
        .filter(|path| {
            std::fs::read_to_string(path.join("comm"))
                .is_ok_and(|comm| comm.starts_with(&name[..name.len().min(15)]))
        })
        .map(|path| stat_cpu_secs(&std::fs::read_to_string(path.join("stat")).unwrap_or_default()))
        .sum()
}
