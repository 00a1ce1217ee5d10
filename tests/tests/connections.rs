//! Connections (issue #15) between direct clients over real `rmb-relay` processes:
//! bytes arrive intact (sha256) through one relay and across two federated relays,
//! many connections at once, refused / unknown / not-allowed protocols, half-close and
//! close seen by both sides, a relay killed mid-transfer with a second one configured,
//! and a reader that stops reading while an RPC between the same two twins goes on;
//! forged, re-sourced and unknown unsigned data frames are dropped and counted by
//! reason, other unsigned requests refused with 104.

use std::time::Duration;

use rmb_identity::{Identity, KeyType};
use rmb_peer::Client;
use rmb_peer::conn::{Cipher, ConnectError, ListenOptions, Stream, StreamError};
use rmb_proto::{Address, CONN_DATA_COMMAND, Envelope, Message, Payload, Request};
use rmb_testsupport::direct::{client_options, connect_client, fresh_mnemonic, register_secret};
use rmb_testsupport::redis_server::free_port;
use rmb_testsupport::registry::register;
use rmb_testsupport::relay_client::TestClient;
use rmb_testsupport::relay_process::RelayProcess;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CALL: Duration = Duration::from_secs(15);

/// Two clients of fresh twins on one relay.
async fn pair(relay: &RelayProcess) -> (Client, Client) {
    let registry = relay.http_url();
    let (sa, sb) = (fresh_mnemonic(), fresh_mnemonic());
    register_secret(&registry, &sa, &[relay.domain()]).await;
    register_secret(&registry, &sb, &[relay.domain()]).await;
    let alice = connect_client(&sa, "alice", &[relay], &registry).await;
    let bob = connect_client(&sb, "bob", &[relay], &registry).await;
    (alice, bob)
}

/// `len` deterministic pseudo-random bytes (splitmix64 of a counter: every 8-byte word
/// differs, so a lost, repeated or moved frame changes the digest; and it is quick even
/// unoptimised, unlike a cryptographic generator over 100 MiB).
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; len.next_multiple_of(8)];
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for word in bytes.chunks_exact_mut(8) {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        word.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// Serves "sha256" on `bob`: reads the stream to its end, answers with the digest and
/// the byte count, and finishes.
fn serve_digest(bob: &Client) -> tokio::task::JoinHandle<()> {
    let mut listener = bob
        .connections()
        .listen("sha256", ListenOptions::default())
        .unwrap();
    tokio::spawn(async move {
        while let Some(stream) = listener.accept().await {
            let mut stream = stream.expect("accept");
            tokio::spawn(async move {
                let mut hasher = Sha256::new();
                let mut buf = vec![0u8; 256 << 10];
                let mut total = 0u64;
                loop {
                    let n = stream.read(&mut buf).await.expect("read");
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                    hasher.update(&buf[..n]);
                }
                let mut answer = hasher.finalize().to_vec();
                answer.extend_from_slice(&total.to_be_bytes());
                stream.write_all(&answer).await.unwrap();
                // The opener checks the answer; a test that ended first drops this one.
                let _ = stream.finish().await;
            });
        }
    })
}

/// Sends `bytes` through a "sha256" connection and checks the far side's digest.
async fn pipe_digest(stream: &mut Stream, bytes: &[u8]) {
    for chunk in bytes.chunks(64 << 10) {
        stream.write_all(chunk).await.expect("write");
    }
    stream.shutdown().await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read answer");
    assert_eq!(answer.len(), 40, "digest and length");
    assert_eq!(
        u64::from_be_bytes(answer[32..].try_into().unwrap()),
        bytes.len() as u64
    );
    assert_eq!(answer[..32], Sha256::digest(bytes)[..], "sha256 differs");
}

/// Size of the big transfers (MiB): `RMB_CONN_TEST_MIB`, else the 100 MiB, in
/// debug builds too (the packet encryption is built optimised even there, see
/// aead/src/lib.rs).
fn big_mib() -> usize {
    std::env::var("RMB_CONN_TEST_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipe_through_one_relay_carries_bytes_intact() {
    let relay = RelayProcess::start(&[]);
    let (alice, bob) = pair(&relay).await;
    let server = serve_digest(&bob);
    let bytes = data(big_mib() << 20, 1);
    let mut stream = alice
        .connections()
        .connect_address(bob.address().clone(), "sha256")
        .await
        .expect("connect");
    assert_eq!(stream.remote(), bob.address());
    let started = std::time::Instant::now();
    pipe_digest(&mut stream, &bytes).await;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{} MiB through one relay in {secs:.1} s ({:.1} MB/s), {:?}",
        big_mib(),
        bytes.len() as f64 / secs / 1e6,
        stream.stats()
    );
    server.abort();
}

/// Two clients whose connections offer and allow `alice_ciphers` and `bob_ciphers`
/// (empty: behave as a peer from before the cipher choice, version 1 only).
async fn pair_with_ciphers(
    relay: &RelayProcess,
    alice_ciphers: Vec<Cipher>,
    bob_ciphers: Vec<Cipher>,
) -> (Client, Client) {
    let registry = relay.http_url();
    let (sa, sb) = (fresh_mnemonic(), fresh_mnemonic());
    register_secret(&registry, &sa, &[relay.domain()]).await;
    register_secret(&registry, &sb, &[relay.domain()]).await;
    let mut options = client_options(&sa, "alice", &[relay], &registry);
    options.connections.ciphers = alice_ciphers;
    let alice = Client::connect(options).await.expect("alice connects");
    let mut options = client_options(&sb, "bob", &[relay], &registry);
    options.connections.ciphers = bob_ciphers;
    let bob = Client::connect(options).await.expect("bob connects");
    (alice, bob)
}

/// The handshake's cipher choice between real peers: the opener's first offer the
/// responder allows wins; a responder that allows none of the offer refuses it; and a
/// peer from before the choice (version 1 only, which refuses a version 2 open as
/// malformed) is opened again with version 1, in both directions, every pair moving
/// bytes intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_agree_on_a_cipher_and_fall_back_for_version_1_peers() {
    use std::sync::atomic::Ordering::Relaxed;
    let relay = RelayProcess::start(&[]);
    let (aes, chacha) = (Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305);
    let cases: [(Vec<Cipher>, Vec<Cipher>, Cipher, u64); 5] = [
        (vec![aes, chacha], vec![aes, chacha], aes, 0),
        (vec![chacha, aes], vec![aes, chacha], chacha, 0),
        (vec![aes, chacha], vec![chacha], chacha, 0),
        // Opener of today, responder from before: refused once, then version 1.
        (vec![aes, chacha], vec![], chacha, 1),
        // Opener from before, responder of today: a version 1 accept.
        (vec![], vec![aes, chacha], chacha, 0),
    ];
    for (alice_ciphers, bob_ciphers, expected, fallbacks) in cases {
        let label = format!("{alice_ciphers:?} -> {bob_ciphers:?}");
        let (alice, bob) = pair_with_ciphers(&relay, alice_ciphers, bob_ciphers).await;
        let server = serve_digest(&bob);
        let mut stream = alice
            .connections()
            .connect_address(bob.address().clone(), "sha256")
            .await
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(stream.cipher(), expected, "{label}");
        assert_eq!(
            alice
                .connections()
                .counters()
                .opened_version_1
                .load(Relaxed),
            fallbacks,
            "{label}"
        );
        pipe_digest(&mut stream, &data(1 << 20, 7)).await;
        server.abort();
    }

    // Only AES-256-GCM offered, only ChaCha20-Poly1305 allowed: a clear refusal, and no
    // version 1 retry (that would mean ChaCha20-Poly1305, which the opener does not
    // allow).
    let (alice, bob) = pair_with_ciphers(&relay, vec![aes], vec![chacha]).await;
    let _server = serve_digest(&bob);
    let refused = alice
        .connections()
        .connect_address(bob.address().clone(), "sha256")
        .await;
    match refused {
        Err(ConnectError::Remote { error, .. }) => {
            assert!(error.message.contains("no cipher"), "{error:?}");
            assert_eq!(error.code, rmb_peer::conn::codes::BAD_OPEN);
        }
        other => panic!("expected a refusal, got {:?}", other.map(|s| s.cipher())),
    }
    assert_eq!(
        alice
            .connections()
            .counters()
            .opened_version_1
            .load(Relaxed),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipe_across_two_federated_relays_carries_bytes_intact() {
    let (p1, p2) = (free_port(), free_port());
    let r1 = RelayProcess::start_on(p1, &["--federation-http"]);
    let registry = r1.http_url();
    let r2 = RelayProcess::start_on(p2, &["--federation-http", "--registry", &registry]);
    let (sa, sb) = (fresh_mnemonic(), fresh_mnemonic());
    register_secret(&registry, &sa, &[r1.domain()]).await;
    register_secret(&registry, &sb, &[r2.domain()]).await;
    let alice = connect_client(&sa, "a", &[&r1], &registry).await;
    let bob = connect_client(&sb, "b", &[&r2], &registry).await;
    let server = serve_digest(&bob);
    let bytes = data(big_mib() << 20, 2);
    let mut stream = alice
        .connections()
        .connect_address(bob.address().clone(), "sha256")
        .await
        .expect("connect");
    let started = std::time::Instant::now();
    pipe_digest(&mut stream, &bytes).await;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{} MiB across two relays in {secs:.1} s ({:.1} MB/s), {:?}",
        big_mib(),
        bytes.len() as f64 / secs / 1e6,
        stream.stats()
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_connections_at_once_each_get_their_own_bytes() {
    let relay = RelayProcess::start(&[]);
    let (alice, bob) = pair(&relay).await;
    let server = serve_digest(&bob);
    let opens = (0..40).map(|i| {
        let (alice, to) = (&alice, bob.address().clone());
        async move {
            let mut stream = alice
                .connections()
                .connect_address(to, "sha256")
                .await
                .expect("connect");
            pipe_digest(&mut stream, &data(100_000 + i * 1000, i as u64)).await;
        }
    });
    futures_util::future::join_all(opens).await;
    assert_eq!(
        bob.connections()
            .counters()
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed),
        40
    );
    server.abort();
}

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

/// A client whose connections detect a dead peer quickly (keep-alive 1 s, dead after 4 s).
async fn connect_quick_keepalive(
    secret: &str,
    sid: &str,
    relays: &[&RelayProcess],
    registry: &str,
) -> Client {
    let mut options = client_options(secret, sid, relays, registry);
    options.connections.stream.keepalive = KEEPALIVE;
    options.connections.stream.idle_timeout = IDLE;
    Client::connect(options).await.expect("client connects")
}

const KEEPALIVE: Duration = Duration::from_secs(1);
const IDLE: Duration = Duration::from_secs(4);

/// Opens `protocol` on `to`, retrying while its listener is not up yet.
async fn connect_when_listening(
    client: &Client,
    to: &rmb_proto::Address,
    protocol: &str,
) -> Stream {
    for _ in 0..60 {
        match client
            .connections()
            .connect_address(to.clone(), protocol)
            .await
        {
            Ok(stream) => return stream,
            Err(ConnectError::UnknownProtocol { .. } | ConnectError::Timeout { .. }) => {
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            Err(e) => panic!("connect: {e}"),
        }
    }
    panic!("{to} never listened for {protocol}");
}

/// `rmb pipe listen` as a separate process (so it can be SIGKILLed).
struct PipeListener(Option<std::process::Child>);

impl PipeListener {
    fn start(secret: &str, relay: &RelayProcess, protocol: &str) -> PipeListener {
        let rmb = rmb_testsupport::relay_process::binaries().join("rmb");
        let child = std::process::Command::new(rmb)
            .args(["pipe", "listen", "--protocol", protocol, "--relay"])
            .arg(relay.ws_url())
            .args(["--registry", &relay.http_url(), "--sid", "pipe"])
            .env("RMB_MNEMONIC", secret)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start rmb pipe listen");
        PipeListener(Some(child))
    }
}

impl Drop for PipeListener {
    fn drop(&mut self) {
        rmb_testsupport::child::kill(&mut self.0);
    }
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
async fn a_relay_killed_mid_transfer_loses_nothing_with_a_second_relay() {
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
    for _ in 0..200 {
        let up = |c: &Client| c.status().relays.iter().all(|l| l.connected);
        if up(&alice) && up(&bob) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let server = serve_digest(&bob);
    let bytes = data(16 << 20, 3);
    let mut stream = alice
        .connections()
        .connect_address(bob.address().clone(), "sha256")
        .await
        .expect("connect");
    let (first, rest) = bytes.split_at(6 << 20);
    for chunk in first.chunks(64 << 10) {
        stream.write_all(chunk).await.unwrap();
    }
    // At least 4 MiB went through r1 (the send buffer holds 2 MiB); kill it.
    assert!(alice.status().relays[0].sent > 0);
    r1.kill();
    for chunk in rest.chunks(64 << 10) {
        stream.write_all(chunk).await.expect("write after the kill");
    }
    stream.shutdown().await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("answer");
    assert_eq!(answer.len(), 40);
    assert_eq!(answer[..32], Sha256::digest(&bytes)[..], "sha256 differs");
    assert_eq!(
        u64::from_be_bytes(answer[32..].try_into().unwrap()),
        bytes.len() as u64
    );
    println!("transfer across a relay failure: {:?}", stream.stats());
    let status = alice.status();
    assert!(
        !status.relays[0].connected && status.relays[1].sent > 0,
        "the transfer went on through the second relay: {status:?}"
    );
    server.abort();
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

/// An unsigned `rmb.conn.data` request with `payload`, claiming `source`.
fn unsigned_frame(source: Address, to: Address, payload: Vec<u8>) -> Envelope {
    let mut env = Envelope {
        uid: uuid_like(),
        expiration: 60,
        source: Some(source),
        destination: Some(to),
        message: Some(Message::Request(Request {
            command: CONN_DATA_COMMAND.into(),
        })),
        payload: Some(Payload::Plain(payload)),
        ..Default::default()
    };
    env.stamp_at(rmb_proto::time::unix_now());
    env
}

fn uuid_like() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Data frames travel unsigned; the connection layer must refuse whatever its keys do
/// not authenticate. Frames are POSTed to the relay's federation endpoint (which lets
/// unsigned frames through, charged to the poster) in Alice's name: a wrong ciphertext
/// for her connection, a frame re-sourced to another session of hers, and one claiming
/// another twin with her connection's id. Each is dropped and counted by reason, and
/// the connection goes on. Any other request arriving unsigned is refused with 104.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_resourced_unsigned_frames_are_refused_and_counted() {
    let relay = RelayProcess::start(&[]);
    let (alice, bob) = pair(&relay).await;
    let mut echo = bob
        .connections()
        .listen("echo", ListenOptions::default())
        .unwrap();
    let (stream, served) = tokio::join!(
        alice
            .connections()
            .connect_address(bob.address().clone(), "echo"),
        async { echo.accept().await.unwrap().unwrap() }
    );
    let mut stream = stream.unwrap();
    let mut served = served;
    let id = stream.id();
    let counters = bob.connections().counters();
    let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);

    let post = |env: Envelope| {
        let url = format!("{}/", relay.http_url());
        async move {
            let response = reqwest::Client::new()
                .post(url)
                .body(env.to_bytes())
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), 202, "routed to Bob");
        }
    };
    let packet = |pn: u64| {
        let mut p = id.to_vec();
        p.extend_from_slice(&pn.to_be_bytes());
        p.extend_from_slice(&[0x5a; 64]);
        p
    };
    let to = bob.address().clone();
    // Does not authenticate under the connection's key.
    post(unsigned_frame(
        alice.address().clone(),
        to.clone(),
        packet(2),
    ))
    .await;
    // Re-sourced: Alice's twin, another session than the connection's.
    let other_session = Address::session(alice.twin_id(), "not-the-connection");
    post(unsigned_frame(other_session, to.clone(), packet(3))).await;
    // Another twin claiming Alice's connection id: no such connection.
    post(unsigned_frame(
        Address::twin(bob.twin_id()),
        to.clone(),
        packet(4),
    ))
    .await;
    // Too short to name a connection.
    post(unsigned_frame(
        alice.address().clone(),
        to.clone(),
        vec![1; 5],
    ))
    .await;
    let deadline = tokio::time::Instant::now() + CALL;
    while (
        count(&counters.forged_frames),
        count(&counters.unknown_frames),
    ) != (2, 2)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "forged {} unknown {}",
            count(&counters.forged_frames),
            count(&counters.unknown_frames)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(count(&counters.replayed_frames), 0);

    // The connection is unharmed.
    stream.send_message(b"still here").await.unwrap();
    let got = tokio::time::timeout(CALL, served.recv_message())
        .await
        .unwrap();
    assert_eq!(got.unwrap().as_deref(), Some(&b"still here"[..]));

    // Any other request arriving unsigned is refused with 104 (here from Mallory's own
    // session, which the relay lets send only as Mallory).
    let mallory = Identity::from_secret(&fresh_mnemonic(), KeyType::Sr25519).unwrap();
    let m = register(&relay.http_url(), &mallory, &[relay.domain()]).await;
    let mut cm = TestClient::connect(&relay.ws_url(), &mallory, m, None).await;
    for command in ["echo", "rmb.conn.open"] {
        let mut env = unsigned_frame(Address::twin(m), to.clone(), vec![1; 40]);
        env.message = Some(Message::Request(Request {
            command: command.into(),
        }));
        cm.send(&env).await;
        let reply = cm.recv(CALL).await.expect("an error reply");
        assert_eq!(reply.uid, env.uid);
        match reply.message {
            Some(Message::Error(e)) => assert_eq!(e.code, 104, "{command}: {}", e.message),
            other => panic!("{command}: expected error 104, got {other:?}"),
        }
    }
}
