//! [`Fed`]: the processes of one fault run, each in its own network namespace: relay A
//! (hosting the registry) with peer A, relay B with peer B, federating over HTTP; each
//! peer with its own Redis (in the root namespace, on the bridge) and its HTTP API.
//!
//! With proxies, every hop goes through a [`FaultProxy`] in the root namespace: each
//! peer dials its relay through one, and each relay's registered domain is a proxy's
//! address, so the other relay reaches it through that proxy. Registry lookups go
//! straight to relay A.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use super::netns::{Lab, PacketDrop};
use super::proxy::FaultProxy;
use crate::peer_process::{PeerProcess, Wrap};
use crate::redis_server::RedisServer;
use crate::relay_process::{Placement, RelayProcess};

/// Port the relays listen on, each in its namespace.
const RELAY_PORT: u16 = 8080;
/// Port of each peer's HTTP API, in its namespace.
const HTTP_PORT: u16 = 8051;

/// The namespaces: relay A, relay B, peer A, peer B.
pub const NAMESPACES: [&str; 4] = ["ra", "rb", "pa", "pb"];

/// How a run's processes are set up.
#[derive(Debug, Clone, Default)]
pub struct Setup {
    /// Put a [`FaultProxy`] on every hop.
    pub proxies: bool,
    /// libfaketime's `FAKETIME` for peer B (e.g. `+30s`): its wall clock that far off.
    pub clock_b: Option<String>,
}

/// The four proxies of a run with [`Setup::proxies`].
pub struct Proxies {
    /// Peer A's connection to relay A.
    pub peer_a: FaultProxy,
    /// Peer B's connection to relay B.
    pub peer_b: FaultProxy,
    /// Relay B's connections to relay A (relay A's domain).
    pub to_relay_a: FaultProxy,
    /// Relay A's connections to relay B (relay B's domain).
    pub to_relay_b: FaultProxy,
}

impl Proxies {
    /// All four, to set them alike.
    pub fn all(&self) -> [&FaultProxy; 4] {
        [
            &self.peer_a,
            &self.peer_b,
            &self.to_relay_a,
            &self.to_relay_b,
        ]
    }
}

/// The running processes; field order is drop order (peers, relays, proxies, Redis
/// servers, and the namespaces last).
pub struct Fed {
    pub peer_a: PeerProcess,
    pub peer_b: PeerProcess,
    pub relay_a: RelayProcess,
    pub relay_b: RelayProcess,
    pub proxies: Option<Proxies>,
    pub redis_a: RedisServer,
    pub redis_b: RedisServer,
    pub twin_a: u32,
    pub twin_b: u32,
    /// Base URLs of the peers' HTTP APIs.
    pub http_a: String,
    pub http_b: String,
    dropped: AtomicU64,
    pub lab: Lab,
}

/// Where libfaketime is (Debian's `faketime` package), if installed.
pub fn libfaketime() -> Option<PathBuf> {
    [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib",
    ]
    .iter()
    .map(|dir| PathBuf::from(dir).join("faketime/libfaketimeMT.so.1"))
    .find(|p| p.exists())
}

impl Fed {
    /// Creates the namespaces and starts everything; `Err` is why it cannot run here
    /// (printed by the tests, which then skip).
    pub fn start(setup: &Setup) -> Result<Fed, String> {
        let faketime = match &setup.clock_b {
            Some(_) => Some(libfaketime().ok_or("libfaketime is not installed (faketime)")?),
            None => None,
        };
        let lab = Lab::new(&NAMESPACES)?;
        let ip = |name: &str| lab.place(name).ip;
        let relay_addr = |name: &str| SocketAddr::from((ip(name), RELAY_PORT));
        let on_bridge = SocketAddr::from((lab.host, 0));
        let proxies = setup.proxies.then(|| Proxies {
            peer_a: FaultProxy::start(on_bridge, relay_addr("ra")),
            peer_b: FaultProxy::start(on_bridge, relay_addr("rb")),
            to_relay_a: FaultProxy::start(on_bridge, relay_addr("ra")),
            to_relay_b: FaultProxy::start(on_bridge, relay_addr("rb")),
        });
        let subnet = format!("{}/24", lab.host);
        let place = |name: &str, domain: SocketAddr| Placement {
            prefix: lab.place(name).prefix(),
            host: ip(name).to_string(),
            domain: domain.to_string(),
            federation_allow: vec![subnet.clone()],
        };
        let (domain_a, domain_b) = match &proxies {
            Some(p) => (p.to_relay_a.addr(), p.to_relay_b.addr()),
            None => (relay_addr("ra"), relay_addr("rb")),
        };
        let relay_a =
            RelayProcess::start_placed(place("ra", domain_a), RELAY_PORT, &["--federation-http"]);
        let registry = relay_a.http_url();
        let relay_b = RelayProcess::start_placed(
            place("rb", domain_b),
            RELAY_PORT,
            &["--federation-http", "--registry", &registry],
        );
        let register = |secret: &str, relay: &RelayProcess| {
            crate::peer_node::register(&registry, secret, &[relay.domain()])
        };
        let (twin_a, twin_b) = (register("//Alice", &relay_a), register("//Bob", &relay_b));
        let host = lab.host.to_string();
        let redis_a = RedisServer::start_also_on(&host);
        let redis_b = RedisServer::start_also_on(&host);
        let (dial_a, dial_b) = match &proxies {
            Some(p) => (p.peer_a.addr(), p.peer_b.addr()),
            None => (relay_addr("ra"), relay_addr("rb")),
        };
        let peer = |secret: &str, ns: &str, redis: &RedisServer, dial: SocketAddr, clock| {
            let http = SocketAddr::from((ip(ns), HTTP_PORT));
            let args = [
                "--redis",
                &format!("redis://{host}:{}/", redis.port()),
                "--registry",
                &registry,
                "--relay",
                &format!("ws://{dial}/"),
                "--http",
                &http.to_string(),
                // Keeps the relay registered above: a peer dialling through a proxy
                // would otherwise publish the proxy's address as its relay.
                "--no-update",
            ];
            let mut wrap = Wrap {
                prefix: lab.place(ns).prefix(),
                env: Vec::new(),
            };
            if let (Some(lib), Some(offset)) = (&faketime, clock) {
                wrap.env = vec![
                    ("LD_PRELOAD".into(), lib.display().to_string()),
                    ("FAKETIME".into(), offset),
                    // Only the wall clock is off, as on a machine with a wrong clock.
                    ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
                ];
            }
            let args = args.iter().map(|s| s.to_string()).collect();
            let peer = PeerProcess::start_wrapped(secret, &redis.url(), args, wrap);
            (peer, format!("http://{http}"))
        };
        let (peer_a, http_a) = peer("//Alice", "pa", &redis_a, dial_a, None);
        let (peer_b, http_b) = peer("//Bob", "pb", &redis_b, dial_b, setup.clock_b.clone());
        Ok(Fed {
            peer_a,
            peer_b,
            relay_a,
            relay_b,
            proxies,
            redis_a,
            redis_b,
            twin_a,
            twin_b,
            http_a,
            http_b,
            dropped: AtomicU64::new(0),
            lab,
        })
    }

    /// The address of namespace `name` (one of [`NAMESPACES`]).
    pub fn ip(&self, name: &str) -> Ipv4Addr {
        self.lab.place(name).ip
    }

    /// Drops packets between namespaces `a` and `b` as `drop` says (rules in `a`),
    /// replacing `a`'s earlier faults.
    pub fn drop_between(&self, a: &str, b: &str, drop: PacketDrop) {
        let dropped = self.lab.set_faults(a, &[(self.ip(b), drop)]);
        self.dropped.fetch_add(dropped, Ordering::SeqCst);
    }

    /// Drops packets as `drop` says on every hop: peer A–relay A, relay A–relay B,
    /// peer B–relay B.
    pub fn drop_everywhere(&self, drop: PacketDrop) {
        self.drop_between("pa", "ra", drop);
        self.drop_between("ra", "rb", drop);
        self.drop_between("pb", "rb", drop);
    }

    /// Removes every drop rule.
    pub fn heal(&self) {
        for name in NAMESPACES {
            let dropped = self.lab.set_faults(name, &[]);
            self.dropped.fetch_add(dropped, Ordering::SeqCst);
        }
    }

    /// Packets the drop rules dropped, counted when they were replaced or removed.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::SeqCst)
    }

    /// The proxies (panics when started without).
    pub fn proxies(&self) -> &Proxies {
        self.proxies.as_ref().expect("a run with proxies")
    }
}
