//! Opening and closing: refused, unknown and not-allowed protocols, half-close and
//! close, a killed far side, a reader that stops reading.

use std::time::Duration;

use rmb_peer::Client;
use rmb_peer::conn::{Cipher, ConnectError, ListenOptions, StreamError};
use rmb_testsupport::direct::{client_options, fresh_mnemonic, register_secret};
use rmb_testsupport::relay_process::RelayProcess;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_refused_and_not_allowed_protocols_are_distinct_errors() {
    let relay = RelayProcess::start(&[]);
    let (alice, bob) = pair(&relay).await;
    let to = bob.address().clone();
    let conns = alice.connections();

    match conns.connect_address(to.clone(), "nothing-here").await {
        Err(ConnectError::UnknownProtocol { twin, protocol }) => {
            assert_eq!((twin, protocol.as_str()), (to.twin, "nothing-here"))
        }
        other => panic!("expected an unknown protocol, got {:?}", other.err()),
    }

    // Only some other twin may open "private".
    let _private = bob
        .connections()
        .listen("private", ListenOptions::allow([to.twin + 1000]))
        .unwrap();
    match conns.connect_address(to.clone(), "private").await {
        Err(ConnectError::NotAllowed { .. }) => {}
        other => panic!("expected not allowed, got {:?}", other.err()),
    }

    // A handler that looks at the opener and refuses.
    let mut picky = bob
        .connections()
        .listen("picky", ListenOptions::default())
        .unwrap();
    let alice_twin = alice.twin_id();
    let refuser = tokio::spawn(async move {
        let incoming = picky.next().await.unwrap();
        assert_eq!(incoming.remote().twin, alice_twin);
        assert_eq!(incoming.protocol(), "picky");
        incoming.refuse("not today").await;
    });
    match conns.connect_address(to.clone(), "picky").await {
        Err(ConnectError::Refused { reason, .. }) => assert_eq!(reason, "not today"),
        other => panic!("expected refused, got {:?}", other.err()),
    }
    refuser.await.unwrap();

    // Unknown twin, and a twin nobody answers for (its session is not connected).
    match conns.connect(999_999, "x").await {
        Err(ConnectError::UnknownTwin(999_999)) => {}
        other => panic!("expected unknown twin, got {:?}", other.err()),
    }
    let mut short = client_options(&fresh_mnemonic(), "short", &[&relay], &relay.http_url());
    register_secret(&relay.http_url(), &short.secret, &[relay.domain()]).await;
    short.connections.open_timeout = Duration::from_secs(2);
    let short = Client::connect(short).await.unwrap();
    match short
        .connections()
        .connect_address(rmb_proto::Address::session(to.twin, "gone"), "x")
        .await
    {
        Err(ConnectError::Timeout { waited, .. }) => assert_eq!(waited, Duration::from_secs(2)),
        other => panic!("expected a timeout, got {:?}", other.err()),
    }

    let counters = bob.connections().counters();
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(counters.refused_unknown_protocol.load(Relaxed), 1);
    assert_eq!(counters.refused_not_allowed.load(Relaxed), 1);
    assert_eq!(counters.refused_by_handler.load(Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_and_close_are_seen_by_both_sides() {
    let relay = RelayProcess::start(&[]);
    let (alice, bob) = pair(&relay).await;
    let mut listener = bob
        .connections()
        .listen("chat", ListenOptions::default())
        .unwrap();
    let to = bob.address().clone();
    let (a, b) = tokio::join!(
        alice.connections().connect_address(to.clone(), "chat"),
        async { listener.accept().await.unwrap() }
    );
    let (mut a, mut b) = (a.unwrap(), b.unwrap());
    a.send_message(b"question").await.unwrap();
    a.finish().await.expect("our FIN is acknowledged");
    assert_eq!(b.recv_message().await.unwrap().unwrap(), b"question");
    assert_eq!(
        b.recv_message().await.unwrap(),
        None,
        "B sees A's half-close"
    );
    // A finished writing but still reads.
    b.send_message(b"answer").await.unwrap();
    b.finish().await.unwrap();
    assert_eq!(a.recv_message().await.unwrap().unwrap(), b"answer");
    assert_eq!(a.recv_message().await.unwrap(), None, "A sees B's close");
    assert!(matches!(
        a.write_all(b"late").await,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe
    ));
    drop((a, b));

    // Dropping a stream the other side still uses aborts it: the other side is told.
    let (a, b) = tokio::join!(alice.connections().connect_address(to, "chat"), async {
        listener.accept().await.unwrap()
    });
    let (a, mut b) = (a.unwrap(), b.unwrap());
    drop(a);
    let mut buf = [0u8; 8];
    let err = b.read(&mut buf).await.expect_err("reset seen");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    let inner = err.get_ref().and_then(|e| e.downcast_ref::<StreamError>());
    assert_eq!(inner, Some(&StreamError::Reset { code: 0 }));
    // Both tables empty again once the drivers saw it through.
    for _ in 0..100 {
        if alice.connections().open_count() + bob.connections().open_count() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "connections left open: {} and {}",
        alice.connections().open_count(),
        bob.connections().open_count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_far_side_is_an_error_within_the_keepalive_bound() {
    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let (sa, sb) = (fresh_mnemonic(), fresh_mnemonic());
    register_secret(&registry, &sa, &[relay.domain()]).await;
    let b = register_secret(&registry, &sb, &[relay.domain()]).await;
    let alice = connect_quick_keepalive(&sa, "alice", &[&relay], &registry).await;
    let mut far = PipeListener::start(&sb, &relay, "netcat");
    let to = rmb_proto::Address::session(b, "pipe");
    let mut stream = connect_when_listening(&alice, &to, "netcat").await;

    // The pipe works both ways: our bytes reach its stdout, its stdin reaches us.
    stream.write_all(b"ping\n").await.unwrap();
    let child = far.0.as_mut().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let echoed = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut line = [0u8; 5];
        stdout.read_exact(&mut line).unwrap();
        stdin.write_all(b"pong\n").unwrap();
        stdin.flush().unwrap();
        (line, stdin, stdout)
    })
    .await
    .unwrap();
    assert_eq!(&echoed.0, b"ping\n");
    let mut pong = [0u8; 5];
    stream.read_exact(&mut pong).await.unwrap();
    assert_eq!(&pong, b"pong\n");

    rmb_testsupport::child::kill(&mut far.0);
    let killed = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let err = tokio::time::timeout(IDLE * 3, stream.read(&mut buf))
        .await
        .expect("the read ends with an error instead of hanging")
        .expect_err("a dead far side is an error, not EOF");
    let waited = killed.elapsed();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    // Dead after IDLE without a frame; the last frame came at most a keep-alive before.
    assert!(
        waited <= IDLE + KEEPALIVE + Duration::from_secs(1),
        "detected after {waited:?}"
    );
    assert!(stream.write_all(b"x").await.is_err());
    drop(echoed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_reading_does_not_delay_rpc() {
    let relay = RelayProcess::start(&[]);
    let (alice, bob) = pair(&relay).await;
    bob.serve("echo", |req| async move { Ok(req.payload) });
    let mut sink = bob
        .connections()
        .listen("sink", ListenOptions::default())
        .unwrap();
    let (stream, held) = tokio::join!(
        alice
            .connections()
            .connect_address(bob.address().clone(), "sink"),
        async { sink.accept().await.unwrap().unwrap() }
    );
    let mut stream = stream.unwrap();
    // Write until the window and the send buffer are full: the writer waits.
    let chunk = vec![7u8; 64 << 10];
    let mut written = 0usize;
    while let Ok(result) =
        tokio::time::timeout(Duration::from_secs(2), stream.write_all(&chunk)).await
    {
        result.unwrap();
        written += chunk.len();
        assert!(
            written <= 8 << 20,
            "a writer is bounded by the reader's window"
        );
    }
    assert!(
        written >= 2 << 20,
        "the window let some data through ({written})"
    );
    // The stalled connection does not hold up requests between the same two twins.
    for i in 0..20 {
        let body = format!("rpc {i}");
        let reply = alice
            .call_address(bob.address().clone(), "echo", body.clone(), CALL)
            .await
            .expect("the RPC is answered while the stream is stalled");
        assert_eq!(reply.payload, body.into_bytes());
    }
    // And the stream resumes once its reader reads.
    let mut held = held;
    let mut buf = vec![0u8; 1 << 20];
    let n = held.read(&mut buf).await.unwrap();
    assert!(n > 0);
    tokio::time::timeout(CALL, stream.write_all(&chunk))
        .await
        .expect("the writer resumes")
        .unwrap();
}

/// `rmb pipe listen --conn-ciphers` is what the listener allows: an opener offering
/// AES-256-GCM first (which any listener allowing both would take) gets
/// ChaCha20-Poly1305 from a pipe allowing only that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmb_pipe_takes_the_ciphers_it_is_given() {
    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let (sa, sb) = (fresh_mnemonic(), fresh_mnemonic());
    register_secret(&registry, &sa, &[relay.domain()]).await;
    let b = register_secret(&registry, &sb, &[relay.domain()]).await;
    let mut options = client_options(&sa, "alice", &[&relay], &registry);
    options.connections.ciphers = vec![Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305];
    let alice = Client::connect(options).await.expect("alice connects");
    let _far = PipeListener::start_with(
        &sb,
        &relay,
        "netcat",
        &["--conn-ciphers", "chacha20-poly1305"],
    );
    let to = rmb_proto::Address::session(b, "pipe");
    let mut stream = connect_when_listening(&alice, &to, "netcat").await;
    assert_eq!(stream.cipher(), Cipher::ChaCha20Poly1305);
    stream.write_all(b"over chacha\n").await.unwrap();
}
