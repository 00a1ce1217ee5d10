//! Item 4 between direct clients: acknowledgements reflected and re-sourced by a relay
//! in the middle, for both e2e schemes, and connection frames treated the same way.

use super::evil_relay::*;
use super::*;

/// A direct client of a fresh twin registered listing `home` and publishing its
/// `scheme` key (`pk` overrides the key, for a twin posing with another's), connected
/// through `via` (its relay, maybe an evil one) without updating the registry.
pub(super) async fn client(
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
pub(super) fn take_acks(client: &Client) -> mpsc::UnboundedReceiver<Taken> {
    let (tx, rx) = mpsc::unbounded_channel();
    client.serve("rmb.topic.ack", move |req| {
        let _ = tx.send((
            req.source.twin,
            req.payload.clone(),
            req.auth == rmb_peer::core::RequestAuth::Signed,
        ));
        async { Ok(Vec::new()) }
    });
    rx
}

/// Sends an acknowledgement as the topic layer does: one-way, unsigned when it can be.
pub(super) async fn ack(from: &Client, to: &Client, last: u64) {
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
pub(super) fn unanswered(client: &Client) -> u64 {
    let status = serde_json::to_value(client.status()).unwrap();
    status["unanswered"].as_u64().unwrap_or(0)
}

/// Waits until `client` counted `n` refusals for `reason` (or [`WAIT`] passed); the count.
pub(super) async fn wait_rejected(client: &Client, reason: &str, n: u64) -> u64 {
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
pub(super) async fn reflect_and_resource(scheme: E2eScheme) {
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
pub(super) async fn a_relay_cannot_reflect_or_resource_unsigned_x25519_traffic() {
    reflect_and_resource(E2eScheme::X25519).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(super) async fn a_relay_cannot_reflect_or_resource_unsigned_secp256k1_traffic() {
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
pub(super) async fn a_relay_cannot_reflect_or_resource_connection_frames() {
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
