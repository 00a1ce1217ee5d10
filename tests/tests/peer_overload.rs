//! Overload at the user's layer: a service slower than what callers send, behind the
//! real relay and peers. The peer must keep the service's queue short and refuse the
//! excess at once (an error reply within seconds, not at the request's expiry), so the
//! service works only on fresh requests and every request gets exactly one answer or
//! error.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rmb_testsupport::peer_node::Node;
use rmb_testsupport::peer_process::resp::Resp;
use rmb_testsupport::relay_process::RelayProcess;
use serde_json::{Value, json};

/// The slow service's capacity (requests per second).
const CAPACITY: u64 = 20;
/// What callers send: three times the capacity, for this long.
const RATE: u64 = 60;
const LOAD: Duration = Duration::from_secs(8);
/// Validity of each request: far longer than any wait the peer should allow.
const EXP: u64 = 30;

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A service taking 1/CAPACITY s per request; returns the wait (ms) of every request
/// it took, measured from the caller's stamp in the payload.
fn slow_bot(redis_url: String, stop: Arc<AtomicBool>) -> JoinHandle<Vec<u64>> {
    std::thread::spawn(move || {
        let mut redis = Resp::connect(&redis_url);
        let mut waits = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let Some(text) = redis.brpop("msgbus.slow", 1) else {
                continue;
            };
            let req: Value = serde_json::from_str(&text).unwrap();
            let sent: u64 =
                String::from_utf8(STANDARD.decode(req["dat"].as_str().unwrap()).unwrap())
                    .unwrap()
                    .parse()
                    .unwrap();
            waits.push(unix_ms().saturating_sub(sent));
            std::thread::sleep(Duration::from_millis(1000 / CAPACITY));
            let reply = json!({
                "ver": 1, "ref": req["ref"], "dat": "", "dst": req["src"],
                "shm": "", "now": 0, "err": null,
            });
            redis.lpush("msgbus.system.reply", &reply.to_string());
        }
        waits
    })
}

#[test]
fn an_overloaded_service_gets_fresh_requests_and_the_excess_is_refused_at_once() {
    let relay = RelayProcess::start(&[]);
    let a = Node::start("//OverloadA", &relay, &[]);
    let b = Node::start("//OverloadB", &relay, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let bot = slow_bot(b.redis.url(), Arc::clone(&stop));

    // The caller's replies are read as they come, on a connection of their own.
    let sent_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let total = RATE * LOAD.as_secs();
    let collector = {
        let (url, sent_at) = (a.redis.url(), Arc::clone(&sent_at));
        std::thread::spawn(move || {
            let mut replies = Resp::connect(&url);
            let (mut answered, mut errors, mut last) = (0u64, Vec::new(), Instant::now());
            let give_up = Instant::now() + LOAD + Duration::from_secs(EXP + 10);
            while answered + (errors.len() as u64) < total && Instant::now() < give_up {
                let Some(text) = replies.brpop("overload.ret", 1) else {
                    continue;
                };
                last = Instant::now();
                let reply: Value = serde_json::from_str(&text).unwrap();
                let reference = reply["ref"].as_str().unwrap().to_string();
                let at = sent_at.lock().unwrap().remove(&reference);
                let at = at.unwrap_or_else(|| panic!("a reply twice, or never asked for: {reply}"));
                if reply["err"].is_null() {
                    answered += 1;
                } else {
                    errors.push(last.duration_since(at));
                }
            }
            (answered, errors, last)
        })
    };

    // The caller: RATE requests per second for LOAD, each stamped with its send time.
    let mut client = Resp::connect(&a.redis.url());
    let start = Instant::now();
    for n in 0..total {
        let due = start + Duration::from_millis(n * 1000 / RATE);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let reference = n.to_string();
        let doc = json!({
            "ver": 1, "ref": reference, "cmd": "slow", "exp": EXP,
            "dat": STANDARD.encode(unix_ms().to_string()), "tag": null, "dst": [b.twin],
            "ret": "overload.ret", "shm": "", "now": unix_ms() / 1000,
        });
        sent_at.lock().unwrap().insert(reference, Instant::now());
        client.lpush("msgbus.system.local", &doc.to_string());
    }
    let load_end = Instant::now();
    let (answered, mut errors, last_reply) = collector.join().unwrap();
    let sent_at = std::mem::take(&mut *sent_at.lock().unwrap());
    // Nothing more comes (no reply twice).
    assert_eq!(client.brpop("overload.ret", 2), None, "a reply came twice");
    stop.store(true, Ordering::SeqCst);
    let mut waits = bot.join().unwrap();
    waits.sort_unstable();
    errors.sort_unstable();
    let status = b.peer.status().expect("peer B's status");
    eprintln!(
        "sent {total}, answered {answered}, errors {} (slowest after {:?}), unanswered {}, \
         bot took {} (wait p50 {} ms, max {} ms), last reply {:?} after the load, \
         peer B refused {}",
        errors.len(),
        errors.last(),
        sent_at.len(),
        waits.len(),
        waits.get(waits.len() / 2).copied().unwrap_or(0),
        waits.last().copied().unwrap_or(0),
        last_reply.saturating_duration_since(load_end),
        status["rejected_by"]
    );

    assert!(
        sent_at.is_empty(),
        "requests that got no reply at all: {}",
        sent_at.len()
    );
    assert_eq!(answered + errors.len() as u64, total);
    // The service worked at capacity on what it got...
    assert!(
        answered >= CAPACITY * LOAD.as_secs() * 3 / 4,
        "the service answered only {answered}"
    );
    // ...on fresh requests only: nothing waited anywhere near its validity.
    let max_wait = waits.last().copied().unwrap_or(0);
    assert!(
        max_wait < 5_000,
        "a request waited {max_wait} ms for the service"
    );
    // The excess heard at once, not at its expiry.
    let slowest_error = errors.last().copied().unwrap_or_default();
    assert!(
        !errors.is_empty() && slowest_error < Duration::from_secs(6),
        "errors came after {slowest_error:?} (the requests were valid {EXP} s)"
    );
    // Counted by reason on the refusing peer.
    let shed = status["rejected_by"]["overloaded"].as_u64().unwrap_or(0)
        + status["rejected_by"]["late"].as_u64().unwrap_or(0);
    assert_eq!(shed, errors.len() as u64, "{}", status["rejected_by"]);
    // And the backlog was gone within seconds of the load stopping.
    assert!(
        last_reply.saturating_duration_since(load_end) < Duration::from_secs(6),
        "replies kept coming {:?} after the load",
        last_reply.saturating_duration_since(load_end)
    );
}
