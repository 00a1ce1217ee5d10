//! Delivery between real processes: fan-out across two federated relays, a subscriber
//! killed and restarted, the owner killed mid-stream.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use rmb_testsupport::relay_process::RelayProcess;
use serde_json::{Value, json};

use super::node::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_subscribers_on_two_federated_relays_get_every_message_in_order() {
    let r1 = RelayProcess::start(&["--federation-http"]);
    let registry = r1.http_url();
    let r2 = RelayProcess::start(&["--federation-http", "--registry", &registry]);
    let alice = Node::start("//Alice", &[&r1], &registry).await; // owner
    let bob = Node::start("//Bob", &[&r1], &registry).await; // subscriber
    let charlie = Node::start("//Charlie", &[&r2], &registry).await; // subscriber
    let dave = Node::start("//Dave", &[&r2], &registry).await; // publisher

    let info = create(&alice, "alerts", json!({ "publish": [dave.twin] })).await;
    assert_eq!(info["topic"], format!("{}/alerts", alice.twin));
    assert_eq!(info["config"]["subscribe"], "anyone");
    assert_eq!(info["last_id"], 0);
    let topic = format!("{}/alerts", alice.twin);
    subscribe(&bob, &topic, json!({ "since": 0 })).await;
    subscribe(&charlie, &topic, json!({})).await;

    // A live WebSocket on Charlie and an SSE stream on Bob, open before publishing.
    let ws_url = charlie
        .url(&format!("/topics/{topic}/ws?since=0"))
        .replace("http", "ws");
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    let first = ws.next().await.unwrap().unwrap().into_text().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&first).unwrap()["event"],
        "open"
    );
    let mut sse = client()
        .get(bob.url(&format!("/topics/{topic}/sse?since=0")))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    assert!(
        sse.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );

    // Dave (allowed) publishes through relay 2, Alice (owner) locally, interleaved.
    let mut acked = BTreeMap::new();
    for i in 0..30 {
        let (node, text) = if i % 6 == 5 {
            (&alice, format!("owner-{i}"))
        } else {
            (&dave, format!("dave-{i}"))
        };
        let (status, answer) = publish(node, &topic, &text).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["topic"], topic);
        acked.insert(answer["id"].as_u64().unwrap(), text);
    }
    let expected: Vec<(u64, String)> = acked.clone().into_iter().collect();
    assert_eq!(
        expected.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        (1..=30).collect::<Vec<_>>(),
        "ids are 1, 2, 3... in publish order"
    );

    // Bob is not in the publish list: refused with a clear error, nothing stored.
    let (status, error) = publish(&bob, &topic, "intruder").await;
    assert_eq!(status, 403, "{error}");
    let text = error["error"].as_str().unwrap();
    assert!(
        text.contains(&format!("twin {} may not publish to {topic}", bob.twin)),
        "{text}"
    );
    assert_eq!(error["http"], 403);

    // Both subscribers have everything, in order, with the owner's ids.
    for node in [&bob, &charlie] {
        let got = poll_until(node, &topic, 30).await;
        assert_eq!(ids_and_texts(&got), expected, "twin {}", node.twin);
        assert!(
            got.iter()
                .all(|m| m["event"] == "message" && m["topic"] == topic)
        );
    }
    let owner_log = poll(&alice, &topic).await;
    assert_eq!(ids_and_texts(&owner_log), expected);
    assert_eq!(owner_log[0]["publisher"], dave.twin);

    // The WebSocket saw them all, in order, once.
    let mut live = Vec::new();
    while live.len() < 30 {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_str(&frame.into_text().unwrap()).unwrap();
        if v["event"] == "message" {
            live.push(v);
        }
    }
    assert_eq!(ids_and_texts(&live), expected);

    // So did the SSE stream.
    let mut text = String::new();
    while text.matches("event: message").count() < 30 {
        let chunk = tokio::time::timeout(WAIT, sse.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let sse_ids: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter(|v| v["event"] == "message")
        .map(|v| v["id"].as_u64().unwrap())
        .collect();
    assert_eq!(sse_ids, (1..=30).collect::<Vec<_>>());

    // The listing of each side.
    let listing = alice.listing().await;
    let subscribers = listing["topics"][0]["subscribers"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(subscribers, [json!(bob.twin), json!(charlie.twin)]);
    let listing = charlie.listing().await;
    assert_eq!(listing["subscriptions"][0]["topic"], topic);
    assert_eq!(listing["subscriptions"][0]["last_id"], 30);
    assert_eq!(listing["counters"]["delivered"], 30);

    // POST /call: a plain request across the relays (rmb.version is answered by the core).
    let r = client()
        .post(bob.url("/call"))
        .json(&json!({ "twin": dave.twin, "cmd": "rmb.version", "timeout": 20 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["twin"], dave.twin);
    assert!(
        answer["payload"].as_str().unwrap().starts_with('"'),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_killed_and_restarted_catches_up_without_gap_or_duplicate() {
    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let alice = Node::start("//Alice", &[&relay], &registry).await;
    let mut bob = Node::start("//Bob", &[&relay], &registry).await;
    create(&alice, "news", json!({})).await;
    let news = format!("{}/news", alice.twin);
    // Delivered to Redis lists too, for an app that knows only Redis.
    let sub = subscribe(&bob, &news, json!({ "since": 0, "redis_list": true })).await;
    let news_list = sub["redis_list"].as_str().unwrap().to_string();

    for i in 1..=15 {
        assert_eq!(publish(&alice, &news, &format!("n{i}")).await.0, 200);
    }
    assert_eq!(list_until(&bob, &news_list, 15).await.len(), 15);

    // Killed mid-stream; the owner goes on publishing.
    bob.kill().await;
    for i in 16..=40 {
        assert_eq!(publish(&alice, &news, &format!("n{i}")).await.0, 200);
    }
    bob.relaunch().await;

    // Every message exactly once, in order.
    let got = list_until(&bob, &news_list, 40).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got_after = tokio::task::block_in_place(|| list(&bob, &news_list));
    assert_eq!(got.len(), got_after.len(), "no duplicate arrives later");
    let expected: Vec<(u64, String)> = (1..=40).map(|i| (i, format!("n{i}"))).collect();
    assert_eq!(ids_and_texts(&got_after), expected);

    // A topic keeping 5 messages, subscribed from the start after 12 were published:
    // ids 1..=7 are gone and reported as a gap, then 8..=12 come.
    create(&alice, "small", json!({ "retention_count": 5 })).await;
    let small = format!("{}/small", alice.twin);
    for i in 1..=12 {
        assert_eq!(publish(&alice, &small, &format!("s{i}")).await.0, 200);
    }
    let sub = subscribe(&bob, &small, json!({ "since": 0, "redis_list": true })).await;
    let small_list = sub["redis_list"].as_str().unwrap().to_string();
    let got = list_until(&bob, &small_list, 6).await;
    assert_eq!(got[0]["event"], "gap", "{got:?}");
    assert_eq!(
        (got[0]["from"].as_u64(), got[0]["to"].as_u64()),
        (Some(1), Some(7))
    );
    let tail: Vec<u64> = got[1..].iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert_eq!(tail, (8..=12).collect::<Vec<_>>());
    let state: Value = client()
        .get(bob.url(&format!("/topics/{small}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["last_id"], 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_killed_mid_stream_loses_no_acknowledged_publish_and_reuses_no_id() {
    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let mut alice = Node::start("//Alice", &[&relay], &registry).await;
    let dave = Node::start("//Dave", &[&relay], &registry).await;
    let bob = Node::start("//Bob", &[&relay], &registry).await;
    create(&alice, "log", json!({ "publish": "anyone" })).await;
    let topic = format!("{}/log", alice.twin);
    subscribe(&bob, &topic, json!({ "since": 0 })).await;

    // Dave publishes 4 at a time while the owner is killed and restarted.
    let publisher = {
        let (url, topic) = (dave.url(""), topic.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for batch in 0..10 {
                let sends = (0..4).map(|k| {
                    let text = format!("m{}", batch * 4 + k);
                    let request = client()
                        .post(format!("{url}/topics/{topic}"))
                        .body(text.clone())
                        .send();
                    async move {
                        let r = request.await.unwrap();
                        let status = r.status().as_u16();
                        let body: Value = r.json().await.unwrap();
                        (status, body, text)
                    }
                });
                for (status, body, text) in futures_util::future::join_all(sends).await {
                    assert_eq!(status, 200, "publish {text}: {body}");
                    acked.push((body["id"].as_u64().unwrap(), text));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!publisher.is_finished(), "the owner is killed mid-stream");
    alice.kill().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    alice.relaunch().await;
    let mut acked = publisher.await.unwrap();
    acked.sort();

    // Every acknowledged publish is in the owner's log under the id it was given,
    // no id was given twice and no message was stored twice.
    let log = ids_and_texts(&poll(&alice, &topic).await);
    assert_eq!(acked.len(), 40);
    let ids: Vec<u64> = acked.iter().map(|(id, _)| *id).collect();
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(ids, unique, "an id was given to two publishes");
    assert_eq!(
        log, acked,
        "the owner's log is exactly what was acknowledged"
    );
    assert_eq!(ids, (1..=40).collect::<Vec<_>>());

    // The subscriber got all of it, in order.
    let got = poll_until(&bob, &topic, 40).await;
    assert_eq!(ids_and_texts(&got), acked);

    // A new message after the restart continues the sequence.
    let (status, answer) = publish(&alice, &topic, "after").await;
    assert_eq!(status, 200);
    assert_eq!(answer["id"], 41);
}

/// The position of `node`'s subscription to `topic` as recorded in its Redis.
fn recorded_position(node: &Node, topic: &str) -> u64 {
    use rmb_testsupport::peer_process::resp::{Reply, Resp};
    let mut redis = Resp::connect(node.peer.redis_url());
    let key = format!("rmb.sub.{topic}.last");
    match redis.cmd(&[b"GET", key.as_bytes()]) {
        Reply::Bulk(bytes) => String::from_utf8(bytes).unwrap().parse().unwrap(),
        Reply::Nil => 0,
        other => panic!("GET answered {other:?}"),
    }
}

/// Waits until `node`'s recorded position of `topic` is `want` (or fails after [`WAIT`]).
async fn recorded_reaches(node: &Node, topic: &str, want: u64) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let now = tokio::task::block_in_place(|| recorded_position(node, topic));
        if now == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "recorded position {now}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A subscription without a Redis list hands messages over at once and writes their
/// records (position and local copy) later, many at a time (`--topic-record-delay`,
/// 10 s here so that the crash surely comes first): a pull already sees what is
/// handed over but not recorded; a subscriber SIGKILLed before the records were written
/// pulls those messages again after its restart, and its local copy ends up whole, in
/// order, once each, with the records caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_without_a_list_records_after_handing_over() {
    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let alice = Node::start("//Alice", &[&relay], &registry).await;
    let delay = ["--topic-record-delay", "10000"];
    let mut bob = Node::start_with("//Bob", &[&relay], &registry, &delay).await;
    create(&alice, "feed", json!({})).await;
    let feed = format!("{}/feed", alice.twin);
    subscribe(&bob, &feed, json!({ "since": 0 })).await;

    for i in 1..=10 {
        assert_eq!(publish(&alice, &feed, &format!("f{i}")).await.0, 200);
    }
    assert_eq!(poll_until(&bob, &feed, 10).await.len(), 10);
    assert_eq!(
        tokio::task::block_in_place(|| recorded_position(&bob, &feed)),
        0,
        "handed over, not recorded yet"
    );
    bob.kill().await;
    for i in 11..=15 {
        assert_eq!(publish(&alice, &feed, &format!("f{i}")).await.0, 200);
    }
    bob.relaunch().await;

    let got = poll_until(&bob, &feed, 15).await;
    let expected: Vec<(u64, String)> = (1..=15).map(|i| (i, format!("f{i}"))).collect();
    assert_eq!(ids_and_texts(&got), expected);
    recorded_reaches(&bob, &feed, 15).await;
    assert_eq!(ids_and_texts(&poll(&bob, &feed).await), expected);
}

/// A subscriber whose peer stood still while thousands of messages were published (and
/// the owner's relay too, so that pushes pile up on the way) gets them all, in order,
/// once, without its buffer dropping any. (The overflow fixed with this test needs
/// pushes of many messages, which an owner makes under an in-process burst, not here:
/// `Sub::nearly_full`'s unit test covers it; topic-bench showed it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_far_behind_hands_over_queued_pushes_without_dropping_any() {
    const MESSAGES: u64 = 4000;
    let r1 = RelayProcess::start(&["--federation-http"]);
    let registry = r1.http_url();
    let r2 = RelayProcess::start(&["--federation-http", "--registry", &registry]);
    let alice = Node::start("//Alice", &[&r1], &registry).await;
    // No renewal during the test (a renewal pulls at once); one thread, as a busy
    // subscriber's task then finds many pushes queued.
    let bob = Node::start_with(
        "//Bob",
        &[&r2],
        &registry,
        &["--topic-renew", "600", "--threads", "1"],
    )
    .await;
    create(&alice, "burst", json!({ "retention_count": 10_000 })).await;
    let topic = format!("{}/burst", alice.twin);
    subscribe(&bob, &topic, json!({})).await;
    assert_eq!(publish(&alice, &topic, "m1").await.0, 200);
    assert_eq!(poll_until(&bob, &topic, 1).await.len(), 1);

    // Bob's peer and the owner's relay stand still while the owner stores the rest:
    // its pushes wait on the way, and reach Bob together once both are back.
    bob.signal("STOP");
    send_signal(r1.pid().unwrap(), "STOP");
    let statuses: Vec<u16> = futures_util::stream::iter(2..=MESSAGES)
        .map(|i| {
            let (alice, topic) = (&alice, &topic);
            async move { publish(alice, topic, &format!("m{i}")).await.0 }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    assert!(statuses.iter().all(|&s| s == 200), "every publish stored");
    send_signal(r1.pid().unwrap(), "CONT");
    // The pushes cross to Bob's relay, which holds them for Bob.
    tokio::time::sleep(Duration::from_secs(1)).await;
    bob.signal("CONT");

    // Every message, once, in order; none dropped by a full buffer.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut counters = bob.counters().await;
    while counters["delivered"].as_u64() < Some(MESSAGES) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        counters = bob.counters().await;
    }
    assert_eq!(counters["delivered"], MESSAGES, "{counters}");
    // Read back a page at a time (a poll answers at most 1000). Publishes ran 64 at a
    // time, so ids follow the order the owner stored them in, not the texts' numbers.
    let mut texts = std::collections::BTreeSet::new();
    let mut next = 1;
    while next <= MESSAGES {
        let page = poll_since(&bob, &topic, next - 1).await;
        assert!(!page.is_empty(), "messages from {next} on are missing");
        for m in page {
            assert_eq!(m["id"], next, "in order, each once");
            texts.insert(m["message"].as_str().unwrap().to_string());
            next += 1;
        }
    }
    assert_eq!(texts.len() as u64, MESSAGES, "every text once");
    assert_eq!(
        counters["evicted"], 0,
        "no message was dropped to be pulled again: {counters}"
    );
}
