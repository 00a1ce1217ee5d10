//! The processes under test: two redis-servers, one rmb-relay (or two that federate),
//! two rmb-peers, all on free loopback ports, each named by its role, killed when
//! [`Network`] is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::{Args, Delivery, Topology};
use crate::bench_common::{free_port, register, wait_for_port};

/// Child processes with their roles (`redis A`, `relay 1`, `peer B`...), killed on drop.
struct Children(Vec<(&'static str, Child)>);

impl Children {
    fn push(&mut self, role: &'static str, child: Child) {
        self.0.push((role, child));
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Everything the load runs against.
pub struct Network {
    /// WebSocket URL of each relay (one, or the two that federate).
    pub relay_urls: Vec<String>,
    pub redis_a: String,
    pub redis_b: String,
    pub twin_a: u32,
    pub twin_b: u32,
    children: Children,
    _dir: TempDir,
}

/// A scratch directory for the processes' files, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<TempDir> {
        let path = std::env::temp_dir().join(format!(
            "peer-bench-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&path)?;
        Ok(TempDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `name` next to this executable, else built with cargo (release).
fn binary(given: &Option<PathBuf>, name: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path.clone());
    }
    let dir = std::env::current_exe()?
        .parent()
        .context("executable has no directory")?
        .to_path_buf();
    let path = dir.join(name);
    if !path.exists() {
        eprintln!("building {name} (release)...");
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "--bin", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .context("running cargo build")?;
        if !status.success() || !path.exists() {
            bail!(
                "could not build {name}; pass --{}-bin",
                name.trim_start_matches("rmb-")
            );
        }
    }
    Ok(path)
}

/// A redis-server on `port`, and on the unix socket `unix` when given.
fn redis_server(dir: &Path, port: u16, unix: Option<&Path>) -> anyhow::Result<Child> {
    let mut command = Command::new("redis-server");
    command
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"]);
    if let Some(socket) = unix {
        command
            .arg("--unixsocket")
            .arg(socket)
            .args(["--unixsocketperm", "700"]);
    }
    let child = command
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting redis-server (is it installed?)")?;
    wait_for_port(port, "redis-server")?;
    Ok(child)
}

/// Waits until the peer on `redis_url` reports a connected relay in its status key.
async fn wait_ready(redis_url: &str, child: &mut Child) -> anyhow::Result<()> {
    let client = redis::Client::open(redis_url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            bail!("rmb-peer exited at start: {status}");
        }
        let status: Option<String> = redis::cmd("GET")
            .arg("msgbus.system.status")
            .query_async(&mut conn)
            .await?;
        if let Some(status) = status {
            let v: serde_json::Value = serde_json::from_str(&status)?;
            if v["relays"]
                .as_array()
                .is_some_and(|r| r.iter().any(|l| l["connected"] == true))
            {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("rmb-peer on {redis_url} did not become ready")
}

/// Starts a relay on `domain` with its data in `dir` and `extra` flags.
fn relay(binary: &Path, domain: &str, dir: &Path, extra: &[&str]) -> anyhow::Result<Child> {
    let child = Command::new(binary)
        .args(["--listen", domain, "--domain", domain])
        .arg("--data-dir")
        .arg(dir)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    Ok(child)
}

impl Network {
    /// Starts redis A and B, the relay(s) and the two peers. One relay hosts the
    /// registry; with [`Topology::Federated`], a second one uses it, the two federate
    /// over loopback, and peer A (its twin registered with relay 1) calls peer B (its twin
    /// with relay 2) across them.
    pub async fn start(
        args: &Args,
        delivery: Delivery,
        topology: Topology,
    ) -> anyhow::Result<Network> {
        let relay_bin = binary(&args.relay_bin, "rmb-relay")?;
        let peer_bin = binary(&args.peer_bin, "rmb-peer")?;
        let dir = TempDir::new()?;
        let mut children = Children(Vec::new());

        let (port_a, port_b) = (free_port()?, free_port()?);
        let mut redis_urls = Vec::new();
        for (role, name, port) in [("redis A", "a", port_a), ("redis B", "b", port_b)] {
            let redis_dir = dir.path().join(format!("redis-{name}"));
            std::fs::create_dir_all(&redis_dir)?;
            let socket = args.redis_unix.then(|| redis_dir.join("redis.sock"));
            children.push(role, redis_server(&redis_dir, port, socket.as_deref())?);
            redis_urls.push(match socket {
                Some(socket) => format!("redis+unix://{}", socket.display()),
                None => format!("redis://127.0.0.1:{port}/"),
            });
        }
        let federated = topology == Topology::Federated;
        let relay_threads = args.relay_threads.to_string();
        let mut relay_flags = vec!["--threads", relay_threads.as_str()];
        if federated {
            relay_flags.extend(["--federation-http", "--federation-allow", "127.0.0.1"]);
        }
        let port_1 = free_port()?;
        let domain_1 = format!("127.0.0.1:{port_1}");
        let registry = format!("http://{domain_1}");
        let relay_dir = dir.path().join("relay-1");
        let relay_1 = relay(&relay_bin, &domain_1, &relay_dir, &relay_flags)?;
        children.push("relay 1", relay_1);
        wait_for_port(port_1, "rmb-relay")?;
        let domain_b = if federated {
            let port_2 = free_port()?;
            let domain_2 = format!("127.0.0.1:{port_2}");
            let mut extra = relay_flags.clone();
            extra.extend(["--registry", registry.as_str()]);
            let relay_dir = dir.path().join("relay-2");
            children.push("relay 2", relay(&relay_bin, &domain_2, &relay_dir, &extra)?);
            wait_for_port(port_2, "rmb-relay")?;
            domain_2
        } else {
            domain_1.clone()
        };
        let twin_a = register(&registry, "//BenchA", &domain_1).await?;
        let twin_b = register(&registry, "//BenchB", &domain_b).await?;

        let (redis_a, redis_b) = (redis_urls[0].clone(), redis_urls[1].clone());
        let mut relay_urls = vec![format!("ws://{domain_1}/")];
        if federated {
            relay_urls.push(format!("ws://{domain_b}/"));
        }
        let peers = [
            ("peer A", "//BenchA", &redis_a, &domain_1),
            ("peer B", "//BenchB", &redis_b, &domain_b),
        ];
        for (role, secret, redis, domain) in peers {
            let mut child = Command::new(&peer_bin)
                .args(["--redis", redis, "--registry", &registry])
                .args(["--relay", &format!("ws://{domain}/")])
                .args(["--threads", &args.threads.to_string()])
                .args((delivery == Delivery::AtMostOnce).then_some("--at-most-once"))
                .args(&args.peer_args)
                .env("RMB_MNEMONIC", secret)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .with_context(|| format!("starting {}", peer_bin.display()))?;
            let ready = wait_ready(redis, &mut child).await;
            children.push(role, child);
            ready?;
        }
        Ok(Network {
            relay_urls,
            redis_a,
            redis_b,
            twin_a,
            twin_b,
            children,
            _dir: dir,
        })
    }

    /// Every process doing the work, by role: the children, and this one as `bench`
    /// (it runs the clients and the bot).
    pub fn processes(&self) -> Vec<(&'static str, u32)> {
        self.children
            .0
            .iter()
            .map(|(role, child)| (*role, child.id()))
            .chain([("bench", std::process::id())])
            .collect()
    }

    /// Stops every process.
    pub async fn shutdown(self) {
        drop(self.children);
    }
}
