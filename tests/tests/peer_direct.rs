//! The direct client library (`rmb_peer::Client`) against real `rmb-relay` processes:
//! calls both ways through one relay and across two federating relays, errors a caller
//! sees (remote error, no handler, unknown twin, relay error), and failover when one of
//! two relays is killed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rmb_identity::registry::Registry;
use rmb_identity::registry::http::HttpRegistry;
use rmb_identity::{E2eScheme, Identity, KeyType};
use rmb_peer::{CallError, Client, RemoteError};
use rmb_testsupport::direct::{connect_client, fresh_mnemonic, register_secret};
use rmb_testsupport::redis_server::free_port;
use rmb_testsupport::relay_process::RelayProcess;

const CALL: Duration = Duration::from_secs(15);

/// Serves `echo` (payload back, prefixed with the server's name) and `fail` (error 42).
fn serve_echo(client: &Client, name: &'static str) -> Arc<AtomicUsize> {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    client.serve("echo", move |req| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut out = format!("{name}:").into_bytes();
            out.extend_from_slice(&req.payload);
            Ok(out)
        }
    });
    client.serve("fail", |_| async {
        Err(RemoteError::new(42, "refused on purpose"))
    });
    calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_call_each_other_through_one_relay() {
    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let (sa, sb) = (fresh_mnemonic(), fresh_mnemonic());
    let a = register_secret(&registry, &sa, &[relay.domain()]).await;
    let b = register_secret(&registry, &sb, &[relay.domain()]).await;
    let alice = connect_client(&sa, "alice-app", &[&relay], &registry).await;
    let bob = connect_client(&sb, "bob-app", &[&relay], &registry).await;
    assert_eq!((alice.twin_id(), bob.twin_id()), (a, b));
    serve_echo(&alice, "alice");
    let bob_calls = serve_echo(&bob, "bob");

    // Connecting published each client's relay and x25519 key, so traffic is encrypted.
    let published = HttpRegistry::new(&registry)
        .unwrap()
        .get_twin(b)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(published.relays, [relay.domain()].into());
    let bob_identity = Identity::from_secret(&sb, KeyType::Sr25519).unwrap();
    assert_eq!(
        published.pk,
        Some(bob_identity.e2e_public_key(E2eScheme::X25519))
    );

    let reply = alice
        .call_address(bob.address().clone(), "echo", b"hello".to_vec(), CALL)
        .await
        .unwrap();
    assert_eq!(reply.payload, b"bob:hello");
    assert_eq!(&reply.source, bob.address());
    let reply = bob
        .call_address(alice.address().clone(), "echo", b"hi".to_vec(), CALL)
        .await
        .unwrap();
    assert_eq!(reply.payload, b"alice:hi");

    // Many calls at once: each reply reaches its own caller.
    let calls = (0..64).map(|i| {
        let (alice, to) = (&alice, bob.address().clone());
        async move {
            let body = format!("n{i}");
            let reply = alice
                .call_address(to, "echo", body.clone(), CALL)
                .await
                .unwrap();
            assert_eq!(reply.payload, format!("bob:{body}").into_bytes());
        }
    });
    futures_util::future::join_all(calls).await;
    assert_eq!(bob_calls.load(Ordering::SeqCst), 65);

    // What a caller sees when things go wrong.
    match alice
        .call_address(bob.address().clone(), "fail", b"".to_vec(), CALL)
        .await
    {
        Err(CallError::Remote { from, error }) => {
            assert_eq!(&from, bob.address());
            assert_eq!(error, RemoteError::new(42, "refused on purpose"));
        }
        other => panic!("expected a remote error, got {other:?}"),
    }
    match alice
        .call_address(bob.address().clone(), "no.such.command", b"".to_vec(), CALL)
        .await
    {
        Err(CallError::Remote { error, .. }) => {
            assert_eq!(error.code, 0);
            assert_eq!(error.message, "no handler for command 'no.such.command'");
        }
        other => panic!("expected a no-handler error, got {other:?}"),
    }
    assert_eq!(
        alice.call(999_999, "echo", b"x".to_vec(), CALL).await,
        Err(CallError::UnknownTwin(999_999))
    );
    // Bob's twin-level address (no session) is not connected: the relay queues it, so
    // the call ends at its own timeout with a clear error rather than hanging.
    assert_eq!(
        alice
            .call(b, "echo", b"x".to_vec(), Duration::from_secs(2))
            .await,
        Err(CallError::Timeout(Duration::from_secs(2)))
    );

    // rmb.version is answered by the peer core itself.
    let version = alice
        .call_address(bob.address().clone(), "rmb.version", b"".to_vec(), CALL)
        .await
        .unwrap();
    assert_eq!(version.schema.as_deref(), Some("application/json"));
    let text: String = serde_json::from_slice(&version.payload).unwrap();
    assert_eq!(text, rmb_peer::VERSION);
    assert!(
        text.starts_with(concat!("v", env!("CARGO_PKG_VERSION"), "-g")),
        "rmb.version names the commit: {text}"
    );

    let status = bob.status();
    assert_eq!((status.twin, status.sid.as_deref()), (b, Some("bob-app")));
    assert!(status.relays[0].connected);
    assert!(status.received >= 68, "{status:?}");
    assert_eq!(status.rejected, 0, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_error_reaches_the_caller_as_such() {
    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let (sa, sb) = (fresh_mnemonic(), fresh_mnemonic());
    register_secret(&registry, &sa, &[relay.domain()]).await;
    // Bob's twin lists no relay this network serves: the relay cannot deliver to it.
    let dead = format!("127.0.0.1:{}", free_port());
    let b = register_secret(&registry, &sb, &[dead]).await;
    let alice = connect_client(&sa, "alice-app", &[&relay], &registry).await;
    match alice.call(b, "echo", b"x".to_vec(), CALL).await {
        Err(CallError::Relay(message)) => assert!(!message.is_empty()),
        other => panic!("expected a relay error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_cross_two_federating_relays() {
    let (p1, p2) = (free_port(), free_port());
    let r1 = RelayProcess::start_on(p1, &["--federation-http"]);
    let registry = r1.http_url();
    let r2 = RelayProcess::start_on(p2, &["--federation-http", "--registry", &registry]);
    let (sa, sb) = (fresh_mnemonic(), fresh_mnemonic());
    register_secret(&registry, &sa, &[r1.domain()]).await;
    register_secret(&registry, &sb, &[r2.domain()]).await;
    let alice = connect_client(&sa, "a", &[&r1], &registry).await;
    let bob = connect_client(&sb, "b", &[&r2], &registry).await;
    serve_echo(&alice, "alice");
    serve_echo(&bob, "bob");

    for i in 0..5 {
        let reply = alice
            .call_address(bob.address().clone(), "echo", format!("{i}"), CALL)
            .await
            .unwrap();
        assert_eq!(reply.payload, format!("bob:{i}").into_bytes());
        let reply = bob
            .call_address(alice.address().clone(), "echo", format!("{i}"), CALL)
            .await
            .unwrap();
        assert_eq!(reply.payload, format!("alice:{i}").into_bytes());
    }
}

/// Polls `check` every 50 ms for up to 20 s.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    for _ in 0..400 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_with_two_relays_survive_one_being_killed() {
    // The registry lives on a third relay, so killing r1 takes down a relay, not the
    // network's registry.
    let r0 = RelayProcess::start(&[]);
    let registry = r0.http_url();
    let mut r1 = RelayProcess::start(&["--federation-http", "--registry", &registry]);
    let r2 = RelayProcess::start(&["--federation-http", "--registry", &registry]);
    let (sa, sb) = (fresh_mnemonic(), fresh_mnemonic());
    let both = [r1.domain(), r2.domain()];
    register_secret(&registry, &sa, &both).await;
    register_secret(&registry, &sb, &both).await;
    let alice = connect_client(&sa, "a", &[&r1, &r2], &registry).await;
    let bob = connect_client(&sb, "b", &[&r1, &r2], &registry).await;
    serve_echo(&bob, "bob");
    eventually("all four links up", || {
        alice.status().relays.iter().all(|l| l.connected)
            && bob.status().relays.iter().all(|l| l.connected)
    })
    .await;

    let call = |i: usize| {
        let (alice, to) = (&alice, bob.address().clone());
        async move {
            let reply = alice.call_address(to, "echo", format!("{i}"), CALL).await;
            assert_eq!(
                reply.unwrap().payload,
                format!("bob:{i}").into_bytes(),
                "call {i}"
            );
        }
    };
    for i in 0..5 {
        call(i).await;
    }
    let before = alice.status().relays[0].sent;
    assert!(before > 0, "the first relay was in use before the kill");

    r1.kill();
    eventually("both clients to notice the dead relay", || {
        !alice.status().relays[0].connected && !bob.status().relays[0].connected
    })
    .await;
    for i in 5..25 {
        call(i).await;
    }
    let status = alice.status();
    assert!(
        status.relays[1].connected && status.relays[1].sent >= 20,
        "{status:?}"
    );
    assert_eq!(status.relays[0].reconnects, 1, "{status:?}");
    assert!(status.relays[0].last_error.is_some(), "{status:?}");
}
