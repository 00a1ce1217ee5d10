//! The soak of issue #33: the whole mix for a long time across two federating relays,
//! with kills and stalls on a schedule, then the accounting and the processes' memory
//! and open files.
//!
//! Built on the chaos harness ([`crate::chaos`]): the same processes (relay A, which
//! hosts the registry, and relay B, federating; twin A's and twin B's `rmb-peer`, each on
//! its own durable Redis, here with their HTTP APIs on) and the same RPC apps (a client
//! on A's Redis calling an echo bot on B's through the Redis API). Beside them:
//! - topics ([`topics`]): an app publishes to twin B's topic through A's HTTP API, and
//!   A's peer is subscribed with Redis-list delivery: checked for gaps and repeats;
//! - pipes ([`pipes`]): `rmb pipe listen` / `rmb pipe connect` transfers, alternating
//!   direction: bytes checked.
//!
//! The schedule SIGKILLs and relaunches relays, peers and Redis servers in turn, and
//! between two kills SIGSTOPs a relay or a peer for a few seconds (a stall, as a
//! partition looks to the others) before SIGCONT. Memory and open files are sampled
//! every [`SAMPLE_EVERY`] ([`resources`]).

mod backlog;
pub mod http;
pub mod pipes;
mod report;
pub mod resources;
mod schedule;
pub mod topics;

use std::process::Command;
use std::time::{Duration, Instant};

use crate::chaos::net::Net;
use crate::chaos::{Config, RelayMode, RpcLoad};
pub use pipes::{PipeReport, PipeSettings};
pub use report::{PauseRecord, SoakReport};
pub use resources::Bounds;
use resources::Resources;
pub use schedule::{Event, schedule};
pub use topics::TopicReport;

/// How often memory and open files are read.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// How often progress is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(60);
/// How long the soak keeps listening after the drain, for late duplicates.
const AFTER_LAST: Duration = Duration::from_secs(3);

/// What one soak does.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// How long requests, publishes and transfers are started.
    pub duration: Duration,
    /// RPCs per second.
    pub rpc_rate: u32,
    /// Topic publishes per second.
    pub topic_rate: u32,
    /// The pipe transfers.
    pub pipes: PipeSettings,
    /// Kills and stalls, in time order (see [`schedule`]).
    pub events: Vec<Event>,
    /// The RPCs' `exp` (seconds).
    pub exp: u64,
    /// Longest wait for what is still missing once sending stops.
    pub drain: Duration,
    /// Memory and open-file bounds of the verdict.
    pub bounds: Bounds,
    /// Print progress to stderr.
    pub verbose: bool,
}

/// Runs the soak once and returns its accounting. Panics when a process cannot be
/// (re)started or the topic cannot be set up.
pub fn run(config: &SoakConfig) -> SoakReport {
    let began = Instant::now();
    let log = |msg: String| {
        if config.verbose {
            eprintln!("[soak +{:7.1}s] {msg}", began.elapsed().as_secs_f64());
        }
    };
    log("starting two federating relays, registering twins, starting peers".into());
    let mut net = Net::start(RelayMode::Federated, true);
    log(format!(
        "up: relay A {}, relay B {}, twin A {} (redis {}, api {}), twin B {} (redis {}, api {})",
        net.relay.domain(),
        net.relay_b.as_ref().map(|r| r.domain()).unwrap_or_default(),
        net.twin_a,
        net.redis_a.url(),
        net.http_a.as_deref().unwrap_or(""),
        net.twin_b,
        net.redis_b.url(),
        net.http_b.as_deref().unwrap_or(""),
    ));
    topics::setup(&net).unwrap_or_else(|e| panic!("topic setup: {e}"));
    log(format!(
        "topic {}/soak created, twin A subscribed",
        net.twin_b
    ));

    let mut rpc_config = Config::new(RelayMode::Federated, config.duration, config.rpc_rate);
    rpc_config.exp = config.exp;
    rpc_config.drain = config.drain;
    rpc_config.verbose = config.verbose;
    let mut rpc = RpcLoad::start(
        &net.redis_a.url(),
        &net.redis_b.url(),
        net.twin_b,
        &rpc_config,
    );
    let start = rpc.started();
    let mut topics = topics::TopicLoad::start(&net, config.topic_rate, config.duration, start);
    let mut pipes = pipes::PipeLoad::start(&net, config.pipes, config.verbose);
    let mut res = Resources::new(start, &net);
    res.sample(&net);
    let mut backlogs = backlog::Backlogs::new(&net);
    let mut clock = Clock {
        last_progress: Instant::now(),
        last_sample: Instant::now(),
        backlogs: &mut backlogs,
    };
    let progress = |rpc: &RpcLoad, topics: &topics::TopicLoad, pipes: &pipes::PipeLoad| {
        let (published, delivered) = topics.progress();
        let (transfers, intact) = pipes.progress();
        log(format!(
            "rpc sent {} answered {}; topic published {published} delivered {delivered}; \
             pipes {transfers} ({intact} intact)",
            rpc.sent(),
            rpc.answered()
        ));
    };

    let mut pauses = Vec::new();
    for event in &config.events {
        clock.step_until(&mut net, &mut res, start + event.at(), &mut || {
            progress(&rpc, &topics, &pipes)
        });
        match *event {
            Event::Kill(crash) => {
                if net.pid(crash.target).is_none() {
                    continue;
                }
                net.crash(crash, start, &log);
                res.sample(&net);
            }
            Event::Pause { target, secs, .. } => {
                let Some(pid) = net.pid(target) else { continue };
                let at = start.elapsed().as_secs_f64();
                log(format!(
                    "send time {at:5.1}s: SIGSTOP {target} for {secs:.0}s"
                ));
                signal("-STOP", pid);
                net.sample_until(Instant::now() + Duration::from_secs_f64(secs));
                signal("-CONT", pid);
                let held = start.elapsed().as_secs_f64() - at;
                log(format!("{target} resumed (SIGCONT) after {held:.1}s"));
                pauses.push(PauseRecord {
                    target,
                    at,
                    secs: held,
                });
            }
        }
    }
    clock.step_until(&mut net, &mut res, start + config.duration, &mut || {
        progress(&rpc, &topics, &pipes)
    });
    net.finish_sending(&mut rpc);
    let send_secs = start.elapsed().as_secs_f64();
    topics.stop_publishing();
    log("sending over; waiting for the pipe transfer under way".into());
    pipes.stop();
    progress(&rpc, &topics, &pipes);

    let drain_start = Instant::now();
    let deadline = drain_start + config.drain;
    while Instant::now() < deadline && !(rpc.answered() == rpc.sent() && topics.caught_up()) {
        clock.step_until(
            &mut net,
            &mut res,
            Instant::now() + Duration::from_millis(200),
            &mut || progress(&rpc, &topics, &pipes),
        );
    }
    let drain_secs = drain_start.elapsed().as_secs_f64();
    log(format!("drain over after {drain_secs:.1}s"));
    clock.step_until(&mut net, &mut res, Instant::now() + AFTER_LAST, &mut || {});
    progress(&rpc, &topics, &pipes);
    let mut rpc_report = rpc.finish(rpc_config.relay, rpc_config.rate, send_secs, drain_secs);
    topics.stop();
    res.sample(&net);
    net.sample();
    net.complete(&mut rpc_report);
    let backlogs = clock.backlogs.maxima();
    SoakReport {
        duration: config.duration,
        rpc_rate: config.rpc_rate,
        topic_rate: config.topic_rate,
        rpc: rpc_report,
        topics: topics.report(),
        pipes: pipes.report(),
        pauses,
        resources: res.procs,
        backlogs,
        bounds: config.bounds,
    }
}

/// The soak's idle loop: sleeps in small steps, sampling the peers' counters (through
/// [`Net::sample_until`]), memory and open files, and printing progress now and then.
struct Clock<'a> {
    last_progress: Instant,
    last_sample: Instant,
    backlogs: &'a mut backlog::Backlogs,
}

impl Clock<'_> {
    fn step_until(
        &mut self,
        net: &mut Net,
        res: &mut Resources,
        until: Instant,
        progress: &mut dyn FnMut(),
    ) {
        loop {
            let now = Instant::now();
            if now >= until {
                return;
            }
            net.sample_until((now + SAMPLE_EVERY).min(until));
            if self.last_sample.elapsed() >= SAMPLE_EVERY {
                self.last_sample = Instant::now();
                res.sample(net);
                self.backlogs.sample();
            }
            if self.last_progress.elapsed() >= PROGRESS_EVERY {
                self.last_progress = Instant::now();
                progress();
            }
        }
    }
}

/// Sends `sig` (`-STOP`, `-CONT`) to `pid`.
fn signal(sig: &str, pid: u32) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}
