//! The network-fault harness of issue #33: two federated relays and two peers, each in
//! its own network namespace, carrying RPCs, topic deliveries and `rmb pipe`
//! connections while packets are dropped, links partitioned, slowed, stalled or cut, or
//! a peer's clock is off; then every message is accounted for.
//!
//! - [`netns`]: the namespaces and their nftables drop rules (loss, partitions);
//! - [`proxy`]: a TCP proxy adding delay, a bandwidth cap, blackholes and cuts;
//! - [`fed`]: the processes (relay A with the registry and peer A, relay B and peer B);
//! - the loads: RPCs through the Redis API ([`crate::chaos::RpcLoad`], its client app
//!   and echo bot), [`topics`] and [`pipes`];
//! - [`run`] follows a [`Plan`]'s schedule of [`Step`]s, heals everything when sending
//!   ends, drains and returns a [`FaultReport`] ([`report`] prints it).

pub mod fed;
pub mod netns;
pub mod pipes;
pub mod proxy;
pub mod report;
pub mod topics;

use std::time::{Duration, Instant};

use crate::chaos::{self, RelayMode, RpcLoad};
pub use fed::{Fed, Setup};
pub use netns::PacketDrop;
use pipes::{PipeLoad, PipeReport};
pub use report::FaultReport;
use topics::{TopicLoad, TopicReport};

/// How long a sender behind its schedule may go on after the sending time is up.
const SENDER_GRACE: Duration = Duration::from_secs(10);
/// How long [`run`] keeps listening after the last answer, for late duplicates.
const AFTER_LAST: Duration = Duration::from_secs(2);

/// One change of the network during a run.
pub struct Step {
    /// When, from the first request.
    pub at: Duration,
    /// What it does, for the log.
    pub what: String,
    pub apply: Box<dyn Fn(&Fed) + Send>,
}

/// A step `at_secs` after the first request.
pub fn step(at_secs: f64, what: &str, apply: impl Fn(&Fed) + Send + 'static) -> Step {
    Step {
        at: Duration::from_secs_f64(at_secs),
        what: what.to_string(),
        apply: Box::new(apply),
    }
}

/// What one fault run does.
pub struct Plan {
    /// The fault's name, in the report.
    pub name: String,
    pub setup: Setup,
    /// How long RPCs, publishes and pipe rounds are started.
    pub duration: Duration,
    /// RPCs per second (A's client to B's echo bot).
    pub rpc_rate: u32,
    /// Publishes per second (B to A's topic, delivered back to B).
    pub topic_rate: u32,
    /// The RPCs' `exp` (seconds).
    pub exp: u64,
    /// The network's changes; everything is healed when sending ends.
    pub steps: Vec<Step>,
    /// Longest wait, after healing, for the missing answers and deliveries.
    pub drain: Duration,
}

impl Plan {
    /// A plan for `name`: 15 s of 20 RPC/s and 4 publishes/s, `exp` 120 s, 30 s drain.
    pub fn new(name: &str, setup: Setup) -> Plan {
        Plan {
            name: name.to_string(),
            setup,
            duration: Duration::from_secs(15),
            rpc_rate: 20,
            topic_rate: 4,
            exp: 120,
            steps: Vec::new(),
            drain: Duration::from_secs(30),
        }
    }
}

/// Runs `plan` once. `Err` is why it cannot run here (not root, no namespaces, no
/// libfaketime): the caller prints it and skips. Panics when a process cannot start.
pub fn run(plan: Plan) -> Result<FaultReport, String> {
    let began = Instant::now();
    let name = plan.name.clone();
    let log = |msg: &str| {
        let t = began.elapsed().as_secs_f64();
        eprintln!("[faults {name} +{t:5.1}s] {msg}");
    };
    log("starting namespaces, relays and peers");
    let fed = Fed::start(&plan.setup)?;
    log(&format!(
        "up: twin A {} on {}, twin B {} on {}",
        fed.twin_a,
        fed.relay_a.domain(),
        fed.twin_b,
        fed.relay_b.domain()
    ));
    let mut config = chaos::Config::new(RelayMode::Federated, plan.duration, plan.rpc_rate);
    config.exp = plan.exp;
    let mut rpcs = RpcLoad::start(&fed.redis_a.url(), &fed.redis_b.url(), fed.twin_b, &config);
    let start = rpcs.started();
    let mut topics = TopicLoad::start(&fed, plan.topic_rate, plan.duration, start);
    let pipes = PipeLoad::start(&fed, plan.duration, start);

    let mut timeline = Vec::new();
    let mut steps = plan.steps;
    steps.sort_by_key(|s| s.at);
    for step in &steps {
        sleep_until(start + step.at);
        log(&format!("fault: {}", step.what));
        (step.apply)(&fed);
        timeline.push((start.elapsed().as_secs_f64(), step.what.clone()));
    }
    sleep_until(start + plan.duration);
    heal(&fed);
    timeline.push((start.elapsed().as_secs_f64(), "healed".to_string()));
    log("sending time over; network healed");
    let grace = Instant::now() + SENDER_GRACE;
    while !(rpcs.sender_finished() && topics.publisher_finished()) && Instant::now() < grace {
        std::thread::sleep(Duration::from_millis(100));
    }
    let sent = rpcs.stop_sending();
    topics.stop();
    let send_secs = start.elapsed().as_secs_f64();
    log(&format!("{send_secs:.1}s: {sent} RPCs sent; draining"));

    let drain_start = Instant::now();
    while drain_start.elapsed() < plan.drain
        && !(rpcs.answered() == sent && topics.missing() == 0 && pipes.finished())
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let drain_secs = drain_start.elapsed().as_secs_f64();
    std::thread::sleep(AFTER_LAST);
    let rpc = rpcs.finish(RelayMode::Federated, plan.rpc_rate, send_secs, drain_secs);
    let topic: TopicReport = topics.report();
    let pipe: PipeReport = pipes.finish();
    log(&format!("drained in {drain_secs:.1}s; report ready"));
    Ok(FaultReport {
        name: plan.name,
        rpc,
        topics: topic,
        pipes: pipe,
        timeline,
        dropped_packets: fed.dropped(),
        proxy_connections: fed
            .proxies
            .as_ref()
            .map_or_else(Vec::new, |p| p.all().iter().map(|p| p.accepted()).collect()),
    })
}

/// Removes every drop rule and resets every proxy to a plain relay of bytes.
fn heal(fed: &Fed) {
    fed.heal();
    if let Some(proxies) = &fed.proxies {
        for proxy in proxies.all() {
            proxy.set_blackhole(false);
            proxy.set_delay(Duration::ZERO, Duration::ZERO);
            proxy.set_rate(0);
        }
    }
}

fn sleep_until(at: Instant) {
    if let Some(wait) = at.checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
}
