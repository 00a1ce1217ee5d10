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

#[tokio::test]
async fn records_runs_in_one_call_each_and_keeps_what_it_kept_before() {
    let redis = RedisServer::start();
    let mut raw = Resp::connect(&redis.url());
    let store = Store::connect(&redis.url(), "s.").await.unwrap();
    let topic: TopicName = "7/t".parse().unwrap();
    let entries: Vec<(u64, String)> = (1..=REPLICA_KEEP + 300).map(|id| (id, entry(id))).collect();

    // A run from a position Redis does not hold changes nothing and says where it is.
    let refs: Vec<(u64, &str)> = entries[..3].iter().map(|(i, j)| (*i, j.as_str())).collect();
    assert_eq!(store.deliver_many(&topic, 5, &refs, true).await.unwrap(), 0);
    assert_eq!(store.last_delivered(&topic).await.unwrap(), 0);

    // A run stops at the first message that is not next.
    let mut holey: Vec<(u64, &str)> = refs.clone();
    holey[2].0 = 4;
    assert_eq!(
        store.deliver_many(&topic, 0, &holey, true).await.unwrap(),
        2
    );
    assert_eq!(
        raw.llen("s.sub.7/t.list"),
        2,
        "only the consecutive ones reach the list"
    );

    // Runs of 256 up to past what a subscription keeps: the oldest leave the log.
    let mut last = 2;
    for run in entries[2..].chunks(256) {
        let refs: Vec<(u64, &str)> = run.iter().map(|(i, j)| (*i, j.as_str())).collect();
        last = store.deliver_many(&topic, last, &refs, true).await.unwrap();
        assert_eq!(last, run.last().unwrap().0);
    }
    assert_eq!(
        store.last_delivered(&topic).await.unwrap(),
        REPLICA_KEEP + 300
    );
    let kept = raw.cmd(&[b"HLEN", b"s.sub.7/t.log"]);
    assert_eq!(
        kept,
        Reply::Int(REPLICA_KEEP as i64),
        "the log keeps the newest"
    );
    assert_eq!(raw.cmd(&[b"HGET", b"s.sub.7/t.log", b"300"]), Reply::Nil);
    let kept_301 = raw.cmd(&[b"HGET", b"s.sub.7/t.log", b"301"]);
    assert_eq!(kept_301.bytes(), Some(entry(301).as_bytes()));
    let listed = raw.llen("s.sub.7/t.list");
    assert_eq!(
        listed,
        REPLICA_KEEP as i64 + 300,
        "every message once in the list"
    );

    // What the log holds reads back in order.
    let back = store
        .replica(&topic, REPLICA_KEEP + 290, REPLICA_KEEP + 300, 100)
        .await
        .unwrap();
    let ids: Vec<u64> = back.iter().map(|m| m.id).collect();
    assert_eq!(
        ids,
        (REPLICA_KEEP + 291..=REPLICA_KEEP + 300).collect::<Vec<_>>()
    );
}
