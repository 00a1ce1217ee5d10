//! The topic workload of the soak: an app on twin A publishes to twin B's topic through
//! A's HTTP API (so each publish crosses both relays to the owner), and twin A's peer
//! subscribes to it with Redis-list delivery, read by an app that never loses or doubles
//! an item across a restart of its Redis (the chaos harness's `consume`). Every message
//! crosses the federation twice; the accounting is by sequence id (gaps, repeats, order)
//! and by content (a message stored under two ids).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::http;
use crate::chaos::apps::{Link, consume_from, lock};
use crate::chaos::net::Net;

/// The topic's name under twin B.
pub(crate) const TOPIC: &str = "soak";
/// Where the subscriber's reader keeps the item it is busy with.
const INFLIGHT: &str = "soak.topic.inflight";
/// Longest wait for one publish: the peer answers 504 after 60 s.
const PUBLISH_LIMIT: Duration = Duration::from_secs(75);
/// Publishers working side by side, so that a publish waiting on a stalled relay does
/// not hold up the schedule.
const PUBLISHERS: u64 = 4;
/// Pause before publishing again when the API refused the connection.
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);
/// Longest setup (topic creation, subscription) while the bus starts.
const SETUP_LIMIT: Duration = Duration::from_secs(30);

/// What the publisher and the subscriber's reader saw.
#[derive(Default)]
struct TopicBook {
    /// Publishes answered with an id: content index → id.
    acked: HashMap<u64, u64>,
    /// Publishes answered with an error (status and text).
    failed: BTreeMap<String, u64>,
    /// Publishes without an answer (connection broken or timed out, 502, 504): maybe
    /// stored; by reason.
    unknown: BTreeMap<String, u64>,
    attempted: u64,
    /// Publishes tried again because the peer's API refused the connection (down).
    reconnects: u64,
    /// Deliveries by id, in arrival order.
    delivered: Vec<u64>,
    /// Content index of each delivered id.
    content_of: HashMap<u64, u64>,
    /// Ids delivered per content index.
    ids_of_content: HashMap<u64, Vec<u64>>,
    gap_events: u64,
    strays: u64,
}

/// The figures of the topic workload.
#[derive(Debug, Clone, Default)]
pub struct TopicReport {
    /// Publishes tried.
    pub attempted: u64,
    /// Publishes answered with an id.
    pub published: u64,
    /// Publishes answered with an error (explicit failures).
    pub publish_errors: u64,
    /// Publishes without an answer (may or may not be stored; they count if delivered).
    pub publish_unknown: u64,
    /// Publishes tried again because the API was down (connection refused).
    pub reconnects: u64,
    /// Items handed to the subscriber's app.
    pub delivered: u64,
    /// Highest id seen (delivered or acknowledged).
    pub max_id: u64,
    /// Ids in 1..=max_id never delivered.
    pub gaps: u64,
    /// Deliveries of an id beyond its first.
    pub duplicates: u64,
    /// Deliveries of an id lower than one delivered before.
    pub out_of_order: u64,
    /// `gap` events (messages the owner's retention dropped).
    pub gap_events: u64,
    /// Acknowledged publishes whose id never arrived.
    pub acked_not_delivered: u64,
    /// Messages (contents) stored and delivered under more than one id.
    pub stored_twice: u64,
    /// Items that were neither a message of ours nor a gap event.
    pub strays: u64,
    /// Error answers by text, most frequent first.
    pub errors: Vec<(String, u64)>,
    /// Why publishes got no answer, most frequent first.
    pub unknown_why: Vec<(String, u64)>,
}

impl TopicReport {
    /// Nothing lost, repeated or reordered.
    pub fn is_clean(&self) -> bool {
        self.gaps == 0
            && self.duplicates == 0
            && self.out_of_order == 0
            && self.gap_events == 0
            && self.acked_not_delivered == 0
            && self.stored_twice == 0
            && self.strays == 0
    }
}

/// The running publisher and reader.
pub(crate) struct TopicLoad {
    book: Arc<Mutex<TopicBook>>,
    stop_publishing: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    publishers: Vec<JoinHandle<()>>,
    reader: Option<JoinHandle<()>>,
}

/// Creates twin B's topic (A may publish, anyone subscribe, the longest retention) and
/// subscribes twin A with Redis-list delivery. Retried while the bus settles.
pub(crate) fn setup(net: &Net) -> Result<(), String> {
    let (http_a, http_b) = apis(net);
    let path = format!("/topics/{}/{TOPIC}", net.twin_b);
    let conf = json!({
        "publish": [net.twin_a], "subscribe": "anyone",
        "retention_count": 1_000_000, "retention_secs": 86_400,
    })
    .to_string();
    retry(|| http::request(&http_b, "PUT", &path, Some(conf.as_bytes()), SETUP_LIMIT))?;
    let sub = json!({"since": 0, "redis_list": true}).to_string();
    retry(|| {
        http::request(
            &http_a,
            "POST",
            &format!("{path}/subscribe"),
            Some(sub.as_bytes()),
            SETUP_LIMIT,
        )
    })
}

fn apis(net: &Net) -> (String, String) {
    let api = |a: &Option<String>| a.clone().expect("peers started with --http");
    (api(&net.http_a), api(&net.http_b))
}

fn retry(mut call: impl FnMut() -> Result<http::Response, String>) -> Result<(), String> {
    let deadline = Instant::now() + SETUP_LIMIT;
    loop {
        let why = match call() {
            Ok(r) if (200..300).contains(&r.status) => return Ok(()),
            Ok(r) => format!("HTTP {}: {}", r.status, r.excerpt(200)),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(why);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

impl TopicLoad {
    /// Starts publishing `rate` messages a second from `start` for `duration`, and reading
    /// the subscription's list.
    pub(crate) fn start(net: &Net, rate: u32, duration: Duration, start: Instant) -> Self {
        let book = Arc::new(Mutex::new(TopicBook::default()));
        let stop_publishing = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (http_a, _) = apis(net);
        let path = format!("/topics/{}/{TOPIC}", net.twin_b);
        let publishers = (0..PUBLISHERS)
            .map(|lane| {
                let (book, stop) = (Arc::clone(&book), Arc::clone(&stop_publishing));
                let (http_a, path) = (http_a.clone(), path.clone());
                let plan = Plan {
                    rate,
                    duration,
                    start,
                    lane,
                };
                std::thread::spawn(move || publish(&http_a, &path, plan, &book, &stop))
            })
            .collect();
        let list = format!("rmb.sub.{}/{TOPIC}.list", net.twin_b);
        let url = net.redis_a.url();
        let reader = {
            let (book, stop) = (Arc::clone(&book), Arc::clone(&stop));
            std::thread::spawn(move || {
                consume_from(
                    &url,
                    (&list, INFLIGHT),
                    b"LEFT",
                    &stop,
                    |item| record(&mut lock(&book), item),
                    |link: &mut Link, item| {
                        link.cmd(&[b"LREM", INFLIGHT.as_bytes(), b"1", item])
                            .map(drop)
                    },
                )
            })
        };
        TopicLoad {
            book,
            stop_publishing,
            stop,
            publishers,
            reader: Some(reader),
        }
    }

    /// Stops publishing (a publish under way finishes first).
    pub(crate) fn stop_publishing(&mut self) {
        self.stop_publishing.store(true, Ordering::SeqCst);
        for p in self.publishers.drain(..) {
            p.join().expect("the topic publisher panicked");
        }
    }

    /// Publishes tried and messages delivered so far.
    pub(crate) fn progress(&self) -> (u64, u64) {
        let book = lock(&self.book);
        (book.attempted, book.delivered.len() as u64)
    }

    /// Whether every acknowledged id up to the highest has been delivered.
    pub(crate) fn caught_up(&self) -> bool {
        let book = lock(&self.book);
        let max = book.acked.values().copied().max().unwrap_or(0);
        (1..=max).all(|id| book.content_of.contains_key(&id))
    }

    /// Stops the reader.
    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(r) = self.reader.take() {
            r.join().expect("the topic reader panicked");
        }
    }

    /// The accounting.
    pub(crate) fn report(&self) -> TopicReport {
        let book = lock(&self.book);
        let mut r = TopicReport {
            attempted: book.attempted,
            published: book.acked.len() as u64,
            publish_errors: book.failed.values().sum(),
            publish_unknown: book.unknown.values().sum(),
            reconnects: book.reconnects,
            delivered: book.delivered.len() as u64,
            gap_events: book.gap_events,
            strays: book.strays,
            ..TopicReport::default()
        };
        let max_delivered = book.delivered.iter().copied().max().unwrap_or(0);
        r.max_id = max_delivered.max(book.acked.values().copied().max().unwrap_or(0));
        let mut seen: HashMap<u64, u64> = HashMap::new();
        let mut highest = 0;
        for &id in &book.delivered {
            *seen.entry(id).or_default() += 1;
            if id < highest {
                r.out_of_order += 1;
            }
            highest = highest.max(id);
        }
        r.gaps = (1..=r.max_id).filter(|id| !seen.contains_key(id)).count() as u64;
        r.duplicates = seen.values().map(|n| n - 1).sum();
        r.acked_not_delivered = book
            .acked
            .values()
            .filter(|id| !seen.contains_key(id))
            .count() as u64;
        r.stored_twice = book
            .ids_of_content
            .values()
            .filter(|ids| {
                let mut ids = (*ids).clone();
                ids.sort_unstable();
                ids.dedup();
                ids.len() > 1
            })
            .count() as u64;
        r.errors = book.failed.iter().map(|(k, v)| (k.clone(), *v)).collect();
        r.errors.sort_by_key(|e| std::cmp::Reverse(e.1));
        r.unknown_why = book.unknown.iter().map(|(k, v)| (k.clone(), *v)).collect();
        r.unknown_why.sort_by_key(|e| std::cmp::Reverse(e.1));
        r
    }
}

impl Drop for TopicLoad {
    fn drop(&mut self) {
        self.stop_publishing.store(true, Ordering::SeqCst);
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Which messages one publisher sends, and when.
struct Plan {
    rate: u32,
    duration: Duration,
    start: Instant,
    /// Publisher `lane` sends messages `lane`, `lane + PUBLISHERS`, …
    lane: u64,
}

/// One publisher: message `n` is `soak-<n>`, published once (never retried by the app
/// once the request went out: an unanswered publish may be stored, and the peer already
/// resends it).
fn publish(addr: &str, path: &str, plan: Plan, book: &Mutex<TopicBook>, stop: &AtomicBool) {
    if plan.rate == 0 {
        return;
    }
    for n in (plan.lane..).step_by(PUBLISHERS as usize) {
        let at = Duration::from_secs_f64(n as f64 / f64::from(plan.rate));
        if at >= plan.duration || stop.load(Ordering::SeqCst) {
            return;
        }
        if let Some(wait) = (plan.start + at).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let body = json!({ "message": format!("soak-{n}") }).to_string();
        let mut outcome = http::request(addr, "POST", path, Some(body.as_bytes()), PUBLISH_LIMIT);
        // A refused connection carried nothing: trying again cannot store it twice.
        while matches!(&outcome, Err(e) if e.starts_with(http::CONNECT_FAILED))
            && !stop.load(Ordering::SeqCst)
        {
            lock(book).reconnects += 1;
            std::thread::sleep(RECONNECT_PAUSE);
            outcome = http::request(addr, "POST", path, Some(body.as_bytes()), PUBLISH_LIMIT);
        }
        let mut book = lock(book);
        book.attempted += 1;
        match outcome {
            Ok(r) if (200..300).contains(&r.status) => match r.json()["id"].as_u64() {
                Some(id) => {
                    book.acked.insert(n, id);
                }
                None => *book.failed.entry("2xx without an id".into()).or_default() += 1,
            },
            // 502/504: the owner may have stored it (the peer keeps resending).
            Ok(r) if r.status == 502 || r.status == 504 => {
                let text = format!("HTTP {}: {}", r.status, r.excerpt(120));
                *book.unknown.entry(text).or_default() += 1;
            }
            Ok(r) => {
                let text = format!("HTTP {}: {}", r.status, r.excerpt(120));
                *book.failed.entry(text).or_default() += 1;
            }
            Err(e) => *book.unknown.entry(e).or_default() += 1,
        }
    }
}

/// Files one item of the subscription's list.
fn record(book: &mut TopicBook, item: &[u8]) {
    let Ok(v) = serde_json::from_slice::<Value>(item) else {
        book.strays += 1;
        return;
    };
    match v["event"].as_str() {
        Some("gap") => book.gap_events += 1,
        Some("message") | None => {
            let id = v["id"].as_u64();
            let n = v["message"]
                .as_str()
                .and_then(|m| m.strip_prefix("soak-"))
                .and_then(|n| n.parse::<u64>().ok());
            let (Some(id), Some(n)) = (id, n) else {
                book.strays += 1;
                return;
            };
            book.delivered.push(id);
            book.content_of.insert(id, n);
            book.ids_of_content.entry(n).or_default().push(id);
        }
        Some(_) => book.strays += 1,
    }
}
