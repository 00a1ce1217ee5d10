//! The helpers every topic test shares: a twin's processes ([`Node`]: its Redis and its
//! `rmb-peer` with `--http`), the HTTP calls the tests make, and a bare relay session of
//! a twin of the test's own for the wire tests.

use std::process::Command;
use std::time::{Duration, Instant};

use rmb_identity::{Identity, KeyType};
use rmb_testsupport::peer_process::PeerProcess;
use rmb_testsupport::peer_process::resp::{Reply, Resp};
use rmb_testsupport::redis_server::{RedisServer, free_port};
use rmb_testsupport::relay_process::RelayProcess;
use serde_json::Value;

/// Longest a test waits for anything (a broken system fails, never hangs).
pub(crate) const WAIT: Duration = Duration::from_secs(30);

/// One twin: its Redis, its peer (with `--http`) and the API's base URL.
pub(crate) struct Node {
    pub(crate) twin: u32,
    pub(crate) peer: PeerProcess,
    pub(crate) http: String,
    _redis: RedisServer,
}

impl Node {
    pub(crate) async fn start(secret: &str, relays: &[&RelayProcess], registry: &str) -> Node {
        Node::start_with(secret, relays, registry, &[]).await
    }

    /// [`Node::start`] with more `rmb-peer` flags.
    pub(crate) async fn start_with(
        secret: &str,
        relays: &[&RelayProcess],
        registry: &str,
        flags: &[&str],
    ) -> Node {
        let domains: Vec<String> = relays.iter().map(|r| r.domain()).collect();
        let urls: Vec<String> = relays.iter().map(|r| r.ws_url()).collect();
        let identity = Identity::from_secret(secret, KeyType::Sr25519).unwrap();
        let twin = rmb_testsupport::registry::register(registry, &identity, &domains).await;
        let redis = RedisServer::start();
        let addr = format!("127.0.0.1:{}", free_port());
        let mut extra = vec!["--http", addr.as_str()];
        if !flags.contains(&"--topic-renew") {
            extra.extend(["--topic-renew", "2"]);
        }
        extra.extend_from_slice(flags);
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

    /// The port of its HTTP API.
    pub(crate) fn port(&self) -> u16 {
        self.http.rsplit(':').next().unwrap().parse().unwrap()
    }

    pub(crate) async fn wait_http(&self) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(r) = reqwest::get(format!("{}/", self.http)).await {
                if r.status() == 401 {
                    return; // up, and asking for its token (--http-token-file)
                }
                if !r.status().is_success() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                let hello: Value = r.json().await.unwrap();
                assert_eq!(hello["twin"], self.twin);
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the HTTP API at {} did not come up", self.http);
    }

    /// Sends the peer a signal (`STOP`, `CONT`): a peer that stands still.
    pub(crate) fn signal(&self, signal: &str) {
        send_signal(self.peer.pid().expect("the peer runs"), signal);
    }

    /// `GET /topics`: own topics, subscriptions and counters.
    pub(crate) async fn listing(&self) -> Value {
        self.get_json("/topics").await
    }

    /// `GET path` on its API, as JSON.
    pub(crate) async fn get_json(&self, path: &str) -> Value {
        client()
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The topics layer's counters (`GET /topics`).
    pub(crate) async fn counters(&self) -> Value {
        self.listing().await["counters"].clone()
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.http)
    }

    pub(crate) async fn kill(&mut self) {
        tokio::task::block_in_place(|| self.peer.kill());
    }

    pub(crate) async fn relaunch(&mut self) {
        tokio::task::block_in_place(|| self.peer.relaunch());
        self.wait_http().await;
    }
}

/// Sends process `pid` a signal (`STOP`, `CONT`).
pub(crate) fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

/// The tests' HTTP client. Raw bodies go as `application/octet-stream`, as the API asks
/// of every POST (requests that set a type, such as `.json()`, keep theirs).
pub(crate) fn client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::CONTENT_TYPE,
        reqwest::header::HeaderValue::from_static("application/octet-stream"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(90))
        .build()
        .unwrap()
}

/// `PUT /topics/<owner>/<name>` with `config`; the created topic's state.
pub(crate) async fn create(node: &Node, name: &str, config: Value) -> Value {
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
pub(crate) async fn publish(node: &Node, topic: &str, text: &str) -> (u16, Value) {
    let r = client()
        .post(node.url(&format!("/topics/{topic}")))
        .body(text.to_string())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

pub(crate) async fn subscribe(node: &Node, topic: &str, body: Value) -> Value {
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
pub(crate) async fn poll(node: &Node, topic: &str) -> Vec<Value> {
    poll_since(node, topic, 0).await
}

/// `GET /topics/<topic>/json?poll=1&since=<since>`: the messages after `since` (at
/// most a page of 1000), as JSON values.
pub(crate) async fn poll_since(node: &Node, topic: &str, since: u64) -> Vec<Value> {
    let r = client()
        .get(node.url(&format!("/topics/{topic}/json?poll=1&since={since}")))
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
pub(crate) async fn poll_until(node: &Node, topic: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = poll(node, topic).await;
        if got.len() >= n || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) fn ids_and_texts(messages: &[Value]) -> Vec<(u64, String)> {
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
pub(crate) async fn bare_twin(
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
pub(crate) async fn published_key(registry: &str, twin: u32) -> Vec<u8> {
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

/// Reads every entry of a Redis list (as a Redis-only app would, without removing).
pub(crate) fn list(node: &Node, key: &str) -> Vec<Value> {
    let mut redis = Resp::connect(node.peer.redis_url());
    match redis.cmd(&[b"LRANGE", key.as_bytes(), b"0", b"-1"]) {
        Reply::Array(items) => items
            .iter()
            .map(|i| serde_json::from_slice(i.bytes().unwrap()).unwrap())
            .collect(),
        other => panic!("LRANGE answered {other:?}"),
    }
}

pub(crate) async fn list_until(node: &Node, key: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = tokio::task::block_in_place(|| list(node, key));
        if got.len() >= n || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs curl with `args`; its stdout and the HTTP status it printed last.
pub(crate) fn curl(args: &[&str]) -> (String, u16) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("run curl");
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (body.to_string(), status.parse().unwrap())
}

/// Runs `rmb` with `args` against `node`'s HTTP API; stdout, or a panic with stderr.
pub(crate) fn rmb(node: &Node, args: &[&str]) -> String {
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
