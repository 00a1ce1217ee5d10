//! Attacks on a real `rmb-peer` (issue #12, peer side), each made the way an attacker
//! would: hand-made signed envelopes from another registered twin over a raw relay
//! session, oversized requests from a local app, floods of commands, replays posted to
//! a relay's federation ingress. Each test fails on a peer without the matching fix.

use std::time::{Duration, Instant};

use rmb_identity::envelope::sign_envelope;
use rmb_identity::registry::RegistryChoice;
use rmb_identity::{Identity, KeyType};
use rmb_peer::redis_api::json::{decode_dat, encode_dat};
use rmb_peer::{CallError, Client, ClientOptions};
use rmb_proto::{Address, Envelope, Message, MessageKind, Payload, Request};
use rmb_testsupport::peer_node::{EchoBot, Node, register};
use rmb_testsupport::relay_client::{TestClient, now, request};
use rmb_testsupport::relay_process::RelayProcess;
use serde_json::Value;

/// Longest a test waits for any one answer (a broken system fails, never hangs).
const WAIT: Duration = Duration::from_secs(20);
/// The command the echo bots serve (the one `relay_client::request` uses).
const ECHO: &str = "test.echo";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

/// Eve: a registered twin with a raw relay session (no peer).
struct Attacker {
    identity: Identity,
    twin: u32,
}

impl Attacker {
    fn register(relay: &RelayProcess, secret: &str) -> Attacker {
        let twin = register(&relay.http_url(), secret, &[relay.domain()]);
        Attacker {
            identity: Identity::from_secret(secret, KeyType::Sr25519).unwrap(),
            twin,
        }
    }

    async fn connect(&self, relay: &RelayProcess) -> TestClient {
        TestClient::connect(&relay.ws_url(), &self.identity, self.twin, None).await
    }

    /// A signed request to `dst` for `cmd`, valid `ttl` s from now.
    fn request(&self, dst: u32, uid: &str, cmd: &str, body: &[u8], ttl: u64) -> Envelope {
        let mut env = request(
            &self.identity,
            Address::twin(self.twin),
            dst,
            uid,
            body,
            ttl,
        );
        env.message = Some(Message::Request(Request {
            command: cmd.into(),
        }));
        env.signature = None;
        sign_envelope(self.identity.signer(), &mut env);
        env
    }
}

/// The next envelope with `uid` (others are skipped), or a panic after [`WAIT`].
async fn answer_to(client: &mut TestClient, uid: &str) -> Envelope {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Some(env) = client.recv(Duration::from_millis(500)).await
            && env.uid == uid
        {
            return env;
        }
    }
    panic!("no answer to {uid}");
}

/// The (code, message) of an error envelope.
fn error_of(env: &Envelope) -> Option<(u32, &str)> {
    match &env.message {
        Some(Message::Error(e)) => Some((e.code, e.message.as_str())),
        _ => None,
    }
}

/// Waits (up to [`WAIT`]) until the status key shows `rejected_by[reason] >= n`.
fn wait_rejected(node: &Node, reason: &str, n: u64) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let status = node.peer.status().expect("status key");
        if status["rejected_by"][reason].as_u64().unwrap_or(0) >= n || Instant::now() > deadline {
            return status;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Item 1: a signed request whose deadline is absurdly far (expiration 1e16 s, or a
/// timestamp near u64::MAX) used to make the peer's `SET … EX` fail forever, wedging
/// delivery and SIGTERM. Now the sender gets an error envelope (code 102), the next
/// Flags that make our relay pass every deadline on, as an rmb-rs relay does (it checks
/// none), so that the peer's own checks are what is tested.
const RELAY_WITHOUT_DEADLINE_CHECK: [&str; 2] = ["--max-lifetime", "18446744073709551615"];

/// request is answered, and the peer stops at once on SIGTERM.
#[test]
fn a_far_deadline_is_refused_and_the_peer_keeps_working() {
    // Our relay refuses such deadlines itself (tests/tests/relay_memory.rs); an rmb-rs
    // relay checks none, so the peer must hold on its own: let everything through.
    let relay = RelayProcess::start(&RELAY_WITHOUT_DEADLINE_CHECK);
    let mut bob = Node::start("//Bob", &relay, &[]);
    let bot = EchoBot::start(bob.peer.redis_url(), ECHO);
    let eve = Attacker::register(&relay, "//Eve");
    let mut from_bob = 0;
    runtime().block_on(async {
        let mut client = eve.connect(&relay).await;
        // Expiration 1e16 s from now.
        let far = eve.request(bob.twin, "far-exp", ECHO, b"x", 10_000_000_000_000_000);
        // A timestamp near the top of u64 (signed as is, never stamped).
        let mut top = eve.request(bob.twin, "far-ts", ECHO, b"x", 60);
        top.timestamp = u64::MAX - 30;
        top.signature = None;
        sign_envelope(eve.identity.signer(), &mut top);
        for env in [&far, &top] {
            client.send(env).await;
            let answer = answer_to(&mut client, &env.uid).await;
            let (code, message) = error_of(&answer)
                .unwrap_or_else(|| panic!("{} got no error envelope: {answer:?}", env.uid));
            assert_eq!(answer.source_twin(), bob.twin, "refused by Bob: {answer:?}");
            from_bob += 1;
            assert_eq!(code, 102, "{message}");
            assert!(message.contains("ahead of now"), "{message}");
        }
        // The pipeline is not wedged: a normal request right after is answered.
        let ok = eve.request(bob.twin, "ok-1", ECHO, b"still here", 60);
        client.send(&ok).await;
        let answer = answer_to(&mut client, "ok-1").await;
        assert_eq!(answer.kind(), MessageKind::Response, "{answer:?}");
        assert_eq!(answer.payload, Some(Payload::Plain(b"still here".to_vec())));
    });
    assert_eq!(bot.runs(), 1, "only the normal request reached the service");
    let status = wait_rejected(&bob, "too_far", from_bob);
    assert_eq!(status["rejected_by"]["too_far"], 2, "{status}");
    assert!(status["rejected"].as_u64().unwrap() >= from_bob, "{status}");
    // SIGTERM ends it gracefully (the harness SIGKILLs it after 15 s: no success then).
    let exit = bob.peer.terminate().expect("it was running");
    assert!(exit.success(), "exit status {exit}");
}

/// `resp` is the size error (code 101, "too large") a local app gets for an oversized call.
fn assert_too_large(resp: &Value) {
    assert_eq!(resp["err"]["code"], 101, "{resp}");
    let message = resp["err"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("too large"), "{resp}");
}

/// A client request as rmb-rs documents it (`msgbus.system.local`).
fn local_request(reference: &str, cmd: &str, payload: &[u8], dst: u32, ret: &str) -> Value {
    serde_json::json!({
        "ver": 1, "ref": reference, "cmd": cmd, "exp": 60, "dat": encode_dat(payload),
        "tag": null, "dst": [dst], "ret": ret, "shm": "text/plain", "now": now(),
    })
}

/// Pushes `req` from a local app and waits for its response on its `ret`.
fn local_call(node: &Node, req: &Value) -> Value {
    let mut app = node.peer.redis();
    app.lpush("msgbus.system.local", &req.to_string());
    let ret = req["ret"].as_str().unwrap();
    let text = app
        .brpop(ret, WAIT.as_secs())
        .unwrap_or_else(|| panic!("no response on {ret}"));
    serde_json::from_str(&text).unwrap()
}

/// Item 7: a request from a local app too large for an envelope used to be sent anyway,
/// making the relay drop the peer's link again and again for the request's lifetime. Now
/// it is refused on its `ret` at once (payload over the limit up front; one that only
/// grows past it once encrypted and signed, when sealed), nothing is sent, the link
/// stays up and the next call works. A service reply too large for an envelope reaches
/// the caller as an error reply instead of being dropped with the link.
#[test]
fn oversized_requests_and_replies_are_refused_with_a_size_error() {
    let relay = RelayProcess::start(&[]);
    let alice = Node::start("//Alice", &relay, &[]);
    let bob = Node::start("//Bob", &relay, &[]);
    let _bot = EchoBot::start(bob.peer.redis_url(), ECHO);
    let _big = BigReplier::start(bob.peer.redis_url(), "big", LIMIT + 1024);

    // Over the limit as given: refused before anything is recorded or sent.
    let resp = local_call(
        &alice,
        &local_request("huge", ECHO, &vec![7; LIMIT + 1], bob.twin, "ret-huge"),
    );
    assert_too_large(&resp);
    // Just under the limit as given, over it once sealed (signature, addresses…).
    let resp = local_call(
        &alice,
        &local_request("edge", ECHO, &vec![7; LIMIT - 16], bob.twin, "ret-edge"),
    );
    assert_too_large(&resp);
    // The link did not flap: a normal call right after is answered.
    let resp = local_call(
        &alice,
        &local_request("ok", ECHO, b"hi", bob.twin, "ret-ok"),
    );
    assert!(resp["err"].is_null(), "{resp}");
    assert_eq!(decode_dat(resp["dat"].as_str().unwrap()).unwrap(), b"hi");
    let status = wait_rejected(&alice, "oversize", 2);
    assert_eq!(status["rejected_by"]["oversize"], 2, "{status}");
    assert_eq!(
        status["awaiting"], 0,
        "nothing kept for resending: {status}"
    );

    // A reply too large for an envelope: the caller gets an error reply saying so.
    let resp = local_call(
        &alice,
        &local_request("big", "big", b"x", bob.twin, "ret-big"),
    );
    assert_eq!(resp["err"]["code"], 101, "{resp}");
    assert!(
        resp["err"]["message"]
            .as_str()
            .unwrap()
            .contains("reply is too large"),
        "{resp}"
    );
    let status = wait_rejected(&bob, "oversize", 1);
    assert_eq!(status["rejected_by"]["oversize"], 1, "{status}");
    // Bob's link is still up: he still answers.
    let resp = local_call(
        &alice,
        &local_request("ok2", ECHO, b"hi", bob.twin, "ret-ok2"),
    );
    assert!(resp["err"].is_null(), "{resp}");
}

/// The relay envelope limit the peers check against.
const LIMIT: usize = rmb_proto::DEFAULT_MAX_ENVELOPE_SIZE;

/// A service on `msgbus.<cmd>` that answers with `size` bytes.
struct BigReplier {
    _bot: std::thread::JoinHandle<()>,
}

impl BigReplier {
    fn start(redis_url: &str, cmd: &str, size: usize) -> BigReplier {
        let mut redis = rmb_testsupport::peer_process::resp::Resp::connect(redis_url);
        let queue = format!("msgbus.{cmd}");
        let dat = encode_dat(&vec![1; size]);
        let bot = std::thread::spawn(move || {
            // One request is enough for the test; the thread ends with the process.
            while let Some(text) = redis.brpop(&queue, 60) {
                let req: Value = serde_json::from_str(&text).unwrap();
                let reply = serde_json::json!({
                    "ver": 1, "ref": req["ref"], "dat": dat, "dst": req["src"],
                    "shm": null, "now": now(), "err": null,
                });
                redis.lpush("msgbus.system.reply", &reply.to_string());
            }
        });
        BigReplier { _bot: bot }
    }
}

/// Item 7, direct client: a request too large for an envelope is a typed error at once
/// ([`CallError::TooLarge`]), and a handler's reply too large for one reaches the
/// caller as an error reply (code 101).
#[test]
fn the_direct_client_refuses_oversized_calls_and_replies() {
    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    register(&registry, "//Dave", &[relay.domain()]);
    let ferdie = register(&registry, "//Ferdie", &[relay.domain()]);
    runtime().block_on(async {
        let choice = RegistryChoice::Embedded {
            url: registry.clone(),
        };
        let options = |secret: &str, sid: &str| {
            ClientOptions::new(secret, sid, vec![relay.ws_url()], choice.clone())
        };
        let server = Client::connect(options("//Ferdie", "srv")).await.unwrap();
        server.serve("big", |_req| async move { Ok(vec![1; LIMIT + 1024]) });
        server.serve("echo", |req| async move { Ok(req.payload) });
        let caller = Client::connect(options("//Dave", "cli")).await.unwrap();
        let to = Address::session(ferdie, "srv");
        let wait = Duration::from_secs(10);

        let err = caller
            .call_address(to.clone(), "echo", vec![0; LIMIT + 1], wait)
            .await
            .unwrap_err();
        assert!(
            matches!(err, CallError::TooLarge { limit, .. } if limit == LIMIT),
            "{err:?}"
        );
        let err = caller
            .call_address(to.clone(), "big", b"x".to_vec(), wait)
            .await
            .unwrap_err();
        match &err {
            CallError::Remote { error, .. } => {
                assert_eq!(error.code, 101, "{err}");
                assert!(error.message.contains("reply is too large"), "{err}");
            }
            other => panic!("expected an error reply, got {other:?}"),
        }
        let ok = caller
            .call_address(to, "echo", b"fine".to_vec(), wait)
            .await
            .unwrap();
        assert_eq!(ok.payload, b"fine");
        assert_eq!(caller.status().rejected_by.get("oversize"), None);
        assert_eq!(server.status().rejected_by.get("oversize"), Some(&1));
    });
}

/// Item 4: every new command name another twin sends used to create a `msgbus.<cmd>`
/// list that never expires, with no bound on their number or size. Now each list
/// expires with its requests, holds a bounded number of bytes, and only so many
/// unserved commands may exist: past a bound the sender gets an error reply, and the
/// peer's Redis holds a bounded set of keys.
#[test]
fn command_queues_are_bounded_in_number_bytes_and_time() {
    let relay = RelayProcess::start(&[]);
    let flags = ["--max-commands", "6", "--max-command-queue-mb", "1"];
    let bob = Node::start("//Bob", &relay, &flags);
    let bot = EchoBot::start(bob.peer.redis_url(), ECHO);
    let eve = Attacker::register(&relay, "//Eve");
    runtime().block_on(async {
        let mut client = eve.connect(&relay).await;
        // A served command, used once: it keeps working whatever others do.
        client
            .send(&eve.request(bob.twin, "echo-1", ECHO, b"a", 60))
            .await;
        assert_eq!(
            answer_to(&mut client, "echo-1").await.kind(),
            MessageKind::Response
        );
        // Ten commands nobody serves: six fit (the echo one, consumed, counts as served
        // once the index is full), the rest are refused.
        for i in 0..10 {
            let uid = format!("flood-{i}");
            let env = eve.request(bob.twin, &uid, &format!("flood.{i}"), b"x", 60);
            client.send(&env).await;
            if i >= 6 {
                let answer = answer_to(&mut client, &uid).await;
                let (code, message) = error_of(&answer).expect("an error reply");
                assert_eq!(code, 500, "{message}");
                assert!(message.contains("too many commands"), "{message}");
            }
        }
        // Big payloads for one of them: past 1 MiB its queue is full.
        // 300 KiB, about 400 kB once base64 in the JSON document: two fit, not three.
        let big = vec![9u8; 300 << 10];
        for i in 0..3 {
            let uid = format!("big-{i}");
            client
                .send(&eve.request(bob.twin, &uid, "flood.0", &big, 60))
                .await;
            if i == 2 {
                let answer = answer_to(&mut client, &uid).await;
                let (code, message) = error_of(&answer).expect("an error reply");
                assert_eq!(code, 500, "{message}");
                assert!(message.contains("is full"), "{message}");
            }
        }
        // The served command still works, though the index is full.
        client
            .send(&eve.request(bob.twin, "echo-2", ECHO, b"b", 60))
            .await;
        assert_eq!(
            answer_to(&mut client, "echo-2").await.kind(),
            MessageKind::Response
        );
    });
    assert_eq!(bot.runs(), 2);
    let mut redis = bob.peer.redis();
    let lists = scan(&mut redis, "msgbus.flood.*");
    assert_eq!(lists.len(), 6, "{lists:?}");
    for list in &lists {
        let ttl = redis.ttl(list);
        assert!((1..=61).contains(&ttl), "{list} has TTL {ttl}");
    }
    assert_eq!(
        redis.llen("msgbus.flood.0"),
        3,
        "one small and two big requests"
    );
    let status = wait_rejected(&bob, "command_limit", 5);
    assert_eq!(status["rejected_by"]["command_limit"], 5, "{status}");
}

/// Every key matching `pattern` (by SCAN).
fn scan(redis: &mut rmb_testsupport::peer_process::resp::Resp, pattern: &str) -> Vec<String> {
    use rmb_testsupport::peer_process::resp::Reply;
    let mut keys = Vec::new();
    let mut cursor = "0".to_string();
    loop {
        let reply = redis.cmd(&[b"SCAN", cursor.as_bytes(), b"MATCH", pattern.as_bytes()]);
        let Reply::Array(parts) = reply else {
            panic!("SCAN answered {reply:?}")
        };
        cursor = String::from_utf8(parts[0].bytes().unwrap().to_vec()).unwrap();
        if let Reply::Array(found) = &parts[1] {
            keys.extend(
                found
                    .iter()
                    .map(|k| String::from_utf8(k.bytes().unwrap().to_vec()).unwrap()),
            );
        }
        if cursor == "0" {
            return keys;
        }
    }
}

/// Item 8: a captured request posted again to a relay's federation ingress used to
/// make the peer send its cached reply again for every copy (a reflector). Now a few
/// repeats per request and minute are answered (a genuine sender's resends after a lost
/// reply), the rest are dropped and counted, and the service ran once.
#[test]
fn replayed_requests_are_not_reflected_without_bound() {
    let relay = RelayProcess::start(&[]);
    let bob = Node::start("//Bob", &relay, &[]);
    let bot = EchoBot::start(bob.peer.redis_url(), ECHO);
    let eve = Attacker::register(&relay, "//Eve");
    const REPLAYS: usize = 12;
    let replies = runtime().block_on(async {
        let mut client = eve.connect(&relay).await;
        let env = eve.request(bob.twin, "captured", ECHO, b"x", 120);
        client.send(&env).await;
        let first = answer_to(&mut client, "captured").await;
        assert_eq!(first.kind(), MessageKind::Response);
        let http = reqwest::Client::new();
        for _ in 0..REPLAYS {
            let response = http
                .post(format!("{}/", relay.http_url()))
                .body(env.to_bytes())
                .send()
                .await
                .unwrap();
            assert!(response.status().is_success(), "{}", response.status());
        }
        let mut replies = 0;
        while let Some(env) = client.recv(Duration::from_secs(3)).await {
            if env.uid == "captured" {
                replies += 1;
            }
        }
        replies
    });
    assert!(
        (1..=4).contains(&replies),
        "{replies} replies to {REPLAYS} replays"
    );
    assert_eq!(bot.runs(), 1, "the service ran once");
    let status = wait_rejected(&bob, "replay_limited", (REPLAYS - replies) as u64);
    assert_eq!(
        status["rejected_by"]["replay_limited"],
        (REPLAYS - replies) as u64,
        "{status}"
    );
    assert_eq!(status["replayed"], replies as u64, "{status}");
}

/// Item 9 (peer side): every refusal is counted by reason in `msgbus.system.status`
/// (the total used to stay 0 for refusals made outside the receive pipeline).
#[test]
fn refusals_are_counted_by_reason() {
    let relay = RelayProcess::start(&RELAY_WITHOUT_DEADLINE_CHECK);
    let bob = Node::start("//Bob", &relay, &[]);
    let _bot = EchoBot::start(bob.peer.redis_url(), ECHO);
    let eve = Attacker::register(&relay, "//Eve");
    runtime().block_on(async {
        let mut client = eve.connect(&relay).await;
        // A bad signature (the body changed after signing), five times: unanswered, it
        // proves nothing about who sent it.
        for i in 0..5 {
            let mut env = eve.request(bob.twin, &format!("sig-{i}"), ECHO, b"x", 60);
            env.payload = Some(Payload::Plain(b"tampered".to_vec()));
            client.send(&env).await;
        }
        // Addressed to Bob's twin in the envelope but meant for another (misaddressed
        // cannot pass a relay), so: a deadline too far, three times.
        for i in 0..3 {
            let env = eve.request(bob.twin, &format!("far-{i}"), ECHO, b"x", 1 << 40);
            client.send(&env).await;
            let _ = answer_to(&mut client, &env.uid).await;
        }
    });
    let status = wait_rejected(&bob, "bad_signature", 5);
    assert_eq!(status["rejected_by"]["bad_signature"], 5, "{status}");
    assert_eq!(status["unanswered"], 5, "{status}");
    let status = wait_rejected(&bob, "too_far", 3);
    assert_eq!(status["rejected_by"]["too_far"], 3, "{status}");
    assert_eq!(
        status["rejected"].as_u64().unwrap(),
        status["rejected_by"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum::<u64>(),
        "the total is the sum by reason: {status}"
    );
}

/// A twin registry that cannot be reached when `rmb-peer` starts is waited for, as an
/// unreachable relay is: the peer keeps retrying and is ready once the registry answers,
/// instead of exiting at once.
#[test]
fn a_peer_waits_for_a_registry_that_is_down_at_start() {
    let mut relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    register(&registry, "//Dave", &[relay.domain()]);
    relay.kill();
    let redis = rmb_testsupport::redis_server::RedisServer::start();
    let (redis_url, ws) = (redis.url(), relay.ws_url());
    let starting = std::thread::spawn({
        let registry = registry.clone();
        move || {
            rmb_testsupport::peer_process::PeerProcess::start(
                "//Dave",
                &redis_url,
                &[ws],
                &registry,
                &[],
            )
        }
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(!starting.is_finished(), "the peer gave up on the registry");
    relay.relaunch();
    let peer = starting
        .join()
        .expect("the peer became ready once the registry answered");
    assert!(peer.status().is_some());
}
