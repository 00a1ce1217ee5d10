//! The embedded registry end to end: the relay's registry server on a loopback port, the
//! HTTP client every relay and peer uses, both stores (redb file and Redis), restarts,
//! the change feed, and attacks on publishing (forged, replayed, stale, malformed).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rmb_identity::registry::api::PublishRequest;
use rmb_identity::registry::http::HttpRegistry;
use rmb_identity::registry::{CachedRegistry, Registry, RegistryError, Twin, TwinUpdate};
use rmb_identity::{E2eScheme, Identity, KeyType, Signer};
use rmb_relay::registry::http::router;
use rmb_relay::registry::{HostedRegistry, RedbStore, RedisStore, TwinStore};
use rmb_testsupport::redis_server::RedisServer;
use tokio::task::JoinHandle;

/// A registry server on a loopback port; aborted when dropped, or stopped cleanly
/// (releasing its store) with [`Server::stop`].
struct Server {
    addr: SocketAddr,
    task: JoinHandle<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Server {
    async fn start(store: Arc<dyn TwinStore>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(HostedRegistry::new(store));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Server {
            addr,
            task,
            stop: Some(stop),
        }
    }

    /// Stops accepting, waits for open connections to end and the store to be released.
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        (&mut self.task).await.unwrap();
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn client(&self) -> HttpRegistry {
        HttpRegistry::new(&self.url()).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn redb(path: &Path) -> Arc<dyn TwinStore> {
    Arc::new(RedbStore::open(path).unwrap())
}

fn update(relays: &[&str], pk: Option<Vec<u8>>, create: bool) -> TwinUpdate {
    TwinUpdate {
        relays: relays.iter().map(|r| r.to_string()).collect(),
        pk,
        create,
    }
}

fn fresh_ed25519() -> Identity {
    let mnemonic = bip39::Mnemonic::from_entropy(&rand::random::<[u8; 16]>()).unwrap();
    Identity::from_secret(&mnemonic.to_string(), KeyType::Ed25519).unwrap()
}

/// Registers, reads back and updates twins through any backend.
async fn register_read_update(registry: &dyn Registry) {
    let ed = fresh_ed25519();
    let alice = Identity::from_secret("//Alice", KeyType::Sr25519).unwrap();
    let ed_pk = ed.e2e_public_key(E2eScheme::X25519);
    let alice_pk = alice.e2e_public_key(E2eScheme::Secp256k1);

    let not_yet = registry
        .publish(ed.signer(), &update(&["127.0.0.1:8081"], None, false))
        .await;
    assert_eq!(
        not_yet,
        Err(RegistryError::NotRegistered(ed.signer().account()))
    );

    let first = registry
        .publish(
            ed.signer(),
            &update(&["127.0.0.1:8081"], Some(ed_pk.clone()), true),
        )
        .await
        .unwrap();
    let second = registry
        .publish(
            alice.signer(),
            &update(&["relay1.test", "relay2.test"], Some(alice_pk), true),
        )
        .await
        .unwrap();
    assert_eq!((first.id, second.id), (1, 2));
    assert_eq!(first.account, ed.signer().account());
    assert_eq!(registry.get_twin(1).await.unwrap(), Some(first.clone()));
    assert_eq!(registry.get_twin(2).await.unwrap(), Some(second.clone()));
    assert_eq!(registry.get_twin(3).await.unwrap(), None);
    assert_eq!(
        registry
            .twin_id_by_account(&alice.signer().account())
            .await
            .unwrap(),
        Some(2)
    );

    // Update: publishing again (with or without `create`) changes the same twin.
    let moved = registry
        .publish(ed.signer(), &update(&["127.0.0.1:9000"], None, true))
        .await
        .unwrap();
    assert_eq!(moved.id, 1);
    assert_eq!(moved.pk, None);
    assert_eq!(registry.get_twin(1).await.unwrap(), Some(moved));
}

#[tokio::test]
async fn redb_backed_registry_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(redb(&dir.path().join("twins.redb"))).await;
    register_read_update(&server.client()).await;
}

#[tokio::test]
async fn redis_backed_registry_over_http_survives_a_redis_crash() {
    let mut redis = RedisServer::start_durable();
    let store = RedisStore::connect(&redis.url(), "rmb:registry:")
        .await
        .unwrap();
    let server = Server::start(Arc::new(store)).await;
    register_read_update(&server.client()).await;
    drop(server);

    redis.restart();
    let store = RedisStore::connect(&redis.url(), "rmb:registry:")
        .await
        .unwrap();
    let server = Server::start(Arc::new(store)).await;
    let client = server.client();
    assert_eq!(client.get_twin(1).await.unwrap().unwrap().relays.len(), 1);
    let alice = Signer::from_secret("//Alice", KeyType::Sr25519).unwrap();
    assert_eq!(
        client.twin_id_by_account(&alice.account()).await.unwrap(),
        Some(2)
    );
    let third = client
        .publish(fresh_ed25519().signer(), &update(&["r.test"], None, true))
        .await
        .unwrap();
    assert_eq!(third.id, 3, "ids continue after a restart");
}

#[tokio::test]
async fn registry_survives_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("twins.redb");
    let alice = Signer::from_secret("//Alice", KeyType::Sr25519).unwrap();
    {
        let server = Server::start(redb(&path)).await;
        server
            .client()
            .publish(&alice, &update(&["relay.test"], None, true))
            .await
            .unwrap();
        server.stop().await;
    }
    let server = Server::start(redb(&path)).await;
    let client = server.client();
    assert_eq!(
        client.twin_id_by_account(&alice.account()).await.unwrap(),
        Some(1)
    );
    let next = client
        .publish(
            fresh_ed25519().signer(),
            &update(&["relay.test"], None, true),
        )
        .await
        .unwrap();
    assert_eq!(next.id, 2);
}

/// Posts raw JSON and returns (status, error text).
async fn post(server: &Server, body: String) -> (u16, String) {
    let response = reqwest::Client::new()
        .post(format!("{}/twins", server.url()))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let json: serde_json::Value = response.json().await.unwrap();
    (status, json["error"].as_str().unwrap_or("").to_string())
}

fn now_ms() -> u64 {
    rmb_relay::registry::hosted::now_ms()
}

#[tokio::test]
async fn publishing_cannot_be_forged_replayed_or_garbled() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(redb(&dir.path().join("twins.redb"))).await;
    let alice = Signer::from_secret("//Alice", KeyType::Sr25519).unwrap();
    let bob = Signer::from_secret("//Bob", KeyType::Ed25519).unwrap();
    let wanted = update(&["relay.test"], None, true);

    // Bob signs a request that claims to be Alice's.
    let mut forged = PublishRequest::signed(&bob, &wanted, now_ms());
    forged.account = alice.account();
    let (status, error) = post(&server, serde_json::to_string(&forged).unwrap()).await;
    assert_eq!(status, 401, "{error}");
    assert!(error.contains("does not verify for account"), "{error}");

    // A genuine request is accepted once; the same bytes again are a replay.
    let genuine =
        serde_json::to_string(&PublishRequest::signed(&alice, &wanted, now_ms())).unwrap();
    assert_eq!(post(&server, genuine.clone()).await.0, 200);
    let (status, error) = post(&server, genuine).await;
    assert_eq!(status, 409, "{error}");
    assert!(error.contains("replayed or out of order"), "{error}");

    // A request signed long ago (or far in the future) is refused outright.
    let old = PublishRequest::signed(&bob, &wanted, now_ms() - 10 * 60 * 1000);
    let (status, error) = post(&server, serde_json::to_string(&old).unwrap()).await;
    assert_eq!(status, 400);
    assert!(error.contains("away from the registry's clock"), "{error}");

    // Tampering with a signed request breaks its signature.
    let mut tampered = PublishRequest::signed(&bob, &wanted, now_ms());
    tampered.relays.insert("evil.test".into());
    assert_eq!(
        post(&server, serde_json::to_string(&tampered).unwrap())
            .await
            .0,
        401
    );

    // Malformed input gets a clear 400, not a crash.
    let (status, error) = post(&server, "{not json".into()).await;
    assert_eq!(status, 400);
    assert!(error.starts_with("invalid publish request"), "{error}");
    let bad_relay = PublishRequest::signed(&bob, &update(&["wss://x.test"], None, true), now_ms());
    let (status, error) = post(&server, serde_json::to_string(&bad_relay).unwrap()).await;
    assert_eq!(
        (status, error.contains("without scheme")),
        (400, true),
        "{error}"
    );
    let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(100_000));
    assert_eq!(post_status(&server, huge).await, 413);

    for (path, want) in [
        ("/twins/abc", 400),
        ("/twins/99", 404),
        ("/twins/by-account/nope", 400),
    ] {
        let status = reqwest::get(format!("{}{path}", server.url()))
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), want, "{path}");
    }
    // After all that, only Alice is registered.
    assert_eq!(
        server.client().get_twin(1).await.unwrap().unwrap().account,
        alice.account()
    );
    assert_eq!(server.client().get_twin(2).await.unwrap(), None);
}

async fn post_status(server: &Server, body: String) -> u16 {
    reqwest::Client::new()
        .post(format!("{}/twins", server.url()))
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test]
async fn cache_follows_changes_without_waiting_for_its_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("twins.redb");
    let server = Server::start(redb(&path)).await;
    let alice = Signer::from_secret("//Alice", KeyType::Sr25519).unwrap();
    server
        .client()
        .publish(&alice, &update(&["old.test"], None, true))
        .await
        .unwrap();

    let cache = CachedRegistry::new(Arc::new(server.client()), Duration::from_secs(3600), 100);
    let follower = cache.spawn_follower();
    assert_eq!(cache.get_twin(1).await.unwrap().unwrap().relays.len(), 1);
    eventually("the follower to connect", async || cache.is_following()).await;

    // Another client updates the twin; the cache sees it through the change feed.
    server
        .client()
        .publish(&alice, &update(&["new.test"], None, false))
        .await
        .unwrap();
    let new_relays = update(&["new.test"], None, false).relays;
    eventually("the cached twin to change", async || {
        cache.get_twin(1).await.unwrap().map(|t| t.relays) == Some(new_relays.clone())
    })
    .await;
    follower.abort();
}

/// Child side of the crash test: publishes twins forever, printing each acknowledged id.
async fn crash_writer(path: &str) -> ! {
    let hosted = HostedRegistry::new(redb(Path::new(path)));
    loop {
        let signer = fresh_ed25519();
        let twin = hosted
            .publish(signer.signer(), &update(&["relay.test"], None, true))
            .await
            .unwrap();
        println!("acked {} {}", twin.id, twin.account);
    }
}

#[tokio::test]
async fn a_crash_mid_write_loses_nothing_acknowledged() {
    if let Ok(path) = std::env::var("RMB_CRASH_WRITER") {
        crash_writer(&path).await;
    }
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("twins.redb");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_crash_mid_write_loses_nothing_acknowledged",
            "--nocapture",
        ])
        .env("RMB_CRASH_WRITER", &path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut acked: Vec<(u32, String)> = Vec::new();
    let mut lines = stdout.lines();
    while acked.len() < 40 {
        let line = lines.next().expect("writer ended early").unwrap();
        if let Some(rest) = line.strip_prefix("acked ") {
            let (id, account) = rest.split_once(' ').unwrap();
            acked.push((id.parse().unwrap(), account.to_string()));
        }
    }
    child.kill().unwrap(); // SIGKILL, mid-stream
    child.wait().unwrap();
    for line in lines.map_while(Result::ok) {
        if let Some(rest) = line.strip_prefix("acked ") {
            let (id, account) = rest.split_once(' ').unwrap();
            acked.push((id.parse().unwrap(), account.to_string()));
        }
    }

    let store = RedbStore::open(&path).expect("the database opens after a crash");
    for (id, account) in &acked {
        let twin: Twin = store
            .get(*id)
            .await
            .unwrap()
            .expect("acknowledged twin kept");
        assert_eq!(&twin.account.to_string(), account);
    }
    eprintln!(
        "crash test: {} acknowledged twins all present after SIGKILL",
        acked.len()
    );
}

#[tokio::test]
async fn lookup_latency_figures() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(redb(&dir.path().join("twins.redb"))).await;
    let alice = Signer::from_secret("//Alice", KeyType::Sr25519).unwrap();
    let start = Instant::now();
    server
        .client()
        .publish(&alice, &update(&["relay.test"], None, true))
        .await
        .unwrap();
    let register = start.elapsed();

    let client = server.client();
    client.get_twin(1).await.unwrap();
    const N: u32 = 200;
    let start = Instant::now();
    for _ in 0..N {
        client.get_twin(1).await.unwrap().unwrap();
    }
    let cold = start.elapsed() / N;
    let cache = CachedRegistry::new(Arc::new(server.client()), Duration::from_secs(300), 100);
    cache.get_twin(1).await.unwrap();
    let start = Instant::now();
    for _ in 0..N * 100 {
        cache.get_twin(1).await.unwrap().unwrap();
    }
    let cached = start.elapsed() / (N * 100);
    eprintln!(
        "embedded registry (redb, HTTP over loopback): register {register:?}, uncached lookup {cold:?}, cached lookup {cached:?}"
    );
}
