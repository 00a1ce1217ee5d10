//! The relay under test and its twins: an in-process rmb-relay hosting its registry in a
//! temporary redb file, or a relay already running elsewhere with its embedded registry
//! at an HTTP URL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::serve::ListenerExt;
use futures_util::StreamExt;
use rmb_identity::registry::http::HttpRegistry;
use rmb_identity::registry::{Registry, TwinUpdate};
use rmb_identity::{KeyType, Signer, Token};
use rmb_relay::registry::{HostedRegistry, RedbStore};
use rmb_relay::{Config, RelayServer, RelayState};
use tokio::net::TcpListener;

/// Registrations in flight at once.
const PUBLISH_CONCURRENCY: usize = 16;

/// Lifetime of the login tokens the benchmark makes, in seconds.
pub const TOKEN_TTL: u64 = 600;

/// A relay to benchmark.
pub struct Target {
    /// WebSocket URL clients log in at (`ws://host:port/`).
    pub ws_url: String,
    /// The relay name twins publish as their relay.
    pub domain: String,
    pub registry: Arc<dyn Registry>,
    /// Set when the relay runs in this process.
    pub local: Option<Local>,
}

/// The in-process relay and what must live as long as it.
pub struct Local {
    pub state: Arc<RelayState>,
    /// `None` when the routes are served by hand (`--relay-nodelay`).
    server: Option<RelayServer>,
    _dir: tempfile::TempDir,
}

impl Local {
    /// Closes every session and stops listening.
    pub async fn shutdown(self) {
        match self.server {
            Some(server) => {
                let _ = tokio::time::timeout(Duration::from_secs(10), server.shutdown()).await;
            }
            None => {
                self.state.shutdown.cancel();
                self.state.switch.cancel_all();
            }
        }
    }
}

impl Target {
    /// Starts rmb-relay in this process on a free loopback port. The registry's redb file
    /// goes to /dev/shm when there is one, so that registering thousands of twins is not
    /// a benchmark of the disk's fsync.
    ///
    /// `nodelay` (diagnostic): serve the relay's routes ([`rmb_relay::server::app`]) with
    /// TCP_NODELAY on every accepted socket instead of through `RelayServer::start`.
    pub async fn in_process(nodelay: bool) -> anyhow::Result<Self> {
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::Builder::new()
                .prefix("relay-bench")
                .tempdir_in(shm)?
        } else {
            tempfile::tempdir()?
        };
        let store = RedbStore::open(&dir.path().join("registry.redb"))?;
        let hosted = HostedRegistry::new(Arc::new(store));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let domain = format!("127.0.0.1:{}", listener.local_addr()?.port());
        let config = Config {
            domains: [domain.clone()].into(),
            // Every bench client connects (and registers) from 127.0.0.1.
            max_connections_per_ip: 0,
            registry_register_rate: 0,
            max_connections: usize::MAX,
            ..Config::default()
        };
        let state = RelayState::new(config, hosted.clone(), Some(hosted.clone()));
        let server = if nodelay {
            let app = rmb_relay::server::app(Arc::clone(&state));
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let stop = state.shutdown.clone();
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
            });
            None
        } else {
            Some(RelayServer::start(Arc::clone(&state), listener)?)
        };
        Ok(Target {
            ws_url: format!("ws://{domain}/"),
            domain,
            registry: hosted,
            local: Some(Local {
                state,
                server,
                _dir: dir,
            }),
        })
    }

    /// A relay running elsewhere, registering twins at `registry_url`.
    pub fn external(
        ws_url: &str,
        registry_url: &str,
        domain: Option<String>,
    ) -> anyhow::Result<Self> {
        let rest = ws_url
            .strip_prefix("ws://")
            .or_else(|| ws_url.strip_prefix("wss://"))
            .context("--url must start with ws:// or wss://")?;
        let host = rest.split(['/', '?']).next().unwrap_or(rest).to_string();
        let ws_url = if rest.contains('/') {
            ws_url.to_string()
        } else {
            format!("{ws_url}/")
        };
        Ok(Target {
            ws_url,
            domain: domain.unwrap_or(host),
            registry: Arc::new(HttpRegistry::new(registry_url)?),
            local: None,
        })
    }

    /// Sessions connected to the in-process relay.
    pub fn sessions(&self) -> Option<usize> {
        self.local.as_ref().map(|l| l.state.switch.len())
    }

    /// Registers `count` fresh twins living on this relay; returns them and the seconds it took.
    pub async fn register(&self, count: usize) -> anyhow::Result<(Vec<BenchTwin>, f64)> {
        let started = Instant::now();
        let update = TwinUpdate {
            relays: [self.domain.clone()].into(),
            pk: None,
            create: true,
        };
        let results: Vec<anyhow::Result<BenchTwin>> = futures_util::stream::iter(0..count)
            .map(|_| {
                let (registry, update) = (Arc::clone(&self.registry), update.clone());
                async move {
                    let twin = BenchTwin::fresh()?;
                    let id = registry
                        .publish(&twin.signer, &update)
                        .await
                        .context("registering a benchmark twin")?
                        .id;
                    Ok(BenchTwin { id, ..twin })
                }
            })
            .buffer_unordered(PUBLISH_CONCURRENCY)
            .collect()
            .await;
        let twins = results.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
        Ok((twins, started.elapsed().as_secs_f64()))
    }
}

/// A twin made for the benchmark.
pub struct BenchTwin {
    pub id: u32,
    /// Its secret (`0x` + 64 hex digits), to hand to the idle-session child process.
    pub seed: String,
    pub signer: Signer,
}

impl BenchTwin {
    /// A fresh random ed25519 identity, not yet registered (id 0).
    pub fn fresh() -> anyhow::Result<Self> {
        let seed = format!("0x{}", hex::encode(rand::random::<[u8; 32]>()));
        let signer = Signer::from_secret(&seed, KeyType::Ed25519)?;
        Ok(BenchTwin {
            id: 0,
            seed,
            signer,
        })
    }
}

/// `ws_url` with a fresh login token for `twin` as its query string.
pub fn login_url(ws_url: &str, signer: &Signer, twin: u32) -> String {
    let token = Token::create(signer, twin, None, rmb_proto::time::unix_now(), TOKEN_TTL);
    format!("{ws_url}?{token}")
}
