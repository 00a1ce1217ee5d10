//! Topics (issue #14) with real processes: `rmb-relay`s, `rmb-peer`s with their own
//! Redis and `--http`, driven through the local HTTP API with a real HTTP client
//! (reqwest, and curl), a WebSocket client and raw Redis.
//!
//! - fan-out across two federated relays: two subscribers get every message in order
//!   with the same ids; a twin outside the publish list is refused with an error;
//! - a subscriber SIGKILLed and restarted catches up with no gap and no duplicate (in
//!   its Redis delivery list), and messages retention dropped are reported as a gap;
//! - the owner SIGKILLed mid-stream loses no acknowledged publish and reuses no id;
//! - malformed HTTP requests get 4xx JSON errors;
//! - relays see only ciphertext of topic messages, and pushes go unsigned, authenticated
//!   by their encryption; forged unsigned envelopes are refused by subscribers;
//! - pushes to a subscriber that acknowledges cumulatively are sent again until it
//!   acknowledges them; one that does not say so answers each push.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rmb_identity::{Identity, KeyType};
use rmb_testsupport::peer_process::PeerProcess;
use rmb_testsupport::peer_process::resp::{Reply, Resp};
use rmb_testsupport::redis_server::{RedisServer, free_port};
use rmb_testsupport::relay_process::RelayProcess;
use serde_json::{Value, json};

/// Longest a test waits for anything (a broken system fails, never hangs).
const WAIT: Duration = Duration::from_secs(30);

/// One twin: its Redis, its peer (with `--http`) and the API's base URL.
struct Node {
    twin: u32,
    peer: PeerProcess,
    http: String,
    _redis: RedisServer,
}

impl Node {
    async fn start(secret: &str, relays: &[&RelayProcess], registry: &str) -> Node {
        let domains: Vec<String> = relays.iter().map(|r| r.domain()).collect();
        let urls: Vec<String> = relays.iter().map(|r| r.ws_url()).collect();
        let identity = Identity::from_secret(secret, KeyType::Sr25519).unwrap();
        let twin = rmb_testsupport::registry::register(registry, &identity, &domains).await;
        let redis = RedisServer::start();
        let addr = format!("127.0.0.1:{}", free_port());
        let extra = ["--http", addr.as_str(), "--topic-renew", "2"];
        let peer = tokio::task::block_in_place(|| {
            PeerProcess::start(secret, &redis.url(), &urls, registry, &extra)
        });
        let node = Node {
            twin,
            peer,
            http: format!("http://{addr}"),
            _redis: redis,
        };
        node.wait_http().await;
        node
    }

    async fn wait_http(&self) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(r) = reqwest::get(format!("{}/", self.http)).await
                && r.status().is_success()
            {
                let hello: Value = r.json().await.unwrap();
                assert_eq!(hello["twin"], self.twin);
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the HTTP API at {} did not come up", self.http);
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.http)
    }

    async fn kill(&mut self) {
        tokio::task::block_in_place(|| self.peer.kill());
    }

    async fn relaunch(&mut self) {
        tokio::task::block_in_place(|| self.peer.relaunch());
        self.wait_http().await;
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(90))
        .build()
        .unwrap()
}

/// `PUT /topics/<owner>/<name>` with `config`; the created topic's state.
async fn create(node: &Node, name: &str, config: Value) -> Value {
    let r = client()
        .put(node.url(&format!("/topics/{}/{name}", node.twin)))
        .json(&config)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    r.json().await.unwrap()
}

/// Publishes `text` through `node`; the status and JSON answer.
async fn publish(node: &Node, topic: &str, text: &str) -> (u16, Value) {
    let r = client()
        .post(node.url(&format!("/topics/{topic}")))
        .body(text.to_string())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn subscribe(node: &Node, topic: &str, body: Value) -> Value {
    let r = client()
        .post(node.url(&format!("/topics/{topic}/subscribe")))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    r.json().await.unwrap()
}

/// `GET /topics/<topic>/json?poll=1&since=0`: the messages as JSON values.
async fn poll(node: &Node, topic: &str) -> Vec<Value> {
    let r = client()
        .get(node.url(&format!("/topics/{topic}/json?poll=1&since=0")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Polls until `n` messages are there (or fails after [`WAIT`]).
async fn poll_until(node: &Node, topic: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = poll(node, topic).await;
        if got.len() >= n || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ids_and_texts(messages: &[Value]) -> Vec<(u64, String)> {
    messages
        .iter()
        .map(|m| {
            (
                m["id"].as_u64().unwrap(),
                m["message"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// A twin of the test's own, registered on `relay` with an x25519 key, and a bare
/// session of it on that relay: it gets exactly what relays carry, and sends what the
/// test builds.
async fn bare_twin(
    relay: &RelayProcess,
    secret: &str,
) -> (Identity, u32, rmb_testsupport::relay_client::TestClient) {
    use rmb_identity::E2eScheme;
    use rmb_identity::registry::http::HttpRegistry;
    use rmb_identity::registry::{Registry, TwinUpdate};

    let identity = Identity::from_secret(secret, KeyType::Sr25519).unwrap();
    let update = TwinUpdate {
        relays: [relay.domain()].into(),
        pk: Some(identity.e2e_public_key(E2eScheme::X25519)),
        create: true,
    };
    let twin = HttpRegistry::new(&relay.http_url())
        .unwrap()
        .publish(identity.signer(), &update)
        .await
        .unwrap()
        .id;
    let session =
        rmb_testsupport::relay_client::TestClient::connect(&relay.ws_url(), &identity, twin, None)
            .await;
    (identity, twin, session)
}

/// The e2e key `twin` publishes in the registry at `registry`.
async fn published_key(registry: &str, twin: u32) -> Vec<u8> {
    use rmb_identity::registry::Registry;
    use rmb_identity::registry::http::HttpRegistry;

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
async fn two_subscribers_on_two_federated_relays_get_every_message_in_order() {
    let r1 = RelayProcess::start(&["--federation-http"]);
    let registry = r1.http_url();
    let r2 = RelayProcess::start(&["--federation-http", "--registry", &registry]);
    let alice = Node::start("//Alice", &[&r1], &registry).await; // owner
    let bob = Node::start("//Bob", &[&r1], &registry).await; // subscriber
    let charlie = Node::start("//Charlie", &[&r2], &registry).await; // subscriber
    let dave = Node::start("//Dave", &[&r2], &registry).await; // publisher

    let info = create(&alice, "alerts", json!({ "publish": [dave.twin] })).await;
    assert_eq!(info["topic"], format!("{}/alerts", alice.twin));
    assert_eq!(info["config"]["subscribe"], "anyone");
    assert_eq!(info["last_id"], 0);
    let topic = format!("{}/alerts", alice.twin);
    subscribe(&bob, &topic, json!({ "since": 0 })).await;
    subscribe(&charlie, &topic, json!({})).await;

    // A live WebSocket on Charlie and an SSE stream on Bob, open before publishing.
    let ws_url = charlie
        .url(&format!("/topics/{topic}/ws?since=0"))
        .replace("http", "ws");
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    let first = ws.next().await.unwrap().unwrap().into_text().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&first).unwrap()["event"],
        "open"
    );
    let mut sse = client()
        .get(bob.url(&format!("/topics/{topic}/sse?since=0")))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    assert!(
        sse.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );

    // Dave (allowed) publishes through relay 2, Alice (owner) locally, interleaved.
    let mut acked = BTreeMap::new();
    for i in 0..30 {
        let (node, text) = if i % 6 == 5 {
            (&alice, format!("owner-{i}"))
        } else {
            (&dave, format!("dave-{i}"))
        };
        let (status, answer) = publish(node, &topic, &text).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["topic"], topic);
        acked.insert(answer["id"].as_u64().unwrap(), text);
    }
    let expected: Vec<(u64, String)> = acked.clone().into_iter().collect();
    assert_eq!(
        expected.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        (1..=30).collect::<Vec<_>>(),
        "ids are 1, 2, 3... in publish order"
    );

    // Bob is not in the publish list: refused with a clear error, nothing stored.
    let (status, error) = publish(&bob, &topic, "intruder").await;
    assert_eq!(status, 403, "{error}");
    let text = error["error"].as_str().unwrap();
    assert!(
        text.contains(&format!("twin {} may not publish to {topic}", bob.twin)),
        "{text}"
    );
    assert_eq!(error["http"], 403);

    // Both subscribers have everything, in order, with the owner's ids.
    for node in [&bob, &charlie] {
        let got = poll_until(node, &topic, 30).await;
        assert_eq!(ids_and_texts(&got), expected, "twin {}", node.twin);
        assert!(
            got.iter()
                .all(|m| m["event"] == "message" && m["topic"] == topic)
        );
    }
    let owner_log = poll(&alice, &topic).await;
    assert_eq!(ids_and_texts(&owner_log), expected);
    assert_eq!(owner_log[0]["publisher"], dave.twin);

    // The WebSocket saw them all, in order, once.
    let mut live = Vec::new();
    while live.len() < 30 {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_str(&frame.into_text().unwrap()).unwrap();
        if v["event"] == "message" {
            live.push(v);
        }
    }
    assert_eq!(ids_and_texts(&live), expected);

    // So did the SSE stream.
    let mut text = String::new();
    while text.matches("event: message").count() < 30 {
        let chunk = tokio::time::timeout(WAIT, sse.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let sse_ids: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter(|v| v["event"] == "message")
        .map(|v| v["id"].as_u64().unwrap())
        .collect();
    assert_eq!(sse_ids, (1..=30).collect::<Vec<_>>());

    // The listing of each side.
    let listing: Value = client()
        .get(alice.url("/topics"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let subscribers = listing["topics"][0]["subscribers"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(subscribers, [json!(bob.twin), json!(charlie.twin)]);
    let listing: Value = client()
        .get(charlie.url("/topics"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listing["subscriptions"][0]["topic"], topic);
    assert_eq!(listing["subscriptions"][0]["last_id"], 30);
    assert_eq!(listing["counters"]["delivered"], 30);

    // POST /call: a plain request across the relays (rmb.version is answered by the core).
    let r = client()
        .post(bob.url("/call"))
        .json(&json!({ "twin": dave.twin, "cmd": "rmb.version", "timeout": 20 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["twin"], dave.twin);
    assert!(
        answer["payload"].as_str().unwrap().starts_with('"'),
        "{answer}"
    );
}

/// Reads every entry of a Redis list (as a Redis-only app would, without removing).
fn list(node: &Node, key: &str) -> Vec<Value> {
    let mut redis = Resp::connect(node.peer.redis_url());
    match redis.cmd(&[b"LRANGE", key.as_bytes(), b"0", b"-1"]) {
        Reply::Array(items) => items
            .iter()
            .map(|i| serde_json::from_slice(i.bytes().unwrap()).unwrap())
            .collect(),
        other => panic!("LRANGE answered {other:?}"),
    }
}

async fn list_until(node: &Node, key: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = tokio::task::block_in_place(|| list(node, key));
        if got.len() >= n || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_killed_and_restarted_catches_up_without_gap_or_duplicate() {
    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let alice = Node::start("//Alice", &[&relay], &registry).await;
    let mut bob = Node::start("//Bob", &[&relay], &registry).await;
    create(&alice, "news", json!({})).await;
    let news = format!("{}/news", alice.twin);
    // Delivered to Redis lists too, for an app that knows only Redis.
    let sub = subscribe(&bob, &news, json!({ "since": 0, "redis_list": true })).await;
    let news_list = sub["redis_list"].as_str().unwrap().to_string();

    for i in 1..=15 {
        assert_eq!(publish(&alice, &news, &format!("n{i}")).await.0, 200);
    }
    assert_eq!(list_until(&bob, &news_list, 15).await.len(), 15);

    // Killed mid-stream; the owner goes on publishing.
    bob.kill().await;
    for i in 16..=40 {
        assert_eq!(publish(&alice, &news, &format!("n{i}")).await.0, 200);
    }
    bob.relaunch().await;

    // Every message exactly once, in order.
    let got = list_until(&bob, &news_list, 40).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got_after = tokio::task::block_in_place(|| list(&bob, &news_list));
    assert_eq!(got.len(), got_after.len(), "no duplicate arrives later");
    let expected: Vec<(u64, String)> = (1..=40).map(|i| (i, format!("n{i}"))).collect();
    assert_eq!(ids_and_texts(&got_after), expected);

    // A topic keeping 5 messages, subscribed from the start after 12 were published:
    // ids 1..=7 are gone and reported as a gap, then 8..=12 come.
    create(&alice, "small", json!({ "retention_count": 5 })).await;
    let small = format!("{}/small", alice.twin);
    for i in 1..=12 {
        assert_eq!(publish(&alice, &small, &format!("s{i}")).await.0, 200);
    }
    let sub = subscribe(&bob, &small, json!({ "since": 0, "redis_list": true })).await;
    let small_list = sub["redis_list"].as_str().unwrap().to_string();
    let got = list_until(&bob, &small_list, 6).await;
    assert_eq!(got[0]["event"], "gap", "{got:?}");
    assert_eq!(
        (got[0]["from"].as_u64(), got[0]["to"].as_u64()),
        (Some(1), Some(7))
    );
    let tail: Vec<u64> = got[1..].iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert_eq!(tail, (8..=12).collect::<Vec<_>>());
    let state: Value = client()
        .get(bob.url(&format!("/topics/{small}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["last_id"], 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_killed_mid_stream_loses_no_acknowledged_publish_and_reuses_no_id() {
    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let mut alice = Node::start("//Alice", &[&relay], &registry).await;
    let dave = Node::start("//Dave", &[&relay], &registry).await;
    let bob = Node::start("//Bob", &[&relay], &registry).await;
    create(&alice, "log", json!({ "publish": "anyone" })).await;
    let topic = format!("{}/log", alice.twin);
    subscribe(&bob, &topic, json!({ "since": 0 })).await;

    // Dave publishes 4 at a time while the owner is killed and restarted.
    let publisher = {
        let (url, topic) = (dave.url(""), topic.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for batch in 0..10 {
                let sends = (0..4).map(|k| {
                    let text = format!("m{}", batch * 4 + k);
                    let request = client()
                        .post(format!("{url}/topics/{topic}"))
                        .body(text.clone())
                        .send();
                    async move {
                        let r = request.await.unwrap();
                        let status = r.status().as_u16();
                        let body: Value = r.json().await.unwrap();
                        (status, body, text)
                    }
                });
                for (status, body, text) in futures_util::future::join_all(sends).await {
                    assert_eq!(status, 200, "publish {text}: {body}");
                    acked.push((body["id"].as_u64().unwrap(), text));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!publisher.is_finished(), "the owner is killed mid-stream");
    alice.kill().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    alice.relaunch().await;
    let mut acked = publisher.await.unwrap();
    acked.sort();

    // Every acknowledged publish is in the owner's log under the id it was given,
    // no id was given twice and no message was stored twice.
    let log = ids_and_texts(&poll(&alice, &topic).await);
    assert_eq!(acked.len(), 40);
    let ids: Vec<u64> = acked.iter().map(|(id, _)| *id).collect();
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(ids, unique, "an id was given to two publishes");
    assert_eq!(
        log, acked,
        "the owner's log is exactly what was acknowledged"
    );
    assert_eq!(ids, (1..=40).collect::<Vec<_>>());

    // The subscriber got all of it, in order.
    let got = poll_until(&bob, &topic, 40).await;
    assert_eq!(ids_and_texts(&got), acked);

    // A new message after the restart continues the sequence.
    let (status, answer) = publish(&alice, &topic, "after").await;
    assert_eq!(status, 200);
    assert_eq!(answer["id"], 41);
}

/// Runs curl with `args`; its stdout and the HTTP status it printed last.
fn curl(args: &[&str]) -> (String, u16) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("run curl");
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (body.to_string(), status.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_answers_bad_requests_with_json_errors() {
    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let alice = Node::start("//Alice", &[&relay], &registry).await;
    let me = alice.twin;
    create(&alice, "t", json!({})).await;

    // curl: publish with headers, then poll.
    let url = alice.url(&format!("/topics/{me}/t"));
    let (body, status) = tokio::task::block_in_place(|| {
        curl(&[
            "-H",
            "Title: Disk",
            "-H",
            "Priority: 4",
            "-H",
            "Tags: a,b",
            "-d",
            "disk full",
            &url,
        ])
    });
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["id"], 1);
    let (body, status) =
        tokio::task::block_in_place(|| curl(&[&format!("{url}/json?poll=1&since=all")]));
    assert_eq!(status, 200);
    let m: Value = serde_json::from_str(body.trim()).unwrap();
    assert_eq!(
        (
            m["message"].as_str(),
            m["title"].as_str(),
            m["priority"].as_u64()
        ),
        (Some("disk full"), Some("Disk"), Some(4))
    );
    assert_eq!(m["tags"], json!(["a", "b"]));
    // Binary payloads come back as base64.
    let r = client()
        .post(&url)
        .body(vec![0xffu8, 0, 1])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = poll(&alice, &format!("{me}/t")).await;
    assert_eq!(
        (got[1]["message"].as_str(), got[1]["encoding"].as_str()),
        (Some("/wAB"), Some("base64"))
    );

    let c = client();
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            c.get(alice.url("/topics/7/bad%20name/json")),
            400,
            "topic name",
        ),
        (c.get(alice.url("/topics/x/t/json")), 400, "twin id"),
        (
            c.get(alice.url(&format!("/topics/{me}/t/json?since=abc"))),
            400,
            "since",
        ),
        (
            c.get(alice.url(&format!("/topics/{me}/t/json?limit=0"))),
            400,
            "limit",
        ),
        (
            c.get(alice.url(&format!("/topics/{me}/t/json?foo=1"))),
            400,
            "unknown parameter",
        ),
        (
            c.put(alice.url(&format!("/topics/{me}/u"))).body("{nope"),
            400,
            "configuration",
        ),
        (
            c.put(alice.url(&format!("/topics/{me}/u")))
                .body(r#"{"retention_count":0}"#),
            400,
            "retention_count",
        ),
        (
            c.put(alice.url(&format!("/topics/{me}/u")))
                .body(r#"{"publish":"everyone"}"#),
            400,
            "access",
        ),
        (
            c.put(alice.url("/topics/999/theirs")).body("{}"),
            403,
            "owner",
        ),
        (
            c.post(alice.url(&format!("/topics/{me}/missing")))
                .body("x"),
            404,
            "no topic",
        ),
        (c.post(&url).body(vec![b'a'; 70_000]), 413, "limit is 65536"),
        (
            c.post(&url).header("Priority", "9").body("x"),
            400,
            "priority",
        ),
        (
            c.post(&url)
                .header("content-type", "application/json")
                .body("[1]"),
            400,
            "message document",
        ),
        (
            c.get(alice.url(&format!("/topics/{me}/t/ws"))),
            400,
            "WebSocket",
        ),
        (c.get(alice.url("/nope")), 404, "no such endpoint"),
        (c.delete(alice.url("/topics")), 405, "not allowed"),
        (c.post(alice.url("/call")).body("{}"), 400, "missing field"),
        (
            c.post(alice.url("/call")).body(r#"{"twin":0,"cmd":"x"}"#),
            400,
            "twin",
        ),
        (
            c.post(alice.url("/call"))
                .body(r#"{"twin":2,"cmd":"x","timeout":9999}"#),
            400,
            "timeout",
        ),
        (
            c.post(alice.url("/call"))
                .body(r#"{"twin":999999,"cmd":"x"}"#),
            502,
            "999999",
        ),
        (c.get(alice.url("/topics/999999/t")), 404, "not subscribed"),
    ];
    for (request, status, needle) in cases {
        let r = request.send().await.unwrap();
        let got = r.status().as_u16();
        let body = r.text().await.unwrap();
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}"));
        assert_eq!(got, status, "{body}");
        assert_eq!(v["http"], status);
        assert!(
            v["error"].as_str().unwrap().contains(needle),
            "{needle:?} not in {body}"
        );
    }
    // Nothing of that reached the log.
    assert_eq!(poll(&alice, &format!("{me}/t")).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_see_only_ciphertext_of_topic_messages() {
    use rmb_identity::E2eScheme;
    use rmb_identity::registry::Registry;
    use rmb_identity::registry::http::HttpRegistry;
    use rmb_proto::{Address, Envelope, Message, Payload, Request};
    use rmb_testsupport::relay_client::now;

    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let alice = Node::start("//Alice", &[&relay], &registry).await;
    create(&alice, "secret", json!({})).await;

    // Eve is a bare relay session: what she receives is exactly what relays carry.
    let (eve, eve_twin, mut session) = bare_twin(&relay, "//Eve").await;
    let mut subscribe = Envelope {
        uid: "eve-subscribes".into(),
        expiration: 60,
        source: Some(Address::twin(eve_twin)),
        destination: Some(Address::twin(alice.twin)),
        message: Some(Message::Request(Request {
            command: "rmb.topic.subscribe".into(),
        })),
        payload: Some(Payload::Plain(br#"{"topic":"secret"}"#.to_vec())),
        ..Default::default()
    };
    eve.seal_envelope(&mut subscribe, None, now()).unwrap();
    session.send(&subscribe).await;
    let answer = session
        .recv(WAIT)
        .await
        .expect("an answer to the subscription");
    assert_eq!(answer.uid, "eve-subscribes");
    assert!(
        matches!(answer.message, Some(Message::Response(_))),
        "{answer:?}"
    );

    let secret = "the launch code is 0000";
    assert_eq!(
        publish(&alice, &format!("{}/secret", alice.twin), secret)
            .await
            .0,
        200
    );
    let pushed = session.recv(WAIT).await.expect("the message is pushed");
    assert!(
        matches!(&pushed.message, Some(Message::Request(r)) if r.command == "rmb.topic.message")
    );
    let Some(Payload::Cipher(cipher)) = &pushed.payload else {
        panic!("a topic message travels encrypted: {:?}", pushed.payload)
    };
    assert!(
        !cipher.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "the plaintext is visible on the wire"
    );
    assert!(!pushed.to_bytes().windows(6).any(|w| w == b"launch"));

    // Both publish x25519 keys, so the push goes without a signature: its encryption
    // proves it is Alice's (the key her published key derives), which Eve checks.
    assert_eq!(
        pushed.signature, None,
        "pushes between rmb peers go unsigned"
    );
    let alice_pk = HttpRegistry::new(&registry)
        .unwrap()
        .get_twin(alice.twin)
        .await
        .unwrap()
        .unwrap()
        .pk
        .unwrap();
    let plain = eve
        .e2e()
        .open_from(E2eScheme::X25519, &alice_pk, cipher)
        .expect("the push authenticates as Alice's");
    assert!(String::from_utf8_lossy(&plain).contains(secret));
}

/// Pushes go unsigned ([`rmb_peer::core::unsigned`]), so the subscriber must not take an
/// unsigned envelope on its word: Mallory, a twin with a relay session, forges each kind
/// a subscriber could be fooled by, and Bob's peer refuses every one, counted by reason,
/// and still gets Alice's real message as id 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_forgeries_are_refused_by_subscribers() {
    use rmb_proto::{Address, Envelope, Message, Payload, Request, Response};
    use rmb_testsupport::relay_client::now;

    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let alice = Node::start("//Alice", &[&relay], &registry).await;
    let bob = Node::start("//Bob", &[&relay], &registry).await;
    create(&alice, "news", json!({})).await;
    let topic = format!("{}/news", alice.twin);
    subscribe(&bob, &topic, json!({ "since": 0 })).await;

    let (mallory, mallory_twin, mut session) = bare_twin(&relay, "//Mallory").await;
    let bob_pk = published_key(&registry, bob.twin).await;
    let batch = |text: &str| {
        json!({"messages": [{
            "id": 1, "event": "message", "topic": topic, "time": now(),
            "publisher": alice.twin, "message": text,
        }]})
        .to_string()
        .into_bytes()
    };
    let unsigned = |uid: &str, source: u32, message: Message, body: Vec<u8>| {
        let mut env = Envelope {
            uid: uid.into(),
            expiration: 60,
            source: Some(Address::twin(source)),
            destination: Some(Address::twin(bob.twin)),
            message: Some(message),
            payload: Some(Payload::Plain(body)),
            ..Default::default()
        };
        mallory.encrypt_envelope(&mut env, &bob_pk, now()).unwrap();
        assert_eq!(env.signature, None);
        env
    };
    let push = || {
        Message::Request(Request {
            command: "rmb.topic.message".into(),
        })
    };

    // 1. A push claiming to be Alice's, encrypted with Mallory's own key. The relay
    // refuses a session's envelope with another source, so Mallory posts it as a
    // relay would forward it (federation does not verify unsigned envelopes either).
    let forged = unsigned("forged-1", alice.twin, push(), batch("forged"));
    let posted = client()
        .post(relay.http_url())
        .body(forged.to_bytes())
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 202, "{}", posted.text().await.unwrap());
    // 2. A push in her own name for Alice's topic: authentic, but not from the owner.
    session
        .send(&unsigned(
            "forged-2",
            mallory_twin,
            push(),
            batch("not the owner"),
        ))
        .await;
    // 3. Another command unsigned, and 4. an answer to nothing Bob sent unsigned.
    let call = Message::Request(Request {
        command: "calc.add".into(),
    });
    session
        .send(&unsigned("forged-3", mallory_twin, call, b"[1,2]".to_vec()))
        .await;
    session
        .send(&unsigned(
            "forged-4",
            mallory_twin,
            Message::Response(Response {}),
            b"{}".to_vec(),
        ))
        .await;

    // Mallory's own requests are answered with errors: 403 (not the owner), 104.
    let mut codes = BTreeMap::new();
    while codes.len() < 2 {
        let answer = session.recv(WAIT).await.expect("error replies to Mallory");
        if let Some(Message::Error(e)) = answer.message {
            codes.insert(answer.uid, e.code);
        }
    }
    assert_eq!(codes["forged-2"], 403, "{codes:?}");
    assert_eq!(codes["forged-3"], 104, "{codes:?}");

    let status = tokio::task::block_in_place(|| {
        let deadline = Instant::now() + WAIT;
        loop {
            let status = bob.peer.status().expect("status key");
            let by = &status["rejected_by"];
            let done = by["crypto"].as_u64().unwrap_or(0) >= 1
                && by["bad_signature"].as_u64().unwrap_or(0) >= 2;
            if done || Instant::now() > deadline {
                return status;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    assert_eq!(status["rejected_by"]["crypto"], 1, "{status}");
    assert_eq!(status["rejected_by"]["bad_signature"], 2, "{status}");

    // Nothing forged reached Bob's apps; Alice's real message is id 1.
    assert_eq!(publish(&alice, &topic, "real").await.0, 200);
    let got = poll_until(&bob, &topic, 1).await;
    assert_eq!(ids_and_texts(&got), [(1, "real".to_string())]);
}

/// The owner's side of cumulative acknowledgements, seen by a subscriber written here
/// from docs/protocol.md §9: it subscribes saying it acknowledges cumulatively, gets
/// pushes it need not answer, and gets them again while it does not acknowledge them;
/// once it does, nothing comes again. A subscriber that does not say so gets pushes to
/// answer, as from the first version of the protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_pushes_are_sent_again_until_acknowledged() {
    use rmb_identity::E2eScheme;
    use rmb_proto::{Address, Envelope, Message, Payload, Request};
    use rmb_testsupport::relay_client::{TestClient, now};

    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let alice = Node::start("//Alice", &[&relay], &registry).await;
    create(&alice, "news", json!({})).await;
    let topic = format!("{}/news", alice.twin);

    let alice_pk = published_key(&registry, alice.twin).await;
    // Two subscribers of our own: Carol acknowledges cumulatively, Dave answers pushes.
    let (carol, carol_twin, mut carol_session) = bare_twin(&relay, "//AckCarol").await;
    let (dave, dave_twin, mut dave_session) = bare_twin(&relay, "//AckDave").await;

    let request = |identity: &Identity, twin: u32, uid: &str, command: &str, body: Value| {
        let mut env = Envelope {
            uid: uid.into(),
            expiration: 60,
            source: Some(Address::twin(twin)),
            destination: Some(Address::twin(alice.twin)),
            message: Some(Message::Request(Request {
                command: command.into(),
            })),
            payload: Some(Payload::Plain(body.to_string().into_bytes())),
            ..Default::default()
        };
        identity
            .seal_envelope(&mut env, Some(&alice_pk), now())
            .unwrap();
        env
    };
    let open = |identity: &Identity, env: &Envelope| -> Value {
        let Some(Payload::Cipher(cipher)) = &env.payload else {
            panic!("not encrypted: {env:?}");
        };
        let plain = identity
            .e2e()
            .open(E2eScheme::X25519, Some(&alice_pk), cipher)
            .unwrap();
        serde_json::from_slice(&plain).unwrap()
    };
    // The next envelope with `command` (answers to our subscribe are skipped).
    async fn next_push(session: &mut TestClient) -> Envelope {
        loop {
            let env = session.recv(WAIT).await.expect("a push");
            if matches!(&env.message, Some(Message::Request(r)) if r.command == "rmb.topic.message")
            {
                return env;
            }
        }
    }

    carol_session
        .send(&request(
            &carol,
            carol_twin,
            "sub-carol",
            "rmb.topic.subscribe",
            json!({"topic": "news", "acks": "cumulative"}),
        ))
        .await;
    dave_session
        .send(&request(
            &dave,
            dave_twin,
            "sub-dave",
            "rmb.topic.subscribe",
            json!({"topic": "news"}),
        ))
        .await;
    // Both subscriptions are recorded before the first publish.
    let deadline = Instant::now() + WAIT;
    loop {
        let info: Value = client()
            .get(alice.url(&format!("/topics/{topic}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if info["subscribers"].as_array().is_some_and(|s| s.len() == 2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "subscriptions not recorded: {info}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    assert_eq!(publish(&alice, &topic, "m1").await.0, 200);
    // Dave's push asks for an answer (no "acks"), Carol's does not.
    let dave_push = next_push(&mut dave_session).await;
    let body = open(&dave, &dave_push);
    assert_eq!(body.get("acks"), None, "{body}");
    let first = next_push(&mut carol_session).await;
    let first_at = Instant::now();
    assert_eq!(first.signature, None, "pushes go unsigned");
    let body = open(&carol, &first);
    assert_eq!(body["acks"], "cumulative", "{body}");
    assert_eq!(body["messages"][0]["id"], 1);
    assert_eq!(body["messages"][0]["message"], "m1");

    // Carol says nothing: the owner sends id 1 again (after a second), saying how far
    // the topic got.
    let again = next_push(&mut carol_session).await;
    let waited = first_at.elapsed();
    let body = open(&carol, &again);
    assert_eq!(body["messages"][0]["id"], 1, "{body}");
    assert_eq!(body["last"], 1, "{body}");
    assert_ne!(again.uid, first.uid, "a new push, not a copy of the first");
    assert!(
        waited >= Duration::from_millis(500),
        "sent again only after a wait ({waited:?})"
    );

    // Carol acknowledges (unsigned, authenticated by its encryption) and gets id 2 once.
    let ack = |uid: &str, topic: &str, last: u64| {
        let mut env = Envelope {
            uid: uid.into(),
            expiration: 60,
            source: Some(Address::twin(carol_twin)),
            destination: Some(Address::twin(alice.twin)),
            message: Some(Message::Request(Request {
                command: "rmb.topic.ack".into(),
            })),
            payload: Some(Payload::Plain(
                json!({"topic": topic, "last": last})
                    .to_string()
                    .into_bytes(),
            )),
            ..Default::default()
        };
        carol.encrypt_envelope(&mut env, &alice_pk, now()).unwrap();
        env
    };
    carol_session.send(&ack("ack-1", "news", 1)).await;
    // And one for a topic she does not subscribe to, which is dropped and counted.
    carol_session.send(&ack("ack-x", "other", 5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(publish(&alice, &topic, "m2").await.0, 200);
    let push = next_push(&mut carol_session).await;
    let body = open(&carol, &push);
    assert_eq!(body["messages"][0]["id"], 2, "{body}");
    assert_eq!(body.get("last"), None, "{body}");
    carol_session.send(&ack("ack-2", "news", 2)).await;
    // Nothing more comes to Carol: every push is acknowledged.
    let quiet_until = Instant::now() + Duration::from_secs(3);
    while let Some(env) = carol_session
        .recv(quiet_until.saturating_duration_since(Instant::now()))
        .await
    {
        assert!(
            !matches!(&env.message, Some(Message::Request(r)) if r.command == "rmb.topic.message"),
            "an acknowledged push came again: {}",
            open(&carol, &env)
        );
    }

    let listing: Value = client()
        .get(alice.url("/topics"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let counters = &listing["counters"];
    assert!(counters["resent"].as_u64().unwrap() >= 1, "{counters}");
    assert_eq!(counters["acks_received"], 2, "{counters}");
    assert_eq!(
        counters["refused_by"]["ack_not_subscribed"], 1,
        "{counters}"
    );
}

/// Runs `rmb` with `args` against `node`'s HTTP API; stdout, or a panic with stderr.
fn rmb(node: &Node, args: &[&str]) -> String {
    let binary = rmb_testsupport::relay_process::binaries().join("rmb");
    let out = Command::new(&binary)
        .args(args)
        .env("RMB_HTTP", &node.http)
        .output()
        .expect("run rmb");
    assert!(
        out.status.success(),
        "rmb {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_creates_publishes_pulls_and_subscribes() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let alice = Node::start("//Alice", &[&relay], &registry).await;
    let bob = Node::start("//Bob", &[&relay], &registry).await;
    let topic = format!("{}/chat", alice.twin);
    let bob_twin = bob.twin.to_string();
    tokio::task::block_in_place(|| {
        let created = rmb(&alice, &["topic", "create", "chat", "--publish", &bob_twin]);
        assert!(
            created.contains(&format!("topic {topic} ready")),
            "{created}"
        );

        // `rmb sub` on Bob's side, live, from the start.
        let binary = rmb_testsupport::relay_process::binaries().join("rmb");
        let mut sub = Command::new(&binary)
            .args(["sub", &topic, "--since", "0"])
            .env("RMB_HTTP", &bob.http)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start rmb sub");
        let mut lines = BufReader::new(sub.stdout.take().unwrap()).lines();

        assert_eq!(rmb(&alice, &["pub", "chat", "first"]).trim(), "1");
        assert_eq!(
            rmb(&bob, &["pub", &topic, "from bob", "--title", "hi"]).trim(),
            "2"
        );
        let (l1, l2) = (
            lines.next().unwrap().unwrap(),
            lines.next().unwrap().unwrap(),
        );
        assert_eq!((l1.as_str(), l2.as_str()), ("1 first", "2 from bob"));
        let _ = sub.kill();
        let _ = sub.wait();

        let pulled = rmb(&alice, &["pull", "chat", "--since", "1", "--json"]);
        let m: Value = serde_json::from_str(pulled.trim()).unwrap();
        assert_eq!(
            (m["id"].as_u64(), m["title"].as_str()),
            (Some(2), Some("hi"))
        );
        assert_eq!(m["publisher"], bob.twin);
        let listed = rmb(&alice, &["topic", "list"]);
        assert!(
            listed.contains(&topic) && listed.contains("subscribers 1"),
            "{listed}"
        );
        let shown: Value = serde_json::from_str(&rmb(&bob, &["topic", "show", &topic])).unwrap();
        assert_eq!(shown["last_id"], 2);
    });
}
