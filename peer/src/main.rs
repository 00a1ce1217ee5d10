//! `rmb-peer`: one twin's gateway to the Reliable Message Bus, serving the rmb-rs
//! compatible Redis JSON API to local apps. Takes rmb-rs's flags; see `--help`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use rmb_identity::registry::cache::{DEFAULT_CAPACITY, DEFAULT_TTL};
use rmb_identity::registry::{CachedRegistry, Registry, RegistryChoice, connect};
use rmb_identity::{E2eScheme, Identity, KeyType};
use rmb_peer::core::{MemoryReplayStore, Peer, PeerConfig, replay};
use rmb_peer::redis_api::RedisApi;

/// The chain rmb-rs's peer uses when no registry is given.
const DEFAULT_SUBSTRATE: &str = "wss://tfchain.grid.tf:443";
/// How long shutdown waits for Redis to take the last writes.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// One twin's gateway to the Reliable Message Bus.
///
/// Local apps talk to it through Redis exactly as with rmb-rs's rmb-peer: clients push
/// requests to `msgbus.system.local` and read responses from their own `ret` list;
/// services read `msgbus.<command>` and push replies to `msgbus.system.reply`. The peer
/// signs, encrypts and routes them through the given relays. Its status is kept in the
/// key `msgbus.system.status` (read by `rmb status`).
#[derive(Parser, Debug)]
#[command(name = "rmb-peer", version)]
struct Args {
    /// The twin's secret: mnemonic words, or a hex seed with a `0x` prefix (a Substrate
    /// derivation path like `//Alice` may follow). Prefer --mnemonic-file or the
    /// RMB_MNEMONIC variable: command lines are visible to every local user in `ps`.
    #[arg(short = 'm', long = "mnemonic", visible_aliases = ["mnemonics", "seed"], env = "RMB_MNEMONIC",
          hide_env_values = true, value_name = "WORDS|0xSEED")]
    mnemonic: Option<String>,

    /// Read the secret (as for --mnemonic) from this file instead; surrounding
    /// whitespace is ignored. Takes precedence over --mnemonic and RMB_MNEMONIC.
    #[arg(long, value_name = "PATH")]
    mnemonic_file: Option<PathBuf>,

    /// Signing key type the secret is used with (it decides the twin's account).
    #[arg(
        short = 'k',
        long = "key-type",
        default_value = "sr25519",
        value_name = "sr25519|ed25519"
    )]
    key_type: KeyType,

    /// The local Redis the apps use.
    #[arg(
        short = 'r',
        long,
        default_value = "redis://localhost:6379",
        value_name = "URL"
    )]
    redis: String,

    /// Relay to connect to, ws:// or wss:// (repeatable, at most 4). Outgoing messages go
    /// through any connected one; the twin's registry entry lists all of them.
    #[arg(
        long = "relay",
        value_name = "URL",
        default_value = "wss://relay.grid.tf:443"
    )]
    relays: Vec<String>,

    /// tfchain RPC URL(s) to look twins up, tried in turn (repeatable). Defaults to
    /// wss://tfchain.grid.tf:443 unless --registry is given.
    #[arg(short = 's', long = "substrate", value_name = "URL")]
    substrate: Vec<String>,

    /// Base URL of an embedded twin registry (hosted by an rmb-relay) to use instead of
    /// tfchain, e.g. http://relay.example:8080.
    #[arg(long, value_name = "URL", conflicts_with = "substrate")]
    registry: Option<String>,

    /// Encryption key to publish, which decides who can write to this twin. x25519
    /// (default, modern): every rmb peer can, rmb-rs peers cannot (they only understand a
    /// 33-byte secp256k1 key). secp256k1 (rmb-rs scheme): rmb-rs peers and rmb peers that
    /// also publish secp256k1 can; rmb peers publishing x25519 cannot, because the scheme
    /// derives the key from the sender's published secp256k1 key.
    #[arg(long, default_value = "x25519", value_name = "x25519|secp256k1")]
    e2e: E2eScheme,

    /// Session id to connect with. rmb-peer normally has none (as rmb-rs): two peers of
    /// one twin without session ids displace each other on a relay.
    #[arg(long, value_name = "SID")]
    sid: Option<String>,

    /// Accepted for rmb-rs compatibility and unused (rmb-rs's upload plugin is disabled).
    #[arg(short = 'u', long, value_name = "PATH")]
    uploads: Option<PathBuf>,

    /// Do not publish the relay list and encryption key to the registry (debugging).
    #[arg(long)]
    no_update: bool,

    /// Deliver at most once, as rmb-rs does: no resending of unanswered requests, no
    /// reply cache, no crash-safe bookkeeping in Redis. Faster, but a relay or peer
    /// crash loses messages. For comparison and benchmarks.
    #[arg(long)]
    at_most_once: bool,

    /// Memory for replies kept to answer repeated requests again, in MiB. Past it, the
    /// replies kept in Redis (`msgbus.seen.*`) answer instead.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    reply_cache_mb: usize,

    /// More logging: -d debug, -dd trace. RUST_LOG overrides.
    #[arg(short = 'd', long = "debug", action = clap::ArgAction::Count)]
    debug: u8,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.debug);
    if args.uploads.is_some() {
        tracing::warn!("--uploads is accepted for rmb-rs compatibility but unused");
    }

    let secret = read_secret(&args)?;
    let identity = Arc::new(
        Identity::from_secret(&secret, args.key_type)
            .context("the mnemonic or seed is not valid")?,
    );
    drop(secret);
    tracing::info!(account = %identity.signer().account(), key_type = %args.key_type, "identity loaded");

    let substrate = match (&args.registry, args.substrate.is_empty()) {
        (None, true) => vec![DEFAULT_SUBSTRATE.to_string()],
        _ => args.substrate.clone(),
    };
    let choice = RegistryChoice::from_flags(&substrate, args.registry.as_deref())?
        .context("no twin registry selected")?;
    let backend = connect(&choice)
        .await
        .context("connecting to the twin registry")?;
    let registry = CachedRegistry::new(backend, DEFAULT_TTL, DEFAULT_CAPACITY);
    registry.spawn_follower();
    tracing::info!(registry = %registry.describe(), "twin registry");

    let config = PeerConfig {
        identity,
        relays: args.relays.clone(),
        registry,
        sid: args.sid.clone(),
        e2e: args.e2e,
        update_twin: !args.no_update,
        reliable: !args.at_most_once,
        // The Redis API marks every request it delivers (`msgbus.seen.*`).
        app_dedupes: !args.at_most_once,
    };
    let replay =
        MemoryReplayStore::with_reply_budget(replay::DEFAULT_CAPACITY, args.reply_cache_mb << 20);
    let (peer, inbound) = Peer::start_with_replay_store(config, Arc::new(replay)).await?;
    let api = match RedisApi::start(peer.clone(), inbound, &args.redis).await {
        Ok(api) => api,
        Err(e) => {
            peer.shutdown().await;
            return Err(e.into());
        }
    };
    tracing::info!(twin = peer.twin_id(), "rmb-peer ready");

    shutdown_signal().await;
    tracing::info!("shutting down");
    api.shutdown(SHUTDOWN_GRACE).await;
    Ok(())
}

/// The secret from --mnemonic (or RMB_MNEMONIC) or --mnemonic-file.
fn read_secret(args: &Args) -> anyhow::Result<String> {
    if let Some(path) = &args.mnemonic_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the secret from {}", path.display()))?;
        let secret = text.trim();
        if secret.is_empty() {
            bail!("{} is empty", path.display());
        }
        return Ok(secret.to_string());
    }
    match &args.mnemonic {
        Some(m) if !m.trim().is_empty() => Ok(m.trim().to_string()),
        _ => bail!("a secret is required: --mnemonic, --mnemonic-file or RMB_MNEMONIC"),
    }
}

fn init_logging(debug: u8) {
    let level = match debug {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt().with_env_filter(filter).init();
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
