//! conn-bench's command-line rows: `rmb pipe` as a user runs it, two processes moving a
//! file, through the twins' rmb-peers (the default) or as direct clients (`--relay`).
//! A run's time is from starting the connector until both processes exited, so it
//! includes starting them and opening the connection (tens of milliseconds).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rmb_testsupport::direct::{fresh_mnemonic, register_secret};
use rmb_testsupport::peer_process::PeerProcess;
use rmb_testsupport::redis_server::{RedisServer, free_port};
use rmb_testsupport::relay_process::{RelayProcess, binaries};

/// A twin whose rmb-peer serves the local HTTP API.
pub struct PeerNode {
    twin: u32,
    http: String,
    _peer: PeerProcess,
    _redis: RedisServer,
}

impl PeerNode {
    /// A fresh twin on `relay`, registered at `registry`, with its peer and Redis.
    pub async fn start(relay: &RelayProcess, registry: &str) -> PeerNode {
        let secret = fresh_mnemonic();
        let twin = register_secret(registry, &secret, &[relay.domain()]).await;
        let redis = RedisServer::start();
        let addr = format!("127.0.0.1:{}", free_port());
        let peer = PeerProcess::start(
            &secret,
            &redis.url(),
            &[relay.ws_url()],
            registry,
            &["--http", &addr],
        );
        PeerNode {
            twin,
            http: format!("http://{addr}"),
            _peer: peer,
            _redis: redis,
        }
    }
}

/// Two twins as direct clients: their secrets and the relay and registry flags.
pub struct DirectPair {
    listener_secret: String,
    listener_twin: u32,
    connector_secret: String,
    relay: String,
    registry: String,
}

impl DirectPair {
    /// Two fresh twins on `relay`.
    pub async fn start(relay: &RelayProcess) -> DirectPair {
        let registry = relay.http_url();
        let (listener_secret, connector_secret) = (fresh_mnemonic(), fresh_mnemonic());
        let listener_twin = register_secret(&registry, &listener_secret, &[relay.domain()]).await;
        register_secret(&registry, &connector_secret, &[relay.domain()]).await;
        DirectPair {
            listener_secret,
            listener_twin,
            connector_secret,
            relay: relay.ws_url(),
            registry,
        }
    }
}

/// Writes `bytes` of data to a file for the connector's stdin.
pub fn data_file(dir: &Path, bytes: usize) -> anyhow::Result<PathBuf> {
    let path = dir.join("conn-bench-pipe.bin");
    let data: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, data)?;
    Ok(path)
}

/// MB/s of `file` from `from`'s peer to `to`'s, through `rmb pipe` processes.
pub async fn via_peers(from: &PeerNode, to: &PeerNode, file: &Path) -> anyhow::Result<f64> {
    let listen = ["--http", to.http.as_str()];
    let target = to.twin.to_string();
    let connect = ["--http", from.http.as_str(), "--to", target.as_str()];
    run_pair(&listen, &connect, ("", ""), file).await
}

/// MB/s of `file` between two direct-client `rmb pipe` processes.
pub async fn direct(pair: &DirectPair, file: &Path) -> anyhow::Result<f64> {
    let common = [
        "--relay",
        pair.relay.as_str(),
        "--registry",
        pair.registry.as_str(),
    ];
    let target = format!("{}:pipe", pair.listener_twin);
    let mut connect = common.to_vec();
    connect.extend(["--to", target.as_str()]);
    run_pair(
        &common,
        &connect,
        (&pair.listener_secret, &pair.connector_secret),
        file,
    )
    .await
}

async fn run_pair(
    listen: &[&str],
    connect: &[&str],
    (listener_secret, connector_secret): (&str, &str),
    file: &Path,
) -> anyhow::Result<f64> {
    let rmb = binaries().join("rmb");
    let protocol = format!("bench{}", free_port());
    let mut listener = Command::new(&rmb)
        .args(["pipe", "listen", "--protocol", &protocol])
        .args(listen)
        .env("RMB_MNEMONIC", listener_secret)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting rmb pipe listen")?;
    // The listener says when it listens, on stderr (read to its end, so it never
    // writes into a closed pipe).
    let stderr = listener.stderr.take().context("the listener's stderr")?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut tx = Some(tx);
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("listening for")
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(());
            }
        }
    });
    if !matches!(
        tokio::time::timeout(Duration::from_secs(30), rx).await,
        Ok(Ok(()))
    ) {
        let _ = listener.kill();
        bail!("rmb pipe listen did not start listening");
    }
    let bytes = std::fs::metadata(file)?.len();
    let started = Instant::now();
    let mut connector = Command::new(&rmb)
        .args(["pipe", "connect", "--protocol", &protocol])
        .args(connect)
        .env("RMB_MNEMONIC", connector_secret)
        .stdin(std::fs::File::open(file)?)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting rmb pipe connect")?;
    let (connector, listener) =
        tokio::task::spawn_blocking(move || (connector.wait(), listener.wait())).await?;
    let elapsed = started.elapsed();
    if !connector?.success() || !listener?.success() {
        bail!("an rmb pipe process failed");
    }
    Ok(bytes as f64 / 1e6 / elapsed.as_secs_f64())
}
