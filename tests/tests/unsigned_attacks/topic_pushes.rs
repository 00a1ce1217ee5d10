//! Item 4 between real topic peers: pushes reflected to their owner and re-sourced to
//! their subscriber by a relay in the middle, for both e2e schemes.

use super::evil_relay::*;
use super::*;

/// A twin served by a real `rmb-peer` with its local HTTP API, connected through a given
/// relay URL and publishing a given scheme's key (registered by the test, not the peer).
pub(super) struct TopicPeer {
    twin: u32,
    peer: PeerProcess,
    http: String,
    _redis: RedisServer,
}

impl TopicPeer {
    pub(super) async fn start(
        registry: &str,
        home: &RelayProcess,
        via: &str,
        scheme: E2eScheme,
    ) -> Self {
        let secret = fresh_mnemonic();
        let identity = Identity::from_secret(&secret, KeyType::Sr25519).unwrap();
        let pk = identity.e2e_public_key(scheme);
        let twin = publish(registry, &identity, &home.domain(), pk).await;
        let redis = RedisServer::start();
        let addr = format!("127.0.0.1:{}", free_port());
        let flags = [
            "--http",
            addr.as_str(),
            "--no-update",
            "--e2e",
            scheme.as_str(),
            "--topic-renew",
            "2",
        ];
        let relays = [via.to_string()];
        let peer = tokio::task::block_in_place(|| {
            PeerProcess::start(&secret, &redis.url(), &relays, registry, &flags)
        });
        let node = TopicPeer {
            twin,
            peer,
            http: format!("http://{addr}"),
            _redis: redis,
        };
        let deadline = Instant::now() + WAIT;
        while reqwest::get(&node.http).await.is_err() {
            assert!(Instant::now() < deadline, "the HTTP API did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        node
    }

    /// Sends `method path` with a body (JSON when it opens with `{`, text otherwise:
    /// only the JSON API is used for what changes state); the status and body.
    pub(super) async fn http(
        &self,
        method: reqwest::Method,
        path: &str,
        body: String,
    ) -> (u16, String) {
        let kind = if body.starts_with('{') {
            "application/json"
        } else {
            "text/plain"
        };
        let response = reqwest::Client::new()
            .request(method, format!("{}{path}", self.http))
            .header("content-type", kind)
            .body(body)
            .send()
            .await
            .unwrap();
        (
            response.status().as_u16(),
            response.text().await.unwrap_or_default(),
        )
    }

    /// The messages of `topic` this peer holds, as (id, text).
    pub(super) async fn messages(&self, topic: &str) -> Vec<(u64, String)> {
        let (status, text) = self
            .http(
                reqwest::Method::GET,
                &format!("/topics/{topic}/json?poll=1&since=0"),
                String::new(),
            )
            .await;
        assert_eq!(status, 200, "{text}");
        text.lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .map(|m| {
                (
                    m["id"].as_u64().unwrap(),
                    m["message"].as_str().unwrap().into(),
                )
            })
            .collect()
    }

    /// Polls until `n` messages of `topic` are here (or [`WAIT`] passed).
    pub(super) async fn messages_until(&self, topic: &str, n: usize) -> Vec<(u64, String)> {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self.messages(topic).await;
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the peer's status says `rejected_by[reason] >= n` (or [`WAIT`]
    /// passed); the status.
    pub(super) async fn wait_rejected(&self, reason: &str, n: u64) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let status = tokio::task::block_in_place(|| self.peer.status()).expect("status");
            if status["rejected_by"][reason].as_u64().unwrap_or(0) >= n || Instant::now() > deadline
            {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Item 4 with the real topic layer, for one scheme: Alice owns `news` (her peer reaches
/// relay 1 through the evil relay), Bob subscribes from relay 2; Mallory publishes
/// Alice's key. The evil relay takes Alice's first unsigned push and (a) hands it back
/// to her as Bob's, (b) forwards it to Bob's relay as Mallory's. Neither opens: each is
/// counted as `crypto`, answered by nothing; Bob holds exactly the messages Alice
/// published, in order.
pub(super) async fn topic_push_reflected_and_resourced(scheme: E2eScheme) {
    let r1 = RelayProcess::start(&["--federation-http"]);
    let registry = r1.http_url();
    let r2 = RelayProcess::start(&["--federation-http", "--registry", &registry]);
    let evil = EvilRelay::start(&r1, &["rmb.topic.message"]).await;
    let alice = TopicPeer::start(&registry, &r1, &evil.url, scheme).await;
    let bob = TopicPeer::start(&registry, &r2, &r2.ws_url(), scheme).await;
    let mallory = Identity::from_secret(&fresh_mnemonic(), KeyType::Sr25519).unwrap();
    let alice_pk = published_key(&registry, alice.twin).await;
    let mallory_twin = publish(&registry, &mallory, &r2.domain(), alice_pk).await;

    let topic = format!("{}/news", alice.twin);
    let (status, text) = alice
        .http(
            reqwest::Method::PUT,
            &format!("/topics/{topic}"),
            "{}".into(),
        )
        .await;
    assert_eq!(status, 200, "{text}");
    let subscribe = json!({ "since": 0 }).to_string();
    let (status, text) = bob
        .http(
            reqwest::Method::POST,
            &format!("/topics/{topic}/subscribe"),
            subscribe,
        )
        .await;
    assert_eq!(status, 200, "{text}");
    let (status, text) = alice
        .http(
            reqwest::Method::POST,
            &format!("/topics/{topic}"),
            json!({ "message": "m1" }).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{text}");
    let push = evil.captured(0).await;
    assert_eq!(push.signature, None, "{scheme}: pushes go unsigned");
    assert_eq!(
        bob.messages_until(&topic, 1).await,
        [(1, "m1".to_string())],
        "{scheme}"
    );

    evil.deliver(&reflected(&push));
    let resourced_status = federate(&r2, &resourced(&push, Address::twin(mallory_twin))).await;
    let at_alice = alice.wait_rejected("crypto", 1).await;
    let at_bob = bob.wait_rejected("crypto", 1).await;
    eprintln!(
        "{scheme}: push reflected to its owner: {}; re-sourced to the subscriber (POST \
         {resourced_status}): {}",
        at_alice["rejected_by"], at_bob["rejected_by"]
    );
    for (who, status) in [("Alice", &at_alice), ("Bob", &at_bob)] {
        assert_eq!(
            status["rejected_by"]["crypto"], 1,
            "{scheme} {who}: {status}"
        );
        assert_eq!(status["unanswered"], 1, "{scheme} {who}: {status}");
    }
    assert_eq!(resourced_status, 202, "{scheme}");

    let (status, text) = alice
        .http(
            reqwest::Method::POST,
            &format!("/topics/{topic}"),
            json!({ "message": "m2" }).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        bob.messages_until(&topic, 2).await,
        [(1, "m1".to_string()), (2, "m2".to_string())],
        "{scheme}"
    );
}

/// The e2e key `twin` publishes.
pub(super) async fn published_key(registry: &str, twin: u32) -> Vec<u8> {
    HttpRegistry::new(registry)
        .unwrap()
        .get_twin(twin)
        .await
        .unwrap()
        .unwrap()
        .pk
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(super) async fn a_relay_cannot_reflect_or_resource_x25519_topic_pushes() {
    topic_push_reflected_and_resourced(E2eScheme::X25519).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(super) async fn a_relay_cannot_reflect_or_resource_secp256k1_topic_pushes() {
    topic_push_reflected_and_resourced(E2eScheme::Secp256k1).await;
}
