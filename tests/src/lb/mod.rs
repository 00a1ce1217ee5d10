//! Relay replicas behind a real load balancer: one `redis-server`, N `rmb-relay`
//! processes sharing it (`--redis`, one `--domain`), and HAProxy in front running the
//! documented `docs/examples/haproxy.cfg` ([`Cluster`]); real peers log in through the
//! balancer and name its address as their relay. [`traffic`] runs steady RPCs between
//! two of them and accounts for every request while replicas are killed.

pub mod haproxy;
pub mod traffic;

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::peer_node::Node;
use crate::peer_process::resp::Resp;
use crate::redis_server::{RedisServer, free_port};
use crate::relay_process::RelayProcess;
use haproxy::Haproxy;

/// Replicas of one relay behind HAProxy. Field order is drop order: the balancer first,
/// then the replicas, their Redis last.
pub struct Cluster {
    pub haproxy: Haproxy,
    pub replicas: Vec<RelayProcess>,
    pub redis: RedisServer,
    /// `127.0.0.1:<port>` of the balancer: the relay's `--domain`, what twins publish.
    pub domain: String,
    runtime: tokio::runtime::Runtime,
}

impl Cluster {
    /// Starts `replicas` relays (`--domain <balancer> --redis <url>
    /// --max-connections-per-ip 0 --registry-register-rate 0`, as the example says) and
    /// HAProxy in front of them.
    pub fn start(replicas: usize) -> Cluster {
        let redis = RedisServer::start();
        let port = free_port();
        let domain = format!("127.0.0.1:{port}");
        let url = redis.url();
        let flags = [
            "--domain",
            &domain,
            "--redis",
            &url,
            "--max-connections-per-ip",
            "0",
            "--registry-register-rate",
            "0",
        ];
        let replicas: Vec<RelayProcess> =
            (0..replicas).map(|_| RelayProcess::start(&flags)).collect();
        let servers: Vec<String> = replicas.iter().map(RelayProcess::domain).collect();
        let haproxy = Haproxy::start(&haproxy::example_config(), port, &servers);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        Cluster {
            haproxy,
            replicas,
            redis,
            domain,
            runtime,
        }
    }

    /// Registers `secret` through the balancer and starts its peer with
    /// `--relay ws://<balancer>/` and `--registry http://<balancer>`.
    pub fn node(&self, secret: &str) -> Node {
        Node::start_on(secret, &self.domain, &[])
    }

    /// Each replica's `relay_sessions` gauge (0 for a replica that is down).
    pub fn sessions(&self) -> Vec<u64> {
        self.replicas
            .iter()
            .map(|r| {
                if r.pid().is_none() {
                    return 0;
                }
                self.runtime
                    .block_on(r.metric("relay_sessions"))
                    .round()
                    .max(0.0) as u64
            })
            .collect()
    }

    /// Waits up to 30 s until the replicas hold `total` sessions together; returns the
    /// last reading.
    pub fn wait_sessions(&self, total: u64) -> Vec<u64> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = self.sessions();
            if now.iter().sum::<u64>() == total || Instant::now() >= deadline {
                return now;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts the peer of `secret` and returns it with the index of the replica its
    /// session landed on (the one whose session count grew).
    pub fn node_located(&self, secret: &str) -> (Node, usize) {
        let before = self.sessions();
        let node = self.node(secret);
        let after = self.wait_sessions(before.iter().sum::<u64>() + 1);
        let at = (0..after.len())
            .find(|&i| after[i] > before[i])
            .unwrap_or_else(|| {
                panic!("no replica gained {secret}'s session: {before:?} → {after:?}")
            });
        (node, at)
    }
}

/// A client request for `cmd` on `dst`, answered to `ret` (the peer's Redis API).
pub fn request(reference: &str, cmd: &str, dst: u32, payload: &str, ret: &str) -> Value {
    use base64::Engine as _;
    json!({
        "ver": 1, "ref": reference, "cmd": cmd, "exp": 120,
        "dat": base64::engine::general_purpose::STANDARD.encode(payload),
        "tag": null, "dst": [dst], "ret": ret, "shm": null,
        "now": crate::relay_client::now(),
    })
}

/// Sends one request from `from`'s peer to `cmd` on twin `to` and waits up to `wait`
/// for the response; returns its payload (decoded) or the error text.
pub fn call(
    from: &Node,
    to: u32,
    cmd: &str,
    payload: &str,
    wait: Duration,
) -> Result<String, String> {
    use base64::Engine as _;
    let ret = format!("lb.call.{}", free_port());
    let mut redis = Resp::connect(&from.redis.url());
    let req = request("1", cmd, to, payload, &ret);
    redis.lpush("msgbus.system.local", &req.to_string());
    let text = redis
        .brpop(&ret, wait.as_secs().max(1))
        .ok_or_else(|| format!("no response in {wait:?}"))?;
    let resp: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    if !resp["err"].is_null() {
        return Err(resp["err"].to_string());
    }
    let dat = resp["dat"].as_str().unwrap_or_default();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(dat)
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The peer's delivery counters that tell how a failover went, from its status key:
/// `resent` (requests sent again for want of an answer), `duplicates` (copies dropped),
/// `reconnects` (of its relay link); 0 when absent.
pub fn peer_counters(node: &Node) -> Vec<(&'static str, u64)> {
    let status = node.peer.status().unwrap_or_default();
    ["resent", "duplicates", "reconnects"]
        .into_iter()
        .map(|field| (field, find_u64(&status, field).unwrap_or(0)))
        .collect()
}

/// The first number called `key` anywhere in `v`.
fn find_u64(v: &Value, key: &str) -> Option<u64> {
    match v {
        Value::Object(map) => map
            .get(key)
            .and_then(Value::as_u64)
            .or_else(|| map.values().find_map(|v| find_u64(v, key))),
        Value::Array(items) => items.iter().find_map(|v| find_u64(v, key)),
        _ => None,
    }
}
