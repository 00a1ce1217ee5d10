//! A twin served by the real `rmb-peer` ([`Node`]) and a Redis-only echo service for it
//! ([`EchoBot`]), for tests that attack a peer from other twins.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use rmb_identity::{Identity, KeyType};
use serde_json::{Value, json};

use crate::peer_process::PeerProcess;
use crate::peer_process::resp::Resp;
use crate::redis_server::RedisServer;
use crate::relay_process::RelayProcess;

/// Registers the twin of `secret` (sr25519, listing `relays`) on the embedded registry
/// at `registry_url`; returns its id.
pub fn register(registry_url: &str, secret: &str, relays: &[String]) -> u32 {
    let identity = Identity::from_secret(secret, KeyType::Sr25519).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(crate::registry::register(registry_url, &identity, relays))
}

/// One twin: its Redis, its registered id and its running peer.
pub struct Node {
    pub twin: u32,
    pub peer: PeerProcess,
    pub redis: RedisServer,
}

impl Node {
    /// Registers `secret` listing `relay` and starts its peer with `extra` flags.
    pub fn start(secret: &str, relay: &RelayProcess, extra: &[&str]) -> Node {
        Self::start_on(secret, &relay.domain(), extra)
    }

    /// The same for the relay at `domain` (`127.0.0.1:<port>`, hosting the registry),
    /// for a relay the test starts and restarts itself.
    pub fn start_on(secret: &str, domain: &str, extra: &[&str]) -> Node {
        let registry = format!("http://{domain}");
        let twin = register(&registry, secret, &[domain.to_string()]);
        let redis = RedisServer::start();
        let ws = format!("ws://{domain}/");
        let peer = PeerProcess::start(secret, &redis.url(), &[ws], &registry, extra);
        Node { twin, peer, redis }
    }
}

/// A service on `msgbus.<cmd>` that answers every request with its own payload, counts
/// its runs and hands each request JSON to the test.
pub struct EchoBot {
    stop: Arc<AtomicBool>,
    runs: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
    pub seen: mpsc::Receiver<Value>,
}

impl EchoBot {
    /// Starts serving `cmd` on the Redis at `redis_url`.
    pub fn start(redis_url: &str, cmd: &str) -> EchoBot {
        let stop = Arc::new(AtomicBool::new(false));
        let runs = Arc::new(AtomicUsize::new(0));
        let (tx, seen) = mpsc::channel();
        let mut redis = Resp::connect(redis_url);
        let queue = format!("msgbus.{cmd}");
        let (flag, count) = (Arc::clone(&stop), Arc::clone(&runs));
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                let Some(text) = redis.brpop(&queue, 1) else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let req: Value = serde_json::from_str(&text).unwrap();
                let reply = json!({
                    "ver": 1, "ref": req["ref"], "dat": req["dat"], "dst": req["src"],
                    "shm": "text/plain", "now": crate::relay_client::now(), "err": null,
                });
                redis.lpush("msgbus.system.reply", &reply.to_string());
                let _ = tx.send(req);
            }
        });
        EchoBot {
            stop,
            runs,
            thread: Some(thread),
            seen,
        }
    }

    /// How many requests it has run.
    pub fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }

    /// Waits up to `wait` for the next request it runs.
    pub fn next_request(&self, wait: Duration) -> Option<Value> {
        self.seen.recv_timeout(wait).ok()
    }
}

impl Drop for EchoBot {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
