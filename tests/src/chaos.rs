//! The chaos harness of issue #7: RPCs between two real peers while the relay, the peers
//! and their Redis servers are SIGKILLed and relaunched, counting what every request got.
//!
//! Topology: one `rmb-relay` (in-memory, or `--redis` on a durable Redis of its own) that
//! also hosts the twin registry; twin A and twin B, each an `rmb-peer` on its own durable
//! Redis. A client app on A's Redis sends requests at a fixed rate to an echo bot on B's
//! Redis; [`run`] follows a [`Crash`] schedule meanwhile, then waits for the answers and
//! returns a [`Report`]: what was lost, answered twice or left behind in a list.
//!
//! The app and the bot are written so that the harness itself never loses or doubles a
//! message when *their* Redis restarts, whatever the moment of the kill:
//! - the client pushes each request with a script that also adds its `ref` to a set, so a
//!   push whose reply was lost is retried without risk of a second copy;
//! - the reader and the bot move each item to an "in-flight" list of their own
//!   (`BLMOVE`) before using it and drop it from there afterwards; after a reconnection
//!   they finish what that list still holds, remembering the one item they were busy with
//!   so that it is not counted twice;
//! - the bot's reply and the removal of the request from its in-flight list happen in one
//!   script: either both or neither.
//!
//! So every lost, doubled or leftover message in the report is the bus's doing.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rmb_identity::{Identity, KeyType};
use serde_json::{Value, json};

use crate::peer_process::PeerProcess;
use crate::peer_process::resp::{Reply, Resp};
use crate::redis_server::RedisServer;
use crate::relay_process::RelayProcess;

/// The command the echo bot serves.
pub const COMMAND: &str = "chaos.echo";
/// The list the client reads its responses from (its `ret`).
pub const RET: &str = "chaos.ret";
/// Where the client's reader keeps the response it is busy with.
const RET_INFLIGHT: &str = "chaos.ret.inflight";
/// The bot's request queue, `msgbus.<COMMAND>`.
const BOT_QUEUE: &str = "msgbus.chaos.echo";
/// Where the bot keeps the request it is busy with.
const BOT_INFLIGHT: &str = "chaos.echo.inflight";
/// Set of the refs already pushed (makes a retried push harmless).
const PUSHED: &str = "chaos.pushed";
/// The peer's list of client requests.
const LOCAL: &str = "msgbus.system.local";
/// The peer's list of service replies.
const REPLY: &str = "msgbus.system.reply";
/// The peer's status key.
const STATUS: &str = "msgbus.system.status";

/// Pushes ARGV[2] onto KEYS[2] unless ARGV[1] is already in the set KEYS[1].
const PUSH_ONCE: &str = "if redis.call('SADD', KEYS[1], ARGV[1]) == 1 then \
     return redis.call('LPUSH', KEYS[2], ARGV[2]) end return 0";
/// Removes ARGV[1] from KEYS[1] and, if it was there, pushes ARGV[2] onto KEYS[2].
const REPLY_ONCE: &str = "if redis.call('LREM', KEYS[1], 1, ARGV[1]) > 0 then \
     redis.call('LPUSH', KEYS[2], ARGV[2]) return 1 end return 0";

/// Reply timeout of the harness's Redis connections (blocking calls block for less).
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before retrying after a Redis failure.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Seconds a `BLMOVE` blocks before the loop looks at its stop flag.
const BLOCK_SECS: &str = "0.5";
/// How long [`run`] waits for a process to be back after its relaunch.
const RECOVERY_LIMIT: Duration = Duration::from_secs(30);
/// How long [`run`] keeps listening after the last answer, for late duplicates.
const AFTER_LAST: Duration = Duration::from_secs(2);

/// Which relay the run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayMode {
    /// `rmb-relay` with in-memory offline queues: a kill loses what it held.
    Memory,
    /// `rmb-relay --redis <url>` on a durable Redis: queues survive a relay kill.
    Redis,
}

impl fmt::Display for RelayMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RelayMode::Memory => "memory",
            RelayMode::Redis => "redis",
        })
    }
}

/// A process the schedule can crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// The relay.
    Relay,
    /// The sending peer (twin A, the client's).
    PeerA,
    /// The receiving peer (twin B, the bot's).
    PeerB,
    /// Peer A's Redis (also the client's).
    RedisA,
    /// Peer B's Redis (also the bot's).
    RedisB,
    /// The relay's Redis (only with [`RelayMode::Redis`]).
    RelayRedis,
}

impl Target {
    /// Every target, in the order the long run cycles through them.
    pub const ALL: [Target; 6] = [
        Target::Relay,
        Target::PeerA,
        Target::PeerB,
        Target::RedisB,
        Target::RelayRedis,
        Target::RedisA,
    ];

    /// The name used on command lines and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Target::Relay => "relay",
            Target::PeerA => "peer-a",
            Target::PeerB => "peer-b",
            Target::RedisA => "redis-a",
            Target::RedisB => "redis-b",
            Target::RelayRedis => "relay-redis",
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Target::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Target::ALL.iter().map(|t| t.name()).collect();
                format!("unknown target {s:?}; one of {}", names.join(", "))
            })
    }
}

/// One event of the schedule: SIGKILL `target` at `at` (from the first request), relaunch
/// it `down` later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crash {
    pub at: Duration,
    pub target: Target,
    pub down: Duration,
}

/// A crash every `every` (first at `every`, none after `duration - every / 2` so the
/// last one still falls inside the run), cycling through `targets`.
pub fn cycle(
    targets: &[Target],
    duration: Duration,
    every: Duration,
    down: Duration,
) -> Vec<Crash> {
    let mut crashes = Vec::new();
    if targets.is_empty() || every.is_zero() {
        return crashes;
    }
    let mut at = every;
    while at + every / 2 <= duration {
        crashes.push(Crash {
            at,
            target: targets[crashes.len() % targets.len()],
            down,
        });
        at += every;
    }
    crashes
}

/// What one run does.
#[derive(Debug, Clone)]
pub struct Config {
    /// Relay kind.
    pub relay: RelayMode,
    /// How long requests are sent.
    pub duration: Duration,
    /// Requests per second.
    pub rate: u32,
    /// The crash schedule (times from the first request).
    pub crashes: Vec<Crash>,
    /// The requests' `exp` (seconds).
    pub exp: u64,
    /// Longest wait for the missing answers once sending stops.
    pub drain: Duration,
    /// Print progress (crashes, recoveries) to stderr.
    pub verbose: bool,
}

impl Config {
    /// A run without crashes; `exp` 120 s, drain 60 s, verbose.
    pub fn new(relay: RelayMode, duration: Duration, rate: u32) -> Self {
        Config {
            relay,
            duration,
            rate,
            crashes: Vec::new(),
            exp: 120,
            drain: Duration::from_secs(60),
            verbose: true,
        }
    }
}

/// What happened to one crash of the schedule.
#[derive(Debug, Clone)]
pub struct CrashRecord {
    pub target: Target,
    /// When it was killed (seconds from the first request).
    pub at: f64,
    /// How long it was down.
    pub down: f64,
    /// How long its relaunch took (process started and, for a peer, ready).
    pub relaunch: f64,
    /// From the relaunch until the bus was usable again as seen from the peers' status
    /// keys (relay: both peers connected; a peer's Redis: that peer writing its status
    /// again); `None` if that did not happen within 30 s.
    pub back_after: Option<f64>,
}

/// The outcome of one run (shared by the test and the `rmb-chaos` binary).
#[derive(Debug, Clone)]
pub struct Report {
    pub relay: RelayMode,
    pub rate: u32,
    /// Seconds requests were sent for.
    pub send_secs: f64,
    /// Seconds from the end of sending until the last answer came (or the drain gave up).
    pub drain_secs: f64,
    /// Requests pushed by the client.
    pub sent: u64,
    /// Requests whose first response carried their own payload.
    pub ok: u64,
    /// Requests whose first response was an error, or a success with a wrong payload.
    pub error: u64,
    /// Of `error`: successes carrying another payload.
    pub mismatched: u64,
    /// Requests without any response.
    pub lost: u64,
    /// Responses beyond the first, over all requests.
    pub duplicated: u64,
    /// Responses whose `ref` the client never sent.
    pub strays: u64,
    /// Requests the bot handled (every delivery counts).
    pub handler_runs: u64,
    /// Envelope uids the bot handled more than once.
    pub handled_twice: u64,
    /// Payloads (client requests) the bot handled more than once, under any uid.
    pub payloads_handled_twice: u64,
    /// Requests the bot could not read.
    pub bot_unreadable: u64,
    /// Peers' `resent` counters (A + B, summed over their restarts; 0 if absent).
    pub resent: u64,
    /// Peers' `duplicates` counters (dropped duplicates).
    pub duplicates: u64,
    /// Peers' `replayed` counters.
    pub replayed: u64,
    /// Entries left in lists and outboxes that should be empty at the end.
    pub leftovers: Vec<(String, u64)>,
    /// Other end-of-run figures, for information (not expected to be zero).
    pub info: Vec<(String, u64)>,
    /// Error responses by text, most frequent first.
    pub errors: Vec<(String, u64)>,
    /// Lost requests by the second they were sent in (seconds from the first request).
    pub lost_by_second: Vec<(u64, u64)>,
    pub crashes: Vec<CrashRecord>,
}

impl Report {
    /// Sum of [`Report::leftovers`].
    pub fn leftover_total(&self) -> u64 {
        self.leftovers.iter().map(|(_, n)| n).sum()
    }

    /// Every request answered once with its own payload, handled once, nothing left.
    pub fn is_clean(&self) -> bool {
        self.ok == self.sent
            && self.error == 0
            && self.lost == 0
            && self.duplicated == 0
            && self.strays == 0
            && self.handled_twice == 0
            && self.payloads_handled_twice == 0
            && self.handler_runs == self.sent
            && self.leftover_total() == 0
    }

    /// Prints the run's details and its figures as a table (stdout).
    pub fn print_table(&self) {
        println!(
            "\nchaos run, {} relay: {:.1} s at {} RPC/s, {} crash(es), drained in {:.1} s",
            self.relay,
            self.send_secs,
            self.rate,
            self.crashes.len(),
            self.drain_secs
        );
        if !self.crashes.is_empty() {
            println!(
                "  {:<12} {:>8} {:>7} {:>10} {:>11}",
                "crash", "at", "down", "relaunch", "back after"
            );
            for c in &self.crashes {
                let back = c
                    .back_after
                    .map_or_else(|| "not seen".to_string(), |s| format!("{s:.1}s"));
                println!(
                    "  {:<12} {:>7.1}s {:>6.1}s {:>9.2}s {:>11}",
                    c.target.name(),
                    c.at,
                    c.down,
                    c.relaunch,
                    back
                );
            }
        }
        print_rows(std::slice::from_ref(self));
        println!(
            "  handler runs {}, payloads handled twice {}, mismatched payloads {}, stray responses {}, unreadable requests {}",
            self.handler_runs,
            self.payloads_handled_twice,
            self.mismatched,
            self.strays,
            self.bot_unreadable
        );
        let left: Vec<String> = self
            .leftovers
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        if left.is_empty() {
            println!(
                "  leftovers: none ({} lists/key sets checked)",
                self.leftovers.len()
            );
        } else {
            println!("  leftovers: {}", left.join(", "));
        }
        let info: Vec<String> = self.info.iter().map(|(k, n)| format!("{k}={n}")).collect();
        println!("  info: {}", info.join(", "));
        for (text, n) in self.errors.iter().take(8) {
            println!("  error x{n}: {text}");
        }
        if !self.lost_by_second.is_empty() {
            let lost: Vec<String> = self
                .lost_by_second
                .iter()
                .map(|(s, n)| format!("{s}s:{n}"))
                .collect();
            println!("  lost by send second: {}", lost.join(" "));
        }
    }

    /// Prints one figures row per report under one header (stdout), e.g. one per relay
    /// mode at the end of the long run.
    pub fn print_summary(reports: &[Report]) {
        println!("\nsummary");
        print_rows(reports);
    }
}

fn print_rows(reports: &[Report]) {
    println!(
        "  {:<7} {:>7} {:>7} {:>6} {:>6} {:>10} {:>13} {:>8} {:>18} {:>8} {:>9}",
        "relay",
        "sent",
        "ok",
        "error",
        "lost",
        "duplicated",
        "handled twice",
        "resends",
        "duplicates dropped",
        "replayed",
        "leftovers"
    );
    for r in reports {
        println!(
            "  {:<7} {:>7} {:>7} {:>6} {:>6} {:>10} {:>13} {:>8} {:>18} {:>8} {:>9}",
            r.relay.to_string(),
            r.sent,
            r.ok,
            r.error,
            r.lost,
            r.duplicated,
            r.handled_twice,
            r.resent,
            r.duplicates,
            r.replayed,
            r.leftover_total()
        );
    }
}

/// Runs the harness once: starts the processes, sends, crashes, drains, reports. Panics
/// when a process cannot be (re)started.
pub fn run(config: &Config) -> Report {
    let began = Instant::now();
    let log = |msg: String| {
        if config.verbose {
            let t = began.elapsed().as_secs_f64();
            eprintln!("[chaos {} +{t:5.1}s] {msg}", config.relay);
        }
    };
    log("starting relay, registering twins, starting peers".into());
    let mut net = Net::start(config.relay);
    log(format!(
        "up: relay on {}, twin A {} (redis {}), twin B {} (redis {})",
        net.relay.domain(),
        net.twin_a,
        net.redis_a.url(),
        net.twin_b,
        net.redis_b.url()
    ));

    let book = Arc::new(Mutex::new(Book::default()));
    let bot_book = Arc::new(Mutex::new(BotBook::default()));
    let stop_sending = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let sender = spawn_sender(
        net.redis_a.url(),
        net.twin_b,
        config,
        start,
        Arc::clone(&book),
        Arc::clone(&stop_sending),
    );
    let reader = spawn_reader(net.redis_a.url(), Arc::clone(&book), Arc::clone(&stop));
    let bot = spawn_bot(net.redis_b.url(), Arc::clone(&bot_book), Arc::clone(&stop));

    // The schedule; meanwhile the peers' counters are sampled and recoveries timed.
    let mut crashes = config.crashes.clone();
    crashes.sort_by_key(|c| c.at);
    for crash in crashes {
        if crash.target == Target::RelayRedis && net.relay_redis.is_none() {
            log(format!("skipping {}: the relay has no redis", crash.target));
            continue;
        }
        net.sample_until(start + crash.at);
        net.sample();
        let at = start.elapsed().as_secs_f64();
        log(format!("send time {at:5.1}s: kill {}", crash.target));
        net.kill(crash.target);
        net.sample_until(Instant::now() + crash.down);
        let down = start.elapsed().as_secs_f64() - at;
        let relaunched = Instant::now();
        net.relaunch(crash.target);
        let relaunch = relaunched.elapsed().as_secs_f64();
        log(format!("{} relaunched in {relaunch:.2}s", crash.target));
        net.records.push(CrashRecord {
            target: crash.target,
            at,
            down,
            relaunch,
            back_after: None,
        });
        net.watch_recovery(crash.target, relaunched);
    }
    net.sample_until(start + config.duration);
    stop_sending.store(true, Ordering::SeqCst);
    sender.join().expect("the client's sender panicked");
    let send_secs = start.elapsed().as_secs_f64();
    let sent = lock(&book).sent.len();
    log(format!("{send_secs:6.1}s sent {sent} requests; draining"));

    // Drain: until every request has an answer, or the drain time is up.
    let drain_start = Instant::now();
    let deadline = drain_start + config.drain;
    let mut last_progress = Instant::now();
    let mut answered = 0;
    while Instant::now() < deadline {
        let now_answered = lock(&book).answered();
        if now_answered == sent {
            break;
        }
        if now_answered != answered {
            answered = now_answered;
            last_progress = Instant::now();
        } else if last_progress.elapsed() >= Duration::from_secs(5) {
            log(format!("still {} without an answer", sent - now_answered));
            last_progress = Instant::now();
        }
        net.sample_until(Instant::now() + Duration::from_millis(100));
    }
    let drain_secs = drain_start.elapsed().as_secs_f64();
    log(format!(
        "drain over after {drain_secs:.1}s; {} without an answer",
        sent - lock(&book).answered()
    ));
    // Late duplicates and the bot's last replies.
    net.sample_until(Instant::now() + AFTER_LAST);
    stop.store(true, Ordering::SeqCst);
    reader.join().expect("the client's reader panicked");
    bot.join().expect("the echo bot panicked");
    log("client and bot stopped".into());
    net.sample();

    let book = lock(&book);
    let bots = lock(&bot_book);
    let mut report = Report {
        relay: config.relay,
        rate: config.rate,
        send_secs,
        drain_secs,
        sent: book.sent.len() as u64,
        ok: 0,
        error: 0,
        mismatched: 0,
        lost: 0,
        duplicated: 0,
        strays: book.strays,
        handler_runs: bots.runs,
        handled_twice: bots.by_uid.values().filter(|n| **n > 1).count() as u64,
        payloads_handled_twice: bots.by_payload.values().filter(|n| **n > 1).count() as u64,
        bot_unreadable: bots.unreadable,
        resent: net.counters.total("resent"),
        duplicates: net.counters.total("duplicates"),
        replayed: net.counters.total("replayed"),
        leftovers: net.leftovers(),
        info: net.info(),
        errors: Vec::new(),
        lost_by_second: Vec::new(),
        crashes: std::mem::take(&mut net.records),
    };
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut lost_by_second: BTreeMap<u64, u64> = BTreeMap::new();
    for (n, sent) in book.sent.iter().enumerate() {
        let answers = book.answers.get(&(n as u64)).map_or(&[][..], Vec::as_slice);
        match answers.first() {
            None => {
                report.lost += 1;
                *lost_by_second.entry(sent.at.as_secs()).or_default() += 1;
            }
            Some(Answer::Ok) => report.ok += 1,
            Some(Answer::Mismatch) => {
                report.error += 1;
                report.mismatched += 1;
            }
            Some(Answer::Error(_)) => report.error += 1,
        }
        report.duplicated += answers.len().saturating_sub(1) as u64;
        for answer in answers {
            if let Answer::Error(text) = answer {
                *errors.entry(text.clone()).or_default() += 1;
            }
        }
    }
    report.errors = errors.into_iter().collect();
    report.errors.sort_by_key(|e| std::cmp::Reverse(e.1));
    report.lost_by_second = lost_by_second.into_iter().collect();
    log("report ready".into());
    report
}

/// What the client sent and got.
#[derive(Default)]
struct Book {
    /// Index = the request's `ref`.
    sent: Vec<Sent>,
    /// Responses by `ref`, in arrival order.
    answers: HashMap<u64, Vec<Answer>>,
    strays: u64,
}

struct Sent {
    payload: Vec<u8>,
    /// Scheduled send time, from the first request.
    at: Duration,
}

enum Answer {
    Ok,
    Mismatch,
    Error(String),
}

impl Book {
    fn answered(&self) -> usize {
        self.answers.len()
    }

    /// Files one raw response from `chaos.ret`.
    fn record(&mut self, raw: &[u8]) {
        let Ok(resp) = serde_json::from_slice::<Value>(raw) else {
            self.strays += 1;
            return;
        };
        let Some(n) = resp["ref"].as_str().and_then(|r| r.parse::<u64>().ok()) else {
            self.strays += 1;
            return;
        };
        let Some(sent) = self.sent.get(n as usize) else {
            self.strays += 1;
            return;
        };
        let answer = if resp["err"].is_null() {
            let dat = resp["dat"].as_str().and_then(|d| STANDARD.decode(d).ok());
            if dat.as_deref() == Some(&sent.payload[..]) {
                Answer::Ok
            } else {
                Answer::Mismatch
            }
        } else {
            Answer::Error(format!(
                "code {}: {}",
                resp["err"]["code"],
                resp["err"]["message"].as_str().unwrap_or("?")
            ))
        };
        self.answers.entry(n).or_default().push(answer);
    }
}

/// What the bot handled.
#[derive(Default)]
struct BotBook {
    runs: u64,
    by_uid: HashMap<String, u32>,
    by_payload: HashMap<String, u32>,
    unreadable: u64,
}

impl BotBook {
    fn count(&mut self, req: Option<&Value>) {
        self.runs += 1;
        let Some(req) = req else {
            self.unreadable += 1;
            return;
        };
        let uid = req["ref"].as_str().unwrap_or_default().to_string();
        *self.by_uid.entry(uid).or_default() += 1;
        let dat = req["dat"].as_str().unwrap_or_default().to_string();
        *self.by_payload.entry(dat).or_default() += 1;
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One Redis connection that is redialled on the next command after a failure.
struct Link {
    url: String,
    conn: Option<Resp>,
}

impl Link {
    fn new(url: &str) -> Self {
        Link {
            url: url.to_string(),
            conn: None,
        }
    }

    /// The reply, or why there is none (an error reply keeps the connection; a broken
    /// one is dropped).
    fn cmd(&mut self, args: &[&[u8]]) -> Result<Reply, String> {
        if self.conn.is_none() {
            let conn = Resp::try_connect(&self.url, IO_TIMEOUT).map_err(|e| e.to_string())?;
            self.conn = Some(conn);
        }
        let conn = self.conn.as_mut().expect("connected above");
        match conn.try_cmd(args) {
            Ok(Reply::Error(e)) => Err(e),
            Ok(reply) => Ok(reply),
            Err(e) => {
                self.conn = None;
                Err(e.to_string())
            }
        }
    }

    /// Like [`Link::cmd`], retrying until it works (`None` if `give_up` is set first).
    fn cmd_retrying(&mut self, args: &[&[u8]], give_up: &AtomicBool) -> Option<Reply> {
        loop {
            match self.cmd(args) {
                Ok(reply) => return Some(reply),
                Err(_) if give_up.load(Ordering::SeqCst) => return None,
                Err(_) => std::thread::sleep(RETRY_PAUSE),
            }
        }
    }

    fn int(&mut self, args: &[&[u8]]) -> u64 {
        match self.cmd(args) {
            Ok(Reply::Int(n)) => n.max(0) as u64,
            _ => 0,
        }
    }

    fn count_keys(&mut self, pattern: &str) -> u64 {
        match self.cmd(&[b"KEYS", pattern.as_bytes()]) {
            Ok(Reply::Array(keys)) => keys.len() as u64,
            _ => 0,
        }
    }
}

/// The client's sending side: one request every `1 / rate` seconds, each pushed exactly
/// once however often its Redis restarts.
fn spawn_sender(
    url: String,
    twin_b: u32,
    config: &Config,
    start: Instant,
    book: Arc<Mutex<Book>>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    let (rate, duration, exp) = (config.rate.max(1), config.duration, config.exp);
    let nonce = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ (u64::from(std::process::id()) << 32);
    std::thread::spawn(move || {
        let mut link = Link::new(&url);
        for n in 0u64.. {
            let at = Duration::from_secs_f64(n as f64 / f64::from(rate));
            if at >= duration || stop.load(Ordering::SeqCst) {
                break;
            }
            if let Some(wait) = (start + at).checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let payload = format!("req-{n}-{nonce:016x}");
            let request = json!({
                "ver": 1, "ref": n.to_string(), "cmd": COMMAND, "exp": exp,
                "dat": STANDARD.encode(&payload), "tag": null, "dst": [twin_b],
                "ret": RET, "shm": null, "now": unix_now(),
            })
            .to_string();
            lock(&book).sent.push(Sent {
                payload: payload.into_bytes(),
                at,
            });
            let n_text = n.to_string();
            let args: [&[u8]; 7] = [
                b"EVAL",
                PUSH_ONCE.as_bytes(),
                b"2",
                PUSHED.as_bytes(),
                LOCAL.as_bytes(),
                n_text.as_bytes(),
                request.as_bytes(),
            ];
            // Retried until Redis takes it: the script makes a second push a no-op.
            let never = AtomicBool::new(false);
            link.cmd_retrying(&args, &never);
        }
    })
}

/// The client's receiving side: files every response of `chaos.ret`.
fn spawn_reader(url: String, book: Arc<Mutex<Book>>, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        consume(
            &url,
            (RET, RET_INFLIGHT),
            &stop,
            |item| lock(&book).record(item),
            |link, item| {
                link.cmd(&[b"LREM", RET_INFLIGHT.as_bytes(), b"1", item])
                    .map(drop)
            },
        )
    })
}

/// The echo bot: answers every request of `msgbus.chaos.echo` with its own payload.
fn spawn_bot(url: String, book: Arc<Mutex<BotBook>>, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        consume(
            &url,
            (BOT_QUEUE, BOT_INFLIGHT),
            &stop,
            |item| lock(&book).count(serde_json::from_slice(item).ok().as_ref()),
            answer,
        )
    })
}

/// Takes the items of `queue` one by one, never losing or doubling one across a Redis
/// restart: each is moved to `inflight` (`BLMOVE`), handed to `take` once, then `finish`
/// must remove it from `inflight`. After a failure, what `inflight` still holds is
/// finished first; the item being finished when it failed is not taken a second time.
fn consume(
    url: &str,
    (queue, inflight): (&str, &str),
    stop: &AtomicBool,
    mut take: impl FnMut(&[u8]),
    mut finish: impl FnMut(&mut Link, &[u8]) -> Result<(), String>,
) {
    let mut link = Link::new(url);
    // The item taken but maybe not yet finished.
    let mut taken: Option<Vec<u8>> = None;
    let mut recover = true;
    while !stop.load(Ordering::SeqCst) {
        if recover {
            let Ok(Reply::Array(items)) = link.cmd(&[b"LRANGE", inflight.as_bytes(), b"0", b"-1"])
            else {
                std::thread::sleep(RETRY_PAUSE);
                continue;
            };
            let mut done = true;
            for item in items.iter().filter_map(Reply::bytes) {
                if taken.as_deref() != Some(item) {
                    take(item);
                    taken = Some(item.to_vec());
                }
                if finish(&mut link, item).is_err() {
                    done = false;
                    break;
                }
                taken = None;
            }
            if !done {
                std::thread::sleep(RETRY_PAUSE);
                continue;
            }
            recover = false;
        }
        match link.cmd(&[
            b"BLMOVE",
            queue.as_bytes(),
            inflight.as_bytes(),
            b"RIGHT",
            b"LEFT",
            BLOCK_SECS.as_bytes(),
        ]) {
            Ok(Reply::Bulk(item)) => {
                take(&item);
                taken = Some(item);
                if finish(&mut link, taken.as_deref().expect("just set")).is_ok() {
                    taken = None;
                } else {
                    recover = true;
                }
            }
            Ok(_) => {}
            Err(_) => {
                recover = true;
                std::thread::sleep(RETRY_PAUSE);
            }
        }
    }
}

/// Replies to one request of the bot's in-flight list and removes it from there, in one
/// script (an unreadable request is only removed).
fn answer(link: &mut Link, item: &[u8]) -> Result<(), String> {
    let Ok(req) = serde_json::from_slice::<Value>(item) else {
        return link
            .cmd(&[b"LREM", BOT_INFLIGHT.as_bytes(), b"1", item])
            .map(drop);
    };
    let reply = json!({
        "ver": 1, "ref": req["ref"], "dat": req["dat"], "dst": req["src"],
        "shm": null, "now": 0, "err": null,
    })
    .to_string();
    link.cmd(&[
        b"EVAL",
        REPLY_ONCE.as_bytes(),
        b"2",
        BOT_INFLIGHT.as_bytes(),
        REPLY.as_bytes(),
        item,
        reply.as_bytes(),
    ])
    .map(drop)
}

/// A peer counter summed over the peer's restarts (each restart starts from zero).
#[derive(Default)]
struct Tally {
    started_at: Option<u64>,
    banked: u64,
    last: u64,
}

/// Counters of both peers ([`Counters::FIELDS`]), sampled from their status keys and
/// summed over restarts (so up to a second of counting before a SIGKILL can be missed).
#[derive(Default)]
struct Counters {
    tallies: HashMap<(&'static str, &'static str), Tally>,
}

impl Counters {
    /// The new peer's delivery counters, then the current peer's failure counters
    /// (reported as information).
    const FIELDS: [&'static str; 7] = [
        "resent",
        "duplicates",
        "replayed",
        "undeliverable",
        "timeouts",
        "rejected",
        "responses_expired",
    ];

    fn update(&mut self, peer: &'static str, status: &Value) {
        let started_at = status["started_at"].as_u64();
        for field in Self::FIELDS {
            let value = find_u64(status, field).unwrap_or(0);
            let tally = self.tallies.entry((peer, field)).or_default();
            if tally.started_at != started_at || value < tally.last {
                tally.banked += tally.last;
                tally.last = 0;
                tally.started_at = started_at;
            }
            tally.last = value;
        }
    }

    fn peer_total(&self, peer: &str, field: &str) -> u64 {
        self.tallies
            .iter()
            .filter(|((p, f), _)| *p == peer && *f == field)
            .map(|(_, t)| t.banked + t.last)
            .sum()
    }

    fn total(&self, field: &str) -> u64 {
        self.tallies
            .iter()
            .filter(|((_, f), _)| *f == field)
            .map(|(_, t)| t.banked + t.last)
            .sum()
    }
}

/// The first number called `key` anywhere in `v` (the new counters' place in the status
/// JSON is not fixed yet).
fn find_u64(v: &Value, key: &str) -> Option<u64> {
    match v {
        Value::Object(map) => map
            .get(key)
            .and_then(Value::as_u64)
            .or_else(|| map.values().find_map(|v| find_u64(v, key))),
        Value::Array(items) => items.iter().find_map(|v| find_u64(v, key)),
        _ => None,
    }
}

/// Reads a peer's status key (`None` if absent or its Redis is down).
fn read_status(url: &str) -> Option<Value> {
    match Link::new(url).cmd(&[b"GET", STATUS.as_bytes()]) {
        Ok(Reply::Bulk(bytes)) => serde_json::from_slice(&bytes).ok(),
        _ => None,
    }
}

fn connected(status: &Value) -> bool {
    status["relays"]
        .as_array()
        .is_some_and(|r| r.iter().any(|l| l["connected"] == true))
}

/// The processes of one run. Field order is drop order: peers first, Redis servers last.
struct Net {
    peer_a: PeerProcess,
    peer_b: PeerProcess,
    relay: RelayProcess,
    redis_a: RedisServer,
    redis_b: RedisServer,
    relay_redis: Option<RedisServer>,
    twin_a: u32,
    twin_b: u32,
    counters: Counters,
    last_sample: Instant,
    records: Vec<CrashRecord>,
    watches: Vec<Watch>,
}

/// A recovery being timed.
struct Watch {
    /// Index of its record in [`Net::records`].
    record: usize,
    back: Back,
    since: Instant,
}

/// What "working again" means after a crash.
enum Back {
    /// Both peers report a connected relay.
    PeersConnected,
    /// The peer of the Redis at this URL writes its status key again.
    StatusWritten(String),
}

impl Net {
    fn start(mode: RelayMode) -> Net {
        let relay_redis = (mode == RelayMode::Redis).then(RedisServer::start_durable);
        let relay = match &relay_redis {
            Some(redis) => RelayProcess::start(&["--redis", &redis.url()]),
            None => RelayProcess::start(&[]),
        };
        let registry = relay.http_url();
        let relays = [relay.domain()];
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let register = |secret: &str| {
            let who = Identity::from_secret(secret, KeyType::Sr25519).expect("test identity");
            runtime.block_on(crate::registry::register(&registry, &who, &relays))
        };
        let (twin_a, twin_b) = (register("//Alice"), register("//Bob"));
        let redis_a = RedisServer::start_durable();
        let redis_b = RedisServer::start_durable();
        let urls = [relay.ws_url()];
        let peer_a = PeerProcess::start("//Alice", &redis_a.url(), &urls, &registry, &[]);
        let peer_b = PeerProcess::start("//Bob", &redis_b.url(), &urls, &registry, &[]);
        Net {
            peer_a,
            peer_b,
            relay,
            redis_a,
            redis_b,
            relay_redis,
            twin_a,
            twin_b,
            counters: Counters::default(),
            last_sample: Instant::now(),
            records: Vec::new(),
            watches: Vec::new(),
        }
    }

    fn kill(&mut self, target: Target) {
        match target {
            Target::Relay => self.relay.kill(),
            Target::PeerA => self.peer_a.kill(),
            Target::PeerB => self.peer_b.kill(),
            Target::RedisA => self.redis_a.kill(),
            Target::RedisB => self.redis_b.kill(),
            Target::RelayRedis => self.relay_redis.as_mut().expect("relay redis").kill(),
        }
    }

    fn relaunch(&mut self, target: Target) {
        match target {
            Target::Relay => self.relay.relaunch(),
            Target::PeerA => self.peer_a.relaunch(),
            Target::PeerB => self.peer_b.relaunch(),
            Target::RedisA => self.redis_a.relaunch(),
            Target::RedisB => self.redis_b.relaunch(),
            Target::RelayRedis => self.relay_redis.as_mut().expect("relay redis").relaunch(),
        }
    }

    /// Starts timing how long after its relaunch (at `relaunched`) the bus works again
    /// without `target`; [`Net::sample_until`] fills in the last crash record's
    /// `back_after`.
    fn watch_recovery(&mut self, target: Target, relaunched: Instant) {
        let back = match target {
            Target::Relay => Back::PeersConnected,
            // `relaunch` already waited for its status to report a connected relay.
            Target::PeerA | Target::PeerB | Target::RelayRedis => {
                if let Some(record) = self.records.last_mut() {
                    record.back_after = Some(0.0);
                }
                return;
            }
            Target::RedisA | Target::RedisB => {
                let url = if target == Target::RedisA {
                    self.redis_a.url()
                } else {
                    self.redis_b.url()
                };
                // The reloaded key may be a stale copy: wait for the peer to write it anew.
                let _ = Link::new(&url).cmd(&[b"DEL", STATUS.as_bytes()]);
                Back::StatusWritten(url)
            }
        };
        self.watches.push(Watch {
            record: self.records.len() - 1,
            back,
            since: relaunched,
        });
    }

    /// Fills in the recoveries that happened; forgets those not seen within 30 s.
    fn check_watches(&mut self) {
        let watches = std::mem::take(&mut self.watches);
        for watch in watches {
            let done = match &watch.back {
                Back::PeersConnected => [self.redis_a.url(), self.redis_b.url()]
                    .iter()
                    .all(|url| read_status(url).is_some_and(|s| connected(&s))),
                Back::StatusWritten(url) => read_status(url).is_some(),
            };
            if done {
                self.records[watch.record].back_after = Some(watch.since.elapsed().as_secs_f64());
            } else if watch.since.elapsed() < RECOVERY_LIMIT {
                self.watches.push(watch);
            }
        }
    }

    /// Reads both peers' counters.
    fn sample(&mut self) {
        self.last_sample = Instant::now();
        for (peer, url) in [("a", self.redis_a.url()), ("b", self.redis_b.url())] {
            if let Some(status) = read_status(&url) {
                self.counters.update(peer, &status);
            }
        }
    }

    /// Sleeps until `until`, sampling the counters about every second and checking
    /// pending recoveries every 50 ms.
    fn sample_until(&mut self, until: Instant) {
        loop {
            let now = Instant::now();
            if now >= until {
                return;
            }
            let step = if self.watches.is_empty() {
                Duration::from_secs(1)
            } else {
                Duration::from_millis(50)
            };
            std::thread::sleep((until - now).min(step));
            self.check_watches();
            if self.last_sample.elapsed() >= Duration::from_secs(1) {
                self.sample();
            }
        }
    }

    /// Lists and key sets that must be empty once every request is answered.
    fn leftovers(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for (name, url, own) in [
            ("A", self.redis_a.url(), [RET, RET_INFLIGHT]),
            ("B", self.redis_b.url(), [BOT_QUEUE, BOT_INFLIGHT]),
        ] {
            let mut link = Link::new(&url);
            let lists = [
                LOCAL,
                "msgbus.system.local.claimed",
                REPLY,
                "msgbus.system.reply.claimed",
            ];
            for list in lists.into_iter().chain(own) {
                let n = link.int(&[b"LLEN", list.as_bytes()]);
                out.push((format!("{name}:{list}"), n));
            }
            let n = link.count_keys("msgbus.outbox.*");
            out.push((format!("{name}:msgbus.outbox.* keys"), n));
        }
        out
    }

    /// End-of-run figures that are not expected to be zero.
    fn info(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let mut a = Link::new(&self.redis_a.url());
        out.push((
            "A backlog keys (expire by design)".into(),
            a.count_keys("msgbus.backlog.*"),
        ));
        for (peer, name) in [("a", "A"), ("b", "B")] {
            for field in &Counters::FIELDS[3..] {
                let n = self.counters.peer_total(peer, field);
                out.push((format!("{name} {field}"), n));
            }
        }
        if let Some(redis) = &self.relay_redis {
            let mut link = Link::new(&redis.url());
            let mut queued = 0;
            if let Ok(Reply::Array(keys)) = link.cmd(&[b"KEYS", b"rmb:relay:q:*"]) {
                for key in keys.iter().filter_map(Reply::bytes) {
                    queued += link.int(&[b"LLEN", key]);
                }
            }
            out.push(("relay redis queued envelopes".into(), queued));
        }
        out
    }
}
