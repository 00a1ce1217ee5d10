//! Starting the demo network's pieces: relays, Redis servers, twins and peers, each
//! checked ready before the next one starts.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use redis::AsyncCommands;
use rmb_identity::registry::http::HttpRegistry;
use rmb_identity::registry::{Registry, TwinUpdate};
use rmb_identity::{E2eScheme, Identity, KeyType};
use rmb_peer::redis_api::keys;
use serde::Serialize;

use super::children::Children;
use crate::bus::Bus;

/// Longest wait for one process to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where `rmb-relay` and `rmb-peer` are.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `rmb-relay`.
    pub relay: PathBuf,
    /// `rmb-peer`.
    pub peer: PathBuf,
    /// `redis-server`, found on PATH.
    pub redis: PathBuf,
}

impl Binaries {
    /// Finds the relay and peer next to this `rmb` (or in `dir`), and `redis-server` on
    /// PATH; says how to get whatever is missing.
    pub fn locate(dir: Option<&Path>) -> anyhow::Result<Binaries> {
        let dir = match dir {
            Some(dir) => dir.to_path_buf(),
            None => std::env::current_exe()
                .context("cannot tell where rmb is")?
                .parent()
                .context("rmb has no parent directory")?
                .to_path_buf(),
        };
        let relay = dir.join("rmb-relay");
        let peer = dir.join("rmb-peer");
        let missing: Vec<&str> = [("rmb-relay", &relay), ("rmb-peer", &peer)]
            .into_iter()
            .filter(|(_, p)| !p.is_file())
            .map(|(n, _)| n)
            .collect();
        if !missing.is_empty() {
            bail!(
                "rmb demo runs {} from {}, but it is not there. Build the whole workspace \
                 first:\n    cargo build --release\nthen run target/release/rmb demo \
                 (scripts/demo.sh does both)",
                missing.join(" and "),
                dir.display()
            );
        }
        let redis = find_on_path("redis-server").context(
            "redis-server is not installed (each peer keeps its queues in a Redis). Install \
             it with:\n    sudo apt-get install -y redis-server\n(scripts/demo.sh installs it \
             for you)",
        )?;
        Ok(Binaries { relay, peer, redis })
    }
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// A TCP port nobody listens on right now (the OS picks it).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A started relay.
#[derive(Debug, Clone, Serialize)]
pub struct RelayInfo {
    /// `A` or `B`.
    pub name: String,
    /// Its domain, `127.0.0.1:<port>` (also what twins publish).
    pub domain: String,
    /// WebSocket URL peers connect to.
    pub ws_url: String,
    /// HTTP base URL (health, metrics, and the registry on the hosting relay).
    pub http_url: String,
}

/// Starts relay `name` on a free port. Without `registry` it hosts the embedded registry.
pub async fn start_relay(
    children: &mut Children,
    bins: &Binaries,
    data: &Path,
    name: &str,
    registry: Option<&str>,
) -> anyhow::Result<RelayInfo> {
    let port = free_port()?;
    let domain = format!("127.0.0.1:{port}");
    let dir = data.join(format!("relay-{}", name.to_lowercase()));
    let mut args: Vec<String> = vec![
        "--listen".into(),
        domain.clone(),
        "--domain".into(),
        domain.clone(),
        "--federation-http".into(),
        // The demo's relays federate over loopback, which is refused by default.
        "--federation-allow".into(),
        "127.0.0.1".into(),
        "--data-dir".into(),
        dir.display().to_string(),
    ];
    if let Some(url) = registry {
        args.extend(["--registry".into(), url.to_string()]);
    }
    children.spawn(
        &format!("relay-{}", name.to_lowercase()),
        &bins.relay,
        &args,
        &[],
    )?;
    wait_tcp(children, port).await?;
    Ok(RelayInfo {
        name: name.to_string(),
        ws_url: format!("ws://{domain}/"),
        http_url: format!("http://{domain}"),
        domain,
    })
}

/// Starts a private `redis-server` on a free port; returns its URL.
pub async fn start_redis(
    children: &mut Children,
    bins: &Binaries,
    data: &Path,
    name: &str,
) -> anyhow::Result<String> {
    let port = free_port()?;
    let dir = data.join(name);
    std::fs::create_dir_all(&dir)?;
    let args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        &dir.display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    children.spawn(name, &bins.redis, &args, &[])?;
    wait_tcp(children, port).await?;
    let url = format!("redis://127.0.0.1:{port}/");
    let bus = Bus::connect(&url).await?;
    let pong: String = redis::cmd("PING").query_async(&mut bus.conn()).await?;
    if pong != "PONG" {
        bail!("redis-server on port {port} answered PING with {pong:?}");
    }
    Ok(url)
}

/// A fresh twin: its secret and registry entry.
#[derive(Debug, Clone, Serialize)]
pub struct TwinInfo {
    /// Twin id on the demo's registry.
    pub twin: u32,
    /// SS58 account (sr25519).
    pub account: String,
    /// Its mnemonic (throw-away, printed so you can run more tools as this twin).
    pub mnemonic: String,
    /// The relay it lives on.
    pub relay: String,
}

/// Makes a fresh identity and registers it on `registry_url` as living on `relay`.
pub async fn register_twin(registry_url: &str, relay: &RelayInfo) -> anyhow::Result<TwinInfo> {
    let mnemonic = crate::commands::key::new_mnemonic(12)?;
    let identity = Identity::from_secret(&mnemonic, KeyType::Sr25519)?;
    let registry = HttpRegistry::new(registry_url)?;
    let update = TwinUpdate {
        relays: BTreeSet::from([relay.domain.clone()]),
        pk: Some(identity.e2e_public_key(E2eScheme::X25519)),
        create: true,
    };
    let twin = registry.publish(identity.signer(), &update).await?;
    Ok(TwinInfo {
        twin: twin.id,
        account: twin.account.to_string(),
        mnemonic,
        relay: relay.domain.clone(),
    })
}

/// A started peer.
#[derive(Debug, Clone, Serialize)]
pub struct PeerInfo {
    /// `1` or `2`.
    pub name: String,
    /// Its twin.
    pub twin: u32,
    /// Its Redis (where `rmb call`, `rmb serve` and `rmb status` connect).
    pub redis: String,
    /// The relay it connects to.
    pub relay: String,
    /// Base URL of its local HTTP API (topics, `POST /call`).
    pub http: String,
}

/// Starts `rmb-peer` for `twin` on `relay`, with its Redis at `redis`, and waits until it
/// reports a connected relay.
pub async fn start_peer(
    children: &mut Children,
    bins: &Binaries,
    name: &str,
    twin: &TwinInfo,
    relay: &RelayInfo,
    registry_url: &str,
    redis: &str,
) -> anyhow::Result<PeerInfo> {
    let http_port = free_port()?;
    let http = format!("127.0.0.1:{http_port}");
    let args: Vec<String> = vec![
        "--http".into(),
        http.clone(),
        "--key-type".into(),
        "sr25519".into(),
        "--redis".into(),
        redis.to_string(),
        "--relay".into(),
        relay.ws_url.clone(),
        "--registry".into(),
        registry_url.to_string(),
    ];
    children.spawn(
        &format!("peer-{name}"),
        &bins.peer,
        &args,
        // The environment, not the command line: `ps` shows command lines to everyone.
        &[(crate::args::MNEMONIC_ENV, twin.mnemonic.as_str())],
    )?;
    wait_peer_connected(children, redis).await?;
    wait_tcp(children, http_port).await?;
    Ok(PeerInfo {
        name: name.to_string(),
        twin: twin.twin,
        redis: redis.to_string(),
        relay: relay.domain.clone(),
        http: format!("http://{http}"),
    })
}

async fn wait_tcp(children: &mut Children, port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        children.check()?;
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nothing listens on port {port} after {READY_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until the peer's status (in its Redis) shows a connected relay.
async fn wait_peer_connected(children: &mut Children, redis: &str) -> anyhow::Result<()> {
    let bus = Bus::connect(redis).await?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        children.check()?;
        let status: Option<String> = bus.conn().get(keys::STATUS).await?;
        let connected = status
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|v| v["relays"].as_array().cloned())
            .is_some_and(|links| links.iter().any(|l| l["connected"] == true));
        if connected {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the peer reported no connected relay within {READY_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
