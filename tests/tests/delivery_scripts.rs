//! The peer's delivery scripts, run on a real redis-server with whole batches: each item
//! of a batch gets the result it would get alone, in order, and what concerns a list
//! (its bytes, TTL and index entry), read once per run, still bounds every item after
//! the first. The end-to-end tests (`peer_hardening`, `peer_redis`, `chaos`) see batches
//! only when messages happen to arrive together; these make them.

use redis::Value;
use rmb_peer::redis_api::keys::COMMANDS;
use rmb_peer::redis_api::scripts::{
    Answer, CLAIM, QUEUE_FULL, Request, SHED, TOO_MANY_COMMANDS, deliver_answers, deliver_requests,
};
use rmb_testsupport::redis_server::RedisServer;

fn req<'a>(marker: &'a str, list: &'a str, json: &'a str) -> Request<'a> {
    Request {
        marker,
        list,
        json,
        ttl: 60,
        shed: false,
    }
}

/// Delivers `batch` in one run of [`DELIVER_REQUEST`](rmb_peer::redis_api::scripts::DELIVER_REQUEST).
async fn deliver(
    conn: &mut redis::aio::MultiplexedConnection,
    most_bytes: u64,
    most_commands: u64,
    batch: Vec<Request<'_>>,
) -> Vec<Value> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    deliver_requests(most_bytes, most_commands, now, batch)
        .invoke_async(conn)
        .await
        .unwrap()
}

async fn connect(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn cmd<T: redis::FromRedisValue>(
    conn: &mut redis::aio::MultiplexedConnection,
    args: &[&str],
) -> T {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c.query_async(conn).await.unwrap()
}

#[tokio::test]
async fn a_batch_of_requests_is_bounded_and_delivered_once_per_item() {
    let redis = RedisServer::start();
    let mut conn = connect(&redis).await;
    let big = "x".repeat(40_000);

    // Requests for one list: the repeat within the batch finds the first's marker, the
    // shed one writes nothing, and the bytes bound counts what this run pushed already
    // (the list did not exist when the run began).
    let results = deliver(
        &mut conn,
        100_000,
        10,
        vec![
            req("seen.1", "msgbus.a", "r1"),
            req("seen.1", "msgbus.a", "r1 again"),
            Request {
                shed: true,
                ..req("seen.2", "msgbus.a", "shed")
            },
            req("seen.3", "msgbus.a", &big),
            req("seen.4", "msgbus.a", &big),
            req("seen.5", "msgbus.a", &big),
            req("seen.6", "msgbus.a", "small"),
        ],
    )
    .await;
    assert_eq!(
        results,
        vec![
            Value::Int(1),
            Value::BulkString(Vec::new()),
            Value::Int(SHED),
            Value::Int(2),
            Value::Int(3),
            Value::Int(QUEUE_FULL),
            Value::Int(4),
        ]
    );
    let items: Vec<String> = cmd(&mut conn, &["LRANGE", "msgbus.a", "0", "-1"]).await;
    assert_eq!(items.len(), 4);
    assert_eq!(items[0], "small");
    assert_eq!(items[3], "r1");
    let shed: Option<String> = cmd(&mut conn, &["GET", "seen.2"]).await;
    assert_eq!(shed, None, "a shed request leaves no marker");

    // A later run measures the list again: it is still over budget for another big one.
    let results = deliver(
        &mut conn,
        100_000,
        10,
        vec![req("seen.7", "msgbus.a", &big)],
    )
    .await;
    assert_eq!(results, vec![Value::Int(QUEUE_FULL)]);
    // A refused request leaves no marker: once the service took what waited, the same
    // request (its resend) is delivered.
    for refused in ["seen.5", "seen.7"] {
        let marker: Option<String> = cmd(&mut conn, &["GET", refused]).await;
        assert_eq!(marker, None, "{refused} was refused and leaves no marker");
    }
    let _: () = cmd(&mut conn, &["DEL", "msgbus.a"]).await;
    let results = deliver(
        &mut conn,
        100_000,
        10,
        vec![req("seen.7", "msgbus.a", &big)],
    )
    .await;
    assert_eq!(results, vec![Value::Int(1)]);

    // The TTL follows the longest deadline pushed, within the run too.
    let results = deliver(
        &mut conn,
        100_000,
        10,
        vec![
            Request {
                ttl: 30,
                ..req("seen.8", "msgbus.b", "short")
            },
            Request {
                ttl: 300,
                ..req("seen.9", "msgbus.b", "long")
            },
            Request {
                ttl: 100,
                ..req("seen.10", "msgbus.b", "middle")
            },
        ],
    )
    .await;
    assert_eq!(results, vec![Value::Int(1), Value::Int(2), Value::Int(3)]);
    let ttl: i64 = cmd(&mut conn, &["TTL", "msgbus.b"]).await;
    assert!((290..=300).contains(&ttl), "TTL {ttl}");
    let marker_ttl: i64 = cmd(&mut conn, &["TTL", "seen.8"]).await;
    assert!((20..=30).contains(&marker_ttl), "marker TTL {marker_ttl}");
}

#[tokio::test]
async fn new_commands_in_one_batch_stop_at_the_limit() {
    let redis = RedisServer::start();
    let mut conn = connect(&redis).await;
    let markers: Vec<String> = (0..6).map(|i| format!("seen.{i}")).collect();
    let lists: Vec<String> = (0..6).map(|i| format!("msgbus.cmd{i}")).collect();
    let batch: Vec<Request> = (0..6).map(|i| req(&markers[i], &lists[i], "r")).collect();
    let results = deliver(&mut conn, 1 << 20, 4, batch).await;
    assert_eq!(
        results,
        vec![
            Value::Int(1),
            Value::Int(1),
            Value::Int(1),
            Value::Int(1),
            Value::Int(TOO_MANY_COMMANDS),
            Value::Int(TOO_MANY_COMMANDS),
        ],
        "four commands fit, each indexed as it is pushed"
    );
    let indexed: i64 = cmd(&mut conn, &["ZCARD", COMMANDS]).await;
    assert_eq!(indexed, 4);
    // A command already indexed still takes requests in a full index.
    let results = deliver(&mut conn, 1 << 20, 4, vec![req("seen.x", &lists[0], "r")]).await;
    assert_eq!(results, vec![Value::Int(2)]);
}

#[tokio::test]
async fn a_batch_of_answers_is_delivered_once_per_waiting_twin() {
    let redis = RedisServer::start();
    let mut conn = connect(&redis).await;
    // A request to twins 1 and 2, and one to twin 5 alone.
    let _: () = cmd(
        &mut conn,
        &["HSET", "out.two", "req", "{}", "d:1", "1", "d:2", "1"],
    )
    .await;
    let _: () = cmd(&mut conn, &["HSET", "out.one", "req", "{}", "d:5", "1"]).await;
    let answer = |outbox, json, field, sole| Answer {
        outbox,
        list: "ret",
        json,
        field,
        sole,
    };
    let run = deliver_answers([
        answer("out.two", "from 1", "d:1", false),
        answer("out.two", "from 1 again", "d:1", false),
        answer("out.one", "from 5", "d:5", true),
        answer("out.one", "from 5 again", "d:5", true),
        answer("out.one", "from 5, by the general path", "d:5", false),
        answer("out.none", "unknown request", "d:1", true),
    ]);
    let results: Vec<i64> = run.invoke_async(&mut conn).await.unwrap();
    assert_eq!(results, vec![1, 0, 1, 0, 0, 0]);
    let two: Vec<String> = cmd(&mut conn, &["HKEYS", "out.two"]).await;
    assert_eq!(two, vec!["req".to_string(), "d:2".to_string()]);
    let one: i64 = cmd(&mut conn, &["EXISTS", "out.one"]).await;
    assert_eq!(one, 0, "the sole destination's answer dropped the entry");

    // A relay's error names no twin: it takes the one still waited for, and the
    // entry goes with it.
    let run = deliver_answers([
        answer("out.two", "relay error", "", false),
        answer("out.two", "from 2, too late", "d:2", false),
    ]);
    let results: Vec<i64> = run.invoke_async(&mut conn).await.unwrap();
    assert_eq!(results, vec![1, 0]);
    let two: i64 = cmd(&mut conn, &["EXISTS", "out.two"]).await;
    assert_eq!(two, 0);
    let pushed: Vec<String> = cmd(&mut conn, &["LRANGE", "ret", "0", "-1"]).await;
    assert_eq!(pushed, vec!["relay error", "from 5", "from 1"]);
}

/// `CLAIM` as a pump runs it: the batch comes newest first (the pump reverses it), a
/// batch left claimed is returned again before anything new is taken, and only the
/// oldest items of a list longer than a batch are taken.
#[tokio::test]
async fn a_claim_takes_the_oldest_items_and_returns_a_batch_left_claimed_first() {
    let redis = RedisServer::start();
    let mut conn = connect(&redis).await;
    let claim = |most: usize| {
        let mut run = CLAIM.prepare_invoke();
        run.key("app").key("app.claimed").arg(most);
        run
    };
    let _: () = cmd(&mut conn, &["LPUSH", "app", "r1", "r2", "r3"]).await;
    // An app's TTL on its list must not reach a claimed batch.
    let _: () = cmd(&mut conn, &["EXPIRE", "app", "100"]).await;
    let batch: Vec<String> = claim(256).invoke_async(&mut conn).await.unwrap();
    assert_eq!(batch, ["r3", "r2", "r1"]);
    let exists: bool = cmd(&mut conn, &["EXISTS", "app"]).await;
    assert!(!exists, "the whole list was taken");
    let ttl: i64 = cmd(&mut conn, &["TTL", "app.claimed"]).await;
    assert_eq!(ttl, -1, "a claimed batch does not expire");

    // Not recorded yet (the pump died): the same batch again, new pushes wait.
    let _: () = cmd(&mut conn, &["LPUSH", "app", "r4"]).await;
    let again: Vec<String> = claim(256).invoke_async(&mut conn).await.unwrap();
    assert_eq!(again, batch);

    // Recorded (claimed list deleted); a list longer than a batch gives its oldest.
    let _: () = cmd(&mut conn, &["DEL", "app.claimed"]).await;
    let _: () = cmd(&mut conn, &["LPUSH", "app", "r5", "r6", "r7"]).await;
    let batch: Vec<String> = claim(2).invoke_async(&mut conn).await.unwrap();
    assert_eq!(batch, ["r5", "r4"]);
    let claimed: Vec<String> = cmd(&mut conn, &["LRANGE", "app.claimed", "0", "-1"]).await;
    assert_eq!(claimed, batch);
    let rest: Vec<String> = cmd(&mut conn, &["LRANGE", "app", "0", "-1"]).await;
    assert_eq!(rest, ["r7", "r6"]);
}
