//! [`RedisQueues`]' scripts against real servers started by the tests, on a single Redis
//! and on a Redis Cluster alike: every bound refuses as the in-memory queues do (count,
//! session bytes, twin bytes, session ids per twin), expired heads make room, takes
//! follow their byte budget and release what they took, `push_front` keeps order,
//! fail-fast needs a holder, and every key expires.

use axum::body::Bytes;
use rmb_relay::queue::{QueueError, QueueLimits, Queues, RedisQueues};
use rmb_relay::switch::{Outgoing, SessionId};
use rmb_testsupport::redis_cluster::RedisCluster;
use rmb_testsupport::redis_server::RedisServer;
use tokio_util::sync::CancellationToken;

const NOW: u64 = 1_800_000_000;
const PREFIX: &str = "t:";

fn session(twin: u32, sid: Option<&str>) -> SessionId {
    SessionId {
        twin,
        sid: sid.map(str::to_string),
    }
}

/// An envelope of `len` bytes whose first byte is `tag`, valid until `deadline`.
fn item(tag: u8, len: usize, deadline: u64) -> Outgoing {
    let mut bytes = vec![b'.'; len];
    bytes[0] = tag;
    (Bytes::from(bytes), deadline)
}

fn tags(items: &[Outgoing]) -> Vec<u8> {
    items.iter().map(|(b, _)| b[0]).collect()
}

/// Entries are stored as `<deadline>|<bytes>`: 11 bytes more than the envelope.
const STORED: usize = 11;

async fn queues(url: &str) -> RedisQueues {
    RedisQueues::connect(url, PREFIX, 3, CancellationToken::new())
        .await
        .expect("connect")
        .with_limits(QueueLimits {
            per_session: 3,
            session_bytes: 2 * (100 + STORED),
            twin_bytes: 3 * (100 + STORED),
            total_bytes: usize::MAX,
            sessions_per_twin: 2,
        })
}

/// Every check, on the store at `url`; `ttl` reads a key's TTL there.
async fn check_all(url: &str, ttl: impl Fn(&str) -> i64) {
    let q = queues(url).await;
    let far = NOW + 600;

    // Count: three fit, the fourth is refused; taking makes room again.
    let s = session(1, None);
    for tag in [b'a', b'b', b'c'] {
        q.push(&s, item(tag, 10, far), NOW, false).await.unwrap();
    }
    assert_eq!(
        q.push(&s, item(b'd', 10, far), NOW, false).await,
        Err(QueueError::Full(3))
    );
    assert_eq!(tags(&q.take(&s, NOW, 1 << 20).await), b"abc");
    assert!(q.take(&s, NOW, 1 << 20).await.is_empty());
    q.push(&s, item(b'e', 10, far), NOW, false).await.unwrap();
    assert_eq!(tags(&q.take(&s, NOW, 1 << 20).await), b"e");

    // Expired heads make room, and are not handed out.
    let s = session(2, None);
    for tag in [b'a', b'b', b'c'] {
        q.push(&s, item(tag, 10, NOW + 5), NOW, false)
            .await
            .unwrap();
    }
    q.push(&s, item(b'd', 10, far), NOW + 10, false)
        .await
        .unwrap();
    assert_eq!(tags(&q.take(&s, NOW + 10, 1 << 20).await), b"d");

    // Session bytes.
    let s = session(3, None);
    q.push(&s, item(b'a', 100, far), NOW, false).await.unwrap();
    q.push(&s, item(b'b', 100, far), NOW, false).await.unwrap();
    assert!(matches!(
        q.push(&s, item(b'c', 100, far), NOW, false).await,
        Err(QueueError::SessionBytes { .. })
    ));
    // A take within a budget takes what fits (at least one) and releases its bytes.
    assert_eq!(tags(&q.take(&s, NOW, 150).await), b"a");
    q.push(&s, item(b'c', 100, far), NOW, false).await.unwrap();
    assert_eq!(tags(&q.take(&s, NOW, 1 << 20).await), b"bc");

    // Twin bytes and session ids per twin, across sessions of one twin.
    let (a, b, c) = (
        session(4, Some("a")),
        session(4, Some("b")),
        session(4, Some("c")),
    );
    q.push(&a, item(b'1', 100, far), NOW, false).await.unwrap();
    q.push(&a, item(b'2', 100, far), NOW, false).await.unwrap();
    q.push(&b, item(b'3', 100, far), NOW, false).await.unwrap();
    assert!(matches!(
        q.push(&b, item(b'4', 100, far), NOW, false).await,
        Err(QueueError::TwinBytes { .. })
    ));
    assert_eq!(
        q.push(&c, item(b'5', 10, far), NOW, false).await,
        Err(QueueError::TooManySessions { twin: 4, limit: 2 })
    );
    assert_eq!(tags(&q.take(&a, NOW, 1 << 20).await), b"12");
    // a's queue is empty: it no longer counts, so c fits.
    q.push(&c, item(b'5', 10, far), NOW, false).await.unwrap();
    q.push(&b, item(b'4', 100, far), NOW, false).await.unwrap();

    // Keys expire: the queue after its newest deadline, the twin's hash with it.
    let queue_ttl = ttl(&format!("{PREFIX}q:{{4}}:b"));
    assert!(
        (600..=600 + 200).contains(&queue_ttl),
        "queue TTL {queue_ttl}"
    );
    let twin_ttl = ttl(&format!("{PREFIX}tw:{{4}}"));
    assert!(twin_ttl >= queue_ttl, "twin hash TTL {twin_ttl}");

    // push_front puts envelopes back before what waits, in their order.
    let s = session(5, None);
    q.push(&s, item(b'c', 10, far), NOW, false).await.unwrap();
    q.push_front(&s, vec![item(b'a', 10, far), item(b'b', 10, far)])
        .await;
    assert_eq!(tags(&q.take(&s, NOW, 1 << 20).await), b"abc");

    // fail-fast needs a replica holding the session.
    let s = session(6, None);
    assert_eq!(
        q.push(&s, item(b'a', 10, far), NOW, true).await,
        Err(QueueError::Offline)
    );
    q.attach(&s).await;
    q.push(&s, item(b'a', 10, far), NOW, true).await.unwrap();
    assert_eq!(tags(&q.take(&s, NOW, 1 << 20).await), b"a");
    q.detach(&s).await;
    assert_eq!(
        q.push(&s, item(b'b', 10, far), NOW, true).await,
        Err(QueueError::Offline)
    );
}

#[tokio::test]
async fn scripts_on_a_single_redis() {
    let redis = RedisServer::start();
    check_all(&redis.url(), |key| {
        redis
            .inline(&["TTL", key])
            .trim_start_matches(':')
            .parse()
            .unwrap()
    })
    .await;
}

#[tokio::test]
async fn scripts_on_a_cluster() {
    let cluster = RedisCluster::start();
    check_all(&cluster.url(), |key| {
        cluster.cli(&["TTL", key]).parse().unwrap()
    })
    .await;
    // The keys of twin 4 are all on the master owning slot of "4".
    let owner = cluster.master_of(cluster.keyslot("{4}"));
    assert_eq!(
        cluster.master_of(cluster.keyslot(&format!("{PREFIX}q:{{4}}:b"))),
        owner
    );
}
