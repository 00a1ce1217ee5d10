//! Timed resends between peers that publish secp256k1 keys (the default on tfchain, as
//! rmb-rs's), issue #33: such a key does not tell an rmb peer from an rmb-rs one, so a
//! peer asks each destination once, in the background, and only a signed answer from
//! that twin listing `drops-repeats` earns it timed resends (peer/src/core/rmb_twins.rs).
//!
//! - Two real `rmb-peer`s on two federating relays, started with `--e2e secp256k1`
//!   (what they choose by default on tfchain; the embedded registry's default is
//!   x25519): the far relay is SIGKILLed while it holds a request for its offline twin,
//!   and relaunched in memory (the request is gone). The sender's link never dropped,
//!   so only a timed resend can bring the answer before the request expires; the bot's
//!   handler runs once.
//! - Twins served by bare relay clients, as rmb-rs peers would be seen: one answers the
//!   probe as rmb-rs does (its version string) and must never get a resend; one answers
//!   as an rmb peer (the control: it does get them); a third twin tries to answer the
//!   first one's probe for it (its own signed answer, and one claiming the first twin as
//!   its source), which must change nothing.
//! - Our peer answers the question only when asked it (rmb-rs tooling's `rmb.version`
//!   still gets the version string), and a peer running `--at-most-once` answers it as
//!   rmb-rs would.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rmb_identity::registry::http::HttpRegistry;
use rmb_identity::registry::{Registry, TwinUpdate};
use rmb_identity::{E2eScheme, Identity, KeyType};
use rmb_proto::{Address, Envelope, Message, Payload, Response};
use rmb_testsupport::peer_node::EchoBot;
use rmb_testsupport::peer_process::PeerProcess;
use rmb_testsupport::peer_process::resp::Resp;
use rmb_testsupport::redis_server::RedisServer;
use rmb_testsupport::relay_client::{TestClient, now};
use rmb_testsupport::relay_process::RelayProcess;
use serde_json::{Value, json};

/// The flag giving a peer on the embedded registry the keys it has by default on tfchain.
const TFCHAIN_KEYS: [&str; 2] = ["--e2e", "secp256k1"];
/// Validity of the request that gets lost: without a timed resend, its answer is the
/// timeout error at this point.
const EXP: u64 = 60;
/// How long the relay clients watch for copies of a request.
const WATCH: Duration = Duration::from_secs(12);

async fn register(registry_url: &str, secret: &str, relays: &[String]) -> u32 {
    let who = Identity::from_secret(secret, KeyType::Sr25519).unwrap();
    rmb_testsupport::registry::register(registry_url, &who, relays).await
}

/// A client request as rmb-rs documents it.
fn request(reference: &str, cmd: &str, payload: &str, dst: u32, ret: &str, exp: u64) -> Value {
    json!({
        "ver": 1, "ref": reference, "cmd": cmd, "exp": exp, "dat": STANDARD.encode(payload),
        "tag": null, "dst": [dst], "ret": ret, "shm": "text/plain", "now": now(),
    })
}

/// Waits up to `wait` for the response on `ret`.
fn response(redis: &mut Resp, ret: &str, wait: Duration) -> Option<Value> {
    let text = redis.brpop(ret, wait.as_secs().max(1))?;
    Some(serde_json::from_str(&text).expect("a JSON response"))
}

/// Polls until `check` holds (up to 20 s).
async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_far_relay_lost_is_answered_by_a_timed_resend_between_secp256k1_peers() {
    let relay_a = RelayProcess::start(&["--federation-http"]);
    let registry = relay_a.http_url();
    let mut relay_b = RelayProcess::start(&["--federation-http", "--registry", &registry]);
    register(&registry, "//Alice", &[relay_a.domain()]).await;
    let b = register(&registry, "//Bob", &[relay_b.domain()]).await;
    let (redis_a, redis_b) = (RedisServer::start(), RedisServer::start());
    let peer_a = PeerProcess::start(
        "//Alice",
        &redis_a.url(),
        &[relay_a.ws_url()],
        &registry,
        &TFCHAIN_KEYS,
    );
    let mut peer_b = PeerProcess::start(
        "//Bob",
        &redis_b.url(),
        &[relay_b.ws_url()],
        &registry,
        &TFCHAIN_KEYS,
    );
    let bot = EchoBot::start(&redis_b.url(), "test.echo");
    let mut app = Resp::connect(&redis_a.url());

    // The twins talked before (the peers learn about each other meanwhile).
    app.lpush(
        "msgbus.system.local",
        &request("warm", "test.echo", "warm", b, "ret-warm", EXP).to_string(),
    );
    let warm = response(&mut app, "ret-warm", Duration::from_secs(20)).expect("warm-up answer");
    assert_eq!(warm["err"], Value::Null, "{warm}");

    // B goes offline: its relay queues what comes for it, in memory.
    peer_b.kill();
    until("relay B to drop B's session", async || {
        relay_b.metric("relay_sessions").await == 0.0
    })
    .await;
    let queued = relay_b.metric("relay_queued_total").await;
    let sent = Instant::now();
    app.lpush(
        "msgbus.system.local",
        &request("lost", "test.echo", "lost", b, "ret-lost", EXP).to_string(),
    );
    until("relay B to queue the request", async || {
        relay_b.metric("relay_queued_total").await > queued
    })
    .await;
    // The far relay dies holding it; it and B come back with nothing.
    relay_b.kill();
    relay_b.relaunch();
    peer_b.relaunch();
    eprintln!(
        "relay B killed holding the request and relaunched, B back: {:.1}s after the send",
        sent.elapsed().as_secs_f64()
    );

    let answer = response(&mut app, "ret-lost", Duration::from_secs(EXP + 15))
        .expect("an answer or the timeout error");
    let took = sent.elapsed().as_secs_f64();
    eprintln!("answer after {took:.1}s (the request is valid {EXP}s): {answer}");
    assert_eq!(
        answer["err"],
        Value::Null,
        "only its expiry answered the lost request: no timed resend reached B"
    );
    assert_eq!(answer["dat"], STANDARD.encode("lost"), "{answer}");
    // Late copies (relay A retrying the federation, resends in flight) must not run it again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(bot.runs(), 2, "each request's handler runs once");
    let resent = peer_a.status().expect("A's status")["resent"].clone();
    eprintln!("A resent {resent} envelope(s)");
    assert!(resent.as_u64() >= Some(1), "A's status: resent {resent}");
}

/// A twin served by a bare relay client, publishing a secp256k1 key (as rmb-rs peers do).
struct Twin {
    id: u32,
    identity: Identity,
}

async fn twin(registry_url: &str, secret: &str, relay: &RelayProcess) -> Twin {
    let identity = Identity::from_secret(secret, KeyType::Sr25519).unwrap();
    let update = TwinUpdate {
        relays: [relay.domain()].into_iter().collect(),
        pk: Some(identity.e2e_public_key(E2eScheme::Secp256k1)),
        create: true,
    };
    let id = HttpRegistry::new(registry_url)
        .unwrap()
        .publish(identity.signer(), &update)
        .await
        .unwrap()
        .id;
    Twin { id, identity }
}

/// A response to `uid` from twin `source` to `dst` with a plain `body`, signed by `signer`.
fn answer(signer: &Identity, source: u32, dst: u32, uid: &str, body: &[u8]) -> Envelope {
    let mut env = Envelope {
        uid: uid.to_string(),
        expiration: 300,
        source: Some(Address::twin(source)),
        destination: Some(Address::twin(dst)),
        message: Some(Message::Response(Response {})),
        schema: Some("application/json".into()),
        payload: Some(Payload::Plain(body.to_vec())),
        ..Default::default()
    };
    signer.seal_envelope(&mut env, None, now()).expect("sign");
    env
}

/// What a relay client saw during [`WATCH`].
#[derive(Debug, Default)]
struct Seen {
    /// `rmb.version` requests (the peer's probes).
    probes: usize,
    /// Copies of each of the application's requests, by uid.
    copies: BTreeMap<String, usize>,
}

/// Serves `me` for [`WATCH`]: every `rmb.version` gets `version_answer` (after
/// `before_answer` ran with the request, e.g. a stranger's attempt; `answered` counts
/// up once it is sent), copies of other requests are counted and never answered.
async fn serve(
    me: &Twin,
    relay: &RelayProcess,
    version_answer: &[u8],
    answered: &AtomicUsize,
    mut before_answer: impl AsyncFnMut(&Envelope),
) -> Seen {
    let mut client = TestClient::connect(&relay.ws_url(), &me.identity, me.id, None).await;
    let mut seen = Seen::default();
    let deadline = Instant::now() + WATCH;
    while let Some(wait) = deadline.checked_duration_since(Instant::now()) {
        let Some(env) = client.recv(wait).await else {
            break;
        };
        let Some(Message::Request(request)) = &env.message else {
            continue;
        };
        if request.command == "rmb.version" {
            seen.probes += 1;
            before_answer(&env).await;
            let back = answer(
                &me.identity,
                me.id,
                env.source_twin(),
                &env.uid,
                version_answer,
            );
            client.send(&back).await;
            answered.fetch_add(1, Ordering::SeqCst);
        } else {
            *seen.copies.entry(env.uid.clone()).or_default() += 1;
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twin_that_does_not_prove_it_runs_rmb_never_gets_timed_resends() {
    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    register(&registry, "//Alice", &[relay.domain()]).await;
    let redis = RedisServer::start();
    let _peer = PeerProcess::start(
        "//Alice",
        &redis.url(),
        &[relay.ws_url()],
        &registry,
        &TFCHAIN_KEYS,
    );
    let rmb_rs = twin(&registry, "//Charlie", &relay).await;
    let rmb = twin(&registry, "//Dave", &relay).await;
    let stranger = twin(&registry, "//Eve", &relay).await;
    let mut app = Resp::connect(&redis.url());
    // One request to each before the peer knows them, one after both answered its probe.
    let mut send_both = |round: &str| {
        for (to, dst) in [("rmb-rs", rmb_rs.id), ("rmb", rmb.id)] {
            let req = request(&format!("{round}-{to}"), "test.slow", "x", dst, "ret", EXP);
            app.lpush("msgbus.system.local", &req.to_string());
        }
    };
    send_both("first");
    let answered = AtomicUsize::new(0);

    let mut stranger_client =
        TestClient::connect(&relay.ws_url(), &stranger.identity, stranger.id, None).await;
    let claim = br#"{"version":"v0.1.0","capabilities":["drops-repeats"]}"#;
    let (seen_rmb_rs, seen_rmb, ()) = tokio::join!(
        // rmb-rs answers every rmb.version with its version, a JSON string. Before it
        // does, a stranger answers the probe it saw: signed as itself, and claiming to
        // be that twin (which its signature cannot back).
        serve(&rmb_rs, &relay, br#""v1.5.1""#, &answered, async |probe| {
            let a = probe.source_twin();
            let own = answer(&stranger.identity, stranger.id, a, &probe.uid, claim);
            let forged = answer(&stranger.identity, rmb_rs.id, a, &probe.uid, claim);
            stranger_client.send(&own).await;
            stranger_client.send(&forged).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }),
        serve(&rmb, &relay, claim, &answered, async |_| {}),
        async {
            // Both probes answered (a peer that asks nothing gets its second round late).
            let deadline = Instant::now() + WATCH / 2;
            while answered.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            send_both("second");
        },
    );
    eprintln!("rmb-rs-like twin: {seen_rmb_rs:?}; rmb twin: {seen_rmb:?}");
    assert_eq!(seen_rmb_rs.probes, 1, "the peer asks the twin once");
    assert_eq!(seen_rmb.probes, 1);
    let copies = |seen: &Seen| seen.copies.values().copied().collect::<Vec<_>>();
    assert_eq!(
        copies(&seen_rmb_rs),
        [1, 1],
        "a twin that did not prove it runs rmb got a timed resend"
    );
    let rmb_copies = copies(&seen_rmb);
    assert!(
        rmb_copies.len() == 2 && rmb_copies.iter().all(|&n| n >= 2),
        "a twin that proved it runs rmb gets timed resends of both requests: {rmb_copies:?}"
    );
}

/// `rmb.version` (`uid`) from a bare client to twin `dst` with `payload`; the answer's
/// body.
async fn ask_version(
    client: &mut TestClient,
    me: &Identity,
    dst: u32,
    uid: &str,
    payload: &[u8],
) -> Value {
    let mut env = Envelope {
        uid: uid.to_string(),
        expiration: 60,
        source: Some(Address::twin(client.twin)),
        destination: Some(Address::twin(dst)),
        message: Some(Message::Request(rmb_proto::Request {
            command: "rmb.version".into(),
        })),
        payload: Some(Payload::Plain(payload.to_vec())),
        ..Default::default()
    };
    me.seal_envelope(&mut env, None, now()).expect("sign");
    client.send(&env).await;
    loop {
        let reply = client
            .recv(Duration::from_secs(15))
            .await
            .expect("an answer to rmb.version");
        if reply.uid == uid {
            assert!(
                matches!(reply.message, Some(Message::Response(_))),
                "{reply:?}"
            );
            return serde_json::from_slice(reply.payload_bytes()).expect("a JSON body");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_peers_question_gets_capabilities_drops_repeats_only_when_reliable() {
    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let (redis, redis_once) = (RedisServer::start(), RedisServer::start());
    let mut started = Vec::new();
    for (secret, redis, extra) in [
        ("//Alice", &redis, &TFCHAIN_KEYS[..]),
        (
            "//Bob",
            &redis_once,
            &["--e2e", "secp256k1", "--at-most-once"][..],
        ),
    ] {
        let twin = register(&registry, secret, &[relay.domain()]).await;
        let peer = PeerProcess::start(secret, &redis.url(), &[relay.ws_url()], &registry, extra);
        started.push((twin, peer));
    }
    let (reliable, at_most_once) = (started[0].0, started[1].0);
    // A client without a published key: the peers answer it in plain.
    let me = Identity::from_secret("//Ferdie", KeyType::Sr25519).unwrap();
    let id = rmb_testsupport::registry::register(&registry, &me, &[relay.domain()]).await;
    let mut client = TestClient::connect(&relay.ws_url(), &me, id, None).await;

    let question = br#""capabilities""#;
    let answer = ask_version(&mut client, &me, reliable, "v-1", question).await;
    // Its relay (ours) routes unsigned RPCs, so it also takes them.
    assert_eq!(
        answer["capabilities"],
        json!(["drops-repeats", "unsigned-rpc"]),
        "{answer}"
    );
    let version = answer["version"].as_str().expect("and its version");
    // rmb-rs tooling's request (an empty payload) gets the plain version string.
    let plain = ask_version(&mut client, &me, reliable, "v-2", b"").await;
    assert_eq!(plain, json!(version));
    // A peer keeping no reply cache does not claim to drop repeats (it still takes
    // unsigned RPCs).
    let once = ask_version(&mut client, &me, at_most_once, "v-3", question).await;
    assert_eq!(once["capabilities"], json!(["unsigned-rpc"]), "{once}");
}
