//! Replica links, with real `rmb-relay` processes on a real `redis-server`: envelopes
//! for a session on another replica go straight to that replica (Redis does nothing per
//! envelope in the steady state), a session that moves between replicas loses nothing
//! and gets nothing twice, and the link port refuses whoever cannot prove it is a
//! replica of the same relay.

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use rmb_identity::Identity;
use rmb_proto::{Address, Envelope};
use rmb_testsupport::redis_server::RedisServer;
use rmb_testsupport::relay_client::{TestClient, dev_identity, request, requests, uids};
use rmb_testsupport::relay_process::RelayProcess;

const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(300);
const DOMAIN: &str = "relay.test";

fn replica(redis: &RedisServer) -> RelayProcess {
    RelayProcess::start(&["--domain", DOMAIN, "--redis", &redis.url()])
}

async fn register(registry_url: &str, who: &Identity) -> u32 {
    rmb_testsupport::registry::register(registry_url, who, &[DOMAIN.to_string()]).await
}

async fn recv_n(client: &mut TestClient, n: usize) -> Vec<Envelope> {
    client.recv_n(n, WAIT).await
}

/// Every command Redis has run so far (scripts' inner commands included), from
/// `INFO commandstats`.
fn redis_commands(redis: &RedisServer) -> u64 {
    let port = redis
        .url()
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    let out = Command::new("redis-cli")
        .args(["-p", &port, "INFO", "commandstats"])
        .output()
        .expect("redis-cli is installed with redis-server");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Every uid of `sent` is in `got` exactly once, whatever the order.
fn assert_each_once(mut got: Vec<String>, mut sent: Vec<String>) {
    got.sort();
    let received = got.len();
    got.dedup();
    assert_eq!(got.len(), received, "nothing twice");
    sent.sort();
    assert_eq!(got, sent, "nothing lost");
}

/// The replica link address a relay advertises, from its `/health`.
async fn link_address(relay: &RelayProcess) -> String {
    let health: serde_json::Value = reqwest::get(format!("{}/health", relay.http_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    health["replica_links"]["advertised"]
        .as_str()
        .expect("replica links are on by default with --redis")
        .to_string()
}

/// Sends probes from Alice (on `relay`) to Bob until one went over a replica link: the
/// first ones may race Bob's claim in Redis and go through his queue.
async fn prime_link(
    relay: &RelayProcess,
    (alice, a, ca): (&Identity, u32, &mut TestClient),
    (b, cb): (u32, &mut TestClient),
) {
    for i in 0.. {
        assert!(i < 50, "the link never came up");
        let probe = request(alice, Address::twin(a), b, &format!("probe-{i}"), b"x", 60);
        ca.send(&probe).await;
        assert_eq!(cb.recv(WAIT).await, Some(probe));
        if relay.metric("relay_replica_forwarded_total").await >= 1.0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn envelopes_between_replicas_go_over_the_link_not_through_redis() {
    let redis = RedisServer::start();
    let (r1, r2) = (replica(&redis), replica(&redis));
    let (alice, bob) = (dev_identity("Alice"), dev_identity("Bob"));
    let a = register(&r1.http_url(), &alice).await;
    let b = register(&r2.http_url(), &bob).await;
    let mut ca = TestClient::connect(&r1.ws_url(), &alice, a, None).await;
    let mut cb = TestClient::connect(&r2.ws_url(), &bob, b, None).await;

    // The first envelope looks Bob up in Redis; the link then carries the rest.
    prime_link(&r1, (&alice, a, &mut ca), (b, &mut cb)).await;

    let before = redis_commands(&redis);
    // In rounds Bob's outbox holds (a burst over it spills to his queue in Redis, as a
    // slow reader's does on one relay).
    for round in 0..10 {
        let burst = requests(&alice, a, b, &format!("b{round}"), 100);
        for env in &burst {
            ca.send(env).await;
        }
        let got = recv_n(&mut cb, burst.len()).await;
        assert_eq!(uids(&got), uids(&burst), "every envelope once, in order");
    }
    let used = redis_commands(&redis) - before;
    // Renewals and the test's own INFO may run meanwhile: a handful, not one per envelope.
    assert!(
        used < 50,
        "{used} Redis commands for 1000 envelopes between replicas"
    );
    let forwarded = r1.metric("relay_replica_forwarded_total").await;
    assert!(forwarded >= 1001.0, "forwarded over the link: {forwarded}");
    assert_eq!(r2.metric("relay_replica_received_total").await, forwarded);
}

#[tokio::test]
async fn a_session_moving_between_replicas_gets_everything_once() {
    let redis = RedisServer::start();
    let (r1, r2) = (replica(&redis), replica(&redis));
    let (alice, bob) = (dev_identity("Alice"), dev_identity("Bob"));
    let a = register(&r1.http_url(), &alice).await;
    let b = register(&r1.http_url(), &bob).await;
    let mut ca = TestClient::connect(&r1.ws_url(), &alice, a, None).await;
    let mut got = Vec::new();
    let mut sent = Vec::new();
    let mut waiting = 0;
    // Bob hops r2 → r1 → r2 → r1; Alice sends while he is connected and while he is away
    // (then his queue in Redis holds it for whichever replica he comes back to).
    for (round, url) in [r2.ws_url(), r1.ws_url(), r2.ws_url(), r1.ws_url()]
        .iter()
        .enumerate()
    {
        let mut cb = TestClient::connect(url, &bob, b, None).await;
        let batch = requests(&alice, a, b, &format!("r{round}"), 100);
        for env in &batch {
            ca.send(env).await;
        }
        sent.extend(uids(&batch));
        // Everything written to him is read before he leaves (a client that leaves with
        // unread frames loses them, whatever the relay does).
        got.extend(uids(&recv_n(&mut cb, waiting + batch.len()).await));
        drop(cb);
        tokio::time::sleep(QUIET).await;
        let away = requests(&alice, a, b, &format!("away{round}"), 50);
        for env in &away {
            ca.send(env).await;
        }
        sent.extend(uids(&away));
        waiting = away.len();
    }
    let mut cb = TestClient::connect(&r2.ws_url(), &bob, b, None).await;
    while let Some(env) = cb.recv(Duration::from_secs(2)).await {
        got.push(env.uid);
    }
    assert_each_once(got, sent);
}

#[tokio::test]
async fn the_link_port_refuses_whoever_lacks_the_replica_secret() {
    let redis = RedisServer::start();
    let (r1, r2) = (replica(&redis), replica(&redis));
    let (alice, bob) = (dev_identity("Alice"), dev_identity("Bob"));
    let a = register(&r1.http_url(), &alice).await;
    let b = register(&r2.http_url(), &bob).await;
    let mut cb = TestClient::connect(&r2.ws_url(), &bob, b, None).await;
    let address = link_address(&r2).await;

    // A stranger reads the greeting and answers with a made-up proof and a batch for Bob.
    let forged = request(&alice, Address::twin(a), b, "forged", b"x", 60);
    let stranger = std::thread::spawn(move || {
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut header = [0u8; 4];
        stream.read_exact(&mut header).unwrap();
        let mut hello = vec![0u8; u32::from_be_bytes(header) as usize];
        stream.read_exact(&mut hello).unwrap();
        let server_id_len = hello[8] as usize;
        let server_id = String::from_utf8(hello[9..9 + server_id_len].to_vec()).unwrap();
        let mut prove = b"RMBRPL01".to_vec();
        prove.push(8);
        prove.extend_from_slice(b"stranger");
        prove.extend_from_slice(&[7u8; 32]); // nonce
        prove.extend_from_slice(&[9u8; 32]); // not a MAC under the secret
        let mut frame = (prove.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&prove);
        // A batch right behind it, as if the proof had passed.
        let bytes = forged.to_bytes();
        let mut batch = vec![1u8];
        batch.extend_from_slice(&1u64.to_be_bytes());
        batch.extend_from_slice(&1u32.to_be_bytes());
        batch.extend_from_slice(&b.to_be_bytes());
        batch.extend_from_slice(&0u16.to_be_bytes());
        batch.extend_from_slice(&u64::MAX.to_be_bytes());
        batch.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        batch.extend_from_slice(&bytes);
        frame.extend_from_slice(&(batch.len() as u32).to_be_bytes());
        frame.extend_from_slice(&batch);
        let _ = stream.write_all(&frame);
        // The replica closes without a word.
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
        (server_id, rest)
    });
    let (server_id, answer) = tokio::task::spawn_blocking(move || stranger.join().unwrap())
        .await
        .unwrap();
    assert_eq!(server_id.len(), 16, "the greeting names the replica");
    assert!(answer.is_empty(), "no proof, no ack: got {answer:?}");
    assert_eq!(cb.recv(QUIET).await, None, "nothing forged reached Bob");
    assert_eq!(
        r2.metric("relay_replica_links_refused_total{reason=\"bad_proof\"}")
            .await,
        1.0
    );
    assert_eq!(r2.metric("relay_replica_received_total").await, 0.0);

    // Garbage instead of a handshake is refused just the same, and the real replicas'
    // own link still works afterwards.
    let mut junk = tokio::net::TcpStream::connect(link_address(&r2).await)
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut junk, &[0xff; 64])
        .await
        .unwrap();
    let mut ca = TestClient::connect(&r1.ws_url(), &alice, a, None).await;
    let real = request(&alice, Address::twin(a), b, "real", b"x", 60);
    ca.send(&real).await;
    assert_eq!(cb.recv(WAIT).await, Some(real));
}

#[tokio::test]
async fn envelopes_for_a_killed_replica_wait_in_the_queue() {
    let redis = RedisServer::start();
    let (r1, mut r2) = (replica(&redis), replica(&redis));
    let (alice, bob) = (dev_identity("Alice"), dev_identity("Bob"));
    let a = register(&r1.http_url(), &alice).await;
    let b = register(&r1.http_url(), &bob).await;
    let mut ca = TestClient::connect(&r1.ws_url(), &alice, a, None).await;
    let mut cb = TestClient::connect(&r2.ws_url(), &bob, b, None).await;
    prime_link(&r1, (&alice, a, &mut ca), (b, &mut cb)).await;
    let forwarded = r1.metric("relay_replica_forwarded_total").await;

    // r2 freezes (SIGSTOP) with Bob's session: Alice's envelopes go out on the link and
    // wait there unacknowledged; then r2 dies (SIGKILL) and r1 must take them back.
    let pid = r2.pid().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    drop(cb);
    let sent = requests(&alice, a, b, "k", 100);
    for env in &sent {
        ca.send(env).await;
    }
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        r1.metric("relay_replica_forwarded_total").await,
        forwarded,
        "none acknowledged"
    );
    r2.kill();
    // r1 notices the link is down and returns what r2 never acknowledged: soon, but on a
    // busy machine not always within a fixed pause.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut returned;
    loop {
        returned = r1
            .metric("relay_replica_returned_total{reason=\"link_down\"}")
            .await;
        if returned >= 100.0 || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        returned, 100.0,
        "every unacknowledged envelope went to the queue"
    );
    // Bob comes back through the surviving replica and finds every one in his queue.
    let mut cb = TestClient::connect(&r1.ws_url(), &bob, b, None).await;
    let got = uids(&recv_n(&mut cb, sent.len()).await);
    assert_eq!(cb.recv(QUIET).await, None, "nothing twice");
    assert_each_once(got, uids(&sent));
}

#[tokio::test]
async fn a_session_connecting_to_another_replica_ends_its_older_connection() {
    let redis = RedisServer::start();
    let (r1, r2) = (replica(&redis), replica(&redis));
    let (alice, bob) = (dev_identity("Alice"), dev_identity("Bob"));
    let a = register(&r1.http_url(), &alice).await;
    let b = register(&r1.http_url(), &bob).await;
    let mut ca = TestClient::connect(&r1.ws_url(), &alice, a, None).await;
    // Bob's old connection on r2 stays open (a half-dead socket, a balancer that moved
    // him) while he connects again through r1.
    let mut old = TestClient::connect(&r2.ws_url(), &bob, b, None).await;
    // The old connection is established at r2 (counted, then claimed in Redis, while r2
    // follows the announcements of moves) before Bob connects again: a reconnect within
    // the same milliseconds as the first connection is another case.
    let deadline = tokio::time::Instant::now() + WAIT;
    while r2.metric("relay_sessions").await < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "r2 never counted Bob"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(QUIET).await;
    let mut new = TestClient::connect(&r1.ws_url(), &bob, b, None).await;
    let mut evicted = 0.0;
    for _ in 0..50 {
        evicted = r2.metric("relay_replica_evicted_total").await;
        if evicted > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(evicted, 1.0, "r2 ended Bob's older connection");
    assert_eq!(old.recv(QUIET).await, None, "closed");
    let env = request(&alice, Address::twin(a), b, "to-new", b"x", 60);
    ca.send(&env).await;
    assert_eq!(
        new.recv(WAIT).await,
        Some(env),
        "the newer connection gets it"
    );
    assert_eq!(r1.metric("relay_replica_evicted_total").await, 0.0);
}

#[tokio::test]
async fn a_silent_connection_to_the_link_port_is_closed_at_the_handshake_deadline() {
    let redis = RedisServer::start();
    let relay = replica(&redis);
    let address = link_address(&relay).await;
    // Connects, reads the greeting, then says nothing at all.
    let mut silent = tokio::net::TcpStream::connect(&address).await.unwrap();
    let started = std::time::Instant::now();
    let mut sink = Vec::new();
    let read = tokio::time::timeout(
        Duration::from_secs(15),
        tokio::io::AsyncReadExt::read_to_end(&mut silent, &mut sink),
    )
    .await;
    assert!(read.is_ok(), "the replica closed the silent connection");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(10),
        "closed after {waited:?} (the handshake deadline is 5 s)"
    );
    assert_eq!(
        relay
            .metric("relay_replica_links_refused_total{reason=\"handshake_timeout\"}")
            .await,
        1.0
    );
}

#[test]
fn listening_on_every_address_without_an_advertised_one_is_a_clear_error() {
    let redis = RedisServer::start();
    let out =
        std::process::Command::new(rmb_testsupport::relay_process::binaries().join("rmb-relay"))
            .args(["--domain", DOMAIN, "--redis", &redis.url()])
            .args(["--listen", "127.0.0.1:0", "--replica-listen", "0.0.0.0:0"])
            .output()
            .unwrap();
    assert!(!out.status.success(), "exit code tells the truth");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--replica-advertise"),
        "the error names the flag to give: {stderr}"
    );
}
