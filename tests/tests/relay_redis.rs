//! The relay's Redis mode (`--redis`), with real `rmb-relay` processes and a real
//! `redis-server` started by the test: two replicas behind one domain act as one relay,
//! and a relay killed and restarted loses nothing it had queued.

use std::process::Command;
use std::time::Duration;

use rmb_identity::Identity;
use rmb_proto::{Address, Envelope};
use rmb_testsupport::redis_server::RedisServer;
use rmb_testsupport::relay_client::{TestClient, dev_identity, error_text, request, uids};
use rmb_testsupport::relay_process::RelayProcess;

const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(300);
/// The domain both replicas serve: twins list it as their relay.
const DOMAIN: &str = "relay.test";

/// A replica of the relay `DOMAIN` on `redis`.
fn replica(redis: &RedisServer) -> RelayProcess {
    RelayProcess::start(&["--domain", DOMAIN, "--redis", &redis.url()])
}

/// Registers `who` as living on `DOMAIN`; returns its twin id.
async fn register(registry_url: &str, who: &Identity) -> u32 {
    rmb_testsupport::registry::register(registry_url, who, &[DOMAIN.to_string()]).await
}

async fn recv_n(client: &mut TestClient, n: usize) -> Vec<Envelope> {
    client.recv_n(n, WAIT).await
}

/// `redis-cli` against the test's server.
fn redis_cli(redis: &RedisServer, args: &[&str]) -> String {
    let port = redis
        .url()
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    let out = Command::new("redis-cli")
        .args(["-p", &port])
        .args(args)
        .output()
        .expect("redis-cli is installed with redis-server");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn two_replicas_on_one_redis_act_as_one_relay() {
    let redis = RedisServer::start();
    let (r1, r2) = (replica(&redis), replica(&redis));
    let (alice, bob) = (dev_identity("Alice"), dev_identity("Bob"));
    // Both replicas keep the hosted registry in the same Redis: register on one, log in on
    // the other.
    let a = register(&r1.http_url(), &alice).await;
    let b = register(&r2.http_url(), &bob).await;
    let mut ca = TestClient::connect(&r1.ws_url(), &alice, a, None).await;
    let mut cb = TestClient::connect(&r2.ws_url(), &bob, b, None).await;

    // Across replicas, both ways.
    let to_bob = request(&alice, Address::twin(a), b, "a-to-b", b"hi bob", 60);
    ca.send(&to_bob).await;
    assert_eq!(cb.recv(WAIT).await, Some(to_bob), "replica 1 → replica 2");
    let to_alice = request(&bob, Address::twin(b), a, "b-to-a", b"hi alice", 60);
    cb.send(&to_alice).await;
    assert_eq!(ca.recv(WAIT).await, Some(to_alice), "replica 2 → replica 1");

    // fail-fast: delivered when the twin is connected to the other replica…
    let mut fast = request(&alice, Address::twin(a), b, "fast-1", b"x", 60);
    fast.tags = Some("fail-fast".into());
    ca.send(&fast).await;
    assert_eq!(cb.recv(WAIT).await, Some(fast));

    // …a burst keeps its order across replicas…
    let burst: Vec<Envelope> = (0..200)
        .map(|i| request(&alice, Address::twin(a), b, &format!("burst-{i}"), b"x", 60))
        .collect();
    for env in &burst {
        ca.send(env).await;
    }
    let got = recv_n(&mut cb, burst.len()).await;
    assert_eq!(uids(&got), uids(&burst), "every envelope, in order");

    // …and an offline twin's queue waits in Redis for whichever replica it returns to.
    drop(cb);
    tokio::time::sleep(QUIET).await;
    let mut fast = request(&alice, Address::twin(a), b, "fast-2", b"x", 60);
    fast.tags = Some("fail-fast".into());
    ca.send(&fast).await;
    let error = ca.recv(WAIT).await.unwrap();
    assert_eq!(
        (error.uid.as_str(), error_text(&error)),
        ("fast-2", Some("destination offline"))
    );
    let queued: Vec<Envelope> = (0..3)
        .map(|i| request(&alice, Address::twin(a), b, &format!("q-{i}"), b"x", 60))
        .collect();
    for env in &queued {
        ca.send(env).await;
    }
    tokio::time::sleep(QUIET).await;
    let key_ttl: i64 = redis_cli(&redis, &["TTL", &format!("rmb:relay:q:{{{b}}}")])
        .parse()
        .unwrap();
    assert!(
        key_ttl > 0,
        "queue keys expire (after the newest deadline), got TTL {key_ttl}"
    );
    let mut cb = TestClient::connect(&r1.ws_url(), &bob, b, None).await;
    let got = recv_n(&mut cb, queued.len()).await;
    assert_eq!(uids(&got), uids(&queued));
    assert_eq!(cb.recv(QUIET).await, None, "each envelope once");
}

#[tokio::test]
async fn a_killed_relay_loses_nothing_it_queued() {
    let redis = RedisServer::start();
    let mut relay = replica(&redis);
    let (alice, bob) = (dev_identity("Alice"), dev_identity("Bob"));
    let a = register(&relay.http_url(), &alice).await;
    let b = register(&relay.http_url(), &bob).await;
    let mut ca = TestClient::connect(&relay.ws_url(), &alice, a, None).await;
    let queued: Vec<Envelope> = (0..50)
        .map(|i| request(&alice, Address::twin(a), b, &format!("keep-{i}"), b"x", 60))
        .collect();
    for env in &queued {
        ca.send(env).await;
    }
    // A round trip through the relay: everything sent before it has been routed.
    let mut ping = request(&alice, Address::twin(a), a, "ping", b"", 60);
    ping.message = Some(rmb_proto::Message::Ping(rmb_proto::Ping {}));
    ca.send(&ping).await;
    assert_eq!(ca.recv(WAIT).await.map(|e| e.uid), Some("ping".into()));

    relay.kill();
    relay.restart();
    let mut cb = TestClient::connect(&relay.ws_url(), &bob, b, None).await;
    let got = recv_n(&mut cb, queued.len()).await;
    assert_eq!(uids(&got), uids(&queued), "all 50, in order, after SIGKILL");
    assert_eq!(cb.recv(QUIET).await, None);

    // Sessions' presence claims are bounded too: they expire unless renewed.
    let presence_ttl: i64 = redis_cli(&redis, &["TTL", &format!("rmb:relay:at:{{{b}}}")])
        .parse()
        .unwrap();
    assert!(
        (1..=60).contains(&presence_ttl),
        "presence TTL {presence_ttl}"
    );
}
