//! `rmb pipe` and `rmb forward` through the local rmb-peer, as a user runs them: no
//! mnemonic, relay or registry on the command line, only the peer's HTTP API. Both
//! directions with stdin at EOF on either side, sha256 and both exit codes; `listen
//! --keep` serving two connections in a row; a far side's peer killed mid-transfer (a
//! failure, not exit 0); `rmb forward` to a TCP service behind `--expose`; the answers
//! when no peer listens, and the pipe routes' refusals of what a web page could send.

use std::path::Path;
use std::time::{Duration, Instant};

use rmb_testsupport::direct::{fresh_mnemonic, register_secret};
use rmb_testsupport::peer_process::PeerProcess;
use rmb_testsupport::redis_server::{RedisServer, free_port};
use rmb_testsupport::relay_process::RelayProcess;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::common::big_mib;
use super::pipes::{Input, Side, both_exit_zero, file_digest, write_data};

/// A twin's rmb-peer with its HTTP API, and its own Redis.
struct Node {
    twin: u32,
    http: String,
    peer: PeerProcess,
    _redis: RedisServer,
}

impl Node {
    async fn start(relay: &RelayProcess, extra: &[&str]) -> Node {
        let registry = relay.http_url();
        let secret = fresh_mnemonic();
        let twin = register_secret(&registry, &secret, &[relay.domain()]).await;
        let redis = RedisServer::start();
        let addr = format!("127.0.0.1:{}", free_port());
        let mut flags = vec!["--http", addr.as_str()];
        flags.extend_from_slice(extra);
        let peer = PeerProcess::start(&secret, &redis.url(), &[relay.ws_url()], &registry, &flags);
        Node {
            twin,
            http: format!("http://{addr}"),
            peer,
            _redis: redis,
        }
    }

    fn args(&self, words: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = words.iter().map(|w| w.to_string()).collect();
        args.extend(["--http".to_string(), self.http.clone()]);
        args
    }
}

/// Starts `rmb pipe listen` through `node` and waits until it listens.
async fn listen(node: &Node, extra: &[&str], input: Input<'_>, dir: &Path, name: &str) -> Side {
    let mut words = vec!["pipe", "listen", "--protocol", "cat"];
    words.extend_from_slice(extra);
    // No secret anywhere: the peer holds it.
    let side = Side::start(&node.args(&words), "", input, dir, name);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !side.stderr().contains("listening for") {
        assert!(Instant::now() < deadline, "{}", side.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        side.stderr().contains(&format!("--to {} ", node.twin)),
        "the listener names its twin: {}",
        side.stderr()
    );
    side
}

fn connect(node: &Node, to: u32, input: Input<'_>, dir: &Path, name: &str) -> Side {
    let to = to.to_string();
    let words = ["pipe", "connect", "--protocol", "cat", "--to", &to];
    Side::start(&node.args(&words), "", input, dir, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipes_through_the_local_peer_deliver_everything_and_exit_zero() {
    let relay = RelayProcess::start(&[]);
    let (a, b) = (
        Node::start(&relay, &[]).await,
        Node::start(&relay, &[]).await,
    );
    let dir = tempfile::tempdir().unwrap();
    let big = write_data(dir.path(), "big", big_mib() << 20, 11);

    // connector → listener, the listener's stdin at EOF at once.
    let mut l = listen(&b, &[], Input::Nothing, dir.path(), "l1").await;
    let mut c = connect(&a, b.twin, Input::File(&big), dir.path(), "c1");
    both_exit_zero(&mut l, &mut c).await;
    assert_eq!(l.digest(), file_digest(&big), "listener's stdout");
    assert_eq!(c.digest().0, 0);

    // listener → connector, the connector's stdin at EOF at once.
    let mut l = listen(&b, &[], Input::File(&big), dir.path(), "l2").await;
    let mut c = connect(&a, b.twin, Input::Nothing, dir.path(), "c2");
    both_exit_zero(&mut l, &mut c).await;
    assert_eq!(c.digest(), file_digest(&big), "connector's stdout");

    // Both ways at once, and a line.
    let small = write_data(dir.path(), "small", 300_000, 12);
    let hello = dir.path().join("hello");
    std::fs::write(&hello, b"hello\n").unwrap();
    let mut l = listen(&b, &[], Input::File(&small), dir.path(), "l3").await;
    let mut c = connect(&a, b.twin, Input::File(&hello), dir.path(), "c3");
    both_exit_zero(&mut l, &mut c).await;
    assert_eq!(std::fs::read(&l.out).unwrap(), b"hello\n");
    assert_eq!(c.digest(), file_digest(&small));

    // `listen --keep`: two connections in a row, then SIGTERM ends it with 0.
    let mut l = listen(&b, &["--keep"], Input::Nothing, dir.path(), "l4").await;
    let first = write_data(dir.path(), "first", 1 << 20, 13);
    let second = write_data(dir.path(), "second", 2 << 20, 14);
    for (i, file) in [&first, &second].into_iter().enumerate() {
        let mut c = connect(&a, b.twin, Input::File(file), dir.path(), &format!("k{i}"));
        let status = c.wait().await;
        assert!(status.success(), "keep connector {i}: {}", c.stderr());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(&l.out).map_or(0, |m| m.len()) < 3 << 20 {
        if Instant::now() > deadline {
            let got = std::fs::read(&l.out).unwrap();
            let mut expected = std::fs::read(&first).unwrap();
            expected.extend(std::fs::read(&second).unwrap());
            let at = got.iter().zip(&expected).position(|(a, b)| a != b);
            panic!(
                "{} bytes, first difference at {at:?}: {}",
                got.len(),
                l.stderr()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut expected = std::fs::read(&first).unwrap();
    expected.extend(std::fs::read(&second).unwrap());
    assert_eq!(std::fs::read(&l.out).unwrap(), expected, "both, in order");
    let pid = l.child.as_ref().unwrap().id().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    assert!(sent.unwrap().success());
    let status = l.wait().await;
    assert!(
        status.success(),
        "listen --keep after SIGTERM: {status} {}",
        l.stderr()
    );
    assert_eq!(
        l.stderr().matches("connected:").count(),
        2,
        "{}",
        l.stderr()
    );
}

/// The far side's peer dies while the connector still sends: the connector exits
/// non-zero with the reason. A listener for a protocol the peer already serves, a
/// connect with no peer behind `--http`, and direct-only flags without `--relay` are
/// clear errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_far_side_and_a_missing_peer_are_failures_with_reasons() {
    let relay = RelayProcess::start(&[]);
    let (a, mut b) = (
        Node::start(&relay, &[]).await,
        Node::start(&relay, &[]).await,
    );
    let dir = tempfile::tempdir().unwrap();

    let fifo = dir.path().join("fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let feeder = std::thread::spawn({
        let fifo = fifo.clone();
        move || {
            use std::io::Write;
            let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
            let chunk = vec![7u8; 64 << 10];
            while w.write_all(&chunk).is_ok() {}
        }
    });
    let l = listen(&b, &[], Input::Nothing, dir.path(), "l").await;
    let mut c = connect(&a, b.twin, Input::File(&fifo), dir.path(), "c");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(&l.out).map_or(0, |m| m.len()) < (1 << 20) {
        assert!(Instant::now() < deadline, "nothing arrived: {}", c.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.peer.kill();
    let status = c.wait().await;
    assert!(
        !status.success(),
        "the connector lost its far side and exited 0"
    );
    assert!(c.stderr().contains("rmb:"), "{}", c.stderr());
    drop(c);
    feeder.join().unwrap();
    drop(l);

    // A second listener for the same protocol on one peer.
    let _first = listen(&a, &[], Input::Nothing, dir.path(), "dup1").await;
    let words = a.args(&["pipe", "listen", "--protocol", "cat"]);
    fails_saying(&words, dir.path(), "dup2", &["already listens for 'cat'"]).await;

    // Nobody behind --http.
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let words = [
        "pipe",
        "connect",
        "--protocol",
        "cat",
        "--to",
        "1",
        "--http",
        &nobody,
    ];
    let expected = ["no rmb-peer HTTP API at", "--http 127.0.0.1:8051"];
    fails_saying(&words.map(String::from), dir.path(), "none", &expected).await;

    // A direct client's flag without --relay.
    let words = [
        "pipe",
        "connect",
        "--protocol",
        "cat",
        "--to",
        "1",
        "--no-update",
    ];
    let expected = ["--no-update is for a direct client"];
    fails_saying(&words.map(String::from), dir.path(), "flag", &expected).await;
}

/// Runs `rmb` with `args` and no input; it must fail, saying each of `expected`.
async fn fails_saying(args: &[String], dir: &Path, name: &str, expected: &[&str]) {
    let mut side = Side::start(args, "", Input::Nothing, dir, name);
    let status = side.wait().await;
    assert!(!status.success(), "{args:?} succeeded");
    for text in expected {
        assert!(
            side.stderr().contains(text),
            "{text:?} not in: {}",
            side.stderr()
        );
    }
}

/// `rmb forward` through the local peer to a TCP echo service behind the other peer's
/// `--expose`: bytes come back intact, and the far service's end reaches the TCP client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_through_the_local_peer_reaches_an_exposed_service() {
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = socket.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    let relay = RelayProcess::start(&[]);
    let a = Node::start(&relay, &[]).await;
    let expose = format!("echo={echo_addr}");
    let b = Node::start(&relay, &["--expose", &expose]).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let to = b.twin.to_string();
    let words = [
        "forward",
        "--listen",
        &listen,
        "--to",
        &to,
        "--protocol",
        "echo",
    ];
    let fwd = Side::start(&a.args(&words), "", Input::Nothing, dir.path(), "fwd");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fwd.stderr().contains("forwarding") {
        assert!(Instant::now() < deadline, "{}", fwd.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let data: Vec<u8> = (0..(4u32 << 20)).map(|i| (i % 251) as u8).collect();
    for _ in 0..2 {
        let mut tcp = tokio::net::TcpStream::connect(&listen).await.unwrap();
        let (mut r, mut w) = tcp.split();
        let send = async {
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let mut back = Vec::new();
        let recv = tokio::time::timeout(Duration::from_secs(60), r.read_to_end(&mut back));
        let (_, got) = tokio::join!(send, recv);
        got.expect("the echo ended").unwrap();
        assert!(
            back == data,
            "echoed {} of {} bytes",
            back.len(),
            data.len()
        );
    }
}

/// The pipe routes refuse what a web page could send, and want the upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipe_routes_refuse_web_pages_and_plain_requests() {
    let relay = RelayProcess::start(&[]);
    let a = Node::start(&relay, &[]).await;
    let http = reqwest::Client::new();
    let url = format!("{}/pipes/open?to=1&protocol=cat", a.http);
    // A form post from a page: refused before anything opens.
    let r = http
        .post(&url)
        .header("content-type", "text/plain")
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Not an upgrade.
    let r = http
        .post(&url)
        .header("content-type", "application/vnd.rmb.pipe")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 426);
    let r = http
        .post(format!("{}/pipes/listen?protocol=cat", a.http))
        .header("content-type", "application/vnd.rmb.pipe")
        .header("host", "attacker.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 421);
}
