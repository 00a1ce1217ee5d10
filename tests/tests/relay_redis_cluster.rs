//! The relay's Redis mode on a Redis Cluster and on a Sentinel set, with real `rmb-relay`
//! processes and real servers started by the tests ([`RedisCluster`], [`RedisSentinels`]):
//! replicas on a cluster act as one relay, offline queues live on every master, a master
//! killed mid-traffic loses no envelope the relay accepted (`--redis-wait-replicas 1`),
//! wake-ups lost while the master carrying them fails over are made up for, and a relay
//! on a Sentinel set follows a failover.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rmb_identity::Identity;
use rmb_proto::{Address, Envelope};
use rmb_testsupport::redis_cluster::{RedisCluster, RedisSentinels, cli};
use rmb_testsupport::relay_client::{TestClient, dev_identity, error_text, request, uids};
use rmb_testsupport::relay_process::RelayProcess;

const WAIT: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(500);
/// The domain every replica serves: twins list it as their relay.
const DOMAIN: &str = "relay.test";

/// A replica of the relay `DOMAIN` on the Redis at `url`, with `extra` flags.
fn replica(url: &str, extra: &[&str]) -> RelayProcess {
    let mut args = vec!["--domain", DOMAIN, "--redis", url];
    args.extend_from_slice(extra);
    RelayProcess::start(&args)
}

async fn register(registry_url: &str, who: &Identity) -> u32 {
    rmb_testsupport::registry::register(registry_url, who, &[DOMAIN.to_string()]).await
}

async fn recv_n(client: &mut TestClient, n: usize) -> Vec<Envelope> {
    client.recv_n(n, WAIT).await
}

/// Everything that arrives until nothing has for `quiet`.
async fn drain(client: &mut TestClient, quiet: Duration) -> Vec<Envelope> {
    let mut got = Vec::new();
    while let Some(env) = client.recv(quiet).await {
        got.push(env);
    }
    got
}

/// Sends a ping to itself and collects what arrives before its answer: since a
/// session's frames are routed in order, every envelope sent before has been routed
/// (and refused, if it was) by then.
async fn barrier(client: &mut TestClient, who: &Identity, twin: u32, uid: &str) -> Vec<Envelope> {
    let mut ping = request(who, Address::twin(twin), twin, uid, b"", 60);
    ping.message = Some(rmb_proto::Message::Ping(rmb_proto::Ping {}));
    client.send(&ping).await;
    let mut before = Vec::new();
    loop {
        let env = client
            .recv(Duration::from_secs(60))
            .await
            .expect("the barrier's answer arrives");
        if env.uid == uid {
            return before;
        }
        before.push(env);
    }
}

#[tokio::test]
async fn replicas_on_a_cluster_act_as_one_relay() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let (r1, r2, r3) = (replica(&url, &[]), replica(&url, &[]), replica(&url, &[]));
    let (alice, bob, carol) = (
        dev_identity("Alice"),
        dev_identity("Bob"),
        dev_identity("Carol"),
    );
    // The hosted registry lives in the cluster too: register on one, log in on another.
    let a = register(&r1.http_url(), &alice).await;
    let b = register(&r2.http_url(), &bob).await;
    let c = register(&r3.http_url(), &carol).await;
    let mut ca = TestClient::connect(&r1.ws_url(), &alice, a, None).await;
    let mut cb = TestClient::connect(&r2.ws_url(), &bob, b, None).await;
    let mut cc = TestClient::connect(&r3.ws_url(), &carol, c, None).await;

    let env = request(&alice, Address::twin(a), b, "r1-to-r2", b"hi", 60);
    ca.send(&env).await;
    assert_eq!(cb.recv(WAIT).await, Some(env), "replica 1 → replica 2");
    let env = request(&bob, Address::twin(b), c, "r2-to-r3", b"hi", 60);
    cb.send(&env).await;
    assert_eq!(cc.recv(WAIT).await, Some(env), "replica 2 → replica 3");
    let env = request(&carol, Address::twin(c), a, "r3-to-r1", b"hi", 60);
    cc.send(&env).await;
    assert_eq!(ca.recv(WAIT).await, Some(env), "replica 3 → replica 1");

    // fail-fast reaches a twin held by another replica…
    let mut fast = request(&alice, Address::twin(a), c, "fast-1", b"x", 60);
    fast.tags = Some("fail-fast".into());
    ca.send(&fast).await;
    assert_eq!(cc.recv(WAIT).await, Some(fast));

    // …and a burst keeps its order across replicas.
    let burst: Vec<Envelope> = (0..200)
        .map(|i| request(&alice, Address::twin(a), b, &format!("burst-{i}"), b"x", 60))
        .collect();
    for env in &burst {
        ca.send(env).await;
    }
    let got = recv_n(&mut cb, burst.len()).await;
    assert_eq!(uids(&got), uids(&burst), "every envelope, in order");
    assert_eq!(cb.recv(QUIET).await, None, "each envelope once");
}

#[tokio::test]
async fn offline_queues_on_every_master_are_delivered() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let relays = [replica(&url, &[]), replica(&url, &[]), replica(&url, &[])];
    let alice = dev_identity("Alice");
    let a = register(&relays[0].http_url(), &alice).await;
    let mut ca = TestClient::connect(&relays[0].ws_url(), &alice, a, None).await;

    // Register twins until one lives on each master (by the slot of its hash tag).
    let mut by_master: BTreeMap<u16, (Identity, u32)> = BTreeMap::new();
    for i in 0..64 {
        let who = dev_identity(&format!("Offline{i}"));
        let id = register(&relays[i % 3].http_url(), &who).await;
        let master = cluster.master_of(cluster.keyslot(&format!("{{{id}}}")));
        by_master.entry(master).or_insert((who, id));
        if by_master.len() == 3 {
            break;
        }
    }
    assert_eq!(by_master.len(), 3, "twins on all three masters");

    let mut sent: BTreeMap<u32, Vec<Envelope>> = BTreeMap::new();
    for (_, id) in by_master.values() {
        let queued: Vec<Envelope> = (0..5)
            .map(|i| {
                request(
                    &alice,
                    Address::twin(a),
                    *id,
                    &format!("q-{id}-{i}"),
                    b"x",
                    60,
                )
            })
            .collect();
        for env in &queued {
            ca.send(env).await;
        }
        sent.insert(*id, queued);
    }
    let refused = barrier(&mut ca, &alice, a, "barrier").await;
    assert!(refused.is_empty(), "nothing refused: {refused:?}");
    for (master, (_, id)) in &by_master {
        let key = format!("rmb:relay:q:{{{id}}}");
        assert_eq!(cluster.cli(&["LLEN", &key]), "5", "queue of twin {id}");
        let slot = cluster.keyslot(&key);
        assert_eq!(
            cluster.master_of(slot),
            *master,
            "twin {id}'s queue is on its master"
        );
        let ttl: i64 = cluster.cli(&["TTL", &key]).parse().unwrap();
        assert!(ttl > 0, "queue keys expire, got TTL {ttl}");
    }

    // Each connects to another replica than the sender's and gets its queue, in order.
    for (n, (who, id)) in by_master.values().enumerate() {
        let relay = &relays[1 + n % 2];
        let mut client = TestClient::connect(&relay.ws_url(), who, *id, None).await;
        let got = recv_n(&mut client, 5).await;
        assert_eq!(uids(&got), uids(&sent[id]), "twin {id}");
        assert_eq!(client.recv(QUIET).await, None, "each envelope once");
    }
}

#[tokio::test]
async fn a_master_killed_mid_traffic_loses_no_accepted_envelope() {
    let mut cluster = RedisCluster::start();
    let url = cluster.url();
    let wait = ["--redis-wait-replicas", "1"];
    let (r1, r2) = (replica(&url, &wait), replica(&url, &wait));
    let (alice, bob) = (dev_identity("Alice"), dev_identity("Bob"));
    let a = register(&r1.http_url(), &alice).await;
    let b = register(&r2.http_url(), &bob).await;
    let mut ca = TestClient::connect(&r1.ws_url(), &alice, a, None).await;
    let victim = cluster.master_of(cluster.keyslot(&format!("{{{b}}}")));

    // Bob is offline: everything for him is queued on `victim`, which dies a third of
    // the way through.
    const TOTAL: usize = 300;
    let mut sent = Vec::new();
    for i in 0..TOTAL {
        if i == TOTAL / 3 {
            // Let the relay catch up so some envelopes are surely accepted before the kill.
            let refused = barrier(&mut ca, &alice, a, "before-kill").await;
            assert!(
                refused.is_empty(),
                "nothing refused before the kill: {refused:?}"
            );
            cluster.kill(victim);
        }
        let env = request(&alice, Address::twin(a), b, &format!("m-{i}"), b"x", 120);
        ca.send(&env).await;
        sent.push(env.uid.clone());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cluster.wait_healthy(Some(victim));
    let refusals = barrier(&mut ca, &alice, a, "after-kill").await;
    let refused: BTreeSet<String> = refusals
        .iter()
        .filter(|e| error_text(e).is_some())
        .map(|e| e.uid.clone())
        .collect();
    let accepted: Vec<&String> = sent.iter().filter(|u| !refused.contains(*u)).collect();
    assert!(
        accepted.len() >= TOTAL / 3,
        "at least the envelopes routed before the kill were accepted ({} of {TOTAL})",
        accepted.len()
    );

    // The killed node returns as a replica of the promoted one: new envelopes are
    // accepted again once it is in sync.
    cluster.relaunch(victim);
    cluster.wait_healthy(None);
    let late = request(&alice, Address::twin(a), b, "late", b"x", 120);
    ca.send(&late).await;
    let refused_late = barrier(&mut ca, &alice, a, "after-return").await;
    assert!(refused_late.is_empty(), "accepted again: {refused_late:?}");

    let mut cb = TestClient::connect(&r2.ws_url(), &bob, b, None).await;
    let got = drain(&mut cb, Duration::from_secs(3)).await;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for env in &got {
        *counts.entry(env.uid.as_str()).or_default() += 1;
    }
    for uid in accepted.iter().map(|u| u.as_str()).chain(["late"]) {
        assert_eq!(
            counts.get(uid),
            Some(&1),
            "accepted envelope {uid} delivered exactly once"
        );
    }
    // Refused ones may or may not have made it, but never twice.
    assert!(
        counts.values().all(|n| *n == 1),
        "no duplicates: {counts:?}"
    );
    eprintln!(
        "{} sent, {} accepted, {} refused, {} delivered",
        TOTAL,
        accepted.len(),
        refused.len(),
        got.len()
    );
}

#[tokio::test]
async fn a_relay_on_a_sentinel_set_follows_a_failover() {
    let mut set = RedisSentinels::start();
    let url = set.url();
    let wait = ["--redis-wait-replicas", "1"];
    let (r1, r2) = (replica(&url, &wait), replica(&url, &wait));
    let (alice, bob) = (dev_identity("Alice"), dev_identity("Bob"));
    let a = register(&r1.http_url(), &alice).await;
    let b = register(&r2.http_url(), &bob).await;
    let mut ca = TestClient::connect(&r1.ws_url(), &alice, a, None).await;

    // Queued while Bob is offline, replicated before the master dies.
    let before: Vec<Envelope> = (0..5)
        .map(|i| {
            request(
                &alice,
                Address::twin(a),
                b,
                &format!("before-{i}"),
                b"x",
                120,
            )
        })
        .collect();
    for env in &before {
        ca.send(env).await;
    }
    let refused = barrier(&mut ca, &alice, a, "b1").await;
    assert!(refused.is_empty(), "{refused:?}");
    set.kill_master();

    // Bob connects to the other replica; the relay finds the new master and Bob's queue.
    let mut cb = TestClient::connect(&r2.ws_url(), &bob, b, None).await;
    let got = recv_n(&mut cb, before.len()).await;
    assert_eq!(uids(&got), uids(&before), "queued before the failover");

    // Across replicas after the failover: the wake-up subscription follows the master.
    // (The promoted master has no replica left, so don't wait for one: a relay without
    // --redis-wait-replicas.)
    let r3 = replica(&url, &[]);
    let mut ca3 = TestClient::connect(&r3.ws_url(), &alice, a, None).await;
    let after = request(&alice, Address::twin(a), b, "after", b"x", 120);
    ca3.send(&after).await;
    assert_eq!(
        cb.recv(WAIT).await.map(|e| e.uid),
        Some("after".to_string())
    );
    assert_eq!(cb.recv(QUIET).await, None, "each envelope once");
}

#[tokio::test]
async fn wake_ups_lost_in_a_failover_are_made_up_for() {
    let mut cluster = RedisCluster::start();
    let url = cluster.url();
    let registry_master = cluster.master_of(cluster.keyslot("{rmb:registry:}"));
    // Bob's replica alone first, to see which master carries its wake-up channel; one
    // whose channel shares the registry's master is replaced (the test kills that master
    // and needs the registry meanwhile).
    let (r2, victim) = loop {
        let r2 = replica(&url, &[]);
        let mut carrier = None;
        for _ in 0..50 {
            carrier = cluster
                .masters()
                .into_iter()
                .find(|port| cli(*port, &["PUBSUB", "SHARDCHANNELS"]).contains("rmb:relay:wake:"));
            if carrier.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let carrier = carrier.expect("the replica subscribes to its wake-up channel");
        if carrier != registry_master {
            break (r2, carrier);
        }
    };
    let r1 = replica(&url, &[]);
    let alice = dev_identity("Alice");
    let a = register(&r1.http_url(), &alice).await;
    // Bob: a twin whose queue is not on the master that will die.
    let (bob, b) = {
        let mut found = None;
        for i in 0..64 {
            let who = dev_identity(&format!("Bob{i}"));
            let id = register(&r2.http_url(), &who).await;
            if cluster.master_of(cluster.keyslot(&format!("{{{id}}}"))) != victim {
                found = Some((who, id));
                break;
            }
        }
        found.expect("a twin on another master")
    };
    let mut ca = TestClient::connect(&r1.ws_url(), &alice, a, None).await;
    let mut cb = TestClient::connect(&r2.ws_url(), &bob, b, None).await;
    let first = request(&alice, Address::twin(a), b, "first", b"x", 120);
    ca.send(&first).await;
    assert_eq!(cb.recv(WAIT).await, Some(first));

    // The master carrying Bob's replica's wake-ups dies: the wake-up for this envelope
    // is lost (the envelope itself is queued on another master).
    cluster.kill(victim);
    let lost = request(&alice, Address::twin(a), b, "lost-wake-up", b"x", 120);
    ca.send(&lost).await;
    let refused = barrier(&mut ca, &alice, a, "routed").await;
    assert!(refused.is_empty(), "queued on a live master: {refused:?}");
    cluster.wait_healthy(Some(victim));
    // Bob's replica subscribes again on the promoted master, then re-checks its sessions.
    assert_eq!(
        cb.recv(Duration::from_secs(30)).await.map(|e| e.uid),
        Some("lost-wake-up".to_string())
    );
    let after = request(&alice, Address::twin(a), b, "after", b"x", 120);
    ca.send(&after).await;
    assert_eq!(
        cb.recv(WAIT).await.map(|e| e.uid),
        Some("after".to_string())
    );
    assert_eq!(cb.recv(QUIET).await, None, "each envelope once");
}
