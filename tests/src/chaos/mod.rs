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
use serde_json::{Value, json};

use crate::peer_process::PeerProcess;
use crate::peer_process::resp::{Reply, Resp};
use crate::redis_server::{RedisServer, free_port};
use crate::relay_process::RelayProcess;

pub(crate) mod apps;
pub(crate) mod counters;
pub(crate) mod load;
pub(crate) mod net;
mod report;

use apps::*;
use counters::*;
pub use load::{RpcLoad, leftovers};
pub(crate) use net::*;
pub use report::Report;

/// How long a sender behind its schedule may go on after the sending time is up.
const SENDER_GRACE: Duration = Duration::from_secs(10);
/// The command the echo bot serves.
pub const COMMAND: &str = "chaos.echo";
/// The list the client reads its responses from (its `ret`).
pub const RET: &str = "chaos.ret";
/// Where the client's reader keeps the response it is busy with.
const RET_INFLIGHT: &str = "chaos.ret.inflight";
/// The bot's request queue, `msgbus.<COMMAND>`.
pub(crate) const BOT_QUEUE: &str = "msgbus.chaos.echo";
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
    /// Two federating in-memory relays: peer A on the first (which hosts the registry),
    /// peer B on the second, so every envelope crosses both.
    Federated,
}

impl fmt::Display for RelayMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RelayMode::Memory => "memory",
            RelayMode::Redis => "redis",
            RelayMode::Federated => "federated",
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
    /// The second relay, peer B's (only with [`RelayMode::Federated`]).
    RelayB,
}

impl Target {
    /// Every target, in the order the long run cycles through them.
    pub const ALL: [Target; 7] = [
        Target::Relay,
        Target::PeerA,
        Target::PeerB,
        Target::RedisB,
        Target::RelayRedis,
        Target::RedisA,
        Target::RelayB,
    ];

    /// Whether a run with `mode` has this process.
    pub fn applies_to(self, mode: RelayMode) -> bool {
        match self {
            Target::RelayRedis => mode == RelayMode::Redis,
            Target::RelayB => mode == RelayMode::Federated,
            _ => true,
        }
    }

    /// The name used on command lines and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Target::Relay => "relay",
            Target::PeerA => "peer-a",
            Target::PeerB => "peer-b",
            Target::RedisA => "redis-a",
            Target::RedisB => "redis-b",
            Target::RelayRedis => "relay-redis",
            Target::RelayB => "relay-b",
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
    let mut net = Net::start(config.relay, false);
    log(format!(
        "up: relay on {}, twin A {} (redis {}), twin B {} (redis {})",
        net.relay.domain(),
        net.twin_a,
        net.redis_a.url(),
        net.twin_b,
        net.redis_b.url()
    ));

    let mut load = RpcLoad::start(&net.redis_a.url(), &net.redis_b.url(), net.twin_b, config);
    let start = load.started();

    // The schedule; meanwhile the peers' counters are sampled and recoveries timed.
    let mut crashes = config.crashes.clone();
    crashes.sort_by_key(|c| c.at);
    for crash in crashes {
        if !crash.target.applies_to(config.relay) {
            log(format!(
                "skipping {}: not part of a {} run",
                crash.target, config.relay
            ));
            continue;
        }
        net.sample_until(start + crash.at);
        net.crash(crash, start, &log);
    }
    net.sample_until(start + config.duration);
    let sent = net.finish_sending(&mut load);
    let send_secs = start.elapsed().as_secs_f64();
    log(format!("{send_secs:6.1}s sent {sent} requests; draining"));

    // Drain: until every request has an answer, or the drain time is up.
    let drain_start = Instant::now();
    let deadline = drain_start + config.drain;
    let mut last_progress = Instant::now();
    let mut answered = 0;
    while Instant::now() < deadline {
        let now_answered = load.answered();
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
        sent - load.answered()
    ));
    // Late duplicates and the bot's last replies.
    net.sample_until(Instant::now() + AFTER_LAST);
    let mut report = load.finish(config.relay, config.rate, send_secs, drain_secs);
    log("client and bot stopped".into());
    net.sample();
    net.complete(&mut report);
    log("report ready".into());
    report
}
