//! What travels between peers: relays see only ciphertext, forged unsigned pushes are
//! refused, unacknowledged pushes are sent again until acknowledged.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rmb_identity::Identity;
use rmb_testsupport::relay_process::RelayProcess;
use serde_json::{Value, json};

use super::node::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_see_only_ciphertext_of_topic_messages() {
    use rmb_identity::E2eScheme;
    use rmb_identity::registry::Registry;
    use rmb_identity::registry::http::HttpRegistry;
    use rmb_proto::{Address, Envelope, Message, Payload, Request};
    use rmb_testsupport::relay_client::now;

    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let alice = Node::start("//Alice", &[&relay], &registry).await;
    create(&alice, "secret", json!({})).await;

    // Eve is a bare relay session: what she receives is exactly what relays carry.
    let (eve, eve_twin, mut session) = bare_twin(&relay, "//Eve").await;
    let mut subscribe = Envelope {
        uid: "eve-subscribes".into(),
        expiration: 60,
        source: Some(Address::twin(eve_twin)),
        destination: Some(Address::twin(alice.twin)),
        message: Some(Message::Request(Request {
            command: "rmb.topic.subscribe".into(),
        })),
        payload: Some(Payload::Plain(br#"{"topic":"secret"}"#.to_vec())),
        ..Default::default()
    };
    eve.seal_envelope(&mut subscribe, None, now()).unwrap();
    session.send(&subscribe).await;
    let answer = session
        .recv(WAIT)
        .await
        .expect("an answer to the subscription");
    assert_eq!(answer.uid, "eve-subscribes");
    assert!(
        matches!(answer.message, Some(Message::Response(_))),
        "{answer:?}"
    );

    let secret = "the launch code is 0000";
    assert_eq!(
        publish(&alice, &format!("{}/secret", alice.twin), secret)
            .await
            .0,
        200
    );
    let pushed = session.recv(WAIT).await.expect("the message is pushed");
    assert!(
        matches!(&pushed.message, Some(Message::Request(r)) if r.command == "rmb.topic.message")
    );
    let Some(Payload::Cipher(cipher)) = &pushed.payload else {
        panic!("a topic message travels encrypted: {:?}", pushed.payload)
    };
    assert!(
        !cipher.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "the plaintext is visible on the wire"
    );
    assert!(!pushed.to_bytes().windows(6).any(|w| w == b"launch"));

    // Both publish x25519 keys, so the push goes without a signature: its encryption
    // proves it is Alice's (the key her published key derives), which Eve checks.
    assert_eq!(
        pushed.signature, None,
        "pushes between rmb peers go unsigned"
    );
    let alice_pk = HttpRegistry::new(&registry)
        .unwrap()
        .get_twin(alice.twin)
        .await
        .unwrap()
        .unwrap()
        .pk
        .unwrap();
    let plain = eve
        .e2e()
        .open_from(
            E2eScheme::X25519,
            &alice_pk,
            cipher,
            &pushed.unsigned_binding(),
        )
        .expect("the push authenticates as Alice's, to Eve");
    assert!(String::from_utf8_lossy(&plain).contains(secret));
}

/// Pushes go unsigned ([`rmb_peer::core::unsigned`]), so the subscriber must not take an
/// unsigned envelope on its word: Mallory, a twin with a relay session, forges each kind
/// a subscriber could be fooled by, and Bob's peer refuses every one, counted by reason,
/// and still gets Alice's real message as id 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_forgeries_are_refused_by_subscribers() {
    use rmb_proto::{Address, Envelope, Message, Payload, Request, Response};
    use rmb_testsupport::relay_client::now;

    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let alice = Node::start("//Alice", &[&relay], &registry).await;
    let bob = Node::start("//Bob", &[&relay], &registry).await;
    create(&alice, "news", json!({})).await;
    let topic = format!("{}/news", alice.twin);
    subscribe(&bob, &topic, json!({ "since": 0 })).await;

    let (mallory, mallory_twin, mut session) = bare_twin(&relay, "//Mallory").await;
    let bob_pk = published_key(&registry, bob.twin).await;
    let batch = |text: &str| {
        json!({"messages": [{
            "id": 1, "event": "message", "topic": topic, "time": now(),
            "publisher": alice.twin, "message": text,
        }]})
        .to_string()
        .into_bytes()
    };
    let unsigned = |uid: &str, source: u32, message: Message, body: Vec<u8>| {
        let mut env = Envelope {
            uid: uid.into(),
            expiration: 60,
            source: Some(Address::twin(source)),
            destination: Some(Address::twin(bob.twin)),
            message: Some(message),
            payload: Some(Payload::Plain(body)),
            ..Default::default()
        };
        mallory
            .encrypt_envelope(&mut env, &bob_pk, rmb_proto::Binding::Topic, now())
            .unwrap();
        assert_eq!(env.signature, None);
        env
    };
    let push = || {
        Message::Request(Request {
            command: "rmb.topic.message".into(),
        })
    };

    // 1. A push claiming to be Alice's, encrypted with Mallory's own key. The relay
    // refuses a session's envelope with another source, so Mallory posts it as a
    // relay would forward it (federation does not verify unsigned envelopes either).
    let forged = unsigned("forged-1", alice.twin, push(), batch("forged"));
    let posted = client()
        .post(relay.http_url())
        .body(forged.to_bytes())
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 202, "{}", posted.text().await.unwrap());
    // 2. A push in her own name for Alice's topic: authentic, but not from the owner.
    session
        .send(&unsigned(
            "forged-2",
            mallory_twin,
            push(),
            batch("not the owner"),
        ))
        .await;
    // 3. Another command unsigned, and 4. an answer to nothing Bob sent unsigned.
    let call = Message::Request(Request {
        command: "calc.add".into(),
    });
    session
        .send(&unsigned("forged-3", mallory_twin, call, b"[1,2]".to_vec()))
        .await;
    session
        .send(&unsigned(
            "forged-4",
            mallory_twin,
            Message::Response(Response {}),
            b"{}".to_vec(),
        ))
        .await;

    // Mallory's authenticated push is answered with an error: 403 (not the owner). Her
    // unsigned `calc.add` proves nothing about its sender, so it gets no answer (one
    // would go to whichever twin it names).
    let mut codes = BTreeMap::new();
    while let Some(answer) = session.recv(Duration::from_secs(3)).await {
        if let Some(Message::Error(e)) = answer.message {
            codes.insert(answer.uid, e.code);
        }
    }
    assert_eq!(codes.get("forged-2"), Some(&403), "{codes:?}");
    assert_eq!(codes.get("forged-3"), None, "{codes:?}");

    let status = tokio::task::block_in_place(|| {
        let deadline = Instant::now() + WAIT;
        loop {
            let status = bob.peer.status().expect("status key");
            let by = &status["rejected_by"];
            // Unsigned RPCs and answers are opened with the RPC binding (protocol.md
            // §3.4): the forged `calc.add` and answer fail there, as `crypto`.
            let done = by["crypto"].as_u64().unwrap_or(0) >= 3;
            if done || Instant::now() > deadline {
                return status;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    assert_eq!(status["rejected_by"]["crypto"], 3, "{status}");
    assert!(status["rejected_by"]["bad_signature"].is_null(), "{status}");
    // The forged push and `calc.add` were requests: dropped unanswered.
    assert_eq!(status["unanswered"], 2, "{status}");

    // Nothing forged reached Bob's apps; Alice's real message is id 1.
    assert_eq!(publish(&alice, &topic, "real").await.0, 200);
    let got = poll_until(&bob, &topic, 1).await;
    assert_eq!(ids_and_texts(&got), [(1, "real".to_string())]);
}

/// The owner's side of cumulative acknowledgements, seen by a subscriber written here
/// from docs/protocol.md §9: it subscribes saying it acknowledges cumulatively, gets
/// pushes it need not answer, and gets them again while it does not acknowledge them;
/// once it does, nothing comes again. A subscriber that does not say so gets pushes to
/// answer, as from the first version of the protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_pushes_are_sent_again_until_acknowledged() {
    use rmb_identity::E2eScheme;
    use rmb_proto::{Address, Envelope, Message, Payload, Request};
    use rmb_testsupport::relay_client::{TestClient, now};

    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let alice = Node::start("//Alice", &[&relay], &registry).await;
    create(&alice, "news", json!({})).await;
    let topic = format!("{}/news", alice.twin);

    let alice_pk = published_key(&registry, alice.twin).await;
    // Two subscribers of our own: Carol acknowledges cumulatively, Dave answers pushes.
    let (carol, carol_twin, mut carol_session) = bare_twin(&relay, "//AckCarol").await;
    let (dave, dave_twin, mut dave_session) = bare_twin(&relay, "//AckDave").await;

    let request = |identity: &Identity, twin: u32, uid: &str, command: &str, body: Value| {
        let mut env = Envelope {
            uid: uid.into(),
            expiration: 60,
            source: Some(Address::twin(twin)),
            destination: Some(Address::twin(alice.twin)),
            message: Some(Message::Request(Request {
                command: command.into(),
            })),
            payload: Some(Payload::Plain(body.to_string().into_bytes())),
            ..Default::default()
        };
        identity
            .seal_envelope(&mut env, Some(&alice_pk), now())
            .unwrap();
        env
    };
    let open = |identity: &Identity, env: &Envelope| -> Value {
        let Some(Payload::Cipher(cipher)) = &env.payload else {
            panic!("not encrypted: {env:?}");
        };
        // Unsigned pushes are sealed bound to their direction, uid and command.
        let plain = if env.is_unsigned() {
            identity.e2e().open_from(
                E2eScheme::X25519,
                &alice_pk,
                cipher,
                &env.unsigned_binding(),
            )
        } else {
            identity
                .e2e()
                .open(E2eScheme::X25519, Some(&alice_pk), cipher)
        };
        let plain = plain.unwrap();
        serde_json::from_slice(&plain).unwrap()
    };
    // The next envelope with `command` (answers to our subscribe are skipped).
    async fn next_push(session: &mut TestClient) -> Envelope {
        loop {
            let env = session.recv(WAIT).await.expect("a push");
            if matches!(&env.message, Some(Message::Request(r)) if r.command == "rmb.topic.message")
            {
                return env;
            }
        }
    }

    carol_session
        .send(&request(
            &carol,
            carol_twin,
            "sub-carol",
            "rmb.topic.subscribe",
            json!({"topic": "news", "acks": "cumulative"}),
        ))
        .await;
    dave_session
        .send(&request(
            &dave,
            dave_twin,
            "sub-dave",
            "rmb.topic.subscribe",
            json!({"topic": "news"}),
        ))
        .await;
    // Both subscriptions are recorded before the first publish.
    let deadline = Instant::now() + WAIT;
    loop {
        let info: Value = client()
            .get(alice.url(&format!("/topics/{topic}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if info["subscribers"].as_array().is_some_and(|s| s.len() == 2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "subscriptions not recorded: {info}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    assert_eq!(publish(&alice, &topic, "m1").await.0, 200);
    // Dave's push asks for an answer (no "acks"), Carol's does not.
    let dave_push = next_push(&mut dave_session).await;
    let body = open(&dave, &dave_push);
    assert_eq!(body.get("acks"), None, "{body}");
    let first = next_push(&mut carol_session).await;
    let first_at = Instant::now();
    assert_eq!(first.signature, None, "pushes go unsigned");
    let body = open(&carol, &first);
    assert_eq!(body["acks"], "cumulative", "{body}");
    assert_eq!(body["messages"][0]["id"], 1);
    assert_eq!(body["messages"][0]["message"], "m1");

    // Carol says nothing: the owner sends id 1 again (after a second), saying how far
    // the topic got.
    let again = next_push(&mut carol_session).await;
    let waited = first_at.elapsed();
    let body = open(&carol, &again);
    assert_eq!(body["messages"][0]["id"], 1, "{body}");
    assert_eq!(body["last"], 1, "{body}");
    assert_ne!(again.uid, first.uid, "a new push, not a copy of the first");
    assert!(
        waited >= Duration::from_millis(500),
        "sent again only after a wait ({waited:?})"
    );

    // Carol acknowledges (unsigned, authenticated by its encryption) and gets id 2 once.
    let ack = |uid: &str, topic: &str, last: u64| {
        let mut env = Envelope {
            uid: uid.into(),
            expiration: 60,
            source: Some(Address::twin(carol_twin)),
            destination: Some(Address::twin(alice.twin)),
            message: Some(Message::Request(Request {
                command: "rmb.topic.ack".into(),
            })),
            payload: Some(Payload::Plain(
                json!({"topic": topic, "last": last})
                    .to_string()
                    .into_bytes(),
            )),
            ..Default::default()
        };
        carol
            .encrypt_envelope(&mut env, &alice_pk, rmb_proto::Binding::Topic, now())
            .unwrap();
        env
    };
    carol_session.send(&ack("ack-1", "news", 1)).await;
    // And one for a topic she does not subscribe to, which is dropped and counted.
    carol_session.send(&ack("ack-x", "other", 5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(publish(&alice, &topic, "m2").await.0, 200);
    let push = next_push(&mut carol_session).await;
    let body = open(&carol, &push);
    assert_eq!(body["messages"][0]["id"], 2, "{body}");
    assert_eq!(body.get("last"), None, "{body}");
    carol_session.send(&ack("ack-2", "news", 2)).await;
    // Nothing more comes to Carol: every push is acknowledged.
    let quiet_until = Instant::now() + Duration::from_secs(3);
    while let Some(env) = carol_session
        .recv(quiet_until.saturating_duration_since(Instant::now()))
        .await
    {
        assert!(
            !matches!(&env.message, Some(Message::Request(r)) if r.command == "rmb.topic.message"),
            "an acknowledged push came again: {}",
            open(&carol, &env)
        );
    }

    let listing = alice.listing().await;
    let counters = &listing["counters"];
    assert!(counters["resent"].as_u64().unwrap() >= 1, "{counters}");
    assert_eq!(counters["acks_received"], 2, "{counters}");
    assert_eq!(
        counters["refused_by"]["ack_not_subscribed"], 1,
        "{counters}"
    );
}
