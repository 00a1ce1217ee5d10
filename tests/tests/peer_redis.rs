//! The rmb-rs Redis JSON API of the real `rmb-peer` binary, as local apps see it.
//!
//! Apps here are raw Redis commands (LPUSH/BRPOP on each peer's own redis-server), the
//! relay and peers are the real binaries, twins live in the relay's embedded registry.
//! Every JSON document is checked key by key against rmb-rs-protocol §6.4.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rmb_identity::{Identity, KeyType};
use rmb_peer::redis_api::json::{decode_dat, encode_dat};
use rmb_proto::{Address, MessageKind};
use rmb_testsupport::peer_process::PeerProcess;
use rmb_testsupport::peer_process::resp::{Reply, Resp};
use rmb_testsupport::redis_server::RedisServer;
use rmb_testsupport::relay_client::{TestClient, request as relay_request};
use rmb_testsupport::relay_process::RelayProcess;
use serde_json::{Value, json};

/// Longest a test waits for any one response (a broken system fails, never hangs).
const WAIT_SECS: u64 = 20;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Registers the twin of `secret` (listing `relays`) on the embedded registry.
fn register(registry_url: &str, secret: &str, relays: &[String]) -> u32 {
    let identity = Identity::from_secret(secret, KeyType::Sr25519).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(rmb_testsupport::registry::register(
        registry_url,
        &identity,
        relays,
    ))
}

/// One twin: its Redis, its registered id and its running peer.
struct Node {
    twin: u32,
    peer: PeerProcess,
    _redis: RedisServer,
}

impl Node {
    fn start(secret: &str, relays: &[&RelayProcess], registry: &str, extra: &[&str]) -> Node {
        let domains: Vec<String> = relays.iter().map(|r| r.domain()).collect();
        let urls: Vec<String> = relays.iter().map(|r| r.ws_url()).collect();
        let twin = register(registry, secret, &domains);
        let redis = RedisServer::start();
        let peer = PeerProcess::start(secret, &redis.url(), &urls, registry, extra);
        Node {
            twin,
            peer,
            _redis: redis,
        }
    }
}

/// A service written against Redis only: `BRPOP msgbus.<cmd>`, reply on
/// `msgbus.system.reply`. It echoes `<name>:<payload>`; payload `fail` gets an error
/// reply (code 42), payload `break` a reply with invalid base64. Every request it
/// reads is also handed to the test.
struct Bot {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    seen: mpsc::Receiver<Value>,
}

impl Bot {
    fn start(redis_url: &str, cmd: &str, name: &'static str) -> Bot {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, seen) = mpsc::channel();
        let mut redis = Resp::connect(redis_url);
        let queue = format!("msgbus.{cmd}");
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                let Some(text) = redis.brpop(&queue, 1) else {
                    continue;
                };
                let req: Value = serde_json::from_str(&text).unwrap();
                let payload = decode_dat(req["dat"].as_str().unwrap()).unwrap();
                let mut reply = json!({
                    "ver": 1, "ref": req["ref"], "dat": "", "dst": req["src"],
                    "shm": "text/plain", "now": now(), "err": null,
                });
                match payload.as_slice() {
                    b"fail" => reply["err"] = json!({"code": 42, "message": "nope"}),
                    b"break" => reply["dat"] = json!("***"),
                    body => {
                        let mut out = format!("{name}:").into_bytes();
                        out.extend_from_slice(body);
                        reply["dat"] = json!(encode_dat(&out));
                    }
                }
                redis.lpush("msgbus.system.reply", &reply.to_string());
                let _ = tx.send(req);
            }
        });
        Bot {
            stop,
            thread: Some(thread),
            seen,
        }
    }

    fn next_request(&self) -> Value {
        self.seen
            .recv_timeout(Duration::from_secs(WAIT_SECS))
            .expect("the bot got no request")
    }
}

impl Drop for Bot {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A client request as rmb-rs documents it.
fn request(reference: &str, cmd: &str, payload: &[u8], dst: &[u32], ret: &str, exp: u64) -> Value {
    json!({
        "ver": 1, "ref": reference, "cmd": cmd, "exp": exp, "dat": encode_dat(payload),
        "tag": null, "dst": dst, "ret": ret, "shm": "text/plain", "now": now(),
    })
}

/// Pushes `req` to `msgbus.system.local` and waits for one response on `ret`.
fn call(redis: &mut Resp, req: &Value) -> Value {
    redis.lpush("msgbus.system.local", &req.to_string());
    let ret = req["ret"].as_str().unwrap();
    next_response(redis, ret)
}

fn next_response(redis: &mut Resp, ret: &str) -> Value {
    let text = redis
        .brpop(ret, WAIT_SECS)
        .unwrap_or_else(|| panic!("no response on {ret}"));
    serde_json::from_str(&text).unwrap()
}

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object().unwrap().keys().map(String::as_str).collect()
}

fn dat(v: &Value) -> Vec<u8> {
    decode_dat(v["dat"].as_str().unwrap()).unwrap()
}

/// A locally generated error (rmb-rs §8.3 shape) with `code`, whose message has `needle`.
fn assert_local_error(resp: &Value, reference: &str, code: u32, needle: &str) {
    assert_eq!(
        keys(resp),
        keys(&json!({"ver":0,"ref":0,"dat":0,"src":0,"shm":0,"now":0,"err":0}))
    );
    assert_eq!(resp["ref"], reference, "{resp}");
    assert_eq!(
        (&resp["dat"], &resp["src"], &resp["now"]),
        (&json!(""), &json!(""), &json!(0)),
        "{resp}"
    );
    assert_eq!(resp["shm"], Value::Null);
    assert_eq!(resp["err"]["code"], code, "{resp}");
    let message = resp["err"]["message"].as_str().unwrap();
    assert!(message.contains(needle), "{message:?} lacks {needle:?}");
}

#[test]
fn redis_apps_call_each_other_through_real_peers() {
    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let alice = Node::start("//Alice", &[&relay], &registry, &[]);
    let bob = Node::start("//Bob", &[&relay], &registry, &[]);
    let carol = Node::start("//Carol", &[&relay], &registry, &[]);
    let dave = register(&registry, "//Dave", &[relay.domain()]); // registered, never online
    let bob_bot = Bot::start(bob.peer.redis_url(), "echo", "bob");
    let _carol_bot = Bot::start(carol.peer.redis_url(), "echo", "carol");
    let mut app = alice.peer.redis();

    // One call, every field as §6.4 describes.
    let sent_at = now();
    let resp = call(
        &mut app,
        &request("r-1", "echo", b"hello", &[bob.twin], "ret-1", 30),
    );
    let seen = bob_bot.next_request();
    assert_eq!(
        keys(&seen),
        keys(
            &json!({"ver":0,"ref":0,"src":0,"cmd":0,"exp":0,"dat":0,"tag":0,"ret":0,"shm":0,"now":0})
        )
    );
    assert_eq!(seen["ver"], 1);
    let uid = seen["ref"].as_str().unwrap();
    assert_eq!(uid.len(), 36, "a UUIDv4 envelope uid: {uid}");
    assert_eq!(seen["src"], alice.twin.to_string());
    assert_eq!(seen["cmd"], "echo");
    let exp = seen["exp"].as_u64().unwrap();
    assert!((25..=30).contains(&exp), "exp {exp}");
    assert_eq!(dat(&seen), b"hello");
    assert_eq!(seen["tag"], Value::Null);
    assert_eq!(seen["ret"], "msgbus.system.reply");
    assert_eq!(seen["shm"], "text/plain");
    assert!(seen["now"].as_u64().unwrap().abs_diff(sent_at) <= 5);

    assert_eq!(
        keys(&resp),
        keys(&json!({"ver":0,"ref":0,"dat":0,"src":0,"shm":0,"now":0,"err":0}))
    );
    assert_eq!(resp["ver"], 1);
    assert_eq!(resp["ref"], "r-1");
    assert_eq!(dat(&resp), b"bob:hello");
    assert_eq!(resp["src"], bob.twin.to_string());
    assert_eq!(resp["shm"], "text/plain");
    assert!(resp["now"].as_u64().unwrap().abs_diff(sent_at) <= 5);
    assert_eq!(resp["err"], Value::Null);
    // A reliable peer keeps the route in the outbox entry (gone with the answer), not
    // in a backlog key as an at-most-once peer does.
    assert_eq!(
        app.ttl(&format!("msgbus.backlog.{uid}")),
        -2,
        "no backlog key"
    );
    assert_eq!(app.ttl(&format!("msgbus.outbox.{uid}")), -2, "answered");

    // Several destinations: one response each, told apart by src, same ref.
    app.lpush(
        "msgbus.system.local",
        &request("r-2", "echo", b"hi", &[bob.twin, carol.twin], "ret-2", 30).to_string(),
    );
    let mut got: Vec<(String, Vec<u8>)> = (0..2)
        .map(|_| {
            let r = next_response(&mut app, "ret-2");
            assert_eq!((&r["ref"], &r["err"]), (&json!("r-2"), &Value::Null));
            (r["src"].as_str().unwrap().to_string(), dat(&r))
        })
        .collect();
    got.sort();
    let mut want = vec![
        (bob.twin.to_string(), b"bob:hi".to_vec()),
        (carol.twin.to_string(), b"carol:hi".to_vec()),
    ];
    want.sort();
    assert_eq!(got, want);

    // A service's error reply, and a reply the service wrote wrongly.
    let resp = call(
        &mut app,
        &request("r-3", "echo", b"fail", &[bob.twin], "ret-3", 30),
    );
    assert_eq!(
        (&resp["src"], &resp["dat"]),
        (&json!(bob.twin.to_string()), &json!(""))
    );
    assert_eq!(resp["err"], json!({"code": 42, "message": "nope"}));
    let resp = call(
        &mut app,
        &request("r-4", "echo", b"break", &[bob.twin], "ret-4", 30),
    );
    assert_eq!(resp["src"], bob.twin.to_string());
    assert_eq!(resp["err"]["code"], 101, "{resp}");

    // rmb.version is answered by the remote peer itself.
    let resp = call(
        &mut app,
        &request("r-5", "rmb.version", b"", &[carol.twin], "ret-5", 30),
    );
    assert_eq!(resp["err"], Value::Null, "{resp}");
    assert_eq!(resp["shm"], "application/json");
    let version: Value = serde_json::from_slice(&dat(&resp)).unwrap();
    assert!(version.is_string(), "{version}");

    // Bad requests get an error on their ret instead of silence.
    let mut expired = request("e-1", "echo", b"x", &[bob.twin], "ret-e", 5);
    expired["now"] = json!(now() - 60);
    assert_local_error(&call(&mut app, &expired), "e-1", 102, "expired");
    let zero = request("e-2", "echo", b"x", &[bob.twin], "ret-e", 0);
    assert_local_error(&call(&mut app, &zero), "e-2", 102, "expired");
    let mut bad_base64 = request("e-3", "echo", b"x", &[bob.twin], "ret-e", 30);
    bad_base64["dat"] = json!("%%%");
    assert_local_error(&call(&mut app, &bad_base64), "e-3", 101, "base64");
    let no_dst = request("e-4", "echo", b"x", &[], "ret-e", 30);
    assert_local_error(&call(&mut app, &no_dst), "e-4", 101, "dst");
    let bad_shape = json!({"ver": 1, "ref": "e-5", "ret": "ret-e", "cmd": 7});
    assert_local_error(&call(&mut app, &bad_shape), "e-5", 101, "invalid request");
    let unknown = request("e-6", "echo", b"x", &[4242], "ret-e", 30);
    assert_local_error(&call(&mut app, &unknown), "e-6", 103, "4242");

    // Not JSON at all: nowhere to answer, so it is counted (and logged).
    app.lpush("msgbus.system.local", "{this is not json");
    let deadline = std::time::Instant::now() + Duration::from_secs(WAIT_SECS);
    loop {
        let status = alice.peer.status().expect("status key");
        if status["redis_api"]["requests_unreadable"] == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not counted: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A relay's own error (fail-fast to an offline twin) arrives with src "0", code 0.
    let mut fail_fast = request("f-1", "echo", b"x", &[dave], "ret-f", 30);
    fail_fast["tag"] = json!("fail-fast");
    let resp = call(&mut app, &fail_fast);
    assert_eq!(
        (&resp["src"], &resp["ref"]),
        (&json!("0"), &json!("f-1")),
        "{resp}"
    );
    assert_eq!(resp["err"]["code"], 0, "{resp}");

    // Nobody serves the command: an error at the request's expiry, naming the twin.
    let delivered =
        |node: &Node| node.peer.status().unwrap()["redis_api"]["requests_delivered"].as_u64();
    std::thread::sleep(Duration::from_millis(1200)); // a fresh status key
    let before = delivered(&bob);
    let resp = call(
        &mut app,
        &request("t-1", "nobody.home", b"x", &[bob.twin], "ret-t", 3),
    );
    assert_local_error(
        &resp,
        "t-1",
        102,
        &format!("no response from twin {}", bob.twin),
    );
    // It was delivered (its list expires with it: issue #12 item 4).
    assert_eq!(delivered(&bob), before.map(|n| n + 1), "it was delivered");
    assert_eq!(
        bob.peer.redis().llen("msgbus.nobody.home"),
        0,
        "expired with it"
    );
}

#[test]
fn calls_survive_losing_one_of_two_relays() {
    let home = RelayProcess::start(&[]);
    let registry = home.http_url();
    let mut r1 = RelayProcess::start(&["--registry", &registry]);
    let r2 = RelayProcess::start(&["--registry", &registry]);
    let alice = Node::start("//Alice", &[&r1, &r2], &registry, &[]);
    let bob = Node::start("//Bob", &[&r1, &r2], &registry, &[]);
    let _bot = Bot::start(bob.peer.redis_url(), "echo", "bob");
    let mut app = alice.peer.redis();

    for i in 0..3 {
        let resp = call(
            &mut app,
            &request(&format!("a-{i}"), "echo", b"up", &[bob.twin], "ret", 15),
        );
        assert_eq!(
            (dat(&resp), &resp["err"]),
            (b"bob:up".to_vec(), &Value::Null)
        );
    }
    r1.kill();
    for i in 0..5 {
        let resp = call(
            &mut app,
            &request(&format!("b-{i}"), "echo", b"down", &[bob.twin], "ret", 15),
        );
        assert_eq!(resp["ref"], format!("b-{i}"));
        assert_eq!(
            (dat(&resp), &resp["err"]),
            (b"bob:down".to_vec(), &Value::Null),
            "{resp}"
        );
    }
}

#[test]
fn requests_queued_while_a_peer_is_down_are_answered_after_it_restarts() {
    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let alice = Node::start("//Alice", &[&relay], &registry, &[]);
    let mut bob = Node::start("//Bob", &[&relay], &registry, &[]);
    let _bot = Bot::start(bob.peer.redis_url(), "echo", "bob");
    let mut app = alice.peer.redis();
    let resp = call(
        &mut app,
        &request("up", "echo", b"1", &[bob.twin], "ret", 30),
    );
    assert_eq!(dat(&resp), b"bob:1");

    // A graceful stop exits cleanly and removes the status key at once.
    let status = bob.peer.terminate().expect("bob's peer was running");
    assert!(status.success(), "exit status {status}");
    assert_eq!(bob.peer.status(), None);

    for i in 0..5 {
        let req = request(
            &format!("q-{i}"),
            "echo",
            format!("m{i}").as_bytes(),
            &[bob.twin],
            "ret",
            60,
        );
        app.lpush("msgbus.system.local", &req.to_string());
    }
    bob.peer.restart();
    let mut answers: Vec<String> = (0..5)
        .map(|_| {
            let r = next_response(&mut app, "ret");
            assert_eq!(r["err"], Value::Null, "{r}");
            String::from_utf8(dat(&r)).unwrap()
        })
        .collect();
    answers.sort();
    assert_eq!(answers, ["bob:m0", "bob:m1", "bob:m2", "bob:m3", "bob:m4"]);
}

/// The keys of the peer's Redis matching `pattern`.
fn keys_matching(peer: &PeerProcess, pattern: &str) -> Vec<String> {
    match peer.redis().cmd(&[b"KEYS", pattern.as_bytes()]) {
        Reply::Array(items) => items
            .iter()
            .map(|k| String::from_utf8(k.bytes().unwrap().to_vec()).unwrap())
            .collect(),
        other => panic!("KEYS answered {other:?}"),
    }
}

#[test]
fn reliable_peers_keep_delivery_records_and_at_most_once_peers_none() {
    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let alice = Node::start("//Alice", &[&relay], &registry, &[]);
    let bob = Node::start("//Bob", &[&relay], &registry, &["--at-most-once"]);
    let _alice_bot = Bot::start(alice.peer.redis_url(), "echo", "alice");
    let _bob_bot = Bot::start(bob.peer.redis_url(), "echo", "bob");

    // Reliable alice → at-most-once bob: answered; alice's outbox entry is gone with
    // the answer, bob marks nothing.
    let resp = call(
        &mut alice.peer.redis(),
        &request("a-1", "echo", b"1", &[bob.twin], "ret", 30),
    );
    assert_eq!(dat(&resp), b"bob:1", "{resp}");
    assert_eq!(
        keys_matching(&alice.peer, "msgbus.outbox.*"),
        Vec::<String>::new()
    );
    assert_eq!(
        keys_matching(&bob.peer, "msgbus.seen.*"),
        Vec::<String>::new()
    );

    // Both Redis forget the peers' scripts (as after `SCRIPT FLUSH`): the peers load
    // them again and deliver.
    for node in [&alice, &bob] {
        node.peer.redis().cmd(&[b"SCRIPT", b"FLUSH"]);
    }

    // At-most-once bob → reliable alice: alice marks the request as seen and keeps the
    // signed reply with it (what a resend of it would get); bob keeps no outbox.
    let resp = call(
        &mut bob.peer.redis(),
        &request("b-1", "echo", b"2", &[alice.twin], "ret", 30),
    );
    assert_eq!(dat(&resp), b"alice:2", "{resp}");
    assert_eq!(
        keys_matching(&bob.peer, "msgbus.outbox.*"),
        Vec::<String>::new()
    );
    // Bob routes answers with a backlog key, as rmb-rs, until the request expires.
    let backlog = keys_matching(&bob.peer, "msgbus.backlog.*");
    assert_eq!(backlog.len(), 1, "{backlog:?}");
    let ttl = bob.peer.redis().ttl(&backlog[0]);
    assert!((1..=30).contains(&ttl), "backlog ttl {ttl}");
    let seen = keys_matching(&alice.peer, "msgbus.seen.*");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0].starts_with(&format!("msgbus.seen.{}.", bob.twin)),
        "{seen:?}"
    );
    // The reply is stored once the service answered (the pump records it while it
    // sends it, so the answer can reach bob first).
    let reply = stored_reply(&alice.peer, &seen[0]);
    let env = rmb_proto::Envelope::decode_limited(&reply, 1 << 20).expect("a stored envelope");
    assert_eq!(env.kind(), rmb_proto::MessageKind::Response);
    assert!(
        alice.peer.redis().ttl(&seen[0]) > 0,
        "it expires with the request"
    );
    for node in [&alice, &bob] {
        let status = node.peer.status().unwrap();
        assert_eq!(status["awaiting"], 0, "{status}");
    }
}

/// The reply stored in the seen marker `key`, once the reply pump has written it.
fn stored_reply(peer: &PeerProcess, key: &str) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(WAIT_SECS);
    loop {
        let reply = peer.redis().get(key).unwrap_or_default();
        if !reply.is_empty() || Instant::now() > deadline {
            return reply;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_repeat_the_memory_cannot_answer_is_answered_from_the_redis_record() {
    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    // No reply kept in memory: only the peer's Redis record can answer a repeat.
    let bob = Node::start("//Bob", &[&relay], &registry, &["--reply-cache-mb", "0"]);
    let bot = Bot::start(bob.peer.redis_url(), "test.echo", "bob");
    let eve = register(&registry, "//Eve", &[relay.domain()]);
    let identity = Identity::from_secret("//Eve", KeyType::Sr25519).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut client = TestClient::connect(&relay.ws_url(), &identity, eve, None).await;
        let env = relay_request(&identity, Address::twin(eve), bob.twin, "u-1", b"x", 60);
        client.send(&env).await;
        let wait = Duration::from_secs(WAIT_SECS);
        let first = client.recv(wait).await.expect("an answer");
        assert_eq!(first.uid, "u-1");
        assert_eq!(first.kind(), MessageKind::Response);
        // The reply is sent while it is recorded: resend once the record exists (a
        // real resend waits a retransmission timeout, at least a second).
        let marker = format!("msgbus.seen.{eve}.u-1");
        assert!(
            !stored_reply(&bob.peer, &marker).is_empty(),
            "the reply is recorded"
        );
        // The same request again (a resend): the same answer, byte for byte.
        client.send(&env).await;
        let again = client.recv(wait).await.expect("the answer again");
        assert_eq!(again, first);
    });
    bot.next_request();
    assert!(
        bot.seen.recv_timeout(Duration::from_millis(1500)).is_err(),
        "the service got the request once"
    );
    let status = bob.peer.status().unwrap();
    assert_eq!(status["replayed"], 1, "{status}");
}

/// `--threads 1` (one runtime thread, for machines shared with other busy services)
/// still relays, federates and answers: relays and peers each on one thread, calls
/// across two relays. An out-of-range count is refused at start.
#[test]
fn relays_and_peers_on_one_thread_each_answer_calls_across_federation() {
    let home = RelayProcess::start(&["--threads", "1", "--federation-http"]);
    let registry = home.http_url();
    let other = RelayProcess::start(&[
        "--threads",
        "1",
        "--federation-http",
        "--registry",
        &registry,
    ]);
    let alice = Node::start("//Alice", &[&home], &registry, &["--threads", "1"]);
    let bob = Node::start("//Bob", &[&other], &registry, &["--threads", "1"]);
    let _bot = Bot::start(bob.peer.redis_url(), "echo", "bob");
    let mut app = alice.peer.redis();
    for i in 0..3 {
        let resp = call(
            &mut app,
            &request(&format!("t-{i}"), "echo", b"one", &[bob.twin], "ret", 15),
        );
        assert_eq!(
            (dat(&resp), &resp["err"]),
            (b"bob:one".to_vec(), &Value::Null),
            "{resp}"
        );
    }

    for binary in ["rmb-relay", "rmb-peer"] {
        let out =
            std::process::Command::new(rmb_testsupport::relay_process::binaries().join(binary))
                .args(["--threads", "5000"])
                .output()
                .unwrap();
        assert!(!out.status.success(), "{binary} took --threads 5000");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--threads"), "{binary}: {stderr}");
    }
}
