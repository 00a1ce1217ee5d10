//! `/metrics` as an operator's Prometheus sees it: real relays and peers carry traffic
//! (calls between two peers on one relay, calls across federation, a destination relay
//! that is down), then their endpoints are scraped over HTTP.
//!
//! Checked: the relay exports rmb-rs's metric names with rmb-rs's types beside its own,
//! and they count what happened; the peer's `--metrics-listen` exports its counters and
//! round trips, and refuses what a web page could send it; and every metric the Grafana
//! dashboards (deploy/grafana) and alert rules (deploy/prometheus) name is exported, so
//! they cannot silently refer to a name that no longer exists.

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rmb_peer::redis_api::json::encode_dat;
use rmb_testsupport::direct::fresh_mnemonic;
use rmb_testsupport::peer_node::{EchoBot, Node, register};
use rmb_testsupport::peer_process::PeerProcess;
use rmb_testsupport::peer_process::resp::Resp;
use rmb_testsupport::redis_server::{RedisServer, free_port};
use rmb_testsupport::relay_process::RelayProcess;
use serde_json::{Value, json};

/// Calls between two peers of one relay, and across federation.
const LOCAL: usize = 4;
const FEDERATED: usize = 3;
/// Longest a test waits for any one answer or count.
const WAIT: Duration = Duration::from_secs(20);

/// One scrape: each family's type, and each sample's value.
struct Scrape {
    types: HashMap<String, String>,
    samples: HashMap<String, f64>,
    text: String,
}

impl Scrape {
    fn parse(text: String) -> Scrape {
        let mut types = HashMap::new();
        let mut samples = HashMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE line");
                types.insert(name.to_string(), kind.to_string());
            } else if !line.starts_with('#') && !line.is_empty() {
                let (sample, value) = line.rsplit_once(' ').expect("sample line");
                samples.insert(sample.to_string(), value.parse().expect("sample value"));
            }
        }
        Scrape {
            types,
            samples,
            text,
        }
    }

    /// The value of one sample, e.g. `relay_message_rx` or `x{kind="y"}` (0 when absent).
    fn value(&self, sample: &str) -> f64 {
        self.samples.get(sample).copied().unwrap_or(0.0)
    }

    fn assert_type(&self, name: &str, kind: &str) {
        assert_eq!(
            self.types.get(name).map(String::as_str),
            Some(kind),
            "{name} should be a {kind}:\n{}",
            self.text
        );
    }

    /// True if `name` is a family here, or a histogram's `_bucket`/`_sum`/`_count`.
    fn exports(&self, name: &str) -> bool {
        self.types.contains_key(name)
            || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
                name.strip_suffix(suffix)
                    .is_some_and(|base| self.types.get(base).is_some_and(|t| t == "histogram"))
            })
    }
}

/// A raw HTTP/1.1 exchange with `addr` (so the test chooses every header, `Host`
/// included): the status code and the body.
fn http(addr: &str, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn get(addr: &str, path: &str, headers: &str) -> (u16, String) {
    http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n"),
    )
}

fn scrape(addr: &str) -> Scrape {
    let (status, body) = get(addr, "/metrics", "");
    assert_eq!(status, 200, "{body}");
    Scrape::parse(body)
}

/// Scrapes `addr` until `done` holds for the scrape (or [`WAIT`] passes); returns it.
fn scrape_until(addr: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = scrape(addr);
        if done(&s) || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sends one request to `twin` for `echo` through the peer's Redis; waits for its answer.
fn call(app: &mut Resp, reference: &str, twin: u32) -> Value {
    let ret = format!("ret-{reference}");
    let request = json!({
        "ver": 1, "ref": reference, "cmd": "echo", "exp": 15, "dat": encode_dat(b"hi"),
        "tag": null, "dst": [twin], "ret": ret, "shm": "text/plain",
        "now": rmb_testsupport::relay_client::now(),
    });
    app.lpush("msgbus.system.local", &request.to_string());
    let text = app
        .brpop(&ret, WAIT.as_secs())
        .unwrap_or_else(|| panic!("no answer to {reference}"));
    serde_json::from_str(&text).unwrap()
}

/// The metric names (`relay_…`, `rmb_…`, `federation_…`) a text mentions, outside
/// braces (label matchers such as `{kind="federation_busy"}`, templates).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut depth = 0usize;
    let outside: String = text
        .chars()
        .map(|c| {
            match c {
                '{' => depth += 1,
                '}' => depth = depth.saturating_sub(1),
                _ if depth == 0 => return c,
                _ => {}
            }
            ' '
        })
        .collect();
    outside
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| {
            ["relay_", "rmb_", "federation_"]
                .iter()
                .any(|p| w.starts_with(p))
        })
        .map(str::to_string)
        .collect()
}

/// Every string under the keys `expr`, `query` and `definition` of a dashboard.
fn dashboard_queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr" | "query" | "definition", Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_queries(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| dashboard_queries(i, out)),
        _ => {}
    }
}

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

#[test]
fn relay_and_peer_metrics_carry_rmb_rs_names_and_all_that_dashboards_and_alerts_use() {
    let home = RelayProcess::start(&["--federation-http", "--metrics-twin-labels", "100"]);
    let registry = home.http_url();
    let other = RelayProcess::start(&["--federation-http", "--registry", &registry]);
    let peer_metrics = format!("127.0.0.1:{}", free_port());
    let alice = Node::start(
        &fresh_mnemonic(),
        &home,
        &["--metrics-listen", &peer_metrics],
    );
    let mut bob = Node::start(&fresh_mnemonic(), &home, &[]);
    let carol_secret = fresh_mnemonic();
    let carol_twin = register(&registry, &carol_secret, &[other.domain()]);
    let carol_redis = RedisServer::start();
    let _carol = PeerProcess::start(
        &carol_secret,
        &carol_redis.url(),
        &[other.ws_url()],
        &registry,
        &[],
    );
    // A twin whose relay is down: every federation try to it fails.
    let nowhere = format!("127.0.0.1:{}", free_port());
    let dave = register(&registry, &fresh_mnemonic(), std::slice::from_ref(&nowhere));
    let _bob_bot = EchoBot::start(&bob.redis.url(), "echo");
    let _carol_bot = EchoBot::start(&carol_redis.url(), "echo");

    let mut app = alice.peer.redis();
    for i in 0..LOCAL {
        let answer = call(&mut app, &format!("local-{i}"), bob.twin);
        assert_eq!(answer["err"], Value::Null, "{answer}");
    }
    for i in 0..FEDERATED {
        let answer = call(&mut app, &format!("federated-{i}"), carol_twin);
        assert_eq!(answer["err"], Value::Null, "{answer}");
    }
    let request = json!({
        "ver": 1, "ref": "down", "cmd": "echo", "exp": 5, "dat": "", "tag": null,
        "dst": [dave], "ret": "ret-down", "shm": "", "now": rmb_testsupport::relay_client::now(),
    });
    app.lpush("msgbus.system.local", &request.to_string());
    // A frame that is no envelope, so relay_errors_total has a series to show.
    let (status, _) = http(
        &home.addr(),
        &format!(
            "POST / HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-protobuf\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
            home.addr()
        ),
    );
    assert!(status >= 400, "a garbage federation POST got {status}");

    // The relay: rmb-rs's names, with rmb-rs's types, beside ours.
    let error_to_nowhere = format!("federation_message_error{{relay=\"{nowhere}\"}}");
    let relay = scrape_until(&home.addr(), |s| s.value(&error_to_nowhere) >= 1.0);
    for (name, kind) in [
        ("relay_message_rx", "counter"),
        ("relay_message_rx_bytes", "counter"),
        ("relay_message_tx", "counter"),
        ("relay_message_tx_bytes", "counter"),
        ("relay_worker_connections", "gauge"),
        ("relay_session_evictions_total", "counter"),
        ("relay_message_rx_twin", "counter"),
        ("federation_message_success", "counter"),
        ("federation_message_error", "counter"),
        ("rmb_cache_misses_total", "counter"),
        ("rmb_cache_flushes_total", "counter"),
        ("rmb_cache_entries", "gauge"),
        ("rmb_cache_hits_total", "counter"),
        ("relay_sessions", "gauge"),
        ("relay_messages_in_total", "counter"),
    ] {
        relay.assert_type(name, kind);
    }
    // Requests to bob and his answers, and carol's answers arriving by federation, were
    // each accepted for a session here and written to it.
    let accepted = (2 * LOCAL + FEDERATED) as f64;
    assert!(
        relay.value("relay_message_rx") >= accepted,
        "{}",
        relay.text
    );
    assert!(
        relay.value("relay_message_tx") >= accepted,
        "{}",
        relay.text
    );
    assert!(relay.value("relay_message_rx_bytes") > accepted * 100.0);
    assert!(relay.value("relay_message_tx_bytes") > accepted * 100.0);
    assert_eq!(relay.value("relay_worker_connections{worker=\"0\"}"), 2.0);
    assert_eq!(relay.value("relay_sessions"), 2.0);
    let to_bob = format!("relay_message_rx_twin{{twin=\"{}\"}}", bob.twin);
    let to_alice = format!("relay_message_rx_twin{{twin=\"{}\"}}", alice.twin);
    assert!(relay.value(&to_bob) >= LOCAL as f64, "{}", relay.text);
    assert!(relay.value(&to_alice) >= (LOCAL + FEDERATED) as f64);
    let to_other = format!("federation_message_success{{relay=\"{}\"}}", other.domain());
    assert!(relay.value(&to_other) >= FEDERATED as f64, "{}", relay.text);
    assert!(relay.value(&error_to_nowhere) >= 1.0, "{}", relay.text);
    // This relay hosts the registry: routing to carol and dave looked twins up.
    let lookups = relay.value("rmb_cache_hits_total") + relay.value("rmb_cache_misses_total");
    assert!(lookups >= FEDERATED as f64, "{}", relay.text);

    // The other relay: the per-twin counter is off by default; its registry is remote,
    // behind the cache (kept filled by the registry's change feed: hits, not misses).
    let remote = scrape(&other.addr());
    assert!(!remote.types.contains_key("relay_message_rx_twin"));
    let to_home = format!("federation_message_success{{relay=\"{}\"}}", home.domain());
    assert!(
        remote.value(&to_home) >= FEDERATED as f64,
        "{}",
        remote.text
    );
    let lookups = remote.value("rmb_cache_hits_total") + remote.value("rmb_cache_misses_total");
    assert!(lookups >= FEDERATED as f64, "{}", remote.text);
    assert!(remote.value("rmb_cache_entries") >= 1.0, "{}", remote.text);

    // The peer's --metrics-listen.
    let peer = scrape(&peer_metrics);
    peer.assert_type("rmb_peer_rpc_seconds", "histogram");
    peer.assert_type("rmb_peer_relays_connected", "gauge");
    peer.assert_type("rmb_peer_rejected_total", "counter");
    peer.assert_type("rmb_peer_resent_total", "counter");
    let calls = (LOCAL + FEDERATED) as f64;
    assert_eq!(
        peer.value("rmb_peer_relays_connected"),
        1.0,
        "{}",
        peer.text
    );
    let link = format!("rmb_peer_relay_connected{{relay=\"{}\"}}", home.ws_url());
    assert_eq!(peer.value(&link), 1.0, "{}", peer.text);
    assert!(peer.value("rmb_peer_sent_total") >= calls, "{}", peer.text);
    assert!(
        peer.value("rmb_peer_received_total") >= calls,
        "{}",
        peer.text
    );
    // Round trips of requests answered without a resend; resent ones are counted apart.
    let timed = peer.value("rmb_peer_rpc_seconds_count") + peer.value("rmb_peer_resent_total");
    assert!(timed >= calls, "{}", peer.text);
    assert!(
        peer.samples
            .contains_key("rmb_peer_rejected_total{reason=\"bad_signature\"}")
    );

    // What a web page could send the peer's metrics port is refused.
    let (status, _) = get(&peer_metrics, "/metrics", "");
    assert_eq!(status, 200);
    let rebound = http(
        &peer_metrics,
        "GET /metrics HTTP/1.1\r\nHost: rebind.example:80\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(rebound.0, 421, "DNS rebinding: {}", rebound.1);
    let cross = get(&peer_metrics, "/metrics", "Origin: http://evil.example\r\n");
    assert_eq!(cross.0, 403, "cross-origin: {}", cross.1);
    let fetched = get(&peer_metrics, "/metrics", "Sec-Fetch-Site: cross-site\r\n");
    assert_eq!(fetched.0, 403, "cross-site fetch: {}", fetched.1);
    let post = http(
        &peer_metrics,
        &format!(
            "POST /metrics HTTP/1.1\r\nHost: {peer_metrics}\r\nContent-Type: application/json\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(post.0, 405, "POST: {}", post.1);
    let body = http(
        &peer_metrics,
        &format!(
            "GET /metrics HTTP/1.1\r\nHost: {peer_metrics}\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
        ),
    );
    assert_eq!(body.0, 413, "a body: {}", body.1);
    assert_eq!(get(&peer_metrics, "/", "").0, 404);

    // Every metric the dashboards and alert rules name is exported by a relay or a peer.
    let exported = |name: &str| [&relay, &remote, &peer].iter().any(|s| s.exports(name));
    let mut referenced = BTreeSet::new();
    let grafana = deploy_dir().join("grafana");
    for entry in std::fs::read_dir(&grafana).expect("deploy/grafana") {
        let path = entry.unwrap().path();
        let dashboard: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut queries = Vec::new();
        dashboard_queries(&dashboard, &mut queries);
        assert!(!queries.is_empty(), "{} has no queries", path.display());
        referenced.extend(queries.iter().flat_map(|q| metric_names(q)));
    }
    let rules_path = deploy_dir().join("prometheus/rmb-alerts.yml");
    let rules = std::fs::read_to_string(&rules_path).expect("alert rules");
    referenced.extend(metric_names(&rules));
    let missing: Vec<&String> = referenced.iter().filter(|n| !exported(n)).collect();
    assert!(
        missing.is_empty(),
        "named in deploy/ but not exported: {missing:?}"
    );
    assert!(referenced.len() >= 20, "{referenced:?}");
    check_rules_with_promtool(&rules_path);

    // A session that ends is counted in rmb-rs's evictions (the client went away).
    bob.peer.terminate();
    let after = scrape_until(&home.addr(), |s| s.value("relay_sessions") == 1.0);
    let cancelled = "relay_session_evictions_total{reason=\"cancelled\"}";
    assert!(after.value(cancelled) >= 1.0, "{}", after.text);
    assert_eq!(after.value("relay_worker_connections{worker=\"0\"}"), 1.0);
}

/// `promtool check rules`, when promtool is installed (Debian: package `prometheus`).
fn check_rules_with_promtool(path: &std::path::Path) {
    let out = match std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(path)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            eprintln!(
                "skipping promtool check rules: promtool not found ({e}); apt-get install prometheus provides it"
            );
            return;
        }
    };
    assert!(
        out.status.success(),
        "promtool check rules {}: {}{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
