//! Issue #12 attacks on the relay's sessions and memory, against the real `rmb-relay`:
//! a receiver that never reads while another twin floods it, far deadlines, endless
//! session ids, silent clients, a slow session stalling its sender, shutdown with work in
//! flight, and floods of malformed or oversized frames. Each asserts the bound (memory,
//! error envelope, disconnect, log lines, counters) the relay now keeps.

use std::time::Duration;

use rmb_identity::{Identity, KeyType};
use rmb_proto::{Address, Envelope};
use rmb_testsupport::redis_server::{RedisServer, free_port};
use rmb_testsupport::registry::register;
use rmb_testsupport::relay_client::{TestClient, error_text, now, request};
use rmb_testsupport::relay_process::RelayProcess;

const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(300);
/// Longest a test may take before it counts as hung (the attack stalled the relay).
const HUNG: Duration = Duration::from_secs(90);

fn identity(name: &str) -> Identity {
    Identity::from_secret(&format!("//{name}"), KeyType::Sr25519).unwrap()
}

/// A signed request to an explicit address (a session id), valid `ttl` seconds.
fn request_to(who: &Identity, src: Address, dst: Address, uid: &str, ttl: u64) -> Envelope {
    let mut env = request(who, src, dst.twin, uid, b"x", ttl);
    env.destination = Some(dst);
    who.seal_envelope(&mut env, None, now()).expect("sign");
    env
}

/// Copies of `template` with uids `<prefix>-<i>`: the relay does not check signatures of
/// session traffic, so a flood need not sign each envelope (signing 64 KiB bodies in a
/// debug build is what would take the time).
fn copies(template: &Envelope, prefix: &str, n: usize) -> impl Iterator<Item = Vec<u8>> {
    let mut env = template.clone();
    (0..n).map(move |i| {
        env.uid = format!("{prefix}-{i}");
        env.to_bytes()
    })
}

/// The relay's resident memory in KiB.
fn rss_kib(relay: &RelayProcess) -> u64 {
    let pid = relay.pid().expect("relay runs");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

/// Reads what is waiting for `client` (until it is quiet for `quiet`); returns the error
/// texts among it.
async fn drain(client: &mut TestClient, quiet: Duration) -> Vec<String> {
    let mut errors = Vec::new();
    while let Some(env) = client.recv(quiet).await {
        if let Some(text) = error_text(&env) {
            errors.push(text.to_string());
        }
    }
    errors
}

#[tokio::test]
async fn a_receiver_that_never_reads_cannot_grow_relay_memory() {
    let relay = RelayProcess::start(&[
        "--outbox-bytes",
        "262144",
        "--queue-bytes-per-session",
        "2097152",
        "--queue-bytes-per-twin",
        "4194304",
        "--queue-bytes-total",
        "8388608",
        "--write-timeout",
        "2",
        "--slow-reader-timeout",
        "2",
    ]);
    let (alice, bob) = (identity("Alice"), identity("Bob"));
    let a = register(&relay.http_url(), &alice, &[relay.domain()]).await;
    let b = register(&relay.http_url(), &bob, &[relay.domain()]).await;
    let mut ca = TestClient::connect(&relay.ws_url(), &alice, a, None).await;
    // Bob logs in and never reads.
    let _cb = TestClient::connect(&relay.ws_url(), &bob, b, None).await;
    let before = rss_kib(&relay);

    let body = vec![7u8; 64 * 1024];
    let flood = async {
        let mut errors = Vec::new();
        let template = request(&alice, Address::twin(a), b, "f", &body, 600);
        for (i, env) in copies(&template, "f", 1200).enumerate() {
            ca.send_bytes(env).await.unwrap();
            if i % 50 == 49 {
                errors.extend(drain(&mut ca, Duration::from_millis(20)).await);
            }
        }
        errors.extend(drain(&mut ca, QUIET).await);
        errors
    };
    let errors = tokio::time::timeout(HUNG, flood)
        .await
        .expect("flooding a reader that never reads stalled the sender");
    let after = rss_kib(&relay);
    let queued = relay.metric("relay_queue_bytes").await;

    println!(
        "75 MiB flood: RSS {before} -> {after} KiB, {queued} bytes queued, {} error envelopes",
        errors.len()
    );
    assert!(
        errors.iter().any(|e| e.contains("full")),
        "the sender is told when the bound is hit: {:?}",
        errors.first()
    );
    assert!(
        queued <= 8.0 * 1024.0 * 1024.0,
        "queued bytes stay under --queue-bytes-total: {queued}"
    );
    assert!(
        after.saturating_sub(before) < 48 * 1024,
        "relay RSS grew from {before} to {after} KiB for a 75 MiB flood"
    );
}

#[tokio::test]
async fn far_deadlines_are_refused_and_queued_bytes_are_bounded() {
    let relay = RelayProcess::start(&["--queue-bytes-per-session", "4194304"]);
    let (alice, bob) = (identity("Alice"), identity("Bob"));
    let a = register(&relay.http_url(), &alice, &[relay.domain()]).await;
    let b = register(&relay.http_url(), &bob, &[relay.domain()]).await;
    let mut ca = TestClient::connect(&relay.ws_url(), &alice, a, None).await;
    let mib = vec![1u8; 1024 * 1024];

    // Item 1: a deadline far ahead (expiration 1e16 s, or a timestamp near the top of
    // u64) is refused with an error envelope instead of being kept.
    let far = request(
        &alice,
        Address::twin(a),
        b,
        "far-1",
        &mib,
        10_000_000_000_000_000,
    );
    ca.send(&far).await;
    let reply = ca.recv(WAIT).await.expect("an answer to the far deadline");
    assert_eq!(reply.uid, "far-1");
    assert!(
        error_text(&reply).is_some_and(|e| e.contains("lifetime too long")),
        "{reply:?}"
    );
    let mut top = request(&alice, Address::twin(a), b, "far-2", b"x", 60);
    alice.seal_envelope(&mut top, None, u64::MAX - 5).unwrap();
    ca.send(&top).await;
    let reply = ca.recv(WAIT).await.expect("an answer to the far timestamp");
    assert_eq!(reply.uid, "far-2");
    assert!(error_text(&reply).is_some(), "{reply:?}");

    // 1 MiB envelopes with a sane deadline for an offline twin: queued up to the byte
    // bound of its session, then refused, each refusal answered.
    let mut refused = 0;
    let template = request(&alice, Address::twin(a), b, "big", &mib, 3600);
    for env in copies(&template, "big", 12) {
        ca.send_bytes(env).await.unwrap();
        if let Some(reply) = ca.recv(QUIET).await {
            assert!(
                error_text(&reply).is_some_and(|e| e.contains("full")),
                "{reply:?}"
            );
            refused += 1;
        }
    }
    let queued = relay.metric("relay_queue_bytes").await;
    println!("12 x 1 MiB for an offline twin: {refused} refused, {queued} bytes queued");
    assert!(refused >= 8, "only {refused} of 12 refused");
    assert!(queued <= 4.0 * 1024.0 * 1024.0, "{queued} bytes queued");
}

#[tokio::test]
async fn session_ids_per_twin_are_capped() {
    let relay = RelayProcess::start(&["--sessions-per-twin", "3"]);
    let (alice, bob) = (identity("Alice"), identity("Bob"));
    let a = register(&relay.http_url(), &alice, &[relay.domain()]).await;
    let b = register(&relay.http_url(), &bob, &[relay.domain()]).await;

    // Connected sessions: three are fine, a fourth id is closed, re-using one is fine.
    let mut kept = Vec::new();
    for sid in ["s0", "s1", "s2"] {
        kept.push(TestClient::connect(&relay.ws_url(), &bob, b, Some(sid)).await);
    }
    let mut fourth = TestClient::connect(&relay.ws_url(), &bob, b, Some("s3")).await;
    assert!(fourth.closed(WAIT).await, "a fourth session id is refused");
    let mut again = TestClient::connect(&relay.ws_url(), &bob, b, Some("s0")).await;
    assert!(
        !again.closed(QUIET).await,
        "replacing a session is not a new one"
    );

    // Queued sessions: envelopes for many session ids of an offline twin.
    let mut ca = TestClient::connect(&relay.ws_url(), &alice, a, None).await;
    let mut refused = Vec::new();
    for i in 0..8 {
        let dst = Address::session(b, format!("q{i}"));
        ca.send(&request_to(
            &alice,
            Address::twin(a),
            dst,
            &format!("q-{i}"),
            600,
        ))
        .await;
        if let Some(reply) = ca.recv(QUIET).await {
            refused.push(error_text(&reply).unwrap_or_default().to_string());
        }
    }
    println!("8 queued session ids with a cap of 3: refused {refused:?}");
    assert_eq!(refused.len(), 5, "{refused:?}");
    assert!(refused.iter().all(|e| e.contains("too many session ids")));
}

#[tokio::test]
async fn a_silent_client_is_disconnected_and_a_quiet_reader_is_not() {
    let relay = RelayProcess::start(&["--ping-interval", "1", "--read-timeout", "3"]);
    let (alice, bob) = (identity("Alice"), identity("Bob"));
    let a = register(&relay.http_url(), &alice, &[relay.domain()]).await;
    let b = register(&relay.http_url(), &bob, &[relay.domain()]).await;
    let mut silent = TestClient::connect(&relay.ws_url(), &alice, a, None).await;
    let mut reader = TestClient::connect(&relay.ws_url(), &bob, b, None).await;

    // The reader reads (so answers pings) but never sends; the silent one does nothing.
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_secs(6) {
        assert!(reader.recv(Duration::from_millis(500)).await.is_none());
    }
    assert!(
        silent.closed(Duration::from_secs(1)).await,
        "a client that never answers pings is disconnected after --read-timeout"
    );
    let own = request(&bob, Address::twin(b), b, "still-1", b"x", 60);
    reader.send(&own).await;
    assert_eq!(
        reader.recv(WAIT).await,
        Some(own),
        "the reader is still connected"
    );
    assert_eq!(
        relay
            .metric("relay_errors_total{kind=\"read_timeout\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_flood_to_a_slow_session_does_not_delay_its_sender_or_others() {
    let relay = RelayProcess::start(&[
        "--outbox-bytes",
        "262144",
        "--queue-bytes-per-session",
        "1048576",
    ]);
    let names = ["Alice", "Bob", "Charlie", "Dave"];
    let ids: Vec<Identity> = names.iter().map(|n| identity(n)).collect();
    let mut twins = Vec::new();
    for who in &ids {
        twins.push(register(&relay.http_url(), who, &[relay.domain()]).await);
    }
    let [a, b, c, d] = [twins[0], twins[1], twins[2], twins[3]];
    let mut ca = TestClient::connect(&relay.ws_url(), &ids[0], a, None).await;
    let _slow = TestClient::connect(&relay.ws_url(), &ids[1], b, None).await;
    let mut cc = TestClient::connect(&relay.ws_url(), &ids[2], c, None).await;
    let mut cd = TestClient::connect(&relay.ws_url(), &ids[3], d, None).await;

    let body = vec![3u8; 64 * 1024];
    let attack = async {
        let template = request(&ids[0], Address::twin(a), b, "f", &body, 600);
        for env in copies(&template, "f", 1500) {
            ca.send_bytes(env).await.unwrap();
        }
        // The flooder's next envelope to someone else is routed at once, not after the
        // slow reader's outbox drains.
        let next = request(&ids[0], Address::twin(a), d, "after-flood", b"x", 60);
        ca.send(&next).await;
        assert_eq!(cd.recv(WAIT).await, Some(next), "the sender was held up");
        for i in 0..20 {
            let env = request(&ids[2], Address::twin(c), d, &format!("c-{i}"), b"x", 60);
            cc.send(&env).await;
            assert_eq!(cd.recv(WAIT).await, Some(env));
        }
    };
    // Before the fix the flooder's session waited up to 30 s (the slow-reader timeout)
    // for the slow reader, per envelope that did not fit: a liveness bound, not a speed test.
    tokio::time::timeout(Duration::from_secs(25), attack)
        .await
        .expect("a flood to a slow reader stalled its sender");
}

#[tokio::test]
async fn shutdown_returns_with_work_in_flight() {
    let dead = format!("127.0.0.1:{}", free_port());
    let mut relay = RelayProcess::start(&["--federation-http"]);
    let (alice, bob, eve) = (identity("Alice"), identity("Bob"), identity("Eve"));
    let a = register(&relay.http_url(), &alice, &[relay.domain()]).await;
    let b = register(&relay.http_url(), &bob, &[relay.domain()]).await;
    let e = register(&relay.http_url(), &eve, std::slice::from_ref(&dead)).await;
    let mut ca = TestClient::connect(&relay.ws_url(), &alice, a, None).await;
    let _slow = TestClient::connect(&relay.ws_url(), &bob, b, None).await;
    // A federation send that keeps retrying (its relay is down), and a slow reader.
    ca.send(&request(&alice, Address::twin(a), e, "fed-1", b"x", 600))
        .await;
    let template = request(&alice, Address::twin(a), b, "f", &[0; 32 * 1024], 600);
    for env in copies(&template, "f", 50) {
        ca.send_bytes(env).await.unwrap();
    }
    tokio::time::sleep(QUIET).await;
    let status = tokio::task::spawn_blocking(move || relay.terminate())
        .await
        .unwrap()
        .expect("relay was running");
    assert!(status.success(), "graceful shutdown ended with {status}");
}

#[tokio::test]
async fn malformed_and_oversized_frames_are_counted_and_logged_sparingly() {
    let relay = RelayProcess::start_logged(&["--max-envelope-size", "65536"], "info");
    let alice = identity("Alice");
    let a = register(&relay.http_url(), &alice, &[relay.domain()]).await;
    let mut ca = TestClient::connect(&relay.ws_url(), &alice, a, None).await;

    for _ in 0..10_000 {
        ca.send_bytes(vec![0x0a, 0xff, 0x01]).await.unwrap();
    }
    // Frames are handled in order: once this comes back, all the garbage was seen.
    let own = request(&alice, Address::twin(a), a, "after-garbage", b"x", 60);
    ca.send(&own).await;
    assert_eq!(ca.recv(WAIT).await, Some(own));
    let malformed = relay.metric("relay_errors_total{kind=\"malformed\"}").await;
    let lines = relay
        .log()
        .lines()
        .filter(|l| l.contains("undecodable"))
        .count();
    println!("10000 malformed frames: {malformed} counted, {lines} log lines");
    assert_eq!(malformed, 10_000.0);
    assert!((1..=3).contains(&lines), "{lines} log lines for one flood");

    // A frame over --max-envelope-size ends the connection and counts as oversize.
    let _ = ca.send_bytes(vec![0; 100 * 1024]).await;
    assert!(ca.closed(WAIT).await);
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        relay.metric("relay_errors_total{kind=\"oversize\"}").await,
        1.0
    );
}

#[tokio::test]
async fn redis_queues_are_bounded_in_bytes_and_session_ids() {
    let redis = RedisServer::start();
    let relay = RelayProcess::start(&[
        "--redis",
        &redis.url(),
        "--queue-bytes-per-session",
        "2200000",
        "--sessions-per-twin",
        "2",
    ]);
    let (alice, bob) = (identity("Alice"), identity("Bob"));
    let a = register(&relay.http_url(), &alice, &[relay.domain()]).await;
    let b = register(&relay.http_url(), &bob, &[relay.domain()]).await;
    let mut ca = TestClient::connect(&relay.ws_url(), &alice, a, None).await;

    let template = request(
        &alice,
        Address::twin(a),
        b,
        "big",
        &vec![1u8; 1 << 20],
        3600,
    );
    let mut refused = Vec::new();
    for env in copies(&template, "big", 5) {
        ca.send_bytes(env).await.unwrap();
        if let Some(reply) = ca.recv(QUIET).await {
            refused.push(error_text(&reply).unwrap_or_default().to_string());
        }
    }
    assert_eq!(refused.len(), 3, "{refused:?}");
    assert!(refused.iter().all(|e| e.contains("full")), "{refused:?}");

    // Bob's own queue is one session id; one more fits, then the cap refuses.
    let mut refused = Vec::new();
    for i in 0..3 {
        let dst = Address::session(b, format!("q{i}"));
        ca.send(&request_to(
            &alice,
            Address::twin(a),
            dst,
            &format!("q-{i}"),
            600,
        ))
        .await;
        if let Some(reply) = ca.recv(QUIET).await {
            refused.push(error_text(&reply).unwrap_or_default().to_string());
        }
    }
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(refused.iter().all(|e| e.contains("too many session ids")));

    // Bob takes what was queued, which frees its bytes: the bound is not stuck.
    let mut cb = TestClient::connect(&relay.ws_url(), &bob, b, None).await;
    let mut got = Vec::new();
    while let Some(env) = cb.recv(QUIET).await {
        got.push(env.uid);
    }
    assert_eq!(got, ["big-0", "big-1"]);
    drop(cb);
    tokio::time::sleep(QUIET).await;
    let mut accepted = 0;
    for env in copies(&template, "again", 2) {
        ca.send_bytes(env).await.unwrap();
        if ca.recv(QUIET).await.is_none() {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 2, "queued bytes were released when taken");
}

#[tokio::test]
async fn a_shutdown_answers_envelopes_it_could_not_federate() {
    let redis = RedisServer::start();
    let dead = format!("127.0.0.1:{}", free_port());
    let mut relay = RelayProcess::start(&["--federation-http", "--redis", &redis.url()]);
    let (alice, eve) = (identity("Alice"), identity("Eve"));
    let a = register(&relay.http_url(), &alice, &[relay.domain()]).await;
    let e = register(&relay.http_url(), &eve, std::slice::from_ref(&dead)).await;
    let mut ca = TestClient::connect(&relay.ws_url(), &alice, a, None).await;
    // Eve's relay is down: the send keeps trying (until its deadline) in the background.
    ca.send(&request(&alice, Address::twin(a), e, "fed-1", b"x", 600))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut relay = tokio::task::spawn_blocking(move || {
        let status = relay.terminate().expect("relay was running");
        assert!(status.success(), "graceful shutdown ended with {status}");
        relay
    })
    .await
    .unwrap();

    // The sender hears about it: on the connection that was closing, or from its queue
    // (kept in Redis) once it logs in again.
    let mut reply = ca.recv(QUIET).await;
    if reply.is_none() {
        relay.relaunch();
        let mut again = TestClient::connect(&relay.ws_url(), &alice, a, None).await;
        reply = again.recv(WAIT).await;
    }
    let reply = reply.expect("an error envelope for the envelope not federated");
    assert_eq!(reply.uid, "fed-1");
    assert!(
        error_text(&reply).is_some_and(|t| t.contains("shutting down")),
        "{reply:?}"
    );
}
