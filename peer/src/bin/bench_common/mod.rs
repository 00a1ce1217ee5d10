//! What the peer's bench binaries (`peer-bench`, `topic-bench`) share to set up their
//! servers: free loopback ports, waiting for a server to listen, and registering a twin
//! on the embedded registry of the relay they started; and, in [`cpu`], reading the CPU
//! time of the processes they measure. Included by each binary with `#[path]`, since
//! binaries of one package share no library module of their own.

pub mod cpu;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use anyhow::bail;
use rmb_identity::registry::http::HttpRegistry;
use rmb_identity::registry::{Registry, TwinUpdate};
use rmb_identity::{Identity, KeyType};

/// A loopback port nothing listens on (just released by the OS).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits up to 20 s until something listens on loopback `port` (`what` names it).
pub fn wait_for_port(port: u16, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{what} did not start listening on port {port}")
}

/// Creates the twin of `secret` (sr25519) listing `relay`, without an encryption key
/// (the peer publishes its own), on the embedded registry at `registry`.
pub async fn register(registry: &str, secret: &str, relay: &str) -> anyhow::Result<u32> {
    let identity = Identity::from_secret(secret, KeyType::Sr25519)?;
    let update = TwinUpdate {
        relays: [relay.to_string()].into_iter().collect(),
        pk: None,
        create: true,
    };
    Ok(HttpRegistry::new(registry)?
        .publish(identity.signer(), &update)
        .await?
        .id)
}
