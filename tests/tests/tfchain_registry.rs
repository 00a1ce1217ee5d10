//! The tfchain registry backend against tfchain's real runtime (run locally by chopsticks,
//! see `../shared/tfchain/README.md`): registering, updating, refusals, following changes
//! into a cache, losing and regaining the chain, and failover between URLs.
//!
//! One chain serves the whole file (starting one takes seconds and hundreds of MB), so
//! the steps run in order inside one test. Figures for the docs are printed, not checked.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rmb_identity::registry::tfchain::{RpcBackend, TfchainOptions, TfchainRegistry};
use rmb_identity::registry::{CachedRegistry, Registry, RegistryError, Twin, TwinUpdate};
use rmb_identity::{E2eScheme, Identity, KeyType};
use rmb_testsupport::chain::{LocalChain, free_port, fund};

fn relays(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn update(identity: &Identity, names: &[&str], scheme: E2eScheme, create: bool) -> TwinUpdate {
    TwinUpdate {
        relays: relays(names),
        pk: Some(identity.e2e_public_key(scheme)),
        create,
    }
}

/// A fresh ed25519 identity from a random mnemonic.
fn random_ed25519() -> Identity {
    let entropy: [u8; 16] = rand::random();
    let mnemonic = bip39::Mnemonic::from_entropy(&entropy).unwrap();
    Identity::from_secret(&mnemonic.to_string(), KeyType::Ed25519).unwrap()
}

fn unavailable_naming(result: Result<impl std::fmt::Debug, RegistryError>, url: &str) {
    match result {
        Err(RegistryError::Unavailable(message)) => {
            assert!(
                message.contains(url),
                "message should name {url}: {message}"
            )
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tfchain_registry_on_the_real_runtime() {
    let Some(mut chain) = LocalChain::start() else {
        return;
    };
    let url = chain.url();
    let registry = Arc::new(TfchainRegistry::connect(vec![url.clone()]).await.unwrap());
    assert_eq!(registry.describe(), format!("tfchain ({url})"));

    let (ed, ed_twin) = register_both_kinds(&registry, &url).await;
    updates_and_refusals(&registry, &ed, &ed_twin).await;

    let cache = CachedRegistry::new(registry.clone(), Duration::from_secs(3600), 1000);
    let follower = cache.spawn_follower();
    let other = TfchainRegistry::connect(vec![url.clone()]).await.unwrap();
    cache_follows_other_writers(&registry, &cache, &other, &ed, ed_twin.id).await;

    failover_to_a_live_url(&url, ed_twin.id).await;

    survives_a_chain_restart(&registry, &mut chain).await;
    // The follower reconnects by itself, and so does the other writer.
    let alice = Identity::from_secret("//Alice", KeyType::Sr25519).unwrap();
    let id = registry
        .twin_id_by_account(&alice.signer().account())
        .await
        .unwrap()
        .unwrap();
    cache_follows_other_writers(&registry, &cache, &other, &alice, id).await;
    follower.abort();
}

/// Registers an ed25519 twin (random account, funded) and `//Alice` (sr25519).
async fn register_both_kinds(registry: &TfchainRegistry, url: &str) -> (Identity, Twin) {
    let ed = random_ed25519();
    let ed_account = ed.signer().account();
    assert_eq!(
        registry.twin_id_by_account(&ed_account).await.unwrap(),
        None
    );
    fund(url, &ed_account).await;

    let wanted = update(&ed, &["relay1.example.com"], E2eScheme::X25519, true);
    let start = Instant::now();
    let ed_twin = registry.publish(ed.signer(), &wanted).await.unwrap();
    eprintln!(
        "figure: registering a twin (accept T&C + create, to finality): {:?}",
        start.elapsed()
    );
    assert!(ed_twin.id > 0);
    assert_eq!(ed_twin.account, ed_account);
    assert_eq!(ed_twin.relays, wanted.relays);
    assert_eq!(ed_twin.pk, wanted.pk);

    let alice = Identity::from_secret("//Alice", KeyType::Sr25519).unwrap();
    let wanted = update(
        &alice,
        &["alice-relay.example.com", "relay2.example.com"],
        E2eScheme::Secp256k1,
        true,
    );
    let alice_twin = registry.publish(alice.signer(), &wanted).await.unwrap();
    assert!(alice_twin.id > 0);
    assert_ne!(alice_twin.id, ed_twin.id);
    assert_eq!(alice_twin.relays, wanted.relays);

    // Read back by id and by account.
    assert_eq!(
        registry.get_twin(ed_twin.id).await.unwrap(),
        Some(ed_twin.clone())
    );
    let start = Instant::now();
    const LOOKUPS: u32 = 20;
    for _ in 0..LOOKUPS {
        registry.get_twin(alice_twin.id).await.unwrap();
    }
    eprintln!(
        "figure: uncached get_twin at an unchanged head: {:?} on average",
        start.elapsed() / LOOKUPS
    );
    assert_eq!(
        registry.get_twin(alice_twin.id).await.unwrap(),
        Some(alice_twin.clone())
    );
    assert_eq!(
        registry
            .twin_id_by_account(&alice.signer().account())
            .await
            .unwrap(),
        Some(alice_twin.id)
    );
    assert_eq!(registry.get_twin(u32::MAX).await.unwrap(), None);

    // Publishing what is already there sends nothing and answers the same twin.
    assert_eq!(
        registry.publish(alice.signer(), &wanted).await.unwrap(),
        alice_twin
    );
    (ed, ed_twin)
}

/// Updates a twin, and checks the refusals: not registered, and a relay with a port.
async fn updates_and_refusals(registry: &TfchainRegistry, ed: &Identity, ed_twin: &Twin) {
    let wanted = update(
        ed,
        &["relay3.example.com", "relay4.example.com"],
        E2eScheme::Secp256k1,
        false,
    );
    let updated = registry.publish(ed.signer(), &wanted).await.unwrap();
    assert_eq!(updated.id, ed_twin.id);
    assert_eq!(updated.relays, wanted.relays);
    assert_eq!(updated.pk, wanted.pk);
    assert_eq!(registry.get_twin(ed_twin.id).await.unwrap(), Some(updated));

    let stranger = random_ed25519();
    let result = registry
        .publish(
            stranger.signer(),
            &update(&stranger, &["relay1.example.com"], E2eScheme::X25519, false),
        )
        .await;
    assert_eq!(
        result,
        Err(RegistryError::NotRegistered(stranger.signer().account()))
    );

    let with_port = update(ed, &["127.0.0.1:8080"], E2eScheme::X25519, false);
    let result = registry.publish(ed.signer(), &with_port).await;
    let Err(RegistryError::Refused(message)) = &result else {
        panic!("a relay with a port must be refused, got {result:?}");
    };
    assert_eq!(message, "TfgridModule.InvalidRelayAddress");
    eprintln!("refusal reads: {}", result.unwrap_err());
}

/// A cache in front of one client sees another client's update of twin `id` (owned by
/// `owner`) through chain events, long before its TTL.
async fn cache_follows_other_writers(
    registry: &TfchainRegistry,
    cache: &CachedRegistry,
    other: &TfchainRegistry,
    owner: &Identity,
    id: u32,
) {
    let start = Instant::now();
    while !cache.is_following() {
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "follower never (re)started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("follower ready after {:?}", start.elapsed());
    let before = cache.get_twin(id).await.unwrap().unwrap();
    const LOOKUPS: u32 = 10_000;
    let start = Instant::now();
    for _ in 0..LOOKUPS {
        cache.get_twin(id).await.unwrap();
    }
    eprintln!(
        "figure: cached get_twin: {:?} on average",
        start.elapsed() / LOOKUPS
    );

    // A new relay list and the other key kind: always a change.
    let scheme = match before.pk.as_ref().map(Vec::len) {
        Some(32) => E2eScheme::Secp256k1,
        _ => E2eScheme::X25519,
    };
    let wanted = update(owner, &["relay5.example.com"], scheme, false);
    let updated = other.publish(owner.signer(), &wanted).await.unwrap();
    assert_ne!(updated, before);
    let start = Instant::now();
    loop {
        if cache.get_twin(id).await.unwrap().as_ref() == Some(&updated) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the cache never saw the update"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "figure: cache saw another client's update {:?} after that publish returned",
        start.elapsed()
    );

    // The other client made a new block: this lookup re-takes the head.
    let start = Instant::now();
    assert_eq!(registry.get_twin(id).await.unwrap(), Some(updated));
    eprintln!(
        "figure: uncached get_twin right after a new block: {:?}",
        start.elapsed()
    );
}

/// `connect` skips a dead URL and says which one it uses; subxt's default (combined)
/// backend, which prefers the chainHead methods of real nodes, reads the same twin.
async fn failover_to_a_live_url(url: &str, id: u32) {
    let dead = format!("ws://127.0.0.1:{}", free_port());
    let registry = TfchainRegistry::connect(vec![dead, url.to_string()])
        .await
        .unwrap();
    assert_eq!(registry.describe(), format!("tfchain ({url})"));
    let twin = registry.get_twin(id).await.unwrap();
    assert!(twin.is_some());

    let options = TfchainOptions {
        backend: RpcBackend::Combined,
        ..TfchainOptions::default()
    };
    let chain_head = TfchainRegistry::connect_with(vec![url.to_string()], options)
        .await
        .unwrap();
    assert_eq!(chain_head.get_twin(id).await.unwrap(), twin);
}

/// With the chain gone, calls fail promptly and name the URL; once it is back (empty:
/// chopsticks keeps state in memory), the same instance works again.
async fn survives_a_chain_restart(registry: &TfchainRegistry, chain: &mut LocalChain) {
    let url = chain.url();
    chain.stop();
    let start = Instant::now();
    unavailable_naming(registry.get_twin(1).await, &url);
    let alice = Identity::from_secret("//Alice", KeyType::Sr25519).unwrap();
    let wanted = update(&alice, &["relay6.example.com"], E2eScheme::X25519, true);
    unavailable_naming(registry.publish(alice.signer(), &wanted).await, &url);
    eprintln!(
        "figure: two calls with the chain down failed in {:?}",
        start.elapsed()
    );
    assert!(start.elapsed() < Duration::from_secs(30));

    chain.restart();
    let twin = registry.publish(alice.signer(), &wanted).await.unwrap();
    assert_eq!(twin.relays, wanted.relays);
    assert_eq!(registry.get_twin(twin.id).await.unwrap(), Some(twin));
}
