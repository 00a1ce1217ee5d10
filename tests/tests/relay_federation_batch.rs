//! Federation in batches (`POST /federation/batch`, docs/protocol.md §11), with real
//! `rmb-relay` binaries:
//! - between two of our relays a burst travels in fewer requests than envelopes, and
//!   every envelope arrives once, in the order it was sent;
//! - a relay that does not know the batch path — a stand-in built from rmb-rs's HTTP
//!   surface as `../shared/reference/rmb-rs-protocol.md` §5.2 and §5.8 describe it
//!   (`POST /` takes one envelope with 202, anything else is `404 page not found`), and
//!   one behind a web server answering other paths with a page — gets every envelope by
//!   `POST /`, and is asked for batches no more once found out;
//! - the batch endpoint judges each envelope on its own and refuses bodies that are not
//!   batches, too large or too many, as a whole.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{StatusCode, Uri};
use axum::routing::post;
use rmb_identity::{Identity, KeyType};
use rmb_proto::{Address, Envelope};
use rmb_testsupport::redis_server::free_port;
use rmb_testsupport::registry::register;
use rmb_testsupport::relay_client::{TestClient, request};
use rmb_testsupport::relay_process::RelayProcess;

const WAIT: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(300);
const BATCH_PATH: &str = "/federation/batch";

fn identity(name: &str) -> Identity {
    Identity::from_secret(&format!("//{name}"), KeyType::Sr25519).unwrap()
}

/// A batch body: each envelope as a 4-byte big-endian length and its bytes (written
/// here from the protocol text, not with the relay's encoder).
fn batch_body(envelopes: &[Vec<u8>]) -> Vec<u8> {
    let mut body = Vec::new();
    for envelope in envelopes {
        body.extend_from_slice(&(envelope.len() as u32).to_be_bytes());
        body.extend_from_slice(envelope);
    }
    body
}

/// The uids of the next `count` envelopes, in arrival order.
async fn receive_in_order(client: &mut TestClient, count: usize) -> Vec<String> {
    let mut uids = Vec::with_capacity(count);
    while uids.len() < count {
        let Some(env) = client.recv(WAIT).await else {
            panic!("only {} of {count} envelopes arrived", uids.len());
        };
        uids.push(env.uid);
    }
    uids
}

#[tokio::test]
async fn a_burst_between_our_relays_travels_in_batches_and_arrives_once() {
    let (p1, p2) = (free_port(), free_port());
    let r1 = RelayProcess::start_on(p1, &["--federation-http"]);
    let registry = r1.http_url();
    let r2 = RelayProcess::start_on(p2, &["--federation-http", "--registry", &registry]);
    let (alice, bob) = (identity("Alice"), identity("Bob"));
    let a = register(&registry, &alice, &[r1.domain()]).await;
    let b = register(&registry, &bob, &[r2.domain()]).await;
    let mut ca = TestClient::connect(&r1.ws_url(), &alice, a, None).await;
    let mut cb = TestClient::connect(&r2.ws_url(), &bob, b, None).await;

    // More than a batch's worth twice over, so envelopes wait in the lane while batches
    // are under way.
    const BURST: usize = 2000;
    for uid in (0..BURST).map(|i| format!("burst-{i}")) {
        ca.send(&request(&alice, Address::twin(a), b, &uid, b"x", 60))
            .await;
    }
    // In the order they were sent: one twin's envelopes share a lane, one batch after
    // the other.
    let received = receive_in_order(&mut cb, BURST).await;
    let expected: Vec<String> = (0..BURST).map(|i| format!("burst-{i}")).collect();
    if let Some(at) = (0..BURST).find(|&i| received[i] != expected[i]) {
        panic!(
            "out of order from position {at}: {:?}",
            &received[at..(at + 8).min(BURST)]
        );
    }
    assert_eq!(cb.recv(QUIET).await, None, "nothing more");
    assert_eq!(ca.recv(QUIET).await, None, "no error for the sender");

    let batches = r1.metric("relay_federation_batches_out_total").await;
    let batched = r1
        .metric("relay_federation_batched_envelopes_out_total")
        .await;
    assert_eq!(batched, BURST as f64, "every envelope went in a batch");
    assert!(
        (1.0..BURST as f64).contains(&batches),
        "{batches} batches for {BURST} envelopes"
    );
    assert_eq!(
        r2.metric("relay_federation_batches_in_total").await,
        batches
    );
    assert_eq!(r2.metric("relay_federated_in_total").await, BURST as f64);
    assert_eq!(
        r1.metric("relay_federation_unbatched_relays_total").await,
        0.0
    );
}

/// What a stand-in relay saw.
#[derive(Default)]
struct StandIn {
    /// Uids of envelopes taken by `POST /`.
    posted: Vec<String>,
    /// Requests to any other path.
    elsewhere: Vec<String>,
}

/// An HTTP server with rmb-rs's federation surface: `POST /` takes one envelope (202,
/// or 400 if it does not decode); every other request gets `other` (rmb-rs answers
/// `404 page not found`).
async fn stand_in(other: (StatusCode, &'static str)) -> (String, Arc<Mutex<StandIn>>) {
    let seen = Arc::new(Mutex::new(StandIn::default()));
    let (on_post, on_other) = (Arc::clone(&seen), Arc::clone(&seen));
    let app = Router::new()
        .route(
            "/",
            post(move |body: Bytes| async move {
                match Envelope::decode_limited(&body, usize::MAX) {
                    Ok(env) => {
                        on_post.lock().unwrap().posted.push(env.uid);
                        StatusCode::ACCEPTED
                    }
                    Err(_) => StatusCode::BAD_REQUEST,
                }
            }),
        )
        .fallback(move |uri: Uri| async move {
            on_other
                .lock()
                .unwrap()
                .elsewhere
                .push(uri.path().to_string());
            other
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (address, seen)
}

#[tokio::test]
async fn a_relay_without_batches_gets_one_post_per_envelope_and_is_remembered() {
    let r1 = RelayProcess::start(&["--federation-http"]);
    let registry = r1.http_url();
    let alice = identity("Alice");
    let a = register(&registry, &alice, &[r1.domain()]).await;
    let mut ca = TestClient::connect(&r1.ws_url(), &alice, a, None).await;

    // rmb-rs itself, and a web server in front of a relay that answers any other path
    // with a page.
    let kinds = [
        ("Bob", (StatusCode::NOT_FOUND, "page not found")),
        ("Carol", (StatusCode::OK, "<html>welcome</html>")),
    ];
    for (found_out, (name, other)) in kinds.into_iter().enumerate() {
        let (address, seen) = stand_in(other).await;
        let b = register(&registry, &identity(name), &[address]).await;
        let send = |range: std::ops::Range<usize>| {
            range
                .map(|i| {
                    request(
                        &alice,
                        Address::twin(a),
                        b,
                        &format!("{name}-{i}"),
                        b"x",
                        60,
                    )
                })
                .collect::<Vec<_>>()
        };
        let taken = |seen: &Mutex<StandIn>| seen.lock().unwrap().posted.len();
        let wait_for = async |count: usize| {
            let deadline = tokio::time::Instant::now() + WAIT;
            while taken(&seen) < count {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{name}'s relay got {} of {count}",
                    taken(&seen)
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        for env in send(0..200) {
            ca.send(&env).await;
        }
        wait_for(200).await;
        let asked = seen.lock().unwrap().elsewhere.clone();
        assert_eq!(
            asked,
            [BATCH_PATH],
            "one batch request before {name}'s relay was found out (one lane per twin, one request under way in it)"
        );

        // Found out: the next envelopes go straight to POST /.
        for env in send(200..250) {
            ca.send(&env).await;
        }
        wait_for(250).await;
        tokio::time::sleep(QUIET).await;
        {
            let seen = seen.lock().unwrap();
            assert_eq!(
                seen.elsewhere, asked,
                "no batch asked of {name}'s relay again"
            );
            let uids: BTreeSet<&String> = seen.posted.iter().collect();
            assert_eq!(
                (uids.len(), seen.posted.len()),
                (250, 250),
                "each envelope once to {name}'s relay"
            );
        }
        assert_eq!(ca.recv(QUIET).await, None, "no error for the sender");
        assert_eq!(
            r1.metric("relay_federation_unbatched_relays_total").await,
            (found_out + 1) as f64
        );
    }
}

#[tokio::test]
async fn the_batch_endpoint_judges_each_envelope_and_refuses_what_is_not_a_batch() {
    let r1 = RelayProcess::start(&["--max-envelope-size", "65536"]);
    let registry = r1.http_url();
    let (alice, bob) = (identity("Alice"), identity("Bob"));
    let a = register(&registry, &alice, &[r1.domain()]).await;
    let b = register(&registry, &bob, &[r1.domain()]).await;
    let mut cb = TestClient::connect(&r1.ws_url(), &bob, b, None).await;
    let http = reqwest::Client::new();
    let url = format!("{}{BATCH_PATH}", r1.http_url());
    let post = async |body: Vec<u8>| {
        let answer = http.post(&url).body(body).send().await.unwrap();
        (answer.status().as_u16(), answer.text().await.unwrap())
    };

    // Good and bad envelopes in one batch: each gets what POST / would answer it, and
    // only the good ones reach Bob, in order.
    let first = request(&alice, Address::twin(a), b, "good-1", b"one", 60);
    let mut forged = request(&alice, Address::twin(a), b, "forged", b"x", 60);
    forged.signature = Some(vec![b's'; 65]);
    let second = request(&alice, Address::twin(a), b, "good-2", b"two", 60);
    let unknown = request(&alice, Address::twin(a), 9999, "nobody", b"x", 60);
    // A real signature of Alice's, on another envelope: the signatures of a batch are
    // verified together, and one that does not belong makes each be checked alone.
    let mut copied = request(&alice, Address::twin(a), b, "copied", b"x", 60);
    copied.signature = first.signature.clone();
    let (status, answer) = post(batch_body(&[
        first.to_bytes().to_vec(),
        forged.to_bytes().to_vec(),
        b"\xff\xff not an envelope".to_vec(),
        second.to_bytes().to_vec(),
        unknown.to_bytes().to_vec(),
        copied.to_bytes().to_vec(),
    ]))
    .await;
    assert_eq!(status, 200, "{answer}");
    let outcomes: Vec<serde_json::Value> = serde_json::from_str(&answer).unwrap();
    let statuses: Vec<u64> = outcomes
        .iter()
        .map(|o| o["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [202, 401, 400, 202, 404, 401], "{answer}");
    assert!(outcomes[0].get("error").is_none());
    assert!(
        outcomes[2]["error"]
            .as_str()
            .unwrap()
            .starts_with("bad request")
    );
    assert_eq!(cb.recv(WAIT).await, Some(first));
    assert_eq!(cb.recv(WAIT).await, Some(second));
    assert_eq!(cb.recv(QUIET).await, None);
    assert_eq!(r1.error_count("bad_signature").await, 2);

    // A batch whose signatures all hold is routed whole.
    let good: Vec<_> = (0..4)
        .map(|i| request(&alice, Address::twin(a), b, &format!("batch-{i}"), b"x", 60))
        .collect();
    let bodies: Vec<Vec<u8>> = good.iter().map(|e| e.to_bytes().to_vec()).collect();
    let (status, answer) = post(batch_body(&bodies)).await;
    assert_eq!(status, 200, "{answer}");
    for env in good {
        assert_eq!(cb.recv(WAIT).await, Some(env));
    }
    assert_eq!(r1.error_count("bad_signature").await, 2);

    // Not a batch: empty, cut short, a zero length.
    let whole = batch_body(&[b"abc".to_vec()]);
    for body in [Vec::new(), whole[..whole.len() - 1].to_vec(), vec![0; 4]] {
        let (status, answer) = post(body).await;
        assert_eq!(status, 400, "{answer}");
        assert!(answer.starts_with("bad batch"), "{answer}");
    }
    assert_eq!(r1.error_count("malformed_batch").await, 3);

    // Too many envelopes; an envelope over --max-envelope-size; a length prefix far
    // beyond the body; a body over the batch limit (1 MiB here).
    let too_many = batch_body(&vec![b"e".to_vec(); 1025]);
    let too_large = batch_body(&[vec![7; 65_537]]);
    let lying = vec![0x7f, 0xff, 0xff, 0xff, 1, 2, 3];
    for body in [too_many, too_large, lying] {
        let (status, answer) = post(body).await;
        assert_eq!(status, 413, "{answer}");
    }
    // Refused on its declared length before it is read, so the relay may close while
    // the client is still writing the body: a 413 or a broken pipe, counted either way.
    match http.post(&url).body(vec![0; 1024 * 1024 + 1]).send().await {
        Ok(answer) => assert_eq!(answer.status(), 413),
        Err(e) => assert!(e.is_request(), "{e:?}"),
    }
    assert!(r1.error_count("oversize").await >= 4);
    assert_eq!(r1.metric("relay_federation_batches_in_total").await, 2.0);

    // The relay still serves.
    let third = request(&alice, Address::twin(a), b, "good-3", b"three", 60);
    let (status, answer) = post(batch_body(&[third.to_bytes().to_vec()])).await;
    assert_eq!((status, answer.as_str()), (200, r#"[{"status":202}]"#));
    assert_eq!(cb.recv(WAIT).await, Some(third));
}
