//! Steady RPCs from a client app on one twin's peer to an echo bot on another's, with
//! the chaos accounting of `tests/tests/chaos.rs`: every request sent is answered with
//! its own payload or with an explicit error, none is lost, none is answered twice, and
//! the bot runs once per request.
//!
//! Only relays are killed in the runs that use this (never a peer or its Redis), so the
//! apps are plain: the sender `LPUSH`es each request once to its peer's
//! `msgbus.system.local`, the reader `BRPOP`s the responses, the bot is
//! [`EchoBot`] and every request it runs is counted by payload (one payload per request,
//! whatever envelope uid carried it).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

use crate::peer_node::{EchoBot, Node};
use crate::peer_process::resp::Resp;

/// The command the bot serves.
pub const COMMAND: &str = "lb.echo";
/// The client's response list.
const RET: &str = "lb.ret";

/// What the client sent, and the answers by request number.
#[derive(Default)]
pub struct Book {
    /// Payload of request n (its `ref` is n).
    pub sent: Vec<String>,
    /// When request n was pushed, and when its first answer came.
    pub sent_at: Vec<Instant>,
    pub answered_at: HashMap<u64, Instant>,
    /// Answers per request: `Ok(payload)` or `Err(error text)`.
    pub answers: HashMap<u64, Vec<Result<String, String>>>,
    /// Responses whose `ref` was never sent.
    pub strays: u64,
    /// How many requests the bot ran for each payload.
    pub runs: HashMap<String, u64>,
}

impl Book {
    /// Files one raw response from the client's `ret` list.
    pub fn record(&mut self, raw: &str) {
        let Ok(resp) = serde_json::from_str::<Value>(raw) else {
            self.strays += 1;
            return;
        };
        let Some(n) = resp["ref"].as_str().and_then(|r| r.parse::<u64>().ok()) else {
            self.strays += 1;
            return;
        };
        if n as usize >= self.sent.len() {
            self.strays += 1;
            return;
        }
        let answer = if resp["err"].is_null() {
            let dat = resp["dat"].as_str().and_then(|d| STANDARD.decode(d).ok());
            Ok(String::from_utf8_lossy(&dat.unwrap_or_default()).into_owned())
        } else {
            Err(format!(
                "code {}: {}",
                resp["err"]["code"],
                resp["err"]["message"].as_str().unwrap_or("?")
            ))
        };
        self.answers.entry(n).or_default().push(answer);
        self.answered_at.entry(n).or_insert_with(Instant::now);
    }

    /// Counts one run of the bot for the request `req` (the JSON it was given).
    pub fn bot_ran(&mut self, req: &Value) {
        let dat = req["dat"].as_str().and_then(|d| STANDARD.decode(d).ok());
        let payload = String::from_utf8_lossy(&dat.unwrap_or_default()).into_owned();
        *self.runs.entry(payload).or_default() += 1;
    }

    /// The accounting of everything filed so far.
    pub fn tally(&self) -> Accounting {
        let mut acc = Accounting {
            sent: self.sent.len() as u64,
            strays: self.strays,
            handler_runs: self.runs.values().sum(),
            handled_twice: self.runs.values().filter(|n| **n > 1).count() as u64,
            ..Accounting::default()
        };
        for (n, payload) in self.sent.iter().enumerate() {
            let answers = self.answers.get(&(n as u64)).map_or(&[][..], Vec::as_slice);
            match answers.first() {
                None => {
                    acc.lost += 1;
                    acc.lost_refs.push(n as u64);
                }
                Some(Ok(back)) if back == payload => acc.ok += 1,
                Some(Ok(_)) => acc.mismatched += 1,
                Some(Err(text)) => *acc.errors.entry(text.clone()).or_default() += 1,
            }
            acc.duplicated += answers.len().saturating_sub(1) as u64;
            if let (Some(sent), Some(answered)) =
                (self.sent_at.get(n), self.answered_at.get(&(n as u64)))
            {
                let secs = answered.duration_since(*sent).as_secs_f64();
                acc.slowest = acc.slowest.max(secs);
                if secs >= SLOW {
                    acc.slow.push((n as u64, secs));
                }
            }
            if self.runs.get(payload).copied().unwrap_or(0) == 0 {
                acc.never_run += 1;
            }
        }
        acc
    }
}

/// The figures of one run.
#[derive(Debug, Default, Clone)]
pub struct Accounting {
    /// Requests the client pushed.
    pub sent: u64,
    /// First answer: its own payload.
    pub ok: u64,
    /// First answer: an explicit error, by text.
    pub errors: BTreeMap<String, u64>,
    /// First answer: a success carrying another payload.
    pub mismatched: u64,
    /// No answer at all.
    pub lost: u64,
    /// The lost request numbers, in send order.
    pub lost_refs: Vec<u64>,
    /// Answers beyond the first, over all requests.
    pub duplicated: u64,
    /// Answers to requests never sent.
    pub strays: u64,
    /// Times the bot ran a request.
    pub handler_runs: u64,
    /// Requests the bot ran more than once.
    pub handled_twice: u64,
    /// Requests the bot never ran (answered with an error, or lost).
    pub never_run: u64,
    /// Seconds from sending to the first answer, of the slowest request answered.
    pub slowest: f64,
    /// Requests answered [`SLOW`] seconds or more after they were sent: (number, seconds).
    pub slow: Vec<(u64, f64)>,
}

/// An answer this late (seconds) is listed in [`Accounting::slow`].
pub const SLOW: f64 = 5.0;

impl Accounting {
    /// Requests answered with an explicit error.
    pub fn error(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Prints the table (stdout; `--nocapture` shows it).
    pub fn print_table(&self, title: &str) {
        println!("\n{title}");
        println!(
            "  {:>6} {:>6} {:>6} {:>6} {:>10} {:>10} {:>7} {:>12} {:>13}",
            "sent",
            "ok",
            "error",
            "lost",
            "mismatched",
            "duplicated",
            "strays",
            "handler runs",
            "handled twice"
        );
        println!(
            "  {:>6} {:>6} {:>6} {:>6} {:>10} {:>10} {:>7} {:>12} {:>13}",
            self.sent,
            self.ok,
            self.error(),
            self.lost,
            self.mismatched,
            self.duplicated,
            self.strays,
            self.handler_runs,
            self.handled_twice
        );
        println!(
            "  sent = ok + error + lost + mismatched: {} = {} + {} + {} + {}",
            self.sent,
            self.ok,
            self.error(),
            self.lost,
            self.mismatched
        );
        println!(
            "  slowest answer {:.2} s; {} answered after {SLOW} s or more",
            self.slowest,
            self.slow.len()
        );
        if !self.slow.is_empty() {
            let shown: Vec<String> = self
                .slow
                .iter()
                .take(12)
                .map(|(n, s)| format!("#{n}:{s:.1}s"))
                .collect();
            println!("  slow: {} …", shown.join(" "));
        }
        for (text, n) in &self.errors {
            println!("  error x{n}: {text}");
        }
        if !self.lost_refs.is_empty() {
            let shown: Vec<String> = self.lost_refs.iter().take(20).map(u64::to_string).collect();
            println!("  lost request numbers: {} …", shown.join(" "));
        }
    }
}

/// A run under way: sender, reader and bot threads.
pub struct Traffic {
    book: Arc<Mutex<Book>>,
    stop_sending: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    sender: Option<JoinHandle<()>>,
    reader: Option<JoinHandle<()>>,
    counter: Option<JoinHandle<()>>,
    /// When the first request was due.
    pub started: Instant,
}

impl Traffic {
    /// Starts `rate` requests per second for `duration` from `client`'s peer to
    /// [`COMMAND`] on `server`, whose peer gets an [`EchoBot`].
    pub fn start(client: &Node, server: &Node, rate: u32, duration: Duration) -> Traffic {
        let book = Arc::new(Mutex::new(Book::default()));
        let stop_sending = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();

        // The bot answers on the server's Redis; a thread files every request it ran.
        let bot = EchoBot::start(&server.redis.url(), COMMAND);
        let counter = {
            let (book, stop) = (Arc::clone(&book), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    if let Some(req) = bot.next_request(Duration::from_millis(200)) {
                        lock(&book).bot_ran(&req);
                    }
                }
                // What it ran up to now is counted too; it stops when dropped here.
                for req in bot.seen.try_iter() {
                    lock(&book).bot_ran(&req);
                }
            })
        };

        let sender = {
            let (book, stop) = (Arc::clone(&book), Arc::clone(&stop_sending));
            let (url, dst) = (client.redis.url(), server.twin);
            let nonce = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
                ^ u128::from(std::process::id());
            std::thread::spawn(move || {
                let mut redis = Resp::connect(&url);
                for n in 0u64.. {
                    let at = Duration::from_secs_f64(n as f64 / f64::from(rate.max(1)));
                    if at >= duration || stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Some(wait) = (started + at).checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let payload = format!("req-{n}-{nonce:x}");
                    let req = super::request(&n.to_string(), COMMAND, dst, &payload, RET);
                    let mut entry = lock(&book);
                    entry.sent.push(payload);
                    entry.sent_at.push(Instant::now());
                    drop(entry);
                    redis.lpush("msgbus.system.local", &req.to_string());
                }
            })
        };

        let reader = {
            let (book, stop) = (Arc::clone(&book), Arc::clone(&stop));
            let url = client.redis.url();
            std::thread::spawn(move || {
                let mut redis = Resp::connect(&url);
                while !stop.load(Ordering::SeqCst) {
                    if let Some(raw) = redis.brpop(RET, 1) {
                        lock(&book).record(&raw);
                    }
                }
            })
        };

        Traffic {
            book,
            stop_sending,
            stop,
            sender: Some(sender),
            reader: Some(reader),
            counter: Some(counter),
            started,
        }
    }

    /// The accounting so far (while the run goes on).
    pub fn tally(&self) -> Accounting {
        lock(&self.book).tally()
    }

    /// Waits for the sender to finish its schedule, then up to `drain` for every request
    /// to be answered, then `after` more for late duplicates; stops and returns the
    /// accounting.
    pub fn finish(mut self, drain: Duration, after: Duration) -> Accounting {
        if let Some(sender) = self.sender.take() {
            sender.join().expect("the sender panicked");
        }
        let deadline = Instant::now() + drain;
        while Instant::now() < deadline {
            let book = lock(&self.book);
            if book.answers.len() == book.sent.len() {
                break;
            }
            drop(book);
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(after);
        self.stop_threads();
        self.tally()
    }

    fn stop_threads(&mut self) {
        self.stop_sending.store(true, Ordering::SeqCst);
        self.stop.store(true, Ordering::SeqCst);
        for thread in [self.sender.take(), self.reader.take(), self.counter.take()]
            .into_iter()
            .flatten()
        {
            let _ = thread.join();
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(n: u64, payload: Result<&str, &str>) -> String {
        match payload {
            Ok(p) => {
                serde_json::json!({"ref": n.to_string(), "dat": STANDARD.encode(p), "err": null})
            }
            Err(e) => serde_json::json!({"ref": n.to_string(), "err": {"code": 1, "message": e}}),
        }
        .to_string()
    }

    /// The accounting sees what is lost, doubled, wrong or run twice: a run missing any
    /// of these would not pass the tests' assertions.
    #[test]
    fn tally_counts_every_kind_of_failure() {
        let mut book = Book::default();
        for n in 0..6 {
            book.sent.push(format!("p{n}"));
        }
        book.record(&response(0, Ok("p0")));
        book.record(&response(1, Ok("p1")));
        book.record(&response(1, Ok("p1"))); // answered twice
        book.record(&response(2, Err("destination offline")));
        book.record(&response(3, Ok("p9"))); // another payload
        book.record(&response(9, Ok("p9"))); // never sent
        // request 4 and 5: no answer
        for payload in ["p0", "p1", "p1", "p3"] {
            book.bot_ran(&serde_json::json!({"dat": STANDARD.encode(payload)}));
        }
        let acc = book.tally();
        assert_eq!(
            (acc.sent, acc.ok, acc.error(), acc.mismatched),
            (6, 2, 1, 1)
        );
        assert_eq!((acc.lost, acc.lost_refs.clone()), (2, vec![4, 5]));
        assert_eq!((acc.duplicated, acc.strays), (1, 1));
        assert_eq!(
            (acc.handler_runs, acc.handled_twice, acc.never_run),
            (4, 1, 3)
        );
    }
}
