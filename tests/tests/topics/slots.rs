//! A public topic's subscriber slots against strangers (issue #30, item 5): twins
//! registered for the purpose send signed subscribes from bare relay sessions, as the
//! attack did, and never renew, never acknowledge a push. The owner runs with a small
//! `--topic-max-subscribers` so a few strangers fill the topic; a real subscriber (an
//! `rmb-peer`) must still get in:
//!
//! - strangers that never renew lose their slots when their lease ends;
//! - strangers that never acknowledge pushes are dropped, and publishes stop going to
//!   them (across two federated relays);
//! - new subscriptions from one relay are capped per window, so a flood from the
//!   strangers' relay leaves room for a subscriber elsewhere (across two relays).

use std::time::{Duration, Instant};

use rmb_identity::registry::http::HttpRegistry;
use rmb_identity::registry::{Registry, TwinUpdate};
use rmb_identity::{E2eScheme, Identity, KeyType};
use rmb_proto::{Address, Envelope, Message, Payload, Request};
use rmb_testsupport::relay_client::{TestClient, now};
use rmb_testsupport::relay_process::RelayProcess;
use serde_json::{Value, json};

use super::node::*;

/// A twin registered for the attack: a bare session on its relay, nothing else.
struct Stranger {
    identity: Identity,
    twin: u32,
    session: TestClient,
}

impl Stranger {
    /// Registers a fresh twin on the registry at `registry`, living on `relay` (with an
    /// x25519 key, so pushes to it are sealed and sent), and logs it in there.
    async fn new(registry: &str, relay: &RelayProcess) -> Stranger {
        let secret = rmb_testsupport::direct::fresh_mnemonic();
        let identity = Identity::from_secret(&secret, KeyType::Sr25519).unwrap();
        let update = TwinUpdate {
            relays: [relay.domain()].into(),
            pk: Some(identity.e2e_public_key(E2eScheme::X25519)),
            create: true,
        };
        let twin = HttpRegistry::new(registry)
            .unwrap()
            .publish(identity.signer(), &update)
            .await
            .unwrap()
            .id;
        let session = TestClient::connect(&relay.ws_url(), &identity, twin, None).await;
        Stranger {
            identity,
            twin,
            session,
        }
    }

    /// Sends `owner` a signed `rmb.topic.subscribe` of topic `name` (`acks`: the body's
    /// acknowledgement mode, or none) and never does anything more for it.
    async fn subscribe(&mut self, owner: u32, name: &str, acks: Option<&str>) {
        let mut body = json!({ "topic": name });
        if let Some(acks) = acks {
            body["acks"] = json!(acks);
        }
        let mut env = Envelope {
            uid: format!("subscribe-{}", self.twin),
            expiration: 60,
            source: Some(Address::twin(self.twin)),
            destination: Some(Address::twin(owner)),
            message: Some(Message::Request(Request {
                command: "rmb.topic.subscribe".into(),
            })),
            payload: Some(Payload::Plain(body.to_string().into_bytes())),
            ..Default::default()
        };
        self.identity.seal_envelope(&mut env, None, now()).unwrap();
        self.session.send(&env).await;
    }
}

/// `GET /topics/<topic>` on the owner: the twins it lists as subscribers.
async fn subscribers(owner: &Node, topic: &str) -> Vec<u32> {
    let r = client()
        .get(owner.url(&format!("/topics/{topic}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let info: Value = r.json().await.unwrap();
    info["subscribers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

/// Waits until the owner lists `n` subscribers of `topic` (or fails after [`WAIT`]).
async fn until_subscribers(owner: &Node, topic: &str, n: usize) -> Vec<u32> {
    let deadline = Instant::now() + WAIT;
    loop {
        let subs = subscribers(owner, topic).await;
        if subs.len() == n {
            return subs;
        }
        assert!(
            Instant::now() < deadline,
            "the owner lists {subs:?}, not {n} subscribers"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `POST /topics/<topic>/subscribe` on `node`: the status and the body.
async fn try_subscribe(node: &Node, topic: &str) -> (u16, String) {
    let r = client()
        .post(node.url(&format!("/topics/{topic}/subscribe")))
        .json(&json!({ "since": 0 }))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Subscribes `node` to `topic`, trying again every half second for `within`; how long
/// it took. Fails with the last refusal when it never gets in.
async fn subscribe_within(node: &Node, topic: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let (status, body) = try_subscribe(node, topic).await;
        if status == 200 {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "a real subscriber was still refused after {within:?}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Asserts that a real subscriber is refused now because the topic is full.
async fn refused_as_full(node: &Node, topic: &str, max: usize) {
    let (status, body) = try_subscribe(node, topic).await;
    assert_ne!(status, 200, "the real subscriber got in at once: {body}");
    assert!(
        body.contains(&format!("has {max} subscribers already")),
        "{status} {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_that_never_renew_lose_their_slots() {
    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let flags = ["--topic-max-subscribers", "3", "--topic-lease", "4"];
    let alice = Node::start_with("//Alice", &[&relay], &registry, &flags).await;
    let bob = Node::start("//Bob", &[&relay], &registry).await;
    create(&alice, "open", json!({ "subscribe": "anyone" })).await;
    let topic = format!("{}/open", alice.twin);

    let mut strangers = Vec::new();
    for _ in 0..3 {
        let mut s = Stranger::new(&registry, &relay).await;
        s.subscribe(alice.twin, "open", None).await;
        strangers.push(s);
    }
    until_subscribers(&alice, &topic, 3).await;
    refused_as_full(&bob, &topic, 3).await;

    // The strangers never renew: their slots come free when their leases end.
    let took = subscribe_within(&bob, &topic, Duration::from_secs(20)).await;
    eprintln!("the real subscriber got in after {took:?}");
    assert_eq!(until_subscribers(&alice, &topic, 1).await, vec![bob.twin]);
    assert_eq!(alice.counters().await["leases_expired"], 3);

    // Bob renews by himself (his peer is told the 4 s lease): he stays, and gets what
    // is published.
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(subscribers(&alice, &topic).await, vec![bob.twin]);
    assert_eq!(publish(&alice, &topic, "still here").await.0, 200);
    let got = poll_until(&bob, &topic, 1).await;
    assert_eq!(ids_and_texts(&got), vec![(1, "still here".to_string())]);
    assert_eq!(alice.counters().await["leases_expired"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_that_never_acknowledge_are_dropped_across_two_relays() {
    let relay_a = RelayProcess::start(&["--federation-http"]);
    let registry = relay_a.http_url();
    let relay_b = RelayProcess::start(&["--federation-http", "--registry", &registry]);
    let flags = [
        "--topic-max-subscribers",
        "4",
        "--topic-unanswered",
        "2",
        "--topic-unanswered-secs",
        "2",
    ];
    let alice = Node::start_with("//Alice", &[&relay_a], &registry, &flags).await;
    let bob = Node::start("//Bob", &[&relay_b], &registry).await;
    create(&alice, "open", json!({ "subscribe": "anyone" })).await;
    let topic = format!("{}/open", alice.twin);

    // Half answer-each strangers, half cumulative ones: neither kind acknowledges.
    let mut strangers = Vec::new();
    for i in 0..4 {
        let mut s = Stranger::new(&registry, &relay_b).await;
        let acks = (i % 2 == 1).then_some("cumulative");
        s.subscribe(alice.twin, "open", acks).await;
        strangers.push(s);
    }
    until_subscribers(&alice, &topic, 4).await;
    refused_as_full(&bob, &topic, 4).await;

    // Every publish goes to every stranger, who stays silent.
    let pushed_before = alice.counters().await["pushed"].as_u64().unwrap();
    for i in 1..=3 {
        assert_eq!(publish(&alice, &topic, &format!("m{i}")).await.0, 200);
    }
    let deadline = Instant::now() + WAIT;
    while alice.counters().await["pushed"].as_u64().unwrap() < pushed_before + 12 {
        assert!(Instant::now() < deadline, "the pushes did not go out");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let took = subscribe_within(&bob, &topic, Duration::from_secs(20)).await;
    eprintln!("the real subscriber got in after {took:?}");
    assert_eq!(until_subscribers(&alice, &topic, 1).await, vec![bob.twin]);
    assert_eq!(alice.counters().await["silent_dropped"], 4);

    // A publish now goes to Bob alone, and Bob, who acknowledges, stays.
    let pushed_before = alice.counters().await["pushed"].as_u64().unwrap();
    assert_eq!(publish(&alice, &topic, "m4").await.0, 200);
    let got = poll_until(&bob, &topic, 4).await;
    assert_eq!(got.len(), 4, "Bob pulls what came before him and gets m4");
    assert_eq!(
        alice.counters().await["pushed"].as_u64().unwrap(),
        pushed_before + 1,
        "one push per publish: to Bob only"
    );
    for i in 5..=8 {
        assert_eq!(publish(&alice, &topic, &format!("m{i}")).await.0, 200);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(poll_until(&bob, &topic, 8).await.len(), 8);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(subscribers(&alice, &topic).await, vec![bob.twin]);
    assert_eq!(alice.counters().await["silent_dropped"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_subscriptions_from_one_relay_are_capped_across_two_relays() {
    let relay_a = RelayProcess::start(&["--federation-http"]);
    let registry = relay_a.http_url();
    let relay_b = RelayProcess::start(&["--federation-http", "--registry", &registry]);
    let flags = [
        "--topic-max-subscribers",
        "5",
        "--topic-new-per-relay",
        "2",
        "--topic-new-window",
        "600",
    ];
    let alice = Node::start_with("//Alice", &[&relay_a], &registry, &flags).await;
    let bob = Node::start("//Bob", &[&relay_a], &registry).await;
    create(&alice, "open", json!({ "subscribe": "anyone" })).await;
    let topic = format!("{}/open", alice.twin);

    // Five strangers living on relay B subscribe through it.
    let mut strangers = Vec::new();
    for _ in 0..5 {
        let mut s = Stranger::new(&registry, &relay_b).await;
        s.subscribe(alice.twin, "open", None).await;
        strangers.push(s);
    }
    // Each gets an answer (or a refusal) back through relay B.
    for s in &mut strangers {
        let answer = s.session.recv(WAIT).await.expect("an answer");
        assert_eq!(answer.uid, format!("subscribe-{}", s.twin));
    }
    let listed = subscribers(&alice, &topic).await;
    assert_eq!(
        listed.len(),
        2,
        "two strangers from relay B, not {listed:?}"
    );
    assert_eq!(
        alice.counters().await["refused_by"]["too_many_new_subscriptions"],
        3
    );

    // Bob, on relay A, gets in at once.
    let (status, body) = try_subscribe(&bob, &topic).await;
    assert_eq!(status, 200, "{body}");
    assert!(subscribers(&alice, &topic).await.contains(&bob.twin));
    assert_eq!(publish(&alice, &topic, "hello").await.0, 200);
    assert_eq!(poll_until(&bob, &topic, 1).await.len(), 1);
}
