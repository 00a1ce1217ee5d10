//! The subscriber side's record script (`Store::deliver_many`) against a real
//! redis-server: one `HSET`/`HDEL`/`RPUSH` per call for a whole run, with the same
//! outcome as one command per message had.

use rmb_peer::topics::store::{REPLICA_KEEP, Store};
use rmb_peer::topics::wire::TopicName;
use rmb_testsupport::peer_process::resp::{Reply, Resp};
use rmb_testsupport::redis_server::RedisServer;

fn entry(id: u64) -> String {
    format!(
        r#"{{"id":{id},"event":"message","topic":"7/t","time":1,"publisher":7,"message":"m{id}"}}"#
    )
}

/// A redis-server of its own, a raw connection to look at it, the store under test,
/// topic `7/t`, and messages 1 to `REPLICA_KEEP + 300` to record.
struct Fixture {
    _redis: RedisServer,
    raw: Resp,
    store: Store,
    topic: TopicName,
    entries: Vec<(u64, String)>,
}

impl Fixture {
    async fn start() -> Fixture {
        let redis = RedisServer::start();
        let raw = Resp::connect(&redis.url());
        let store = Store::connect(&redis.url(), "s.").await.unwrap();
        Fixture {
            _redis: redis,
            raw,
            store,
            topic: "7/t".parse().unwrap(),
            entries: (1..=REPLICA_KEEP + 300).map(|id| (id, entry(id))).collect(),
        }
    }
}

/// A run of entries as `deliver_many` takes it.
fn as_run(entries: &[(u64, String)]) -> Vec<(u64, &str)> {
    entries.iter().map(|(i, j)| (*i, j.as_str())).collect()
}

/// Ids the local replica gives back after `since` up to `last`.
async fn replica_ids(store: &Store, topic: &TopicName, since: u64, last: u64) -> Vec<u64> {
    let back = store.replica(topic, since, last, 100).await.unwrap();
    back.iter().map(|m| m.id).collect()
}

/// The log holds the newest `REPLICA_KEEP` of `REPLICA_KEEP + 300` messages.
fn assert_log_keeps_the_newest(raw: &mut Resp) {
    let kept = raw.cmd(&[b"HLEN", b"s.sub.7/t.log"]);
    assert_eq!(
        kept,
        Reply::Int(REPLICA_KEEP as i64),
        "the log keeps the newest"
    );
    assert_eq!(raw.cmd(&[b"HGET", b"s.sub.7/t.log", b"300"]), Reply::Nil);
    let kept_301 = raw.cmd(&[b"HGET", b"s.sub.7/t.log", b"301"]);
    assert_eq!(kept_301.bytes(), Some(entry(301).as_bytes()));
}

#[tokio::test]
async fn records_runs_in_one_call_each_and_keeps_what_it_kept_before() {
    let mut f = Fixture::start().await;

    // A run from a position Redis does not hold changes nothing and says where it is.
    let refs = as_run(&f.entries[..3]);
    assert_eq!(
        f.store
            .deliver_many(&f.topic, 5, &refs, true)
            .await
            .unwrap(),
        0
    );
    assert_eq!(f.store.last_delivered(&f.topic).await.unwrap(), 0);

    // A run stops at the first message that is not next.
    let mut holey: Vec<(u64, &str)> = refs.clone();
    holey[2].0 = 4;
    assert_eq!(
        f.store
            .deliver_many(&f.topic, 0, &holey, true)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        f.raw.llen("s.sub.7/t.list"),
        2,
        "only the consecutive ones reach the list"
    );

    // Runs of 256 up to past what a subscription keeps: the oldest leave the log.
    let mut last = 2;
    for run in f.entries[2..].chunks(256) {
        last = f
            .store
            .deliver_many(&f.topic, last, &as_run(run), true)
            .await
            .unwrap();
        assert_eq!(last, run.last().unwrap().0);
    }
    assert_eq!(
        f.store.last_delivered(&f.topic).await.unwrap(),
        REPLICA_KEEP + 300
    );
    assert_log_keeps_the_newest(&mut f.raw);
    let listed = f.raw.llen("s.sub.7/t.list");
    assert_eq!(
        listed,
        REPLICA_KEEP as i64 + 300,
        "every message once in the list"
    );

    // What the log holds reads back in order.
    assert_eq!(
        replica_ids(&f.store, &f.topic, REPLICA_KEEP + 290, REPLICA_KEEP + 300).await,
        (REPLICA_KEEP + 291..=REPLICA_KEEP + 300).collect::<Vec<_>>()
    );
}

/// Without a Redis list the messages go to `HSET` directly and a small script moves the
/// position: the same outcomes as the list path, and nothing left behind when the
/// position had moved elsewhere.
#[tokio::test]
async fn records_without_a_list_write_the_log_and_move_the_position_once() {
    let mut f = Fixture::start().await;
    let refs = |from: usize, to: usize| as_run(&f.entries[from..to]);

    // From a position Redis does not hold: nothing moves, nothing is kept.
    assert_eq!(
        f.store
            .deliver_many(&f.topic, 5, &refs(0, 3), false)
            .await
            .unwrap(),
        0
    );
    assert_eq!(f.store.last_delivered(&f.topic).await.unwrap(), 0);

    // A run stops at the first message that is not next. (The first call to reach
    // Redis: it finds the script not loaded, loads it and runs again.)
    let mut holey = refs(0, 3);
    holey[2].0 = 4;
    assert_eq!(
        f.store
            .deliver_many(&f.topic, 0, &holey, false)
            .await
            .unwrap(),
        2
    );
    assert_eq!(f.raw.cmd(&[b"HLEN", b"s.sub.7/t.log"]), Reply::Int(2));
    assert_eq!(
        f.raw.llen("s.sub.7/t.list"),
        0,
        "no list without the option"
    );

    // A run that does not start at the next id moves nothing.
    assert_eq!(
        f.store
            .deliver_many(&f.topic, 2, &refs(3, 5), false)
            .await
            .unwrap(),
        2
    );

    // Runs of 256 up to past what a subscription keeps: the oldest leave the log.
    let mut last = 2;
    for from in (2..f.entries.len()).step_by(256) {
        let run = refs(from, (from + 256).min(f.entries.len()));
        last = f
            .store
            .deliver_many(&f.topic, last, &run, false)
            .await
            .unwrap();
        assert_eq!(last, run.last().unwrap().0);
    }
    assert_log_keeps_the_newest(&mut f.raw);

    // Another process moved the position on meanwhile: a late run of old messages is
    // refused, and what it wrote that is older than the replica keeps is gone again.
    let late = refs(5, 40);
    assert_eq!(
        f.store
            .deliver_many(&f.topic, 5, &late, false)
            .await
            .unwrap(),
        REPLICA_KEEP + 300
    );
    assert_eq!(
        f.raw.cmd(&[b"HLEN", b"s.sub.7/t.log"]),
        Reply::Int(REPLICA_KEEP as i64),
        "nothing left behind"
    );
    assert_eq!(f.raw.cmd(&[b"HGET", b"s.sub.7/t.log", b"6"]), Reply::Nil);

    // A Redis that lost its scripts (restart, SCRIPT FLUSH) gets it loaded again.
    assert_eq!(
        f.raw.cmd(&[b"SCRIPT", b"FLUSH"]),
        Reply::Status("OK".into())
    );
    let next = (REPLICA_KEEP + 301, entry(REPLICA_KEEP + 301));
    let run = [(next.0, next.1.as_str())];
    assert_eq!(
        f.store
            .deliver_many(&f.topic, REPLICA_KEEP + 300, &run, false)
            .await
            .unwrap(),
        REPLICA_KEEP + 301
    );
    assert_eq!(
        replica_ids(&f.store, &f.topic, REPLICA_KEEP + 295, REPLICA_KEEP + 301).await,
        (REPLICA_KEEP + 296..=REPLICA_KEEP + 301).collect::<Vec<_>>()
    );
}
