//! Creating twins on an embedded registry (hosted by a test's relay).

use rmb_identity::Identity;
use rmb_identity::registry::http::HttpRegistry;
use rmb_identity::registry::{Registry, TwinUpdate};

/// Registers `who` on the registry at `registry_url` with relay list `relays`, without an
/// encryption key; returns its twin id.
pub async fn register(registry_url: &str, who: &Identity, relays: &[String]) -> u32 {
    let update = TwinUpdate {
        relays: relays.iter().cloned().collect(),
        pk: None,
        create: true,
    };
    HttpRegistry::new(registry_url)
        .unwrap()
        .publish(who.signer(), &update)
        .await
        .unwrap()
        .id
}
