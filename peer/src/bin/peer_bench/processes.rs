//! The processes under test: two redis-servers, one rmb-relay, two rmb-peers, all on
//! free loopback ports, killed when [`Network`] is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::{Args, Delivery};
use crate::bench_common::{free_port, register, wait_for_port};

/// Child processes, killed on drop.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Everything the load runs against.
pub struct Network {
    pub relay_url: String,
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

fn redis_server(dir: &Path, port: u16) -> anyhow::Result<Child> {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
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

impl Network {
    /// Starts redis A and B, the relay (hosting the registry), and the two peers.
    pub async fn start(args: &Args, delivery: Delivery) -> anyhow::Result<Network> {
        let relay_bin = binary(&args.relay_bin, "rmb-relay")?;
        let peer_bin = binary(&args.peer_bin, "rmb-peer")?;
        let dir = TempDir::new()?;
        let mut children = Children(Vec::new());

        let (port_a, port_b, port_relay) = (free_port()?, free_port()?, free_port()?);
        for (name, port) in [("a", port_a), ("b", port_b)] {
            let redis_dir = dir.path().join(format!("redis-{name}"));
            std::fs::create_dir_all(&redis_dir)?;
            children.0.push(redis_server(&redis_dir, port)?);
        }
        let domain = format!("127.0.0.1:{port_relay}");
        children.0.push(
            Command::new(&relay_bin)
                .args(["--listen", &domain, "--domain", &domain])
                .arg("--data-dir")
                .arg(dir.path().join("relay"))
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .with_context(|| format!("starting {}", relay_bin.display()))?,
        );
        wait_for_port(port_relay, "rmb-relay")?;
        let registry = format!("http://{domain}");
        let relay_url = format!("ws://{domain}/");
        let twin_a = register(&registry, "//BenchA", &domain).await?;
        let twin_b = register(&registry, "//BenchB", &domain).await?;

        let redis_a = format!("redis://127.0.0.1:{port_a}/");
        let redis_b = format!("redis://127.0.0.1:{port_b}/");
        for (secret, redis) in [("//BenchA", &redis_a), ("//BenchB", &redis_b)] {
            let mut child = Command::new(&peer_bin)
                .args([
                    "--redis",
                    redis,
                    "--relay",
                    &relay_url,
                    "--registry",
                    &registry,
                ])
                .args((delivery == Delivery::AtMostOnce).then_some("--at-most-once"))
                .args(&args.peer_args)
                .env("RMB_MNEMONIC", secret)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .with_context(|| format!("starting {}", peer_bin.display()))?;
            let ready = wait_ready(redis, &mut child).await;
            children.0.push(child);
            ready?;
        }
        Ok(Network {
            relay_url,
            redis_a,
            redis_b,
            twin_a,
            twin_b,
            children,
            _dir: dir,
        })
    }

    /// Stops every process.
    pub async fn shutdown(self) {
        drop(self.children);
    }
}
