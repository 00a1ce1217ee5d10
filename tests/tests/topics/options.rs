//! The ntfy-style options of reading and publishing, through the HTTP API and the
//! `rmb` command: `since=` as a duration, a unix time or `latest` (clamped when
//! hostile); an owner's topics created by publishing (`--topic-auto-create`), which a
//! stranger can never do; and `rmb pub` dropping stdin's trailing newline unless
//! `--raw`, binary input byte for byte; a WebSocket client resuming as the guide says.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use base64::Engine;
use rmb_testsupport::relay_process::RelayProcess;
use serde_json::{Value, json};

use super::node::*;

/// Runs `rmb` against the API at `http`, with `stdin` written to it.
fn rmb_with(http: &str, args: &[&str], stdin: &[u8]) -> Output {
    let binary = rmb_testsupport::relay_process::binaries().join("rmb");
    let mut child = Command::new(&binary)
        .args(args)
        .env("RMB_HTTP", http)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run rmb");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

/// `GET path` on `node`'s API: status and body lines as JSON.
async fn get_lines(node: &Node, path: &str) -> (u16, Vec<Value>) {
    let r = client().get(node.url(path)).send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let lines = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    (status, lines)
}

fn ids(messages: &[Value]) -> Vec<u64> {
    messages.iter().map(|m| m["id"].as_u64().unwrap()).collect()
}

/// The first `n` lines of a live JSON stream.
async fn stream_lines(node: &Node, path: &str, n: usize) -> Vec<Value> {
    let mut r = client().get(node.url(path)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut text = String::new();
    while text.lines().count() < n {
        match tokio::time::timeout(WAIT, r.chunk()).await {
            Ok(Ok(Some(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            _ => break,
        }
    }
    text.lines()
        .take(n)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_takes_durations_unix_times_and_latest_through_the_api_and_rmb_sub() {
    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let alice = Node::start("//Alice", &[&relay], &registry).await;
    let bob = Node::start("//Bob", &[&relay], &registry).await;
    create(&alice, "t", json!({})).await;
    let topic = format!("{}/t", alice.twin);
    for text in ["m1", "m2", "m3"] {
        assert_eq!(publish(&alice, &topic, text).await.0, 200);
    }
    // Four seconds later: m4 and m5 (so `3s` finds them even on a slow machine).
    tokio::time::sleep(Duration::from_millis(4100)).await;
    let (status, m4) = publish(&alice, &topic, "m4").await;
    assert_eq!(status, 200);
    assert_eq!(publish(&alice, &topic, "m5").await.0, 200);
    let t4 = m4["time"].as_u64().unwrap();

    let alice = &alice;
    let poll = |since: String| {
        let path = format!("/topics/{topic}/json?poll=1&since={since}");
        async move { get_lines(alice, &path).await }
    };
    let cases: Vec<(String, Vec<u64>)> = vec![
        ("3s".into(), vec![4, 5]),
        ("10m".into(), vec![1, 2, 3, 4, 5]),
        ("1d".into(), vec![1, 2, 3, 4, 5]),
        (t4.to_string(), vec![4, 5]),
        ((t4 - 100).to_string(), vec![1, 2, 3, 4, 5]),
        ("latest".into(), vec![5]),
        ("all".into(), vec![1, 2, 3, 4, 5]),
        ("3".into(), vec![4, 5]),
        // Hostile values are clamped: a huge duration is everything, a time in the
        // future or past u64 is nothing stored.
        ("99999999999999999999d".into(), vec![1, 2, 3, 4, 5]),
        ("4000000000".into(), vec![]),
        ("99999999999999999999999".into(), vec![]),
    ];
    for (since, want) in cases {
        let (status, got) = poll(since.clone()).await;
        assert_eq!(status, 200, "since={since}");
        assert_eq!(ids(&got), want, "since={since}");
    }
    for bad in ["10x", "-5", "1.5h", "m"] {
        let (status, got) = poll(bad.into()).await;
        assert_eq!(status, 400, "since={bad}");
        assert!(
            got[0]["error"].as_str().unwrap().contains("duration"),
            "{got:?}"
        );
    }
    // A live stream from `latest`: its first event says where it starts.
    let lines = stream_lines(alice, &format!("/topics/{topic}/json?since=latest"), 2).await;
    assert_eq!(lines[0]["event"], "open");
    assert_eq!(lines[0]["since"], 4);
    assert_eq!(lines[1]["id"], 5);

    // Another twin's topic, not subscribed to: the owner's log is searched.
    let (status, got) = get_lines(&bob, &format!("/topics/{topic}/json?poll=1&since=latest")).await;
    assert_eq!((status, ids(&got)), (200, vec![5]));
    let t4s = t4.to_string();
    tokio::task::block_in_place(|| {
        // `rmb sub` from a unix time on Bob's side (subscribing from there), and from
        // `latest` on Alice's own topic; `rmb pull` takes the same forms.
        for (node, since, want) in [
            (&bob, t4s.as_str(), vec!["4 m4", "5 m5"]),
            (alice, "latest", vec!["5 m5"]),
        ] {
            let binary = rmb_testsupport::relay_process::binaries().join("rmb");
            let mut sub = Command::new(&binary)
                .args(["sub", &topic, "--since", since])
                .env("RMB_HTTP", &node.http)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut lines =
                std::io::BufRead::lines(std::io::BufReader::new(sub.stdout.take().unwrap()));
            let got: Vec<String> = (0..want.len())
                .map(|_| lines.next().unwrap().unwrap())
                .collect();
            let _ = sub.kill();
            let _ = sub.wait();
            assert_eq!(got, want, "rmb sub --since {since}");
        }
        assert_eq!(rmb(alice, &["pull", "t", "--since", "latest"]), "5 m5\n");
        assert_eq!(rmb(alice, &["pull", "t", "--since", &t4s]), "4 m4\n5 m5\n");
        let out = rmb_with(&alice.http, &["pull", "t", "--since", "yesterday"], b"");
        assert_eq!(out.status.code(), Some(2));
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_may_create_topics_by_publishing_and_a_stranger_never_can() {
    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let alice = Node::start_with("//Alice", &[&relay], &registry, &["--topic-auto-create"]).await;
    let bob = Node::start("//Bob", &[&relay], &registry).await;
    let me = alice.twin;
    tokio::task::block_in_place(|| {
        // The owner, with --topic-auto-create: the first publish creates the topic with
        // the default settings.
        assert_eq!(rmb(&alice, &["pub", "fresh", "hello"]).trim(), "1");
        assert_eq!(rmb(&alice, &["pub", "fresh", "again"]).trim(), "2");
    });
    let shown = alice.get_json(&format!("/topics/{me}/fresh")).await;
    assert_eq!(shown["last_id"], 2);
    assert_eq!(shown["config"]["publish"], "owner");
    assert_eq!(shown["config"]["subscribe"], "anyone");
    assert_eq!(shown["config"]["retention_count"], 1000);

    // A stranger cannot create one of Alice's topics by publishing (the owner's flag
    // does not extend to it), nor publish to the one created.
    let (status, answer) = publish(&bob, &format!("{me}/strangers"), "x").await;
    assert_eq!(status, 404, "{answer}");
    let (status, answer) = publish(&bob, &format!("{me}/fresh"), "x").await;
    assert_eq!(status, 403, "{answer}");
    let listing = alice.listing().await;
    let names: Vec<&str> = listing["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["topic"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec![format!("{me}/fresh").as_str()]);

    // Without the flag, publishing to a topic that does not exist is an error.
    tokio::task::block_in_place(|| {
        let out = rmb_with(&bob.http, &["pub", "mine", "x"], b"");
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("no topic"));
    });
    let (status, _) = publish(&bob, &format!("{}/mine", bob.twin), "x").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmb_pub_drops_stdins_trailing_newline_unless_raw_and_keeps_binary_exact() {
    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let alice = Node::start("//Alice", &[&relay], &registry).await;
    create(&alice, "p", json!({})).await;
    let binary_file: Vec<u8> = vec![0xff, 0x00, 0x01, b'\r', b'\n'];
    let ascii_file = b"line one\nline two\n".to_vec();
    let cases: Vec<(Vec<&str>, Vec<u8>, Vec<u8>)> = vec![
        (vec![], b"x\n".to_vec(), b"x".to_vec()),
        (vec![], b"crlf\r\n".to_vec(), b"crlf".to_vec()),
        (vec![], b"two\n\n".to_vec(), b"two\n".to_vec()),
        (vec![], b"none".to_vec(), b"none".to_vec()),
        (vec!["--raw"], b"x\n".to_vec(), b"x\n".to_vec()),
        (vec!["--raw"], ascii_file.clone(), ascii_file.clone()),
        (vec![], binary_file.clone(), binary_file.clone()),
        (vec!["--raw"], binary_file.clone(), binary_file.clone()),
    ];
    tokio::task::block_in_place(|| {
        for (flags, input, _) in &cases {
            let mut args = vec!["pub", "p"];
            args.extend(flags);
            let out = rmb_with(&alice.http, &args, input);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // A message given as an argument is sent as it is.
        assert_eq!(rmb(&alice, &["pub", "p", "arg\n"]).trim(), "9");
    });
    let got = poll(&alice, &format!("{}/p", alice.twin)).await;
    assert_eq!(got.len(), cases.len() + 1);
    for (m, (flags, input, want)) in got.iter().zip(&cases) {
        let text = m["message"].as_str().unwrap();
        let bytes = match m["encoding"].as_str() {
            Some("base64") => base64::engine::general_purpose::STANDARD
                .decode(text)
                .unwrap(),
            _ => text.as_bytes().to_vec(),
        };
        assert_eq!(&bytes, want, "rmb pub {flags:?} with {input:?}");
    }
    assert_eq!(got[cases.len()]["message"], "arg\n");
}

/// A WebSocket client resumes as docs/topics.md says: after the `since` of the `open`
/// event when nothing came yet, else after the last id it saw, across a restart of the
/// peer, with nothing missed and nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_resumes_after_the_last_id_it_saw_across_a_peer_restart() {
    use futures_util::StreamExt;

    async fn next_json(
        ws: &mut (
                 impl futures_util::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin
             ),
    ) -> Option<Value> {
        loop {
            let frame = tokio::time::timeout(WAIT, ws.next()).await.ok()??.ok()?;
            if let Ok(text) = frame.into_text() {
                let v: Value = serde_json::from_str(&text).ok()?;
                if v["event"] != "keepalive" {
                    return Some(v);
                }
            }
        }
    }

    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let mut alice = Node::start("//Alice", &[&relay], &registry).await;
    create(&alice, "w", json!({})).await;
    let topic = format!("{}/w", alice.twin);
    for text in ["m1", "m2"] {
        assert_eq!(publish(&alice, &topic, text).await.0, 200);
    }
    let base = alice
        .url(&format!("/topics/{topic}/ws"))
        .replace("http", "ws");
    let ws_url = |since: &str| format!("{base}?since={since}");
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url("latest"))
        .await
        .unwrap();
    let open = next_json(&mut ws).await.unwrap();
    assert_eq!(
        (open["event"].as_str(), open["since"].as_u64()),
        (Some("open"), Some(1))
    );
    let m2 = next_json(&mut ws).await.unwrap();
    assert_eq!(m2["id"], 2);
    let last = m2["id"].as_u64().unwrap();

    // The peer goes away (the socket ends) while messages are published; the client
    // resumes with since=<last id seen>.
    alice.kill().await;
    assert!(next_json(&mut ws).await.is_none(), "the stream ended");
    alice.relaunch().await;
    for text in ["m3", "m4"] {
        assert_eq!(publish(&alice, &topic, text).await.0, 200);
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url(&last.to_string()))
        .await
        .unwrap();
    assert_eq!(next_json(&mut ws).await.unwrap()["since"], 2);
    let got: Vec<(u64, String)> = [next_json(&mut ws).await, next_json(&mut ws).await]
        .into_iter()
        .map(|m| {
            let m = m.unwrap();
            (
                m["id"].as_u64().unwrap(),
                m["message"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(got, vec![(3, "m3".into()), (4, "m4".into())]);
}
