//! Issue #30 item 6: a captured login token cannot be replayed. Real `rmb-relay`
//! processes (and a real `rmb-peer`), over loopback:
//!
//! - a token replayed while its twin is connected is refused before it could replace
//!   the twin's session, which keeps its traffic; replayed after the twin left, refused
//!   too; the same claims with other signature bytes or base64 padding are the same
//!   login;
//! - tokens kept long (issued minutes ago) or made to live long are refused, while the
//!   lifetimes rmb-rs peers (300 s) and the TS client (1000 s) use are accepted;
//! - with `--redis`, a token used on one replica is refused on another replica of the
//!   same relay, and by a replica restarted since;
//! - the memory of used tokens is bounded (`--login-memory`): when full, logins are
//!   refused rather than a token forgotten while it could still be replayed;
//! - our peer, dropped by the relay twice within one second, reconnects without ever
//!   showing a token twice.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rmb_identity::{Identity, KeyType, Token};
use rmb_proto::Address;
use rmb_testsupport::peer_process::PeerProcess;
use rmb_testsupport::redis_server::RedisServer;
use rmb_testsupport::registry::register;
use rmb_testsupport::relay_client::{TestClient, fresh_token, now, request};
use rmb_testsupport::relay_process::RelayProcess;

const WAIT: Duration = Duration::from_secs(10);

fn identity(name: &str) -> Identity {
    Identity::from_secret(&format!("//{name}"), KeyType::Sr25519).unwrap()
}

/// A login token as an rmb-rs peer makes it: issued now, for 300 s, no session id.
fn peer_token(who: &Identity, twin: u32) -> String {
    Token::create(who.signer(), twin, None, now(), 300)
}

/// Asserts that `client` (twin `to`) is still the session of its twin: an envelope `bob`
/// (connected as `from`) sends it arrives.
async fn still_connected(
    client: &mut TestClient,
    bob: &mut TestClient,
    who: &Identity,
    from: u32,
    to: u32,
    uid: &str,
) {
    let sent = request(who, Address::twin(from), to, uid, b"still yours?", 60);
    bob.send(&sent).await;
    assert_eq!(
        client.recv(WAIT).await,
        Some(sent),
        "the victim lost its session"
    );
}

fn refused_as_used(result: Result<TestClient, (u16, String)>) {
    match result {
        Ok(_) => panic!("a replayed token was accepted"),
        Err((status, body)) => {
            assert_eq!(status, 401, "{body}");
            assert!(body.contains("already used"), "{body}");
        }
    }
}

#[tokio::test]
async fn a_replayed_token_is_refused_and_the_victim_keeps_its_session() {
    let relay = RelayProcess::start(&[]);
    let (alice, bob) = (identity("Alice"), identity("Bob"));
    let a = register(&relay.http_url(), &alice, &[relay.domain()]).await;
    let b = register(&relay.http_url(), &bob, &[relay.domain()]).await;
    let mut cb = TestClient::connect(&relay.ws_url(), &bob, b, None).await;
    let token = peer_token(&alice, a);
    let mut victim = TestClient::connect_with(&relay.ws_url(), a, &token)
        .await
        .expect("the first use of a token is a login");

    // Replayed while Alice is connected: refused, and Alice keeps her session.
    refused_as_used(TestClient::connect_with(&relay.ws_url(), a, &token).await);
    still_connected(&mut victim, &mut cb, &bob, b, a, "after-replay-1").await;
    // The same login with base64 padding on the signature, or the same claims signed
    // again (sr25519 signatures differ each time): the same token.
    refused_as_used(TestClient::connect_with(&relay.ws_url(), a, &format!("{token}=")).await);
    let claims = Token::parse(&token).unwrap().claims().clone();
    let resigned = Token::create(alice.signer(), a, None, claims.iat, claims.exp - claims.iat);
    assert_ne!(resigned, token);
    refused_as_used(TestClient::connect_with(&relay.ws_url(), a, &resigned).await);
    still_connected(&mut victim, &mut cb, &bob, b, a, "after-replay-2").await;

    // After Alice left: still refused.
    drop(victim);
    refused_as_used(TestClient::connect_with(&relay.ws_url(), a, &token).await);
    assert!(relay.error_count("login_replayed").await >= 4);
    // A new token (other claims) logs in as always.
    TestClient::connect_with(&relay.ws_url(), a, &fresh_token(&alice, a, None))
        .await
        .expect("a fresh token logs in");
}

#[tokio::test]
async fn tokens_kept_or_made_to_live_long_are_refused() {
    let relay = RelayProcess::start(&[]);
    let alice = identity("Alice");
    let a = register(&relay.http_url(), &alice, &[relay.domain()]).await;
    let login = |token: String| {
        let url = relay.ws_url();
        async move { TestClient::connect_with(&url, a, &token).await.map(|_| ()) }
    };
    // Issued two and a half minutes ago, valid for five: a kept token, refused.
    let kept = Token::create(alice.signer(), a, None, now() - 150, 300);
    let (status, body) = login(kept).await.unwrap_err();
    assert_eq!(status, 401);
    assert!(body.contains("too long ago"), "{body}");
    // Made to live 50 minutes: refused.
    let long = Token::create(alice.signer(), a, None, now(), 3000);
    let (status, body) = login(long).await.unwrap_err();
    assert_eq!(status, 401);
    assert!(body.contains("lifetime"), "{body}");
    // What rmb-rs peers (300 s) and the TS client (1000 s, with a session id) send.
    login(Token::create(alice.signer(), a, None, now(), 300))
        .await
        .expect("an rmb-rs peer's token");
    login(Token::create(
        alice.signer(),
        a,
        Some("tsclient"),
        now(),
        1000,
    ))
    .await
    .expect("the TS client's token");
}

#[tokio::test]
async fn a_token_used_on_one_replica_is_refused_on_the_others() {
    const DOMAIN: &str = "relay.test";
    let redis = RedisServer::start();
    let replica = || RelayProcess::start(&["--domain", DOMAIN, "--redis", &redis.url()]);
    let (mut r1, r2) = (replica(), replica());
    let (alice, bob) = (identity("Alice"), identity("Bob"));
    let a = register(&r1.http_url(), &alice, &[DOMAIN.to_string()]).await;
    let b = register(&r1.http_url(), &bob, &[DOMAIN.to_string()]).await;
    let mut cb = TestClient::connect(&r1.ws_url(), &bob, b, None).await;
    let token = peer_token(&alice, a);
    let mut victim = TestClient::connect_with(&r1.ws_url(), a, &token)
        .await
        .expect("the first use of a token is a login");

    refused_as_used(TestClient::connect_with(&r2.ws_url(), a, &token).await);
    assert_eq!(r2.error_count("login_replayed").await, 1);
    still_connected(&mut victim, &mut cb, &bob, b, a, "after-replay").await;

    // Remembered in Redis, not by the replica: a restarted one refuses it too.
    drop((victim, cb));
    r1.restart();
    refused_as_used(TestClient::connect_with(&r1.ws_url(), a, &token).await);
    TestClient::connect_with(&r2.ws_url(), a, &fresh_token(&alice, a, None))
        .await
        .expect("a fresh token logs in");
}

#[tokio::test]
async fn a_full_memory_of_used_tokens_refuses_logins_instead_of_forgetting() {
    let relay = RelayProcess::start(&["--login-memory", "2"]);
    let alice = identity("Alice");
    let a = register(&relay.http_url(), &alice, &[relay.domain()]).await;
    let first = fresh_token(&alice, a, None);
    for token in [first.clone(), fresh_token(&alice, a, None)] {
        TestClient::connect_with(&relay.ws_url(), a, &token)
            .await
            .expect("room for two tokens");
    }
    let refused = TestClient::connect_with(&relay.ws_url(), a, &fresh_token(&alice, a, None)).await;
    assert_eq!(
        refused.err(),
        Some((
            503,
            "too many logins at once; try again shortly".to_string()
        ))
    );
    assert_eq!(relay.error_count("login_memory_full").await, 1);
    // The two it holds are still refused as used, not forgotten to make room.
    refused_as_used(TestClient::connect_with(&relay.ws_url(), a, &first).await);
    let health: serde_json::Value = reqwest::get(format!("{}/health", relay.http_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        health["used_logins"],
        serde_json::json!({"store": "memory", "remembered": 2})
    );
}

/// Sleeps until 20 ms into the next wall-clock second.
async fn next_second() {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let into = Duration::from_nanos(u64::from(since.subsec_nanos()));
    tokio::time::sleep(Duration::from_secs(1) - into + Duration::from_millis(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_dropped_twice_in_a_second_reconnects_without_repeating_a_token() {
    let relay = RelayProcess::start(&[]);
    let alice = identity("Alice");
    let a = register(&relay.http_url(), &alice, &[relay.domain()]).await;
    let redis = RedisServer::start();
    let _peer = tokio::task::block_in_place(|| {
        PeerProcess::start(
            "//Alice",
            &redis.url(),
            &[relay.ws_url()],
            &relay.http_url(),
            &[],
        )
    });
    // A login of Alice's session replaces the peer's connection; the peer reconnects
    // after its first backoff (0.1-0.2 s) and replaces this one in turn. Done at the
    // start of a second and again at once, the peer logs in twice within that second
    // (its second backoff is 0.2-0.4 s): with the same claims it would show the same
    // token twice.
    next_second().await;
    for round in 0..2 {
        let mut kicker = TestClient::connect(&relay.ws_url(), &alice, a, None).await;
        assert!(
            kicker.closed(WAIT).await,
            "the peer did not reconnect (round {round})"
        );
    }
    assert_eq!(relay.error_count("login_replayed").await, 0);
    assert_eq!(relay.error_count("login").await, 0);
}
