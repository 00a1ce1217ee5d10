//! [`TopicLoad`]: topic deliveries across the two relays of a fault run, counted.
//!
//! Twin A owns topic `faults` and lets twin B publish to it; twin B subscribes with a
//! Redis list. B publishes `rate` messages a second through its HTTP API: each crosses
//! relay B and relay A to the owner, which numbers it and pushes it back across both
//! relays into B's list. Every publish ends acknowledged (an id) or with an explicit
//! error; the list must then hold each acknowledged message once, ids without a gap.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::fed::Fed;
use crate::peer_process::resp::{Reply, Resp};

/// Longest one publish may take before the client gives up (an explicit error).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(20);

/// What became of the publishes.
#[derive(Debug, Clone, Default)]
pub struct TopicReport {
    /// Publishes attempted.
    pub sent: u64,
    /// Publishes answered with an id.
    pub acked: u64,
    /// Publishes answered with an error (or no answer within the client's timeout).
    pub errors: u64,
    /// Entries in the subscriber's list that are messages.
    pub delivered: u64,
    /// Acknowledged messages missing from the list.
    pub lost: u64,
    /// Messages in the list more than once (by id or by text).
    pub duplicated: u64,
    /// Ids missing between 1 and the highest delivered, plus `gap` events.
    pub gaps: u64,
    /// Messages whose id is not the one their publish was acknowledged with, or whose
    /// text was never published.
    pub wrong: u64,
    /// Publishes answered with an error whose message was delivered all the same.
    pub delivered_after_error: u64,
    /// Error texts, most frequent first.
    pub error_texts: Vec<(String, u64)>,
}

impl TopicReport {
    /// Every publish accounted for, every acknowledged message delivered once, in order.
    pub fn is_clean(&self) -> bool {
        self.sent == self.acked + self.errors
            && self.lost == 0
            && self.duplicated == 0
            && self.gaps == 0
            && self.wrong == 0
    }
}

/// Outcome of one publish: the id, or the error.
type Outcome = Result<u64, String>;

/// The publisher's thread and what it recorded.
pub struct TopicLoad {
    outcomes: Arc<Mutex<Vec<(String, Outcome)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    list: String,
    redis_b: String,
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(PUBLISH_TIMEOUT)
        .build()
        .expect("HTTP client")
}

impl TopicLoad {
    /// Creates the topic, subscribes B, and starts publishing `rate` a second for
    /// `duration` from `start`.
    pub fn start(fed: &Fed, rate: u32, duration: Duration, start: Instant) -> TopicLoad {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let topic = format!("{}/faults", fed.twin_a);
        let list = runtime.block_on(async {
            let config = json!({ "publish": [fed.twin_b] });
            let r = client()
                .put(format!("{}/topics/{topic}", fed.http_a))
                .json(&config)
                .send()
                .await
                .expect("create the topic");
            assert_eq!(r.status(), 200, "create: {}", r.text().await.unwrap());
            let r = client()
                .post(format!("{}/topics/{topic}/subscribe", fed.http_b))
                .json(&json!({ "since": 0, "redis_list": true }))
                .send()
                .await
                .expect("subscribe");
            assert_eq!(r.status(), 200, "subscribe: {}", r.text().await.unwrap());
            let answer: Value = r.json().await.expect("subscription JSON");
            answer["redis_list"]
                .as_str()
                .expect("the subscription's list")
                .to_string()
        });
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (outcomes, stop) = (Arc::clone(&outcomes), Arc::clone(&stop));
            let url = format!("{}/topics/{topic}", fed.http_b);
            std::thread::spawn(move || {
                runtime.block_on(publish_loop(url, rate, duration, start, outcomes, stop))
            })
        };
        TopicLoad {
            outcomes,
            stop,
            thread: Some(thread),
            list,
            redis_b: fed.redis_b.url(),
        }
    }

    /// Whether every publish has its answer (the schedule is over).
    pub fn publisher_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops publishing (a publish in flight still gets its answer).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the publisher panicked");
        }
    }

    /// Acknowledged messages not yet in the list.
    pub fn missing(&self) -> usize {
        let acked = lock(&self.outcomes)
            .iter()
            .filter(|(_, o)| o.is_ok())
            .count();
        acked.saturating_sub(self.messages().len())
    }

    fn messages(&self) -> Vec<Value> {
        let mut redis = Resp::connect(&self.redis_b);
        match redis.cmd(&[b"LRANGE", self.list.as_bytes(), b"0", b"-1"]) {
            Reply::Array(items) => items
                .iter()
                .filter_map(|i| serde_json::from_slice(i.bytes()?).ok())
                .collect(),
            other => panic!("LRANGE answered {other:?}"),
        }
    }

    /// Counts (call after [`TopicLoad::stop`] and the drain).
    pub fn report(&self) -> TopicReport {
        let outcomes = lock(&self.outcomes);
        let mut report = TopicReport {
            sent: outcomes.len() as u64,
            ..TopicReport::default()
        };
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        let mut published: HashMap<&str, &Outcome> = HashMap::new();
        for (text, outcome) in outcomes.iter() {
            published.insert(text, outcome);
            match outcome {
                Ok(_) => report.acked += 1,
                Err(e) => {
                    report.errors += 1;
                    *errors.entry(e.clone()).or_default() += 1;
                }
            }
        }
        report.error_texts = errors.into_iter().collect();
        report.error_texts.sort_by_key(|e| std::cmp::Reverse(e.1));
        let mut ids: BTreeMap<u64, u32> = BTreeMap::new();
        let mut texts: HashMap<String, u32> = HashMap::new();
        for entry in self.messages() {
            if entry["event"] == "gap" {
                report.gaps += 1;
                continue;
            }
            if entry["event"] != "message" {
                continue;
            }
            report.delivered += 1;
            let id = entry["id"].as_u64().unwrap_or(0);
            let text = entry["message"].as_str().unwrap_or_default().to_string();
            *ids.entry(id).or_default() += 1;
            match published.get(text.as_str()) {
                Some(Ok(acked)) if *acked != id => report.wrong += 1,
                Some(Err(_)) => report.delivered_after_error += 1,
                None => report.wrong += 1,
                Some(Ok(_)) => {}
            }
            *texts.entry(text).or_default() += 1;
        }
        report.duplicated = ids.values().filter(|n| **n > 1).count() as u64
            + texts.values().filter(|n| **n > 1).count() as u64;
        let highest = ids.keys().next_back().copied().unwrap_or(0);
        report.gaps += (1..=highest).filter(|id| !ids.contains_key(id)).count() as u64;
        report.lost = outcomes
            .iter()
            .filter(|(text, o)| o.is_ok() && !texts.contains_key(text))
            .count() as u64;
        report
    }
}

impl Drop for TopicLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Publishes `topic-<n>` at `rate` a second until `duration` from `start` (or `stop`),
/// one at a time: a publish that hangs holds the next back, as in a simple app.
async fn publish_loop(
    url: String,
    rate: u32,
    duration: Duration,
    start: Instant,
    outcomes: Arc<Mutex<Vec<(String, Outcome)>>>,
    stop: Arc<AtomicBool>,
) {
    let client = client();
    for n in 0u64.. {
        let at = Duration::from_secs_f64(n as f64 / f64::from(rate.max(1)));
        if at >= duration || stop.load(Ordering::SeqCst) {
            break;
        }
        if let Some(wait) = (start + at).checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        let text = format!("topic-{n}");
        let answer = client
            .post(&url)
            .header("content-type", "application/octet-stream")
            .body(text.clone())
            .send()
            .await;
        let outcome = match answer {
            Err(e) if e.is_timeout() => Err("no answer within 20 s".to_string()),
            Err(e) => Err(format!("HTTP: {e}")),
            Ok(r) => {
                let status = r.status().as_u16();
                let body: Value = r.json().await.unwrap_or(Value::Null);
                match body["id"].as_u64() {
                    Some(id) if status == 200 => Ok(id),
                    _ => Err(format!(
                        "{status}: {}",
                        body["error"].as_str().unwrap_or("(no error text)")
                    )),
                }
            }
        };
        lock(&outcomes).push((text, outcome));
    }
}
