//! The cluster mode (`--cluster`): a private Redis Cluster ([`RedisClusterChild`]) and
//! three relay replicas on it, each a process of its own (this binary re-run with a
//! hidden flag, [`child`]), so their CPU can be read apart from the load generator's.
//! Pair `i`'s sender logs in to replica `i % 3` and its receiver to replica
//! `(i + 1) % 3`: every envelope crosses from one replica to another, over the replica
//! links (the default) or, with `--redis-queue-only`, queued in the cluster by one
//! replica and handed over by another.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rmb_identity::registry::{CachedRegistry, RegistryChoice, connect};
use rmb_relay::RelayServer;
use rmb_relay::queue::RedisQueues;
use rmb_relay::redis_conn::RedisConn;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::redis_servers::{RedisClusterChild, RedisUsage};
use crate::replicas::{bench_config, replica_state, stat_cpu_secs};

/// Replicas of the relay `domain` on a private cluster, as child processes.
pub struct ClusterReplicas {
    /// Where each replica takes logins.
    pub ws_urls: Vec<String>,
    children: Vec<Child>,
    cluster: RedisClusterChild,
}

impl ClusterReplicas {
    /// Starts a cluster of `masters` nodes and `replicas` relays on it; twins must list
    /// `domain` as their relay in the registry served at `registry_url`.
    pub async fn start(
        masters: usize,
        replicas: usize,
        domain: &str,
        registry_url: &str,
        links: bool,
    ) -> anyhow::Result<Self> {
        let cluster = RedisClusterChild::start(masters).await?;
        let exe = std::env::current_exe().context("finding relay-bench's own binary")?;
        let mut children = Vec::new();
        let mut ws_urls = Vec::new();
        for _ in 0..replicas {
            let mut child = Command::new(&exe)
                .args(["--replica-child", &cluster.url, "--replica-domain", domain])
                .args(["--replica-registry", registry_url])
                .args((!links).then_some("--redis-queue-only"))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .context("starting a replica process")?;
            let mut line = String::new();
            let stdout = child.stdout.take().context("replica stdout")?;
            BufReader::new(stdout).read_line(&mut line)?;
            anyhow::ensure!(line.starts_with("ws://"), "replica did not start: {line:?}");
            ws_urls.push(line.trim().to_string());
            children.push(child);
        }
        Ok(ClusterReplicas {
            ws_urls,
            children,
            cluster,
        })
    }

    /// What the cluster's nodes together have done so far.
    pub async fn redis_usage(&self) -> anyhow::Result<RedisUsage> {
        self.cluster.usage().await
    }

    /// CPU seconds (user + system) the replica processes have used so far.
    pub fn cpu_secs(&self) -> f64 {
        self.children.iter().map(|c| process_cpu_secs(c.id())).sum()
    }

    /// Stops the replicas (they exit when their stdin closes; killed if they do not).
    pub fn shutdown(mut self) {
        for child in &mut self.children {
            drop(child.stdin.take());
        }
        std::thread::sleep(Duration::from_millis(500));
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// utime + stime of `pid`, from /proc/<pid>/stat (0 where there is no /proc).
fn process_cpu_secs(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(0.0, |stat| stat_cpu_secs(&stat))
}

/// The replica process: a relay serving `domain` on the cluster at `redis_url`, reading
/// twins from the registry at `registry_url`. Prints its WebSocket URL, then runs until
/// its stdin closes.
pub async fn child(
    redis_url: &str,
    domain: &str,
    registry_url: &str,
    links: bool,
) -> anyhow::Result<()> {
    let choice =
        RegistryChoice::from_flags(&[], Some(registry_url))?.context("a registry URL is needed")?;
    let registry = CachedRegistry::new(connect(&choice).await?, Duration::from_secs(3600), 1 << 20);
    let shutdown = CancellationToken::new();
    let config = bench_config(domain);
    let conn = RedisConn::open(redis_url).await?;
    let queues = Arc::new(
        RedisQueues::with_conn(
            conn,
            "rmb:relay:",
            config.queue_per_session,
            shutdown.clone(),
        )?
        .with_limits(config.queue_limits()),
    );
    let state = replica_state(config, registry, queues, shutdown, links).await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("ws://{}/", listener.local_addr()?);
    let server = RelayServer::start(state, listener)?;
    // The parent closes stdin to stop this process.
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin()
            .read_line(&mut sink)
            .map(|n| n > 0)
            .unwrap_or(false)
        {}
    })
    .await?;
    let _ = tokio::time::timeout(Duration::from_secs(5), server.shutdown()).await;
    Ok(())
}
