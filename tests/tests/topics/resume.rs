//! `rmb sub` across restarts of the subscriber's rmb-peer: it reconnects by itself and
//! resumes after the last message it printed (each message once, in order, while the
//! publisher goes on), says so on stderr, and gives up with an error only after
//! `--retry-for` or on an answer that will not change.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rmb_testsupport::redis_server::free_port;
use rmb_testsupport::relay_process::RelayProcess;
use serde_json::json;

use super::node::*;

/// A running `rmb sub`: its stdout lines come through a channel, its stderr is kept.
struct Sub {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: std::thread::JoinHandle<String>,
}

impl Sub {
    fn start(http: &str, args: &[&str]) -> Sub {
        let binary = rmb_testsupport::relay_process::binaries().join("rmb");
        let mut child = Command::new(&binary)
            .arg("sub")
            .args(args)
            .env("RMB_HTTP", http)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start rmb sub");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            text
        });
        Sub {
            child,
            lines,
            stderr,
        }
    }

    /// The next `n` lines (fewer when none comes for [`WAIT`]).
    fn take(&self, n: usize) -> Vec<String> {
        let mut got = Vec::new();
        while got.len() < n {
            match self.lines.recv_timeout(WAIT) {
                Ok(line) => got.push(line),
                Err(_) => break,
            }
        }
        got
    }

    /// Waits for it to exit by itself (at most `within`); its exit code and stderr.
    fn exit(mut self, within: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code(), self.stderr.join().unwrap());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        (None, self.stderr.join().unwrap())
    }

    /// Stops it (it must still be running); its stderr.
    fn stop(mut self) -> String {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "rmb sub exited by itself"
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr.join().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rmb_sub_survives_restarts_of_the_subscribers_peer_without_gap_or_repeat() {
    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let alice = Node::start("//Alice", &[&relay], &registry).await;
    let mut bob = Node::start("//Bob", &[&relay], &registry).await;
    create(&alice, "feed", json!({})).await;
    let topic = format!("{}/feed", alice.twin);

    let sub = Sub::start(&bob.http, &[&topic, "--since", "0"]);
    for i in 1..=5 {
        assert_eq!(publish(&alice, &topic, &format!("m{i}")).await.0, 200);
    }
    let first = tokio::task::block_in_place(|| sub.take(5));
    assert_eq!(first.len(), 5, "{first:?}");

    // The publisher goes on while Bob's peer is SIGKILLed and started again, twice:
    // once while messages arrive, once while the stream is idle.
    const N: usize = 60;
    let publisher = {
        let alice_url = alice.http.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            for i in 6..=N {
                let r = client()
                    .post(format!("{alice_url}/topics/{topic}"))
                    .body(format!("m{i}"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    bob.kill().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    bob.relaunch().await;
    publisher.await.unwrap();
    let more = tokio::task::block_in_place(|| sub.take(N - 5));
    bob.kill().await;
    bob.relaunch().await;
    assert_eq!(publish(&alice, &topic, "after").await.0, 200);
    let last = tokio::task::block_in_place(|| sub.take(1));

    let mut all = first;
    all.extend(more);
    all.extend(last);
    let mut want: Vec<String> = (1..=N).map(|i| format!("{i} m{i}")).collect();
    want.push(format!("{} after", N + 1));
    assert_eq!(all, want, "each message once, in order");
    let stderr = tokio::task::block_in_place(|| sub.stop());
    assert!(stderr.contains("lost the peer at"), "{stderr}");
    assert!(
        stderr.contains("reconnected; resuming after id"),
        "{stderr}"
    );
    assert!(
        stderr.contains("(the stream was cut); reconnecting"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("chunk size"),
        "no raw hyper error: {stderr}"
    );
    assert!(
        stderr.lines().count() <= 8,
        "one note per outage, not one per attempt: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmb_sub_gives_up_after_retry_for_and_at_once_on_a_permanent_refusal() {
    // Nobody listens: it tries for --retry-for seconds, then fails with a clear line.
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let started = Instant::now();
    let (code, stderr) = tokio::task::block_in_place(|| {
        Sub::start(&nobody, &["5/t", "--retry-for", "2"]).exit(Duration::from_secs(20))
    });
    assert_eq!(code, Some(1), "{stderr}");
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(stderr.contains("cannot reach the peer at"), "{stderr}");
    assert!(stderr.contains("giving up"), "{stderr}");
    assert!(stderr.contains("--retry-for"), "{stderr}");
    assert_eq!(stderr.lines().count(), 2, "{stderr}");

    // A topic that does not exist: no retrying.
    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let alice = Node::start("//Alice", &[&relay], &registry).await;
    let bob = Node::start("//Bob", &[&relay], &registry).await;
    let started = Instant::now();
    let missing = format!("{}/missing", alice.twin);
    let (code, stderr) = tokio::task::block_in_place(|| {
        Sub::start(&bob.http, &[&missing]).exit(Duration::from_secs(40))
    });
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no topic"), "{stderr}");
    assert!(!stderr.contains("reconnecting"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(30));
    // A bad --since is told before anything is sent.
    let (code, stderr) = tokio::task::block_in_place(|| {
        Sub::start(&bob.http, &[&missing, "--since", "soon"]).exit(Duration::from_secs(10))
    });
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("duration"), "{stderr}");
}
