//! Issue #30 item 7: the hosted registry's `POST /twins` reads its body under the same
//! deadline as a federation `POST /` (`--body-timeout`) and a size limit, against the
//! real `rmb-relay` over loopback: a body sent a byte at a time is cut off with 408 and
//! its connection closed, an oversized one refused with 413, both counted; a normal
//! registration still works.

use std::time::Duration;

use rmb_identity::{Identity, KeyType};
use rmb_testsupport::registry::register;
use rmb_testsupport::relay_process::RelayProcess;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bytes the slow body announces; one is sent per second.
const DECLARED: usize = 30;

/// Sends `POST /twins` headers announcing `declared` body bytes, then one byte a second
/// while the relay lets it; returns how many body bytes went out before the relay
/// answered and closed, and what it answered.
async fn post_slowly(relay: &RelayProcess, declared: usize) -> (usize, String) {
    let mut stream = TcpStream::connect(relay.domain()).await.unwrap();
    let head = format!(
        "POST /twins HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\n\r\n",
        relay.domain()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let mut sent = 0;
    loop {
        if sent < declared {
            if stream.write_all(b" ").await.is_err() {
                break;
            }
            sent += 1;
        }
        // After the whole body, give the relay time to answer it.
        let wait = if sent < declared { 1 } else { 5 };
        match tokio::time::timeout(Duration::from_secs(wait), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) if sent >= declared => break,
            Err(_) => {}
        }
    }
    (sent, String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test]
async fn a_registration_body_sent_a_byte_at_a_time_is_cut_off() {
    let relay = RelayProcess::start(&["--body-timeout", "3"]);
    let (sent, answer) = post_slowly(&relay, DECLARED).await;
    assert!(
        sent < DECLARED,
        "the relay waited for the whole slow body ({sent} bytes over {sent} s): {answer:?}"
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains("not received within"), "{answer:?}");
    assert_eq!(relay.error_count("body_timeout").await, 1);

    // A body larger than the registry takes: refused on its declared length, counted.
    let mut stream = TcpStream::connect(relay.domain()).await.unwrap();
    let head = format!(
        "POST /twins HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n",
        relay.domain(),
        1 << 20
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut answer)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    assert_eq!(relay.error_count("oversize").await, 1);

    // Registering as usual still works.
    let alice = Identity::from_secret("//Alice", KeyType::Sr25519).unwrap();
    assert!(register(&relay.http_url(), &alice, &[relay.domain()]).await > 0);
}
