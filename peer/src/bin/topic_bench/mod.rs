//! The topic benchmark: set-up, the rmb measurement, and the table.
//!
//! - `processes`: relays, redis-servers and nats-server;
//! - `nats`: NATS core pub/sub measured the same way;
//! - `stats`: percentiles;
//! - `tally`: where subscribers note deliveries.

pub mod nats;
pub mod processes;
pub mod stats;
pub mod tally;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use futures_util::{StreamExt, stream};
use rmb_identity::registry::cache::{DEFAULT_CAPACITY, DEFAULT_TTL};
use rmb_identity::registry::{CachedRegistry, Registry, RegistryChoice, connect};
use rmb_identity::{E2eScheme, Identity, KeyType};
use rmb_peer::core::{Peer, PeerConfig};
use rmb_peer::topics::config::TopicConfig;
use rmb_peer::topics::wire::{Draft, TopicName};
use rmb_peer::topics::{Topics, TopicsOptions};
use tokio::task::JoinSet;

use crate::bench_common::register;
use processes::{Children, Scratch, relay_binary};
use stats::{ClosedLoop, Figures, percentile};
use tally::Tally;

/// Bytes per message.
pub const PAYLOAD: usize = 256;
/// Publishes in flight at once during a burst.
pub const PUBLISH_WINDOW: usize = 32;

/// Publish → subscriber latency and throughput of topics, beside NATS.
#[derive(Parser, Debug)]
#[command(name = "topic-bench")]
pub struct Args {
    /// Subscriber counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
    pub subscribers: Vec<usize>,
    /// Messages sent one at a time (each waits for every subscriber) for p50/p99.
    #[arg(long, default_value_t = 100)]
    pub closed_loop: usize,
    /// Deliveries aimed at per burst (messages = this / subscribers, at least 200).
    #[arg(long, default_value_t = 20_000)]
    pub burst_deliveries: usize,
    /// The rmb-relay binary (default: next to this one).
    #[arg(long, value_name = "PATH")]
    pub relay_bin: Option<PathBuf>,
    /// Relay paths to measure: 1 (owner and subscribers on one relay), 2 (across two
    /// federated relays).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub relays: Vec<u8>,
    /// Skip NATS.
    #[arg(long)]
    pub no_nats: bool,
    /// One more flag for every relay (repeatable), e.g. `--relay-arg=--federation-batch=0`
    /// to compare with one federation POST per envelope.
    #[arg(long, value_name = "FLAG", allow_hyphen_values = true)]
    pub relay_arg: Vec<String>,
    /// Threads of each of this process's two runtimes: one runs the topic owner's peer
    /// and its app (the publisher), the other every subscriber's peer and app, as
    /// separate programs would (0: one per CPU core, as `rmb-peer` by default).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub threads: u16,
    /// Threads of each relay (`rmb-relay --threads`; 0: one per CPU core, its default).
    ///
    /// Both default to 1 because everything shares this machine: with one thread per
    /// core in each runtime, 2 cores ran 8 runtime threads besides Redis, and their
    /// waking each other cost a sixth of the CPU per delivery. Deployed, each relay and
    /// peer has a machine of its own; `--threads 0 --relay-threads 0` measures the
    /// binaries' defaults here.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub relay_threads: u16,
}

impl Args {
    /// Flags every relay gets: `--threads`, then `--relay-arg`s.
    fn relay_flags(&self) -> Vec<String> {
        let mut flags = vec!["--threads".to_string(), self.relay_threads.to_string()];
        flags.extend(self.relay_arg.iter().cloned());
        flags
    }
}

/// How much one configuration sends.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub subscribers: usize,
    pub closed_loop: usize,
    pub burst: usize,
}

/// One row of the table.
struct Row {
    system: &'static str,
    path: &'static str,
    subscribers: usize,
    figures: Figures,
}

/// Runs every configuration and prints the table.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let relay_bin = relay_binary(&args.relay_bin)?;
    let relay_flags = args.relay_flags();
    let scratch = Scratch::new()?;
    let mut rows = Vec::new();
    let mut nats_port = None;
    let mut children = Children::default();
    if !args.no_nats {
        nats_port = Some(children.nats()?);
    }
    for &n in &args.subscribers {
        let plan = Plan {
            subscribers: n,
            closed_loop: args.closed_loop,
            burst: (args.burst_deliveries / n.max(1)).max(200),
        };
        for two_relays in [false, true] {
            if !args.relays.contains(&(1 + u8::from(two_relays))) {
                continue;
            }
            let path = if two_relays { "2 relays" } else { "1 relay" };
            eprintln!("rmb topics, {n} subscriber(s), {path}...");
            let figures = measure_rmb(
                &relay_bin,
                &relay_flags,
                scratch.path(),
                plan,
                two_relays,
                args.threads,
            )
            .await?;
            rows.push(Row {
                system: "rmb topics (e2e encrypted)",
                path,
                subscribers: n,
                figures,
            });
        }
        if let Some(port) = nats_port {
            eprintln!("nats core, {n} subscriber(s)...");
            let figures = nats::measure(port, &plan).await?;
            rows.push(Row {
                system: "NATS core (plain)",
                path: "1 server",
                subscribers: n,
                figures,
            });
        }
    }
    print_table(&rows, &args);
    Ok(())
}

/// "1" or "one per core" for a `--threads` value.
fn threads(n: u16) -> String {
    if n == 0 {
        "one per core".into()
    } else {
        n.to_string()
    }
}

fn print_table(rows: &[Row], args: &Args) {
    println!();
    println!(
        "| system | path | subscribers | p50 ms | p99 ms | CPU µs/delivery | first / last p50 ms | steal % | burst deliveries/s | burst p50 ms | burst p99 ms | burst pulls / duplicates |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let f = &r.figures;
        let missing = if f.missing > 0 {
            format!(" ({} missing)", f.missing)
        } else {
            String::new()
        };
        let cpu = if f.cpu_us > 0.0 {
            format!("{:.0}", f.cpu_us)
        } else {
            "–".into()
        };
        let steal = f.steal.map_or_else(|| "–".into(), |s| format!("{s:.0}"));
        let pulls = f
            .burst_pulls_duplicates
            .map_or_else(|| "–".into(), |(p, d)| format!("{p} / {d}"));
        println!(
            "| {} | {} | {} | {:.2} | {:.2} | {cpu} | {:.2} / {:.2} | {steal} | {:.0}{missing} | {:.1} | {:.1} | {pulls} |",
            r.system,
            r.path,
            r.subscribers,
            f.p50,
            f.p99,
            f.first_p50,
            f.last_p50,
            f.rate,
            f.burst_p50,
            f.burst_p99
        );
    }
    println!();
    println!(
        "p50/p99: one {PAYLOAD}-byte message at a time, publish call → each subscriber's app sees it. \
         Burst: messages published back to back ({PUBLISH_WINDOW} publishes in flight for rmb, \
         NATS writes them in a row); deliveries/s counts every subscriber's copy. \
         CPU µs/delivery: user + system time of the bench (all peers), relays and Redis \
         during the one-at-a-time run, per delivery (10 ms clock ticks: a rough figure). \
         First / last: p50 over messages of each message's first and last delivery. \
         Steal: the machine's CPU time the hypervisor took during the one-at-a-time run \
         (this VM's slow spells; NATS runs in the same spell as the rmb rows above it). \
         Pulls / duplicates: what the subscribers asked the owner for, and received twice, \
         during the burst (0 / 0 when no push was lost or dropped on the way). \
         Threads: {} for the owner's peer and {0} for all subscribers' peers (`--threads`), \
         {} per relay (`--relay-threads`).",
        threads(args.threads),
        threads(args.relay_threads)
    );
}

/// One in-process peer with topics.
struct Node {
    peer: Peer,
    topics: Topics,
}

async fn start_node(
    secret: &str,
    relay_url: &str,
    registry: Arc<dyn Registry>,
    redis: &str,
    prefix: &str,
    drains: &mut JoinSet<()>,
) -> anyhow::Result<Node> {
    let identity = Arc::new(Identity::from_secret(secret, KeyType::Sr25519)?);
    let config = PeerConfig {
        identity,
        relays: vec![relay_url.to_string()],
        registry: Arc::clone(&registry),
        sid: None,
        e2e: Some(E2eScheme::X25519),
        update_twin: true,
        reliable: true,
        app_dedupes: false,
        max_lifetime: rmb_proto::DEFAULT_MAX_LIFETIME_SECS,
        rmb_twins: Default::default(),
        unsigned_rpc: true,
    };
    let (peer, inbound) = Peer::start(config).await?;
    let mut options = TopicsOptions::new(redis);
    options.prefix = prefix.to_string();
    options.registry = Some(registry);
    let (topics, mut rest) = Topics::start(peer.clone(), inbound, options).await?;
    // Nothing but topic traffic is expected; whatever else comes is dropped.
    drains.spawn(async move { while rest.recv().await.is_some() {} });
    if !peer.wait_connected(Duration::from_secs(20)).await {
        bail!("a peer did not connect to {relay_url}");
    }
    Ok(Node { peer, topics })
}

/// A runtime of `threads` threads (0: one per CPU core) that can be dropped in async
/// code: the owner's peer runs on one of its own, as a program of its own would, rather
/// than taking turns with the subscribers' peers.
pub struct Runtime(Option<tokio::runtime::Runtime>);

impl Runtime {
    pub fn new(threads: u16) -> anyhow::Result<Self> {
        Ok(Runtime(Some(rmb_peer::runtime::build(threads)?)))
    }
}

impl std::ops::Deref for Runtime {
    type Target = tokio::runtime::Runtime;

    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("dropped only once")
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// The owner's app: publishes on the owner's runtime, as a program of its own would.
#[derive(Clone)]
struct Publisher {
    topics: Topics,
    topic: TopicName,
    tally: Arc<Tally>,
    plan: Plan,
}

impl Publisher {
    /// One message at a time, each waiting for every subscriber: their latencies, and
    /// the last id.
    async fn closed_loop(self) -> anyhow::Result<(ClosedLoop, u64)> {
        let mut sent: HashMap<u64, Instant> = HashMap::with_capacity(self.plan.closed_loop);
        let mut last_id = 0;
        let mut closed = ClosedLoop::default();
        for _ in 0..self.plan.closed_loop {
            // Closed loop: only the message just published is above the floor.
            self.tally.start(last_id);
            let t0 = Instant::now();
            last_id = self.topics.publish(&self.topic, draft()).await?.id;
            sent.insert(last_id, t0);
            if !self
                .tally
                .wait_for(self.plan.subscribers, Duration::from_secs(30))
                .await
            {
                bail!("a subscriber did not get message {last_id} within 30 s");
            }
            // Sorted out once the message is everywhere: no cost while it travels.
            closed.message(
                self.tally
                    .take()
                    .iter()
                    .filter_map(|d| sent.get(&d.id).map(|t0| d.at - *t0)),
            );
        }
        Ok((closed, last_id))
    }

    /// Publishes with up to [`PUBLISH_WINDOW`] in flight, as an app with a few HTTP
    /// connections would: when each id was published, and when the burst started.
    async fn burst(self) -> anyhow::Result<(HashMap<u64, Instant>, Instant)> {
        let t0 = Instant::now();
        let published: Vec<anyhow::Result<(u64, Instant)>> = stream::iter(0..self.plan.burst)
            .map(|_| {
                let (topics, topic) = (&self.topics, &self.topic);
                async move {
                    let at = Instant::now();
                    Ok((topics.publish(topic, draft()).await?.id, at))
                }
            })
            .buffer_unordered(PUBLISH_WINDOW)
            .collect()
            .await;
        let mut sent = HashMap::with_capacity(self.plan.burst);
        for result in published {
            let (id, at) = result?;
            sent.insert(id, at);
        }
        Ok((sent, t0))
    }
}

/// Pulls the subscribers asked of owners so far, and messages they received twice.
fn pulls_and_duplicates(subs: &[Node]) -> (u64, u64) {
    subs.iter()
        .map(|s| s.topics.counters())
        .fold((0, 0), |(p, d), c| (p + c.pulls, d + c.duplicates))
}

/// A message of [`PAYLOAD`] bytes.
fn draft() -> Draft {
    Draft::from_bytes(vec![b'x'; PAYLOAD])
}

/// Measures topics for `plan`: the owner (publisher) on relay 1, subscribers on relay 1
/// or, with `two_relays`, on relay 2.
async fn measure_rmb(
    relay_bin: &std::path::Path,
    relay_args: &[String],
    dir: &std::path::Path,
    plan: Plan,
    two_relays: bool,
    threads: u16,
) -> anyhow::Result<Figures> {
    let mut children = Children::default();
    let r1 = children.relay(relay_bin, relay_args, dir, None)?;
    let registry_url = format!("http://{r1}");
    let r2 = if two_relays {
        children.relay(relay_bin, relay_args, dir, Some(&registry_url))?
    } else {
        r1.clone()
    };
    let owner_redis = children.redis(dir)?;
    let subs_redis = children.redis(dir)?;
    let backend = connect(&RegistryChoice::Embedded {
        url: registry_url.clone(),
    })
    .await?;
    let registry: Arc<dyn Registry> = CachedRegistry::new(backend, DEFAULT_TTL, DEFAULT_CAPACITY);

    let mut drains = JoinSet::new();
    register(&registry_url, "//TopicBenchOwner", &r1).await?;
    let owner_rt = Runtime::new(threads)?;
    let owner = {
        let (registry, owner_redis, r1) = (Arc::clone(&registry), owner_redis.clone(), r1.clone());
        owner_rt
            .spawn(async move {
                let mut drains = JoinSet::new();
                let node = start_node(
                    "//TopicBenchOwner",
                    &format!("ws://{r1}/"),
                    registry,
                    &owner_redis,
                    "owner.",
                    &mut drains,
                )
                .await?;
                drains.detach_all();
                anyhow::Ok(node)
            })
            .await??
    };
    let mut subs = Vec::with_capacity(plan.subscribers);
    for i in 0..plan.subscribers {
        let secret = format!("//TopicBenchSub{i}");
        register(&registry_url, &secret, &r2).await?;
        let node = start_node(
            &secret,
            &format!("ws://{r2}/"),
            Arc::clone(&registry),
            &subs_redis,
            &format!("s{i}."),
            &mut drains,
        )
        .await?;
        subs.push(node);
    }
    let config = TopicConfig {
        retention_count: 1_000_000,
        ..TopicConfig::default()
    };
    owner.topics.configure("bench", config).await?;
    let topic = TopicName::new(owner.peer.twin_id(), "bench")?;
    for s in &subs {
        s.topics.subscribe(&topic, None, false).await?;
    }

    // Every subscriber's deliveries, as its apps see them.
    let tally = Arc::new(Tally::default());
    let mut listeners = JoinSet::new();
    for s in &subs {
        let mut events = s.topics.events();
        let tally = Arc::clone(&tally);
        listeners.spawn(async move {
            while let Ok(event) = events.recv().await {
                tally.note(event.id);
            }
        });
    }
    let mut figures = Figures::default();
    let publisher = Publisher {
        topics: owner.topics.clone(),
        topic,
        tally: Arc::clone(&tally),
        plan,
    };
    let cpu_before = children.cpu_times();
    let machine_before = processes::machine_ticks();
    let (closed, last_id) = owner_rt.spawn(publisher.clone().closed_loop()).await??;
    let cpu = processes::cpu_seconds_since(&cpu_before, &children.cpu_times());
    figures.steal = Some(processes::steal_percent(
        machine_before,
        processes::machine_ticks(),
    ));
    figures.cpu_us = cpu * 1e6 / closed.deliveries().max(1) as f64;
    closed.finish(&mut figures);

    tally.start(last_id);
    let before = pulls_and_duplicates(&subs);
    let expected = plan.burst * plan.subscribers;
    let (sent, t0) = owner_rt.spawn(publisher.burst()).await??;
    tally.wait_for(expected, Duration::from_secs(120)).await;
    let mut lat = Vec::with_capacity(expected);
    let mut last = t0;
    for d in tally.take() {
        if let Some(at) = sent.get(&d.id) {
            last = last.max(d.at);
            lat.push(d.at - *at);
        }
    }
    figures.missing = expected.saturating_sub(lat.len());
    figures.rate = lat.len() as f64 / (last - t0).as_secs_f64().max(1e-9);
    figures.burst_p50 = percentile(&mut lat, 0.5);
    figures.burst_p99 = percentile(&mut lat, 0.99);
    let (pulls, duplicates) = pulls_and_duplicates(&subs);
    figures.burst_pulls_duplicates = Some((pulls - before.0, duplicates - before.1));

    for node in subs.iter().chain(std::iter::once(&owner)) {
        node.peer.shutdown().await;
        node.topics.shutdown().await;
    }
    listeners.shutdown().await;
    drains.shutdown().await;
    Ok(figures)
}
