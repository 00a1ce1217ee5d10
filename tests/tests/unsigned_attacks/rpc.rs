//! Unsigned RPCs (docs/protocol.md §3.4, the RPC binding) at the user's layer: real
//! `rmb-peer`s driven through their Redis API, an echo bot behind each, two federated
//! relays and [`EvilRelay`]s in front of peers. Why: an RPC without a signature must be
//! exactly as hard to forge, move, re-time or replay as a signed one, and must go
//! unsigned only between peers whose relays route it.
//!
//! - the genuine flow, both schemes: after the first request (signed while the probe is
//!   out) requests and answers go unsigned, the status counters say so, every request
//!   is answered once; behind a relay that does not advertise `unsigned-rpc` (or to a
//!   peer run with `--no-unsigned-rpc`) everything stays signed and calls still work;
//! - a relay in the middle rewriting a captured unsigned request or answer (reflected,
//!   re-sourced to a twin publishing the same key, re-timed, other tags, schema,
//!   sessions, uid, command, kind) gets nothing run and nothing answered, each refusal
//!   counted; replaying it exactly runs nothing twice and answers from the reply cache;
//! - a stranger with a twin of her own posting unsigned RPCs in another twin's name to a
//!   relay's `POST /`: dropped unanswered, and not charged to that twin's budget.

use super::evil_relay::*;
use super::topic_pushes::published_key;
use super::*;
use rmb_proto::{Binding, FAIL_FAST_TAG};

/// Calls per genuine flow.
const CALLS: usize = 5;

/// A twin served by a real `rmb-peer` (Redis API) publishing a `scheme` key, reached
/// through `via`, with an echo bot on `msgbus.echo`.
struct RpcPeer {
    twin: u32,
    secret: String,
    peer: PeerProcess,
    bot: EchoBot,
    _redis: RedisServer,
}

impl RpcPeer {
    async fn start(
        registry: &str,
        home: &RelayProcess,
        via: &str,
        scheme: E2eScheme,
        extra: &[&str],
    ) -> RpcPeer {
        let secret = fresh_mnemonic();
        let identity = Identity::from_secret(&secret, KeyType::Sr25519).unwrap();
        let pk = identity.e2e_public_key(scheme);
        let twin = publish(registry, &identity, &home.domain(), pk).await;
        let redis = RedisServer::start();
        let mut flags = vec!["--no-update", "--e2e", scheme.as_str()];
        flags.extend_from_slice(extra);
        let relays = [via.to_string()];
        let peer = tokio::task::block_in_place(|| {
            PeerProcess::start(&secret, &redis.url(), &relays, registry, &flags)
        });
        let bot = EchoBot::start(peer.redis_url(), "echo");
        RpcPeer {
            twin,
            secret,
            peer,
            bot,
            _redis: redis,
        }
    }

    /// An app's `echo` call to `to` (`r` its reference); the answer JSON.
    fn call(&self, to: u32, r: &str) -> Value {
        tokio::task::block_in_place(|| {
            let mut redis = self.peer.redis();
            let ret = format!("ret-{r}");
            let request = json!({
                "ver": 1, "ref": r, "cmd": "echo", "exp": 30, "dat": base64_of(r.as_bytes()),
                "tag": null, "dst": [to], "ret": ret, "shm": "text/plain", "now": now(),
            });
            redis.lpush("msgbus.system.local", &request.to_string());
            let text = redis
                .brpop(&ret, 30)
                .unwrap_or_else(|| panic!("no answer to {r}"));
            let answer: Value = serde_json::from_str(&text).unwrap();
            assert!(answer["err"].is_null(), "{r}: {answer}");
            assert_eq!(answer["dat"], base64_of(r.as_bytes()), "{r}: {answer}");
            answer
        })
    }

    /// Answers to the call `r` still queued for its app (after the one it took).
    fn extra_answers(&self, r: &str) -> i64 {
        tokio::task::block_in_place(|| self.peer.redis().llen(&format!("ret-{r}")))
    }

    fn status(&self) -> Value {
        tokio::task::block_in_place(|| self.peer.status()).expect("status key")
    }

    /// The status once what happened so far is in it (the peer writes it every second).
    async fn settled_status(&self) -> Value {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        self.status()
    }

    /// Polls the status until `done` (or [`WAIT`] passed); the last one.
    async fn wait_status(&self, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let status = self.status();
            if done(&status) || Instant::now() > deadline {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A status counter (0 when absent).
fn count(status: &Value, key: &str) -> u64 {
    status[key].as_u64().unwrap_or(0)
}

/// All refusals of a status, whatever the reason.
fn refused(status: &Value) -> u64 {
    status["rejected_by"]
        .as_object()
        .map_or(0, |m| m.values().filter_map(Value::as_u64).sum())
}

fn is_request(env: &Envelope, command: &str) -> bool {
    matches!(&env.message, Some(Message::Request(r)) if r.command == command)
}

fn is_response(env: &Envelope) -> bool {
    matches!(env.message, Some(Message::Response(_)))
}

/// The capabilities `prober` read in the probe answer that went up through `evil` (the
/// prober's secret opens it: this is what the prober decided on).
fn probe_answer(evil: &EvilRelay, prober: &RpcPeer, answerer: &[u8], scheme: E2eScheme) -> Value {
    let answers = evil.seen(Dir::Up, |e| {
        is_response(e) && e.uid.starts_with(rmb_peer::core::rmb_twins::PROBE_PREFIX)
    });
    assert_eq!(answers.len(), 1, "one probe answered");
    let Some(Payload::Cipher(cipher)) = &answers[0].payload else {
        panic!("the probe answer is not encrypted");
    };
    let identity = Identity::from_secret(&prober.secret, KeyType::Sr25519).unwrap();
    let plain = match answers[0].signature {
        Some(_) => identity.e2e().open(scheme, Some(answerer), cipher),
        None => {
            let data = answers[0].binding_data(Binding::Rpc);
            identity.e2e().open_from(scheme, answerer, cipher, &data)
        }
    };
    serde_json::from_slice(&plain.expect("the prober opens its probe answer")).unwrap()
}

/// Waits until a probe answer went up through `evil`.
async fn wait_probe_answered(evil: &EvilRelay) {
    let deadline = Instant::now() + WAIT;
    while evil
        .seen(Dir::Up, |e| {
            is_response(e) && e.uid.starts_with(rmb_peer::core::rmb_twins::PROBE_PREFIX)
        })
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the probe was not answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// Item 1. Alice (relay 1) calls Bob's echo bot (relay 2, reached through the evil
/// relay, which passes on relay 2's capabilities or, `pass_capabilities` false, hides
/// them) [`CALLS`] times. With them, Bob's probe answer lists `unsigned-rpc`, and after
/// the first request (signed while the probe is out) requests and answers go unsigned,
/// as both peers' counters say; without them, everything is signed. Each call is
/// answered exactly once and runs the bot once.
async fn genuine_flow(scheme: E2eScheme, pass_capabilities: bool) {
    let r1 = RelayProcess::start(&["--federation-http"]);
    let registry = r1.http_url();
    let r2 = RelayProcess::start(&["--federation-http", "--registry", &registry]);
    let evil = EvilRelay::start_with(&r2, &["echo"], pass_capabilities).await;
    let alice = RpcPeer::start(&registry, &r1, &r1.ws_url(), scheme, &[]).await;
    let bob = RpcPeer::start(&registry, &r2, &evil.url, scheme, &[]).await;
    let refs: Vec<String> = (0..CALLS).map(|i| format!("genuine-{i}")).collect();
    alice.call(bob.twin, &refs[0]);
    // The probe went with the first call; its answer reaches Alice about when the
    // call's does (under load a little later: the next request then goes signed too).
    wait_probe_answered(&evil).await;
    for r in &refs[1..] {
        alice.call(bob.twin, r);
    }
    let requests = evil.seen(Dir::Down, |e| is_request(e, "echo"));
    let uids: Vec<&str> = requests.iter().map(|e| e.uid.as_str()).collect();
    let answers = evil.seen(Dir::Up, |e| {
        is_response(e) && uids.contains(&e.uid.as_str())
    });
    let signed =
        |envs: &[Envelope]| -> Vec<bool> { envs.iter().map(|e| e.signature.is_some()).collect() };
    let bob_pk = published_key(&registry, bob.twin).await;
    let capabilities = probe_answer(&evil, &alice, &bob_pk, scheme)["capabilities"].clone();
    // Requests go signed until the probe's answer is in (at least the first one).
    let signed_first = signed(&requests).iter().take_while(|s| **s).count();
    let expected_unsigned = if pass_capabilities {
        CALLS.saturating_sub(signed_first)
    } else {
        0
    };
    // Once the counters show every call (the peers write their status every second).
    let n = CALLS as u64;
    let alice_status = alice
        .wait_status(|s| count(s, "received") >= n && count(s, "sent") >= n)
        .await;
    let bob_status = bob
        .wait_status(|s| count(s, "received") >= n && count(s, "sent") >= n)
        .await;
    tokio::time::sleep(QUIET).await;
    let extra: i64 = refs.iter().map(|r| alice.extra_answers(r)).sum();
    eprintln!(
        "{scheme}, capabilities passed on: {pass_capabilities}: probe answer lists \
         {capabilities}; requests signed {:?}; answers signed {:?}; Alice {alice_status}; \
         Bob {bob_status}",
        signed(&requests),
        signed(&answers)
    );
    let lists = capabilities
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c == "unsigned-rpc");
    assert_eq!(lists, pass_capabilities, "{scheme}: {capabilities}");
    assert_eq!(requests.len(), CALLS, "{scheme}: one envelope per request");
    assert_eq!(answers.len(), CALLS, "{scheme}: one answer per request");
    let mut expected = vec![!pass_capabilities; CALLS];
    expected[..signed_first].fill(true);
    if pass_capabilities {
        assert!(signed_first <= 2, "{scheme}: the probe answer came late");
    }
    assert_eq!(signed(&requests), expected, "{scheme}: requests signed");
    assert_eq!(signed(&answers), expected, "{scheme}: answers signed");
    assert_eq!(bob.bot.runs(), CALLS, "{scheme}: each request ran once");
    assert_eq!(extra, 0, "{scheme}: each request answered once");
    for (who, status, sent, received) in [
        ("Alice", &alice_status, "sent_unsigned", "received_unsigned"),
        ("Bob", &bob_status, "received_unsigned", "sent_unsigned"),
    ] {
        assert_eq!(
            (count(status, sent), count(status, received)),
            (expected_unsigned as u64, expected_unsigned as u64),
            "{scheme} {who}: {status}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_genuine_x25519_calls_go_unsigned_after_the_probe() {
    genuine_flow(E2eScheme::X25519, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_genuine_secp256k1_calls_go_unsigned_after_the_probe() {
    genuine_flow(E2eScheme::Secp256k1, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_behind_a_relay_not_advertising_unsigned_rpc_everything_is_signed() {
    genuine_flow(E2eScheme::X25519, false).await;
}

/// `env` changed by `change`.
fn altered(env: &Envelope, change: impl FnOnce(&mut Envelope)) -> Envelope {
    let mut env = env.clone();
    change(&mut env);
    env
}

/// The rewrites a relay in the middle may try on an unsigned RPC envelope (request or
/// answer) between `from` and `to`; `mallory` publishes `from`'s key.
fn rewrites(env: &Envelope, from: u32, to: u32, mallory: u32) -> Vec<(&'static str, Envelope)> {
    vec![
        (
            "re-sourced to Mallory",
            resourced(env, Address::twin(mallory)),
        ),
        ("re-timed", altered(env, |e| e.timestamp += 5)),
        ("longer-lived", altered(env, |e| e.expiration += 60)),
        (
            "tagged fail-fast",
            altered(env, |e| e.tags = Some(FAIL_FAST_TAG.into())),
        ),
        (
            "another schema",
            altered(env, |e| e.schema = Some("application/json".into())),
        ),
        (
            "another destination session",
            altered(env, |e| e.destination = Some(Address::session(to, "other"))),
        ),
        (
            "another source session",
            altered(env, |e| e.source = Some(Address::session(from, "other"))),
        ),
        ("another uid", altered(env, |e| e.uid.push('x'))),
        (
            "a deprecated field added",
            altered(env, |e| e.federation = Some("x".into())),
        ),
        (
            "a bogus signature",
            altered(env, |e| e.signature = Some(vec![b's'; 65])),
        ),
    ]
}

/// Waits until `peer` counted `n` more refusals than `before` did; the status.
async fn wait_refused(peer: &RpcPeer, before: &Value, n: u64) -> Value {
    peer.wait_status(|s| refused(s) >= refused(before) + n)
        .await
}

/// Item 2, for one scheme. Alice (relay 1) and Bob (relay 2) each reach their relay
/// through an evil relay; Mallory publishes Alice's key. Alice calls Bob twice; the
/// second request and its answer go unsigned and are captured. Then the relays in the
/// middle deliver rewritten copies of both (and reflect each back to its sender), and
/// finally replay both as they were: nothing runs again, nothing is answered (no error
/// envelope leaves Bob), each rewrite is counted as a refusal, and the replays are
/// answered from the reply cache and dropped as duplicates by Alice.
async fn relay_attacks(scheme: E2eScheme) {
    let r1 = RelayProcess::start(&["--federation-http"]);
    let registry = r1.http_url();
    let r2 = RelayProcess::start(&["--federation-http", "--registry", &registry]);
    let (evil_a, evil_b) = (
        EvilRelay::start(&r1, &["echo"]).await,
        EvilRelay::start(&r2, &["echo"]).await,
    );
    let alice = RpcPeer::start(&registry, &r1, &evil_a.url, scheme, &[]).await;
    let bob = RpcPeer::start(&registry, &r2, &evil_b.url, scheme, &[]).await;
    let mallory = Identity::from_secret(&fresh_mnemonic(), KeyType::Sr25519).unwrap();
    let alice_pk = published_key(&registry, alice.twin).await;
    let mallory_twin = publish(&registry, &mallory, &r2.domain(), alice_pk).await;

    // Calls until one goes unsigned (the first goes signed while the probe is out).
    let mut refs = Vec::new();
    let unsigned_request = || {
        evil_a
            .seen(Dir::Up, |e| is_request(e, "echo") && e.is_unsigned())
            .pop()
    };
    let request = loop {
        let r = format!("attacked-{}", refs.len());
        alice.call(bob.twin, &r);
        refs.push(r);
        if let Some(request) = unsigned_request() {
            break request;
        }
        assert!(refs.len() < 5, "{scheme}: no call went unsigned");
        wait_probe_answered(&evil_b).await;
    };
    let calls = refs.len();
    let answer = evil_b
        .seen(Dir::Up, |e| is_response(e) && e.uid == request.uid)
        .pop()
        .expect("Bob's answer went up");
    assert_eq!(
        (request.signature.is_none(), answer.signature.is_none()),
        (true, true),
        "{scheme}: the second call goes unsigned both ways"
    );
    assert_eq!(bob.bot.runs(), calls);
    let (alice0, bob0) = (alice.settled_status().await, bob.settled_status().await);

    // The request, rewritten, at Bob; and turned back at Alice.
    let mut forged = rewrites(&request, alice.twin, bob.twin, mallory_twin);
    forged.push((
        "another command",
        altered(&request, |e| {
            e.message = Some(Message::Request(Request {
                command: "echo.other".into(),
            }))
        }),
    ));
    forged.push((
        "a topic command",
        altered(&request, |e| {
            e.message = Some(Message::Request(Request {
                command: "rmb.topic.ack".into(),
            }))
        }),
    ));
    for (_, env) in &forged {
        evil_b.deliver(env);
    }
    // Also as another relay would forward it: to relay 2's `POST /` as Mallory's.
    let posted = federate(&r2, &resourced(&request, Address::twin(mallory_twin))).await;
    let n = forged.len() as u64 + 1;
    let bob1 = wait_refused(&bob, &bob0, n).await;
    evil_a.deliver(&reflected(&request));
    let alice1 = wait_refused(&alice, &alice0, 1).await;
    eprintln!(
        "{scheme}: {} rewrites of an unsigned request ({}) and one posted as Mallory's \
         (POST {posted}) at Bob: {}; reflected to Alice: {}",
        forged.len(),
        forged
            .iter()
            .map(|(w, _)| *w)
            .collect::<Vec<_>>()
            .join(", "),
        bob1["rejected_by"],
        alice1["rejected_by"]
    );
    assert_eq!(posted, 202, "{scheme}: relay 2 routes the re-sourced copy");
    assert_eq!(refused(&bob1) - refused(&bob0), n, "{scheme}: {bob1}");
    assert_eq!(
        count(&bob1, "unanswered") - count(&bob0, "unanswered"),
        n,
        "{scheme}: {bob1}"
    );
    assert_eq!(refused(&alice1) - refused(&alice0), 1, "{scheme}: {alice1}");
    assert_eq!(
        count(&alice1, "unanswered") - count(&alice0, "unanswered"),
        1,
        "{scheme}: {alice1}"
    );
    for (who, before, after) in [("Bob", &bob0, &bob1), ("Alice", &alice0, &alice1)] {
        let crypto = |s: &Value| s["rejected_by"]["crypto"].as_u64().unwrap_or(0);
        let others = refused(after) - refused(before) - (crypto(after) - crypto(before));
        // Only the copies with a deprecated field or a signature fail before decryption.
        let allowed = if who == "Bob" { 2 } else { 0 };
        assert_eq!(others, allowed, "{scheme} {who}: {after}");
        assert_eq!(
            count(after, "sent"),
            count(before, "sent"),
            "{scheme}: {who} answered"
        );
        assert_eq!(
            count(after, "received_unsigned"),
            count(before, "received_unsigned")
        );
    }
    assert_eq!(
        (bob.bot.runs(), alice.bot.runs()),
        (2, 0),
        "{scheme}: bots ran"
    );

    // The answer, rewritten, at Alice; and turned back at Bob.
    let (alice1, bob1) = (alice.settled_status().await, bob.settled_status().await);
    let mut forged = rewrites(&answer, bob.twin, alice.twin, mallory_twin);
    forged.push((
        "made a request",
        altered(&answer, |e| {
            e.message = Some(Message::Request(Request {
                command: "echo".into(),
            }))
        }),
    ));
    for (_, env) in &forged {
        evil_a.deliver(env);
    }
    evil_b.deliver(&reflected(&answer));
    let alice2 = wait_refused(&alice, &alice1, forged.len() as u64).await;
    let bob2 = wait_refused(&bob, &bob1, 1).await;
    eprintln!(
        "{scheme}: {} rewrites of an unsigned answer at Alice: {}; reflected to Bob: {}",
        forged.len(),
        alice2["rejected_by"],
        bob2["rejected_by"]
    );
    assert_eq!(
        refused(&alice2) - refused(&alice1),
        forged.len() as u64,
        "{scheme}: {alice2}"
    );
    assert_eq!(refused(&bob2) - refused(&bob1), 1, "{scheme}: {bob2}");
    assert_eq!(
        count(&bob2, "sent"),
        count(&bob1, "sent"),
        "{scheme}: {bob2}"
    );
    assert_eq!(
        count(&alice2, "sent"),
        count(&alice1, "sent"),
        "{scheme}: {alice2}"
    );

    // Replays, exactly as captured: the request five times at Bob, the answer five
    // times at Alice.
    for _ in 0..5 {
        evil_b.deliver(&request);
    }
    let bob3 = bob
        .wait_status(|s| {
            count(s, "replayed") + s["rejected_by"]["replay_limited"].as_u64().unwrap_or(0)
                >= count(&bob2, "replayed") + 5
        })
        .await;
    let replayed = count(&bob3, "replayed") - count(&bob2, "replayed");
    let alice3 = alice
        .wait_status(|s| count(s, "duplicates") >= count(&alice2, "duplicates") + replayed)
        .await;
    for _ in 0..5 {
        evil_a.deliver(&answer);
    }
    let alice4 = alice
        .wait_status(|s| count(s, "duplicates") >= count(&alice3, "duplicates") + 5)
        .await;
    tokio::time::sleep(QUIET).await;
    let extra: i64 = refs.iter().map(|r| alice.extra_answers(r)).sum();
    eprintln!(
        "{scheme}: the request replayed 5 times at Bob: answered again {replayed} times \
         ({}); the answer replayed 5 times at Alice: duplicates {} → {}; extra answers \
         to Alice's app: {extra}; bot runs {}",
        bob3["rejected_by"],
        count(&alice2, "duplicates"),
        count(&alice4, "duplicates"),
        bob.bot.runs()
    );
    assert!((1..=4).contains(&replayed), "{scheme}: {bob3}");
    assert_eq!(
        count(&alice3, "duplicates") - count(&alice2, "duplicates"),
        replayed,
        "{scheme}: the cached answers are dropped as repeats: {alice3}"
    );
    assert_eq!(
        count(&alice4, "duplicates") - count(&alice3, "duplicates"),
        5,
        "{scheme}: {alice4}"
    );
    assert_eq!(bob.bot.runs(), calls, "{scheme}: a replay ran the bot");
    assert_eq!(alice.bot.runs(), 0, "{scheme}");
    assert_eq!(extra, 0, "{scheme}: Alice's app got an answer twice");

    // And the genuine flow goes on, unsigned.
    let before = count(&alice.status(), "sent_unsigned");
    alice.call(bob.twin, "attacked-after");
    let after = alice
        .wait_status(|s| count(s, "sent_unsigned") > before)
        .await;
    assert_eq!(
        count(&after, "sent_unsigned"),
        before + 1,
        "{scheme}: {after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_relay_rewrites_and_replays_of_x25519_unsigned_rpcs_fail() {
    relay_attacks(E2eScheme::X25519).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_relay_rewrites_and_replays_of_secp256k1_unsigned_rpcs_fail() {
    relay_attacks(E2eScheme::Secp256k1).await;
}

/// Item 3 for RPCs. Eve, a twin of her own, seals `echo` requests to Bob's published key
/// under the RPC binding (a real ciphertext, made with her own key) claiming to come
/// from Alice, and posts [`FORGED`] of them to the `POST /` of the relay (`--limit 50`)
/// where Alice and Bob live. Bob opens none (Alice's key did not make them): each is
/// dropped, counted and unanswered, the bot never runs; and the relay charged them to
/// (Alice, Eve's address), not to Alice, whose own calls then go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_forged_by_a_stranger_in_another_twins_name_are_dropped_unanswered() {
    let relay = RelayProcess::start(&["--federation-http", "--limit", LIMIT, "100000000"]);
    let registry = relay.http_url();
    let scheme = E2eScheme::X25519;
    let alice = RpcPeer::start(&registry, &relay, &relay.ws_url(), scheme, &[]).await;
    let bob = RpcPeer::start(&registry, &relay, &relay.ws_url(), scheme, &[]).await;
    let eve = Identity::from_secret(&fresh_mnemonic(), KeyType::Sr25519).unwrap();
    publish(&registry, &eve, &relay.domain(), eve.e2e_public_key(scheme)).await;
    let bob_pk = published_key(&registry, bob.twin).await;
    let (alice0, bob0) = (alice.settled_status().await, bob.settled_status().await);

    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for i in 0..FORGED {
        let mut env = Envelope {
            uid: format!("forged-rpc-{i}"),
            expiration: 60,
            source: Some(Address::twin(alice.twin)),
            destination: Some(Address::twin(bob.twin)),
            message: Some(Message::Request(Request {
                command: "echo".into(),
            })),
            payload: Some(Payload::Plain(b"in Alice's name".to_vec())),
            ..Default::default()
        };
        eve.encrypt_envelope(&mut env, &bob_pk, Binding::Rpc, now())
            .unwrap();
        *statuses.entry(federate(&relay, &env).await).or_default() += 1;
    }
    let routed = statuses.get(&202).copied().unwrap_or(0) as u64;
    bob.wait_status(|s| refused(s) >= refused(&bob0) + routed)
        .await;
    tokio::time::sleep(QUIET).await;
    let (alice1, bob1) = (alice.status(), bob.status());
    eprintln!(
        "POST / answers {statuses:?}; Bob {bob1}; Alice received {} → {}",
        count(&alice0, "received"),
        count(&alice1, "received")
    );
    // Charged to (Alice, Eve's address) at `--limit 50`: the rest refused there.
    assert_eq!(
        statuses,
        [(202, 50), (429, FORGED - 50)].into(),
        "the relay's answers"
    );
    assert_eq!(refused(&bob1) - refused(&bob0), routed, "{bob1}");
    assert_eq!(
        count(&bob1, "unanswered") - count(&bob0, "unanswered"),
        routed,
        "{bob1}"
    );
    assert_eq!(
        count(&bob1, "sent"),
        count(&bob0, "sent"),
        "Bob answered: {bob1}"
    );
    assert_eq!(
        count(&bob1, "received_unsigned"),
        count(&bob0, "received_unsigned")
    );
    assert_eq!(bob.bot.runs(), 0, "a forgery reached the bot");
    assert_eq!(count(&alice1, "received"), count(&alice0, "received"));
    // Alice's own calls are charged to her own budget, untouched by the 150 forgeries.
    for i in 0..3 {
        alice.call(bob.twin, &format!("alice-after-{i}"));
    }
    assert_eq!(bob.bot.runs(), 3);
}

/// Item 4. Alice (default) and Bob (`--no-unsigned-rpc`) call each other through relays
/// that route unsigned RPCs, Alice's through the evil relay, which sees every envelope
/// between them: all requests and answers are signed both ways (Bob never offers nor
/// sends unsigned ones, and Alice sends unsigned only to twins that do), no status
/// counts an unsigned one, and every call is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_with_a_peer_run_with_no_unsigned_rpc_everything_is_signed() {
    let r1 = RelayProcess::start(&["--federation-http"]);
    let registry = r1.http_url();
    let r2 = RelayProcess::start(&["--federation-http", "--registry", &registry]);
    let evil = EvilRelay::start(&r1, &["echo"]).await;
    let scheme = E2eScheme::X25519;
    let alice = RpcPeer::start(&registry, &r1, &evil.url, scheme, &[]).await;
    let bob = RpcPeer::start(&registry, &r2, &r2.ws_url(), scheme, &["--no-unsigned-rpc"]).await;
    for i in 0..3 {
        alice.call(bob.twin, &format!("to-old-{i}"));
        bob.call(alice.twin, &format!("from-old-{i}"));
    }
    let between = |e: &Envelope| {
        let twins = [e.source_twin(), e.destination_twin()];
        twins.contains(&alice.twin) && twins.contains(&bob.twin)
    };
    let up = evil.seen(Dir::Up, between);
    let down = evil.seen(Dir::Down, between);
    let unsigned = up.iter().chain(&down).filter(|e| e.is_unsigned()).count();
    let (alice_status, bob_status) = (alice.settled_status().await, bob.settled_status().await);
    eprintln!(
        "{} envelopes up, {} down between Alice and Bob, unsigned {unsigned}; Alice \
         {alice_status}; Bob {bob_status}",
        up.len(),
        down.len()
    );
    assert!(up.len() >= 6 && down.len() >= 6, "the calls went by");
    assert_eq!(unsigned, 0);
    for status in [&alice_status, &bob_status] {
        assert_eq!(count(status, "sent_unsigned"), 0, "{status}");
        assert_eq!(count(status, "received_unsigned"), 0, "{status}");
    }
    assert_eq!((alice.bot.runs(), bob.bot.runs()), (3, 3));
}
