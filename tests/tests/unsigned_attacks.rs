//! Issue #30, items 3 and 4: envelopes that travel without a signature (topic pushes,
//! acknowledgements and their answers, docs/protocol.md §3.4; connection data frames,
//! §10), attacked as the issue describes, across two federated relays:
//!
//! - a stranger (no relay) posts forged unsigned requests in the names of real twins to
//!   a relay's `POST /`: the destination peer must drop them unanswered and counted,
//!   so that it neither spends its own rate limit on error envelopes nor aims them at
//!   the twins named;
//! - a relay that reflects an unsigned envelope back to its sender, or re-sources it to
//!   a twin publishing the sender's key, must not get it accepted, for both e2e schemes
//!   (the secp256k1 key is the same in both directions), while the genuine flow goes on:
//!   acknowledgements between direct clients (`rmb_peer::Client`, so the test sees
//!   exactly what their core accepts) and pushes between real topic peers;
//! - the same relay against connection data frames, whose per-direction keys already
//!   bind them to their direction.
//!
//! The relays, the item-3 peer and the topic peers are the real binaries; the relay in
//! the middle ([`EvilRelay`]) is written here.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rand::RngCore;
use rmb_identity::registry::http::HttpRegistry;
use rmb_identity::registry::{Registry, RegistryChoice, TwinUpdate};
use rmb_identity::{E2eScheme, Identity, KeyType};
use rmb_peer::conn::ConnCounters;
use rmb_peer::conn::ListenOptions;
use rmb_peer::core::OutgoingRequest;
use rmb_peer::{Client, ClientOptions};
use rmb_proto::{Address, CONN_DATA_COMMAND, Envelope, Message, Payload, Request};
use rmb_testsupport::direct::fresh_mnemonic;
use rmb_testsupport::peer_node::{EchoBot, Node};
use rmb_testsupport::peer_process::PeerProcess;
use rmb_testsupport::peer_process::resp::Resp;
use rmb_testsupport::redis_server::{RedisServer, free_port};
use rmb_testsupport::relay_client::{TestClient, now};
use rmb_testsupport::relay_process::RelayProcess;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Longest a test waits for anything (a broken system fails, never hangs).
const WAIT: Duration = Duration::from_secs(20);
/// How long a session listens for envelopes that must not come.
const QUIET: Duration = Duration::from_secs(3);
/// The flood: 150 forged requests.
const FORGED: usize = 150;
/// The victim's relay runs with `--limit 50` (per minute).
const LIMIT: &str = "50";

// ---------------------------------------------------------------------------------
// Item 3: forged unsigned requests posted by a stranger.
// ---------------------------------------------------------------------------------

/// The attack: from an address that is no relay, 150 unsigned requests (`echo`,
/// `rmb.topic.message`, `rmb.topic.ack`, random 120-byte "ciphertexts", claimed sources
/// cycling over real twins living on another relay) posted to the `POST /` of the
/// relay (`--limit 50`) of Bob's peer. Nothing proves who sent them, so Bob answers none
/// (each counted as unanswered and by reason); the twins named get nothing from Bob; and
/// Bob's own next call, charged to his budget on his relay, goes through.
#[test]
fn forged_unsigned_requests_neither_lock_a_peer_out_nor_reflect_errors() {
    let r1 = RelayProcess::start(&["--federation-http", "--limit", LIMIT, "100000000"]);
    let registry = r1.http_url();
    let r2 = RelayProcess::start(&["--federation-http", "--registry", &registry]);
    let bob = Node::start(&fresh_mnemonic(), &r1, &[]);
    let alice = Node::start(&fresh_mnemonic(), &r1, &[]);
    let _alice_bot = EchoBot::start(alice.peer.redis_url(), "echo");
    let runtime = runtime();

    // Carol and Dave: real twins on the other relay whose bare sessions see whatever is
    // sent to them.
    let (statuses, mut sessions) = runtime.block_on(async {
        let (_, carol, carol_session) = bare_twin(&r2, &registry).await;
        let (_, dave, dave_session) = bare_twin(&r2, &registry).await;
        let claimed = [alice.twin, carol, dave];
        let commands = ["echo", "rmb.topic.message", "rmb.topic.ack"];
        let http = reqwest::Client::new();
        let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
        for i in 0..FORGED {
            let mut body = vec![0u8; 120];
            rand::thread_rng().fill_bytes(&mut body);
            let mut env = Envelope {
                uid: format!("forged-{i}"),
                expiration: 60,
                source: Some(Address::twin(claimed[(i / commands.len()) % claimed.len()])),
                destination: Some(Address::twin(bob.twin)),
                message: Some(Message::Request(Request {
                    command: commands[i % commands.len()].into(),
                })),
                payload: Some(Payload::Cipher(body)),
                ..Default::default()
            };
            env.stamp_at(now());
            let response = http
                .post(format!("{}/", r1.http_url()))
                .body(env.to_bytes())
                .send()
                .await
                .unwrap();
            *statuses.entry(response.status().as_u16()).or_default() += 1;
        }
        (statuses, [carol_session, dave_session])
    });
    let routed = statuses.get(&202).copied().unwrap_or(0);
    // Bob's count of unanswered refusals reaches what was routed to him (before the fix
    // there is no such count: then the time runs out and the rest tells).
    let status = wait_status(&bob, |s| {
        s["unanswered"].as_u64() >= Some(routed as u64)
            && s["rejected"].as_u64() >= Some(routed as u64)
    });
    let reflected = runtime.block_on(async {
        let mut reflected = 0;
        for session in &mut sessions {
            while let Some(env) = session.recv(QUIET).await {
                if env.source_twin() == bob.twin {
                    reflected += 1;
                }
            }
        }
        reflected
    });
    let call = echo_call(&bob, alice.twin);
    eprintln!(
        "POST / answers {statuses:?}; Bob's status {status}; envelopes from Bob at the \
         claimed sources Carol and Dave: {reflected}; Bob's next call: {call}"
    );
    assert_eq!(reflected, 0, "errors reflected at the claimed sources");
    assert!(call["err"].is_null(), "Bob's next real call failed: {call}");
    assert_eq!(
        status["unanswered"], routed as u64,
        "every routed forgery dropped unanswered: {status}"
    );
    let by_reason: u64 = status["rejected_by"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(by_reason, routed as u64, "counted by reason: {status}");
    // The relay lets unsigned requests through only where peers take them unsigned
    // (topic pushes and acknowledgements): the forged `echo`s stop there.
    assert_eq!(routed, FORGED * 2 / 3, "{statuses:?}");
    assert_eq!(
        statuses.get(&401).copied(),
        Some(FORGED / 3),
        "{statuses:?}"
    );
}

/// A signed request refused before its signature is checked (here: a deadline too far
/// ahead) is answered once the signature holds; but it is the same bytes whoever posts
/// it again, so ten copies get as many answers as repeats of a request do (4 a minute),
/// and the rest are counted as unanswered.
#[test]
fn a_refused_signed_request_posted_again_is_answered_a_few_times_only() {
    // Our relay refuses such deadlines itself; let them through as an rmb-rs relay does.
    let relay = RelayProcess::start(&["--max-lifetime", "18446744073709551615"]);
    let bob = Node::start(&fresh_mnemonic(), &relay, &[]);
    let runtime = runtime();
    let (eve, eve_twin, mut session) =
        runtime.block_on(async { bare_twin(&relay, &relay.http_url()).await });
    let far = rmb_testsupport::relay_client::request(
        &eve,
        Address::twin(eve_twin),
        bob.twin,
        "far",
        b"x",
        1 << 40,
    );
    runtime.block_on(async {
        for _ in 0..10 {
            session.send(&far).await;
        }
    });
    let status = wait_status(&bob, |s| {
        s["rejected_by"]["too_far"].as_u64() >= Some(10) && s["unanswered"].as_u64() >= Some(6)
    });
    let answers = runtime.block_on(async {
        let mut answers = 0;
        while let Some(env) = session.recv(QUIET).await {
            if env.uid == "far" && env.source_twin() == bob.twin {
                answers += 1;
            }
        }
        answers
    });
    assert_eq!(status["rejected_by"]["too_far"], 10, "{status}");
    assert_eq!(answers, 4, "answers to ten copies: {status}");
    assert_eq!(status["unanswered"], 6, "{status}");
}

/// Bob calls `echo` on `twin` through his Redis, as an app does; the response JSON.
fn echo_call(bob: &Node, twin: u32) -> Value {
    let mut redis: Resp = bob.peer.redis();
    let request = json!({
        "ver": 1, "ref": "after-the-flood", "cmd": "echo", "exp": 30,
        "dat": base64_of(b"still here"), "tag": null, "dst": [twin],
        "ret": "after-the-flood", "shm": "text/plain", "now": now(),
    });
    redis.lpush("msgbus.system.local", &request.to_string());
    let text = redis
        .brpop("after-the-flood", 40)
        .expect("an answer to Bob's call");
    serde_json::from_str(&text).unwrap()
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Polls `node`'s status until `done` says so (or [`WAIT`] passes); the last status.
fn wait_status(node: &Node, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let status = node.peer.status().expect("status key");
        if done(&status) || Instant::now() > deadline {
            return status;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A fresh twin registered on `relay` (x25519 key) with a bare session there.
async fn bare_twin(relay: &RelayProcess, registry: &str) -> (Identity, u32, TestClient) {
    let identity = Identity::from_secret(&fresh_mnemonic(), KeyType::Sr25519).unwrap();
    let twin = publish(
        registry,
        &identity,
        &relay.domain(),
        identity.e2e_public_key(E2eScheme::X25519),
    )
    .await;
    let session = TestClient::connect(&relay.ws_url(), &identity, twin, None).await;
    (identity, twin, session)
}

/// Registers (or updates) `identity`'s twin listing `relay` and publishing `pk`.
async fn publish(registry: &str, identity: &Identity, relay: &str, pk: Vec<u8>) -> u32 {
    let update = TwinUpdate {
        relays: [relay.to_string()].into(),
        pk: Some(pk),
        create: true,
    };
    HttpRegistry::new(registry)
        .unwrap()
        .publish(identity.signer(), &update)
        .await
        .unwrap()
        .id
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------
// Item 4: a relay that reflects and re-sources unsigned envelopes.
// ---------------------------------------------------------------------------------

/// A relay in the middle: it logs its clients in to a real relay (same URL and token)
/// and passes every frame both ways, but keeps a copy of what its clients send unsigned
/// with one of the watched commands, and can write envelopes of its own to them, as
/// their relay could.
struct EvilRelay {
    url: String,
    captured: Arc<Mutex<Vec<Envelope>>>,
    down: Arc<Mutex<Vec<mpsc::UnboundedSender<WsMessage>>>>,
}

impl EvilRelay {
    async fn start(upstream: &RelayProcess, watched: &'static [&'static str]) -> EvilRelay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let evil = EvilRelay {
            url: format!("ws://{}/", listener.local_addr().unwrap()),
            captured: Arc::default(),
            down: Arc::default(),
        };
        let (captured, down, domain) = (
            Arc::clone(&evil.captured),
            Arc::clone(&evil.down),
            upstream.domain(),
        );
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (captured, down, domain) =
                    (Arc::clone(&captured), Arc::clone(&down), domain.clone());
                tokio::spawn(async move {
                    let _ = Self::serve(tcp, &domain, watched, captured, down).await;
                });
            }
        });
        evil
    }

    // The handshake callback's error type is tungstenite's, large as it is.
    #[allow(clippy::result_large_err)]
    async fn serve(
        tcp: tokio::net::TcpStream,
        upstream: &str,
        watched: &'static [&'static str],
        captured: Arc<Mutex<Vec<Envelope>>>,
        down: Arc<Mutex<Vec<mpsc::UnboundedSender<WsMessage>>>>,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        let path = Arc::new(Mutex::new(String::new()));
        let seen = Arc::clone(&path);
        let client = tokio_tungstenite::accept_hdr_async(
            tcp,
            move |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
                *seen.lock().unwrap() = req.uri().to_string();
                Ok(resp)
            },
        )
        .await?;
        let url = format!("ws://{upstream}{}", path.lock().unwrap());
        let (relay, _) = tokio_tungstenite::connect_async(url).await?;
        let (mut to_client, mut from_client) = client.split();
        let (mut to_relay, mut from_relay) = relay.split();
        let (inject, mut injected) = mpsc::unbounded_channel();
        down.lock().unwrap().push(inject);
        let up = async move {
            while let Some(Ok(frame)) = from_client.next().await {
                if let WsMessage::Binary(bytes) = &frame
                    && let Ok(env) = Envelope::decode_limited(bytes, usize::MAX)
                    && env.is_unsigned()
                    && matches!(&env.message, Some(Message::Request(r)) if watched.contains(&r.command.as_str()))
                {
                    captured.lock().unwrap().push(env);
                }
                let close = matches!(frame, WsMessage::Close(_));
                if to_relay.send(frame).await.is_err() || close {
                    break;
                }
            }
        };
        let down = async move {
            loop {
                let frame = tokio::select! {
                    frame = from_relay.next() => match frame {
                        Some(Ok(frame)) => frame,
                        _ => break,
                    },
                    Some(frame) = injected.recv() => frame,
                };
                if to_client.send(frame).await.is_err() {
                    break;
                }
            }
        };
        tokio::select! {
            _ = up => {},
            _ = down => {},
        }
        Ok(())
    }

    /// The first unsigned envelope captured after the first `skip`, waiting for it.
    async fn captured(&self, skip: usize) -> Envelope {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(env) = self.captured.lock().unwrap().get(skip) {
                return env.clone();
            }
            assert!(
                Instant::now() < deadline,
                "nothing unsigned passed the relay"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Writes `env` to every client session, as their relay delivering it.
    fn deliver(&self, env: &Envelope) {
        for session in self.down.lock().unwrap().iter() {
            let _ = session.send(WsMessage::Binary(env.to_bytes().into()));
        }
    }
}

/// `env` turned around: from its destination back to its source.
fn reflected(env: &Envelope) -> Envelope {
    let mut env = env.clone();
    std::mem::swap(&mut env.source, &mut env.destination);
    env
}

/// `env` claiming another source.
fn resourced(env: &Envelope, source: Address) -> Envelope {
    let mut env = env.clone();
    env.source = Some(source);
    env
}

/// Posts `env` to `relay`'s federation endpoint, as another relay forwarding it would;
/// the HTTP status.
async fn federate(relay: &RelayProcess, env: &Envelope) -> u16 {
    reqwest::Client::new()
        .post(format!("{}/", relay.http_url()))
        .body(env.to_bytes())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A direct client of a fresh twin registered listing `home` and publishing its
/// `scheme` key (`pk` overrides the key, for a twin posing with another's), connected
/// through `via` (its relay, maybe an evil one) without updating the registry.
async fn client(
    registry: &str,
    home: &RelayProcess,
    via: &str,
    sid: &str,
    scheme: E2eScheme,
) -> Client {
    let secret = fresh_mnemonic();
    let identity = Identity::from_secret(&secret, KeyType::Sr25519).unwrap();
    publish(
        registry,
        &identity,
        &home.domain(),
        identity.e2e_public_key(scheme),
    )
    .await;
    let mut options = ClientOptions::new(
        secret,
        sid,
        vec![via.to_string()],
        RegistryChoice::Embedded {
            url: registry.to_string(),
        },
    );
    options.e2e = Some(scheme);
    options.update_twin = false;
    Client::connect(options).await.expect("client connects")
}

/// What a handler of `rmb.topic.ack` took: claimed source twin, body, signed.
type Taken = (u32, Vec<u8>, bool);

/// Serves `rmb.topic.ack` on `client`, handing each request to the test.
fn take_acks(client: &Client) -> mpsc::UnboundedReceiver<Taken> {
    let (tx, rx) = mpsc::unbounded_channel();
    client.serve("rmb.topic.ack", move |req| {
        let _ = tx.send((req.source.twin, req.payload.clone(), req.signed));
        async { Ok(Vec::new()) }
    });
    rx
}

/// Sends an acknowledgement as the topic layer does: one-way, unsigned when it can be.
async fn ack(from: &Client, to: &Client, last: u64) {
    let body = json!({ "topic": "news", "last": last }).to_string();
    from.peer()
        .send_one_way(OutgoingRequest {
            uid: format!("ack-{last}-{}", rand::random::<u32>()),
            destination: to.address().clone(),
            command: "rmb.topic.ack".into(),
            payload: body.into_bytes(),
            schema: Some("application/json".into()),
            tags: None,
            timestamp: 0,
            expiration: 60,
        })
        .await
        .expect("the acknowledgement is sent");
}

/// `client`'s count of refused requests left unanswered (read from the status as
/// `rmb status` shows it; absent, 0, where a peer answers every refusal).
fn unanswered(client: &Client) -> u64 {
    let status = serde_json::to_value(client.status()).unwrap();
    status["unanswered"].as_u64().unwrap_or(0)
}

/// Waits until `client` counted `n` refusals for `reason` (or [`WAIT`] passed); the count.
async fn wait_rejected(client: &Client, reason: &str, n: u64) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let count = client
            .status()
            .rejected_by
            .get(reason)
            .copied()
            .unwrap_or(0);
        if count >= n || Instant::now() > deadline {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Item 4 for one scheme. Alice (relay 1, reached through the evil relay) acknowledges
/// to Bob (relay 2) unsigned; Mallory publishes Alice's key as her own. The evil relay
/// takes Alice's unsigned acknowledgement and (a) hands it back to Alice as Bob's,
/// (b) forwards it to Bob's relay as Mallory's. Neither is accepted: each is counted as
/// `crypto` and answered by nothing, and Alice's genuine acknowledgements reach Bob as
/// hers, before and after.
async fn reflect_and_resource(scheme: E2eScheme) {
    let r1 = RelayProcess::start(&["--federation-http"]);
    let registry = r1.http_url();
    let r2 = RelayProcess::start(&["--federation-http", "--registry", &registry]);
    let evil = EvilRelay::start(&r1, &["rmb.topic.ack"]).await;
    let alice = client(&registry, &r1, &evil.url, "alice", scheme).await;
    let bob = client(&registry, &r2, &r2.ws_url(), "bob", scheme).await;
    let mallory = Identity::from_secret(&fresh_mnemonic(), KeyType::Sr25519).unwrap();
    let alice_pk = alice.peer().identity().e2e_public_key(scheme);
    let mallory_twin = publish(&registry, &mallory, &r2.domain(), alice_pk).await;
    let mut at_alice = take_acks(&alice);
    let mut at_bob = take_acks(&bob);

    ack(&alice, &bob, 1).await;
    let genuine = evil.captured(0).await;
    assert_eq!(
        genuine.signature, None,
        "{scheme}: acknowledgements go unsigned"
    );
    let got = tokio::time::timeout(WAIT, at_bob.recv()).await.unwrap();
    assert_eq!(
        got.map(|(twin, _, signed)| (twin, signed)),
        Some((alice.twin_id(), false)),
        "{scheme}: the genuine acknowledgement"
    );

    // (a) Reflected: delivered to Alice as if Bob had sent it.
    evil.deliver(&reflected(&genuine));
    let alice_crypto = wait_rejected(&alice, "crypto", 1).await;
    let alice_took = at_alice.try_recv().ok();
    // (b) Re-sourced: forwarded to Bob's relay as Mallory's, whose key is Alice's.
    let posted = federate(&r2, &resourced(&genuine, Address::twin(mallory_twin))).await;
    let bob_crypto = wait_rejected(&bob, "crypto", 1).await;
    let bob_took = at_bob.try_recv().ok();
    eprintln!(
        "{scheme}: reflected to Alice as Bob's: taken {alice_took:?}, crypto refusals \
         {alice_crypto}, unanswered {}; re-sourced to Bob as Mallory's (POST {posted}): \
         taken {bob_took:?}, crypto refusals {bob_crypto}, unanswered {}",
        unanswered(&alice),
        unanswered(&bob)
    );
    assert_eq!(
        alice_took, None,
        "{scheme}: Alice took her own words as Bob's"
    );
    assert_eq!(alice_crypto, 1, "{scheme}: the reflection is counted");
    assert_eq!(unanswered(&alice), 1, "{scheme}: and not answered");
    assert_eq!(posted, 202, "{scheme}: relay 2 takes the re-sourced copy");
    assert_eq!(
        bob_took, None,
        "{scheme}: Bob took Alice's words as Mallory's"
    );
    assert_eq!(bob_crypto, 1, "{scheme}: the re-sourced copy is counted");
    assert_eq!(unanswered(&bob), 1, "{scheme}: and not answered");

    // The genuine flow goes on.
    ack(&alice, &bob, 2).await;
    let got = tokio::time::timeout(WAIT, at_bob.recv()).await.unwrap();
    assert_eq!(
        got.map(|(twin, body, _)| (twin, body)),
        Some((
            alice.twin_id(),
            json!({ "topic": "news", "last": 2 })
                .to_string()
                .into_bytes()
        )),
        "{scheme}: the next genuine acknowledgement"
    );
    assert_eq!(alice.status().rejected_by.get("crypto"), Some(&1));
    assert_eq!(bob.status().rejected_by.get("crypto"), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_cannot_reflect_or_resource_unsigned_x25519_traffic() {
    reflect_and_resource(E2eScheme::X25519).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_cannot_reflect_or_resource_unsigned_secp256k1_traffic() {
    reflect_and_resource(E2eScheme::Secp256k1).await;
}

/// Item 4 for connections: data frames travel unsigned too. Alice (through the evil
/// relay in front of relay 1) opens a connection to Bob (relay 2); the evil relay takes
/// her data frames and (a) hands one back to her as Bob's, (b) forwards one to Bob as
/// Mallory's (who publishes Alice's key), (c) as another session of Alice's, (d) as it
/// was, again. Each direction has its own key, and frames are matched to connections by
/// (source twin, id) and address, so every copy is dropped and counted; the stream goes
/// on intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_cannot_reflect_or_resource_connection_frames() {
    let r1 = RelayProcess::start(&["--federation-http"]);
    let registry = r1.http_url();
    let r2 = RelayProcess::start(&["--federation-http", "--registry", &registry]);
    let evil = EvilRelay::start(&r1, &[CONN_DATA_COMMAND]).await;
    let scheme = E2eScheme::X25519;
    let alice = client(&registry, &r1, &evil.url, "alice", scheme).await;
    let bob = client(&registry, &r2, &r2.ws_url(), "bob", scheme).await;
    let mallory = Identity::from_secret(&fresh_mnemonic(), KeyType::Sr25519).unwrap();
    let alice_pk = alice.peer().identity().e2e_public_key(scheme);
    let mallory_twin = publish(&registry, &mallory, &r2.domain(), alice_pk).await;

    let mut listener = bob
        .connections()
        .listen("echo", ListenOptions::default())
        .unwrap();
    let (stream, served) = tokio::join!(
        alice
            .connections()
            .connect_address(bob.address().clone(), "echo"),
        async { listener.accept().await.unwrap().unwrap() }
    );
    let (mut stream, mut served) = (stream.unwrap(), served);
    stream.send_message(b"first").await.unwrap();
    let got = tokio::time::timeout(WAIT, served.recv_message()).await;
    assert_eq!(got.unwrap().unwrap().as_deref(), Some(&b"first"[..]));
    let frame = evil.captured(0).await;
    assert_eq!(frame.signature, None, "data frames go unsigned");

    let (at_alice, at_bob) = (alice.connections().counters(), bob.connections().counters());
    let counts = |c: &ConnCounters| {
        (
            c.forged_frames.load(Relaxed),
            c.unknown_frames.load(Relaxed),
            c.replayed_frames.load(Relaxed),
        )
    };
    let before = (counts(at_alice), counts(at_bob));
    // (a) back to Alice as Bob's: her connection to Bob, the wrong direction's key.
    evil.deliver(&reflected(&frame));
    // (b) to Bob as Mallory's: no connection of Mallory's with that id.
    let mallory_copy = resourced(&frame, Address::twin(mallory_twin));
    assert_eq!(federate(&r2, &mallory_copy).await, 202);
    // (c) to Bob as another session of Alice's: not the connection's address.
    let other_session = resourced(&frame, Address::session(alice.twin_id(), "other"));
    assert_eq!(federate(&r2, &other_session).await, 202);
    // (d) to Bob as it was: a packet number seen already.
    assert_eq!(federate(&r2, &frame).await, 202);

    let deadline = Instant::now() + WAIT;
    let expected = |(a, b): ((u64, u64, u64), (u64, u64, u64))| {
        ((a.0 + 1, a.1, a.2), (b.0 + 1, b.1 + 1, b.2 + 1))
    };
    let after = loop {
        let now = (counts(at_alice), counts(at_bob));
        if now == expected(before) || Instant::now() > deadline {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        after,
        expected(before),
        "(forged, unknown, replayed) at Alice and Bob"
    );

    // The stream is unharmed, both ways.
    stream.send_message(b"second").await.unwrap();
    let got = tokio::time::timeout(WAIT, served.recv_message()).await;
    assert_eq!(got.unwrap().unwrap().as_deref(), Some(&b"second"[..]));
    served.send_message(b"back").await.unwrap();
    let got = tokio::time::timeout(WAIT, stream.recv_message()).await;
    assert_eq!(got.unwrap().unwrap().as_deref(), Some(&b"back"[..]));
}

/// A twin served by a real `rmb-peer` with its local HTTP API, connected through a given
/// relay URL and publishing a given scheme's key (registered by the test, not the peer).
struct TopicPeer {
    twin: u32,
    peer: PeerProcess,
    http: String,
    _redis: RedisServer,
}

impl TopicPeer {
    async fn start(registry: &str, home: &RelayProcess, via: &str, scheme: E2eScheme) -> Self {
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
    async fn http(&self, method: reqwest::Method, path: &str, body: String) -> (u16, String) {
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
    async fn messages(&self, topic: &str) -> Vec<(u64, String)> {
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
    async fn messages_until(&self, topic: &str, n: usize) -> Vec<(u64, String)> {
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
    async fn wait_rejected(&self, reason: &str, n: u64) -> Value {
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
async fn topic_push_reflected_and_resourced(scheme: E2eScheme) {
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
async fn published_key(registry: &str, twin: u32) -> Vec<u8> {
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
async fn a_relay_cannot_reflect_or_resource_x25519_topic_pushes() {
    topic_push_reflected_and_resourced(E2eScheme::X25519).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_cannot_reflect_or_resource_secp256k1_topic_pushes() {
    topic_push_reflected_and_resourced(E2eScheme::Secp256k1).await;
}
