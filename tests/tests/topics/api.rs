//! The local HTTP API (malformed requests get JSON errors, curl and a WebSocket client)
//! and the `rmb topic` / `rmb pub` / `rmb sub` / `rmb pull` commands.

use std::process::Command;
use std::time::Duration;

use rmb_testsupport::relay_process::RelayProcess;
use serde_json::{Value, json};

use super::node::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_answers_bad_requests_with_json_errors() {
    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let alice = Node::start("//Alice", &[&relay], &registry).await;
    let me = alice.twin;
    create(&alice, "t", json!({})).await;

    // curl: publish with headers, then poll. A plain `curl -d` (a form body, which any
    // web page can post) is refused with what to send instead.
    let url = alice.url(&format!("/topics/{me}/t"));
    let (body, status) = tokio::task::block_in_place(|| curl(&["-d", "disk full", &url]));
    assert_eq!(status, 415, "{body}");
    assert!(body.contains("Content-Type: application/json"), "{body}");
    let (body, status) = tokio::task::block_in_place(|| {
        curl(&[
            "-H",
            "Content-Type: application/octet-stream",
            "-H",
            "Title: Disk",
            "-H",
            "Priority: 4",
            "-H",
            "Tags: a,b",
            "-d",
            "disk full",
            &url,
        ])
    });
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["id"], 1);
    let (body, status) =
        tokio::task::block_in_place(|| curl(&[&format!("{url}/json?poll=1&since=all")]));
    assert_eq!(status, 200);
    let m: Value = serde_json::from_str(body.trim()).unwrap();
    assert_eq!(
        (
            m["message"].as_str(),
            m["title"].as_str(),
            m["priority"].as_u64()
        ),
        (Some("disk full"), Some("Disk"), Some(4))
    );
    assert_eq!(m["tags"], json!(["a", "b"]));
    // Binary payloads come back as base64.
    let r = client()
        .post(&url)
        .body(vec![0xffu8, 0, 1])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = poll(&alice, &format!("{me}/t")).await;
    assert_eq!(
        (got[1]["message"].as_str(), got[1]["encoding"].as_str()),
        (Some("/wAB"), Some("base64"))
    );

    let c = client();
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            c.get(alice.url("/topics/7/bad%20name/json")),
            400,
            "topic name",
        ),
        (c.get(alice.url("/topics/x/t/json")), 400, "twin id"),
        (
            c.get(alice.url(&format!("/topics/{me}/t/json?since=abc"))),
            400,
            "since",
        ),
        (
            c.get(alice.url(&format!("/topics/{me}/t/json?limit=0"))),
            400,
            "limit",
        ),
        (
            c.get(alice.url(&format!("/topics/{me}/t/json?foo=1"))),
            400,
            "unknown parameter",
        ),
        (
            c.put(alice.url(&format!("/topics/{me}/u"))).body("{nope"),
            400,
            "configuration",
        ),
        (
            c.put(alice.url(&format!("/topics/{me}/u")))
                .body(r#"{"retention_count":0}"#),
            400,
            "retention_count",
        ),
        (
            c.put(alice.url(&format!("/topics/{me}/u")))
                .body(r#"{"publish":"everyone"}"#),
            400,
            "access",
        ),
        (
            c.put(alice.url("/topics/999/theirs")).body("{}"),
            403,
            "owner",
        ),
        (
            c.post(alice.url(&format!("/topics/{me}/missing")))
                .body("x"),
            404,
            "no topic",
        ),
        (c.post(&url).body(vec![b'a'; 70_000]), 413, "limit is 65536"),
        (
            c.post(&url).header("Priority", "9").body("x"),
            400,
            "priority",
        ),
        (
            c.post(&url)
                .header("content-type", "application/json")
                .body("[1]"),
            400,
            "message document",
        ),
        (
            c.get(alice.url(&format!("/topics/{me}/t/ws"))),
            400,
            "WebSocket",
        ),
        (c.get(alice.url("/nope")), 404, "no such endpoint"),
        (c.delete(alice.url("/topics")), 405, "not allowed"),
        (c.post(alice.url("/call")).body("{}"), 400, "missing field"),
        (
            c.post(alice.url("/call")).body(r#"{"twin":0,"cmd":"x"}"#),
            400,
            "twin",
        ),
        (
            c.post(alice.url("/call"))
                .body(r#"{"twin":2,"cmd":"x","timeout":9999}"#),
            400,
            "timeout",
        ),
        (
            c.post(alice.url("/call"))
                .body(r#"{"twin":999999,"cmd":"x"}"#),
            502,
            "999999",
        ),
        (c.get(alice.url("/topics/999999/t")), 404, "not subscribed"),
    ];
    for (request, status, needle) in cases {
        let r = request.send().await.unwrap();
        let got = r.status().as_u16();
        let body = r.text().await.unwrap();
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}"));
        assert_eq!(got, status, "{body}");
        assert_eq!(v["http"], status);
        assert!(
            v["error"].as_str().unwrap().contains(needle),
            "{needle:?} not in {body}"
        );
    }
    // Nothing of that reached the log.
    assert_eq!(poll(&alice, &format!("{me}/t")).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_creates_publishes_pulls_and_subscribes() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let alice = Node::start("//Alice", &[&relay], &registry).await;
    let bob = Node::start("//Bob", &[&relay], &registry).await;
    let topic = format!("{}/chat", alice.twin);
    let bob_twin = bob.twin.to_string();
    tokio::task::block_in_place(|| {
        let created = rmb(&alice, &["topic", "create", "chat", "--publish", &bob_twin]);
        assert!(
            created.contains(&format!("topic {topic} ready")),
            "{created}"
        );

        // `rmb sub` on Bob's side, live, from the start.
        let binary = rmb_testsupport::relay_process::binaries().join("rmb");
        let mut sub = Command::new(&binary)
            .args(["sub", &topic, "--since", "0"])
            .env("RMB_HTTP", &bob.http)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start rmb sub");
        let mut lines = BufReader::new(sub.stdout.take().unwrap()).lines();

        assert_eq!(rmb(&alice, &["pub", "chat", "first"]).trim(), "1");
        assert_eq!(
            rmb(&bob, &["pub", &topic, "from bob", "--title", "hi"]).trim(),
            "2"
        );
        let (l1, l2) = (
            lines.next().unwrap().unwrap(),
            lines.next().unwrap().unwrap(),
        );
        assert_eq!((l1.as_str(), l2.as_str()), ("1 first", "2 from bob"));
        let _ = sub.kill();
        let _ = sub.wait();

        let pulled = rmb(&alice, &["pull", "chat", "--since", "1", "--json"]);
        let m: Value = serde_json::from_str(pulled.trim()).unwrap();
        assert_eq!(
            (m["id"].as_u64(), m["title"].as_str()),
            (Some(2), Some("hi"))
        );
        assert_eq!(m["publisher"], bob.twin);
        let listed = rmb(&alice, &["topic", "list"]);
        assert!(
            listed.contains(&topic) && listed.contains("subscribers 1"),
            "{listed}"
        );
        let shown: Value = serde_json::from_str(&rmb(&bob, &["topic", "show", &topic])).unwrap();
        assert_eq!(shown["last_id"], 2);
    });
}

/// Server-sent events carry each message's id, and a client that reconnects with
/// `Last-Event-ID` (as a browser's EventSource does by itself) resumes after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sse_events_carry_ids_and_resume_after_last_event_id() {
    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let alice = Node::start("//Alice", &[&relay], &registry).await;
    let topic = format!("{}/ids", alice.twin);
    create(&alice, "ids", json!({})).await;
    for text in ["one", "two", "three"] {
        assert_eq!(publish(&alice, &topic, text).await.0, 200);
    }
    let mut sse = client()
        .get(alice.url(&format!("/topics/{topic}/sse")))
        .header("last-event-id", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    let mut text = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !text.contains("id: 3") && std::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), sse.chunk()).await {
            Ok(Ok(Some(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            _ => break,
        }
    }
    assert!(text.contains("id: 2") && text.contains("id: 3"), "{text}");
    assert!(!text.contains("id: 1\n"), "resumed after 1: {text}");
    assert!(!text.contains("\"one\""), "{text}");
}
