//! Direct clients (`rmb_peer::Client`) of fresh twins, for tests that drive the peer
//! library in-process against real relays (peer_direct, peer_security, connections).

use rand::RngCore;
use rmb_identity::registry::RegistryChoice;
use rmb_identity::{Identity, KeyType};
use rmb_peer::{Client, ClientOptions};

use crate::relay_process::RelayProcess;

/// A fresh 12-word mnemonic, so each test has its own twins.
pub fn fresh_mnemonic() -> String {
    let mut entropy = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut entropy);
    bip39::Mnemonic::from_entropy(&entropy)
        .expect("16 bytes of entropy make a mnemonic")
        .to_string()
}

/// Registers the twin of `secret` (sr25519) listing `relays` on the embedded registry at
/// `registry_url`; returns its id.
pub async fn register_secret(registry_url: &str, secret: &str, relays: &[String]) -> u32 {
    let identity = Identity::from_secret(secret, KeyType::Sr25519).expect("a valid secret");
    crate::registry::register(registry_url, &identity, relays).await
}

/// Connects a direct client of `secret` with session `sid` to `relays`, looking twins up
/// in the embedded registry at `registry`.
pub async fn connect_client(
    secret: &str,
    sid: &str,
    relays: &[&RelayProcess],
    registry: &str,
) -> Client {
    Client::connect(client_options(secret, sid, relays, registry))
        .await
        .expect("client connects")
}

/// The options [`connect_client`] uses, for a test that changes some before connecting.
pub fn client_options(
    secret: &str,
    sid: &str,
    relays: &[&RelayProcess],
    registry: &str,
) -> ClientOptions {
    let urls = relays.iter().map(|r| r.ws_url()).collect();
    let choice = RegistryChoice::Embedded {
        url: registry.to_string(),
    };
    ClientOptions::new(secret, sid, urls, choice)
}
