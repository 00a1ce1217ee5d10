//! Attacks on the peer's local HTTP API, made as a web page in the user's browser and
//! a misbehaving local client would make them (issue #30, items 1 and 2), against real
//! `rmb-peer` processes. Requests are written byte for byte on raw sockets, so the
//! headers are exactly what a browser (or an attacker) sends.

use std::time::{Duration, Instant};

use rmb_testsupport::relay_process::RelayProcess;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::node::{Node, client, create, poll};

/// The `host:port` of a node's API.
fn authority(node: &Node) -> String {
    node.http.trim_start_matches("http://").to_string()
}

/// Sends `head` (request line and headers, without the blank line) and `body` on a new
/// connection; the status and the body of the answer.
async fn raw(node: &Node, head: &str, body: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(authority(node)).await.unwrap();
    let request = format!(
        "{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut answer))
        .await
        .expect("the API answers")
        .unwrap();
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_string())
}

/// The refusal counters `GET /` reports.
async fn refused(node: &Node) -> Value {
    node.get_json("/").await["refused"].clone()
}

/// Item 1: a page on another site, or one rebinding its name to 127.0.0.1, can neither
/// act as the twin nor read what the API holds; the operator's origins and curl-style
/// clients still can.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_web_page_can_neither_act_as_the_twin_nor_read_its_topics() {
    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let alice = Node::start_with(
        "//Alice",
        &[&relay],
        &registry,
        &["--http-allow-origin", "https://app.example"],
    )
    .await;
    let bob = Node::start("//Bob", &[&relay], &registry).await;
    create(&alice, "t", json!({})).await;
    let me = alice.twin;
    let host = authority(&alice);
    let call = json!({ "twin": bob.twin, "cmd": "rmb.version", "timeout": 10 }).to_string();

    // A "simple" cross-origin POST (no preflight) from another site: /call and publish.
    for (path, body) in [
        ("/call".to_string(), call.as_str()),
        (format!("/topics/{me}/t"), "pwned"),
    ] {
        let (status, text) = raw(
            &alice,
            &format!(
                "POST {path} HTTP/1.1\r\nHost: {host}\r\nOrigin: http://evil.example\r\n\
                 Content-Type: text/plain\r\nSec-Fetch-Site: cross-site"
            ),
            body,
        )
        .await;
        assert_eq!(status, 403, "POST {path} from another origin: {text}");
        assert!(text.contains("--http-allow-origin"), "{text}");
    }
    // The same without Origin (a browser that sends none): refused for its body type.
    let (status, text) = raw(
        &alice,
        &format!("POST /call HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/plain"),
        &call,
    )
    .await;
    assert_eq!(status, 415, "{text}");
    let (status, _) = raw(
        &alice,
        &format!("POST /topics/{me}/t HTTP/1.1\r\nHost: {host}"),
        "no type at all",
    )
    .await;
    assert_eq!(status, 415, "a typeless body is a simple request too");
    assert!(
        poll(&alice, &format!("{me}/t")).await.is_empty(),
        "nothing was published"
    );

    // DNS rebinding: the page's own name, pointing at 127.0.0.1, cannot read.
    for path in [
        "/topics".to_string(),
        format!("/topics/{me}/t/json?poll=1&since=all"),
        "/".to_string(),
    ] {
        let (status, text) = raw(
            &alice,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: attacker.example:{}",
                alice.port()
            ),
            "",
        )
        .await;
        assert_eq!(status, 421, "GET {path} with a foreign Host: {text}");
    }
    // An <img> or navigation that opens a live stream (which would subscribe) is refused.
    let (status, _) = raw(
        &alice,
        &format!(
            "GET /topics/{}/x/sse HTTP/1.1\r\nHost: {host}\r\nSec-Fetch-Site: cross-site",
            bob.twin
        ),
        "",
    )
    .await;
    assert_eq!(status, 403);
    // A cross-site WebSocket (the browser sends Origin on every handshake).
    let (status, _) = raw(
        &alice,
        &format!(
            "GET /topics/{me}/t/ws HTTP/1.1\r\nHost: {host}\r\nOrigin: http://evil.example\r\n\
             Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="
        ),
        "",
    )
    .await;
    assert_eq!(status, 403);
    let listing = alice.listing().await;
    assert_eq!(
        listing["subscriptions"],
        json!([]),
        "no subscription was made"
    );

    // A preflight from another site is refused; from the allowed origin it passes, and
    // the allowed origin's JSON request is answered with CORS headers.
    let (status, _) = raw(
        &alice,
        &format!(
            "OPTIONS /call HTTP/1.1\r\nHost: {host}\r\nOrigin: http://evil.example\r\n\
             Access-Control-Request-Method: POST"
        ),
        "",
    )
    .await;
    assert_eq!(status, 403);
    let r = client()
        .request(reqwest::Method::OPTIONS, alice.url("/call"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let r = client()
        .post(alice.url("/call"))
        .header("origin", "https://app.example")
        .header("sec-fetch-site", "cross-site")
        .header("content-type", "application/json")
        .body(call.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );

    // curl-style clients (no Origin) with a JSON body work, on 127.0.0.1 and localhost.
    let (status, text) = raw(
        &alice,
        &format!(
            "POST /call HTTP/1.1\r\nHost: localhost:{}\r\nContent-Type: application/json",
            alice.port()
        ),
        &call,
    )
    .await;
    assert_eq!(status, 200, "{text}");

    let counts = refused(&alice).await;
    assert!(counts["origin"].as_u64().unwrap() >= 4, "{counts}");
    assert!(counts["host"].as_u64().unwrap() >= 3, "{counts}");
    assert!(counts["content_type"].as_u64().unwrap() >= 2, "{counts}");
    assert!(counts["cross_site"].as_u64().unwrap() >= 1, "{counts}");
}

/// Item 1, the other defences: the bearer token (and `rmb` reading it from the same
/// file), and the Unix socket, which no browser can reach.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_token_and_the_unix_socket_guard_the_api() {
    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("http-token");
    let socket = dir.path().join("api.sock");
    let alice = Node::start_with(
        "//Alice",
        &[&relay],
        &registry,
        &[
            "--http-token-file",
            token_file.to_str().unwrap(),
            "--http-socket",
            socket.to_str().unwrap(),
        ],
    )
    .await;
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&token_file), 0o600, "the token file is the user's own");
    assert_eq!(mode(&socket), 0o600, "so is the socket");
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(token.len(), 64);

    let host = authority(&alice);
    let me = alice.twin;
    // `request` ("METHOD /path") on the API, with `Authorization: Bearer <bearer>` if any.
    let send = |request: String, bearer: Option<String>, body: &'static str| {
        let auth = bearer.map_or(String::new(), |t| format!("\r\nAuthorization: Bearer {t}"));
        let head = format!("{request} HTTP/1.1\r\nHost: {host}{auth}");
        let alice = &alice;
        async move { raw(alice, &head, body).await }
    };
    let wrong = format!("{}x", &token[1..]);
    let topics = || "GET /topics".to_string();
    assert_eq!(send(topics(), None, "").await.0, 401, "no token");
    assert_eq!(
        send(topics(), Some(wrong), "").await.0,
        401,
        "a wrong token"
    );
    let (status, _) = send(format!("PUT /topics/{me}/t"), Some(token.clone()), "{}").await;
    assert_eq!(status, 200, "with the token");
    // With the token, a raw body needs no particular type.
    let (status, text) = send(format!("POST /topics/{me}/t"), Some(token.clone()), "one").await;
    assert_eq!(status, 200, "{text}");
    // EventSource-style clients give it in the query.
    let poll_url = format!("GET /topics/{me}/t/json?poll=1&since=all&access_token={token}");
    let (status, text) = send(poll_url, None, "").await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"one\""), "{text}");

    // rmb reads the same file.
    let rmb = rmb_testsupport::relay_process::binaries().join("rmb");
    let run = |args: &[&str], with_token: bool| {
        let mut cmd = std::process::Command::new(&rmb);
        cmd.args(args).env("RMB_HTTP", &alice.http);
        if with_token {
            cmd.env("RMB_HTTP_TOKEN_FILE", &token_file);
        }
        cmd.output().unwrap()
    };
    let topic = format!("{me}/t");
    let out = tokio::task::block_in_place(|| run(&["pub", &topic, "two"], false));
    assert!(!out.status.success(), "rmb without the token is refused");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("token"),
        "{out:?}"
    );
    let out = tokio::task::block_in_place(|| run(&["pub", &topic, "two"], true));
    assert!(out.status.success(), "{out:?}");

    // The socket: curl as the same user, no Host rules, no token, any body; and rmb.
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new("curl")
            .args([
                "-s",
                "--unix-socket",
                socket.to_str().unwrap(),
                "-d",
                "three",
            ])
            .arg(format!("http://x/topics/{topic}"))
            .output()
            .unwrap()
    });
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["id"], 3, "{answer}");
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new(&rmb)
            .args([
                "pub",
                "--http-socket",
                socket.to_str().unwrap(),
                &topic,
                "four",
            ])
            .output()
            .unwrap()
    });
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "4");
}

/// Item 2: idle and drip-feeding connections are closed by deadlines, the connection cap
/// holds, oversized and slow bodies are refused, and streams nobody reads are dropped
/// with the memory they held, while a reader that comes back resumes with `since`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_api_bounds_connections_bodies_and_unread_streams() {
    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let alice = Node::start_with(
        "//Alice",
        &[&relay],
        &registry,
        &[
            "--http-max-connections",
            "150",
            "--http-header-timeout",
            "2",
            "--http-body-timeout",
            "3",
            "--http-stall-timeout",
            "3",
        ],
    )
    .await;
    let me = alice.twin;
    let host = authority(&alice);
    create(&alice, "t", json!({})).await;

    // 300 idle connections: those over the cap (150) are closed at once, the rest by
    // the header deadline.
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(&host).await.unwrap());
    }
    let started = Instant::now();
    let mut closed_at = Vec::new();
    for mut tcp in idle {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(20), tcp.read(&mut byte)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "an idle connection stayed open: {read:?}"
        );
        closed_at.push(started.elapsed());
    }
    assert!(
        closed_at.iter().all(|t| *t < Duration::from_secs(10)),
        "{closed_at:?}"
    );

    // Headers one byte at a time: closed by the same deadline.
    let mut drip = TcpStream::connect(&host).await.unwrap();
    let t0 = Instant::now();
    let mut open = true;
    for byte in format!("GET / HTTP/1.1\r\nHost: {host}\r\nX-Slow: ")
        .bytes()
        .cycle()
        .take(60)
    {
        if drip.write_all(&[byte]).await.is_err() {
            open = false;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), drip.read_to_end(&mut rest)).await;
    assert!(
        !open || read.is_ok(),
        "a drip-fed header kept its connection"
    );
    assert!(t0.elapsed() < Duration::from_secs(16));

    // A body declaring 10^12 bytes: refused at once.
    let (status, text) = raw_declared(&host, me, 1_000_000_000_000).await;
    assert_eq!(status, 413, "{text}");
    // A body dripped a byte per second: 408 at the body deadline.
    let mut slow = TcpStream::connect(&host).await.unwrap();
    slow.write_all(
        format!(
            "POST /topics/{me}/t HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let dripper = tokio::spawn(async move {
        let mut answer = Vec::new();
        let t0 = Instant::now();
        for _ in 0..30 {
            if slow.write_all(b"x").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            let mut buf = [0u8; 4096];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(10), slow.read(&mut buf)).await
            {
                answer.extend_from_slice(&buf[..n]);
                if n == 0 || answer.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        }
        (String::from_utf8_lossy(&answer).to_string(), t0.elapsed())
    });
    let (answer, took) = dripper.await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "{answer:?} after {took:?}"
    );

    // Streams that never read: 100 SSE clients with tiny receive buffers, then 200
    // messages of 60 KiB. The peer's memory stays bounded, every stream is dropped as a
    // slow consumer, and a reader resumes with `since` and loses nothing.
    let pid = alice.peer.pid().unwrap();
    let rss_before = rss_kib(pid);
    let mut streams = Vec::new();
    for _ in 0..100 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut tcp = socket.connect(host.parse().unwrap()).await.unwrap();
        tcp.write_all(
            format!("GET /topics/{me}/t/sse HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        streams.push(tcp);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let big = "x".repeat(60 * 1024);
    for _ in 0..200 {
        let r = client()
            .post(alice.url(&format!("/topics/{me}/t")))
            .body(big.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let rss_peak = rss_kib(pid);
    // Every stream is dropped within the stall deadline and a few checks.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let dropped = refused(&alice).await["slow_consumer"].as_u64().unwrap();
        if dropped >= 100 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {dropped} of 100 unread streams were dropped"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(streams);
    assert!(
        rss_peak < rss_before + 120 * 1024,
        "100 unread streams grew the peer from {rss_before} to {rss_peak} KiB"
    );
    // What the dropped streams held goes back to the system (within a few seconds).
    let half_back = rss_before + (rss_peak.saturating_sub(rss_before)) / 2;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut rss_after = rss_kib(pid);
    while rss_after > half_back && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        rss_after = rss_kib(pid);
    }
    println!(
        "peer RSS: {rss_before} KiB before, {rss_peak} KiB with 100 unread streams, {rss_after} KiB after they were dropped"
    );
    assert!(
        rss_after <= half_back,
        "the memory was not given back: {rss_after} KiB"
    );
    let messages = poll(&alice, &format!("{me}/t")).await;
    assert_eq!(
        messages.len(),
        200,
        "a reader that comes back gets every message"
    );

    let counts = refused(&alice).await;
    assert!(counts["connections"].as_u64().unwrap() >= 150, "{counts}");
    assert!(counts["header_timeout"].as_u64().unwrap() >= 1, "{counts}");
    assert!(counts["body_too_large"].as_u64().unwrap() >= 1, "{counts}");
    assert!(counts["body_timeout"].as_u64().unwrap() >= 1, "{counts}");
}

/// A publish whose Content-Length is `declared`, with no body sent: the answer.
async fn raw_declared(host: &str, twin: u32, declared: u64) -> (u16, String) {
    let mut tcp = TcpStream::connect(host).await.unwrap();
    tcp.write_all(
        format!(
            "POST /topics/{twin}/t HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\nContent-Length: {declared}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// The resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
