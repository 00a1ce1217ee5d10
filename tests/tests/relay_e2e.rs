//! The real `rmb-relay` binary, over real sockets: login, routing, error envelopes,
//! offline queues, limits and federation between two relays.

use std::time::Duration;

use rmb_identity::{Identity, KeyType, Token};
use rmb_proto::{Address, Envelope, MessageKind};
use rmb_testsupport::redis_server::free_port;
use rmb_testsupport::registry::register;
use rmb_testsupport::relay_client::{TestClient, error_text, now, request};
use rmb_testsupport::relay_process::RelayProcess;

const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(300);

fn identity(name: &str) -> Identity {
    Identity::from_secret(&format!("//{name}"), KeyType::Sr25519).unwrap()
}

#[tokio::test]
async fn two_clients_exchange_envelopes_and_errors_come_back() {
    let relay = RelayProcess::start(&[]);
    let (alice, bob) = (identity("Alice"), identity("Bob"));
    let a = register(&relay.http_url(), &alice, &[relay.domain()]).await;
    let b = register(&relay.http_url(), &bob, &[relay.domain()]).await;
    let mut ca = TestClient::connect(&relay.ws_url(), &alice, a, None).await;
    let mut cb = TestClient::connect(&relay.ws_url(), &bob, b, None).await;

    let sent = request(&alice, Address::twin(a), b, "req-1", b"hello", 60);
    ca.send(&sent).await;
    assert_eq!(
        cb.recv(WAIT).await,
        Some(sent),
        "bob gets exactly what alice sent"
    );

    // A session may only send as itself.
    let spoofed = request(&alice, Address::twin(b), a, "spoof-1", b"x", 60);
    ca.send(&spoofed).await;
    let error = ca.recv(WAIT).await.unwrap();
    assert_eq!(
        (error.uid.as_str(), error_text(&error)),
        ("spoof-1", Some("message wrong source"))
    );
    assert_eq!(error.source, None);

    // Unknown destination and expired envelopes are refused with a reason.
    ca.send(&request(
        &alice,
        Address::twin(a),
        999,
        "unknown-1",
        b"x",
        60,
    ))
    .await;
    assert_eq!(
        error_text(&ca.recv(WAIT).await.unwrap()),
        Some("unknown twin destination")
    );
    let mut expired = request(&alice, Address::twin(a), b, "old-1", b"x", 60);
    expired.timestamp = now() - 120;
    alice
        .seal_envelope(&mut expired, None, now() - 120)
        .unwrap();
    ca.send(&expired).await;
    assert_eq!(
        error_text(&ca.recv(WAIT).await.unwrap()),
        Some("message has expired")
    );
    assert_eq!(cb.recv(QUIET).await, None, "nothing refused reached bob");

    // App-level ping gets a pong from the relay.
    let mut ping = request(&alice, Address::twin(a), a, "ping-1", b"", 60);
    ping.message = Some(rmb_proto::Message::Ping(rmb_proto::Ping {}));
    ca.send(&ping).await;
    assert_eq!(ca.recv(WAIT).await.unwrap().kind(), MessageKind::Pong);

    // Garbage does not kill the connection.
    ca.send_bytes(vec![0x0a, 0xff, 0x01]).await.unwrap();
    let again = request(&alice, Address::twin(a), b, "req-2", b"still here", 60);
    ca.send(&again).await;
    assert_eq!(cb.recv(WAIT).await, Some(again));
}

#[tokio::test]
async fn login_is_checked() {
    let relay = RelayProcess::start(&[]);
    let alice = identity("Alice");
    let a = register(&relay.http_url(), &alice, &[relay.domain()]).await;
    let url = relay.ws_url();

    assert_eq!(
        TestClient::try_login(&url).await.unwrap_err(),
        (400, "missing jwt".into())
    );
    let (status, body) = TestClient::try_login(&format!("{url}?garbage"))
        .await
        .unwrap_err();
    assert_eq!(status, 401);
    assert!(body.starts_with("invalid jwt"), "{body}");
    let expired = Token::create(alice.signer(), a, None, now() - 600, 60);
    let (status, body) = TestClient::try_login(&format!("{url}?{expired}"))
        .await
        .unwrap_err();
    assert_eq!(status, 401);
    assert!(body.contains("expired"), "{body}");
    let stranger = Token::create(alice.signer(), 4242, None, now(), 60);
    assert_eq!(
        TestClient::try_login(&format!("{url}?{stranger}"))
            .await
            .unwrap_err(),
        (401, "twin not found 4242".into())
    );
    // Bob's key cannot log in as Alice's twin.
    let forged = Token::create(identity("Bob").signer(), a, None, now(), 60);
    let (status, body) = TestClient::try_login(&format!("{url}?{forged}"))
        .await
        .unwrap_err();
    assert_eq!(status, 401);
    assert!(body.contains("signature"), "{body}");
    let good = Token::create(alice.signer(), a, None, now(), 60);
    TestClient::try_login(&format!("{url}?{good}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn offline_twins_get_their_queue_in_order_without_expired_ones() {
    let relay = RelayProcess::start(&[]);
    let (alice, bob) = (identity("Alice"), identity("Bob"));
    let a = register(&relay.http_url(), &alice, &[relay.domain()]).await;
    let b = register(&relay.http_url(), &bob, &[relay.domain()]).await;
    let mut ca = TestClient::connect(&relay.ws_url(), &alice, a, None).await;

    let mut wanted = Vec::new();
    for i in 0..5 {
        // 2 s, not 1: a 1 s envelope made just before a second ticks over may already
        // be expired when the relay reads it.
        let ttl = if i == 2 { 2 } else { 60 };
        let env = request(
            &alice,
            Address::twin(a),
            b,
            &format!("q-{i}"),
            b"queued",
            ttl,
        );
        ca.send(&env).await;
        if i != 2 {
            wanted.push(env);
        }
    }
    let mut fast = request(&alice, Address::twin(a), b, "ff-1", b"x", 60);
    fast.tags = Some("fail-fast".into());
    alice.seal_envelope(&mut fast, None, now()).unwrap();
    ca.send(&fast).await;
    assert_eq!(
        error_text(&ca.recv(WAIT).await.unwrap()),
        Some("destination offline")
    );
    assert_eq!(
        ca.recv(QUIET).await,
        None,
        "queueing is silent for the sender"
    );

    tokio::time::sleep(Duration::from_millis(3100)).await;
    let mut cb = TestClient::connect(&relay.ws_url(), &bob, b, None).await;
    for want in wanted {
        assert_eq!(
            cb.recv(WAIT).await.as_ref().map(|e| &e.uid),
            Some(&want.uid)
        );
    }
    assert_eq!(
        cb.recv(QUIET).await,
        None,
        "the expired one was not delivered"
    );
}

#[tokio::test]
async fn floods_and_oversize_envelopes_are_refused() {
    let relay = RelayProcess::start(&["--limit", "5", "1000000", "--max-envelope-size", "4096"]);
    let (alice, bob) = (identity("Alice"), identity("Bob"));
    let a = register(&relay.http_url(), &alice, &[relay.domain()]).await;
    let b = register(&relay.http_url(), &bob, &[relay.domain()]).await;
    let mut ca = TestClient::connect(&relay.ws_url(), &alice, a, None).await;
    let mut cb = TestClient::connect(&relay.ws_url(), &bob, b, None).await;

    for i in 0..8 {
        ca.send(&request(
            &alice,
            Address::twin(a),
            b,
            &format!("f-{i}"),
            b"x",
            60,
        ))
        .await;
    }
    let mut delivered = 0;
    while cb.recv(QUIET).await.is_some() {
        delivered += 1;
    }
    let mut limited = 0;
    while let Some(env) = ca.recv(QUIET).await {
        assert!(
            error_text(&env)
                .unwrap()
                .starts_with("exceeded rate limits"),
            "{env:?}"
        );
        limited += 1;
    }
    assert_eq!((delivered, limited), (5, 3));

    // Bob is not limited by Alice's flood; an oversize frame closes only his connection.
    let big = request(&bob, Address::twin(b), a, "big-1", &vec![7u8; 8192], 60);
    let _ = cb.send(&big).await;
    assert!(
        cb.closed(WAIT).await,
        "oversize envelope closes the connection"
    );
    assert_eq!(ca.recv(QUIET).await, None);
}

#[tokio::test]
async fn two_relays_federate_both_ways_and_around_a_dead_relay() {
    let (p1, p2) = (free_port(), free_port());
    let r1 = RelayProcess::start_on(p1, &["--federation-http"]);
    let registry = r1.http_url();
    let r2 = RelayProcess::start_on(p2, &["--federation-http", "--registry", &registry]);
    let dead = format!("127.0.0.1:{}", free_port());

    let (alice, bob, carol) = (identity("Alice"), identity("Bob"), identity("Carol"));
    let a = register(&registry, &alice, &[r1.domain()]).await;
    let b = register(&registry, &bob, &[r2.domain()]).await;
    let c = register(&registry, &carol, &[dead, r2.domain()]).await;
    let mut ca = TestClient::connect(&r1.ws_url(), &alice, a, None).await;
    let mut cb = TestClient::connect(&r2.ws_url(), &bob, b, None).await;
    let mut cc = TestClient::connect(&r2.ws_url(), &carol, c, Some("web")).await;

    let there = request(&alice, Address::twin(a), b, "fed-1", b"to r2", 60);
    ca.send(&there).await;
    assert_eq!(cb.recv(WAIT).await, Some(there));
    let back = request(&bob, Address::twin(b), a, "fed-2", b"to r1", 60);
    cb.send(&back).await;
    assert_eq!(ca.recv(WAIT).await, Some(back));

    // Carol lists a dead relay first; she is still reached through the live one.
    let mut to_carol = request(&alice, Address::twin(a), c, "fed-3", b"around", 60);
    to_carol.destination = Some(Address::session(c, "web"));
    alice.seal_envelope(&mut to_carol, None, now()).unwrap();
    ca.send(&to_carol).await;
    assert_eq!(cc.recv(WAIT).await, Some(to_carol));

    // A forged federation POST (no valid signature) is refused by the receiving relay.
    let mut forged: Envelope = request(&bob, Address::twin(a), b, "forged-1", b"x", 60);
    forged.signature = Some(vec![b's'; 65]);
    let response = reqwest::Client::new()
        .post(format!("{}/", r2.http_url()))
        .body(forged.to_bytes())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(cb.recv(QUIET).await, None);
}

#[tokio::test]
async fn sigterm_shuts_down_cleanly() {
    let mut relay = RelayProcess::start(&[]);
    let status = relay.terminate().expect("relay was running");
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn serves_https_with_its_own_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = rmb_testsupport::relay_process::self_signed_pem(dir.path());
    let relay = RelayProcess::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let client = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap(),
        )
        .build()
        .unwrap();
    let health: serde_json::Value = client
        .get(format!("https://{}/health", relay.domain()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    // Plain HTTP to the TLS port does not get an answer.
    assert!(
        reqwest::get(format!("{}/health", relay.http_url()))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_relay_down_for_a_moment_delays_federated_envelopes_without_failing_them() {
    let (p1, p2) = (free_port(), free_port());
    let r1 = RelayProcess::start_on(p1, &["--federation-http"]);
    let registry = r1.http_url();
    let mut r2 = RelayProcess::start_on(p2, &["--federation-http", "--registry", &registry]);
    let (alice, bob) = (identity("Alice"), identity("Bob"));
    let a = register(&registry, &alice, &[r1.domain()]).await;
    let b = register(&registry, &bob, &[r2.domain()]).await;
    let mut ca = TestClient::connect(&r1.ws_url(), &alice, a, None).await;

    r2.kill();
    // fail-fast: the sender wants to know at once.
    let mut fast = request(&alice, Address::twin(a), b, "fast-1", b"now", 60);
    fast.tags = Some("fail-fast".into());
    alice.seal_envelope(&mut fast, None, now()).unwrap();
    ca.send(&fast).await;
    let error = ca
        .recv(Duration::from_secs(15))
        .await
        .expect("an error envelope");
    assert_eq!(error.uid, "fast-1");
    assert!(
        error_text(&error).is_some_and(|t| t.starts_with("federation failed")),
        "{error:?}"
    );

    // Otherwise the relay keeps trying while the other one is down.
    let later = request(&alice, Address::twin(a), b, "later-1", b"wait for it", 60);
    ca.send(&later).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    r2.relaunch();
    let mut cb = TestClient::connect(&r2.ws_url(), &bob, b, None).await;
    // Retries come every 5 s at most; a loaded machine may take a while to restart r2.
    let got = cb.recv(Duration::from_secs(30)).await;
    let to_sender = ca.recv(QUIET).await;
    assert_eq!(
        got,
        Some(later),
        "what the sender got meanwhile: {to_sender:?}"
    );
    assert_eq!(to_sender, None, "no error for the sender");
}
