//! The benchmark itself: set-up ([`processes`]), the echo bot ([`bot`]), the load
//! ([`load`]), the CPU it cost ([`cpu`]), the Redis commands it ran ([`redis_stats`]) and
//! the report ([`report`]); `--overload` runs [`overload`] instead.

pub mod app_conn;
pub mod bot;
pub mod cpu;
pub mod load;
pub mod overload;
pub mod processes;
pub mod redis_stats;
pub mod report;

use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use processes::Network;
use report::{Report, Setup};

/// Measure RPC/s and latency of calls through relay + two peers + Redis + an echo bot.
#[derive(Parser, Debug)]
#[command(name = "peer-bench")]
pub struct Args {
    /// Seconds each (clients, payload) measurement runs.
    #[arg(long, default_value_t = 5)]
    pub duration: u64,

    /// Concurrent clients to measure with (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "1,16,128")]
    pub clients: Vec<usize>,

    /// Payload sizes in bytes (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "256,65536")]
    pub sizes: Vec<usize>,

    /// Requests pushed at once in the burst test (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    pub burst: usize,

    /// Echo bot workers (each its own Redis connection, like several service processes).
    #[arg(long, default_value_t = 8)]
    pub bot_workers: usize,

    /// Delivery modes to compare (comma separated): `reliable` (the default of rmb-peer:
    /// resends, reply cache, crash-safe Redis records) and `at-most-once`
    /// (`rmb-peer --at-most-once`, as rmb-rs). Each gets its own fresh network.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "reliable,at-most-once"
    )]
    pub delivery: Vec<Delivery>,

    /// Topologies to compare (comma separated): `one-relay` (both peers on one relay) and
    /// `federated` (peer A on relay 1, which hosts the registry, peer B on relay 2; the
    /// relays federate). Each (delivery, topology) gets its own fresh network.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "one-relay,federated"
    )]
    pub topology: Vec<Topology>,

    /// Measure overload instead: a bot serving at most this many requests per second
    /// is offered --overload-factor times as many for --overload-secs; prints what was
    /// answered in time, errors and their latency, waits and the bot's work on expired
    /// requests (0: the normal rows).
    #[arg(long, default_value_t = 0, value_name = "REQ_PER_SEC")]
    pub overload: u64,

    /// Offered load of --overload, as a multiple of the bot's capacity.
    #[arg(long, default_value_t = 2.0)]
    pub overload_factor: f64,

    /// How long the --overload load lasts, in seconds.
    #[arg(long, default_value_t = 60)]
    pub overload_secs: u64,

    /// Validity (`exp`, seconds) of each --overload request.
    #[arg(long, default_value_t = 30)]
    pub overload_exp: u64,

    /// Threads of each rmb-peer (`rmb-peer --threads`; 0: one per CPU core, its default).
    ///
    /// Both this and --relay-threads default to 1 because every process shares this
    /// machine: two Redis servers, the relay, two peers and the apps on 2 cores. With one
    /// thread per core in each, threads waking each other cost the peers about a fifth
    /// of their CPU per call (`--threads 0 --relay-threads 0` measures the binaries'
    /// defaults, as a deployment with a machine per process would run them).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub threads: u16,

    /// Threads of each rmb-relay (`rmb-relay --threads`; 0: one per CPU core, its
    /// default).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub relay_threads: u16,

    /// Threads of this bench's own runtime, which runs the clients and the echo bot
    /// (0: one per CPU core). One, as for the rmb processes: its clients and bot are the
    /// apps of the measured system, and on a machine shared by seven busy processes two
    /// threads cost them about a fifth more CPU per call for nothing.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub bench_threads: u16,

    /// Apps and peers reach their Redis over its unix socket instead of TCP on loopback
    /// (what a peer sharing a machine with its Redis and apps can do: `--redis
    /// redis+unix:///path/to/redis.sock`).
    #[arg(long)]
    pub redis_unix: bool,

    /// Extra flags for both rmb-peer processes (e.g. `--peer-arg=--queue-wait-target-ms=0`;
    /// repeat for several).
    #[arg(long = "peer-arg", value_name = "FLAG", allow_hyphen_values = true)]
    pub peer_args: Vec<String>,

    /// Also print, for every row and burst, the commands each Redis server ran per call
    /// (calls and µs, from `INFO commandstats`).
    #[arg(long)]
    pub redis_commands: bool,

    /// rmb-relay binary (default: next to this one; built when missing).
    #[arg(long)]
    pub relay_bin: Option<std::path::PathBuf>,

    /// rmb-peer binary (default: next to this one; built when missing).
    #[arg(long)]
    pub peer_bin: Option<std::path::PathBuf>,
}

/// How the peers under test deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Delivery {
    Reliable,
    AtMostOnce,
}

impl Delivery {
    fn name(self) -> &'static str {
        match self {
            Delivery::Reliable => "reliable",
            Delivery::AtMostOnce => "at-most-once",
        }
    }
}

/// Where the peers' relays are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Topology {
    /// Both peers on one relay.
    OneRelay,
    /// Each peer on its own relay; the relays federate.
    Federated,
}

impl Topology {
    fn name(self) -> &'static str {
        match self {
            Topology::OneRelay => "one-relay",
            Topology::Federated => "federated",
        }
    }
}

/// Runs every measurement for every delivery mode and topology and prints the tables.
pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.overload > 0 {
        return run_overload(&args).await;
    }
    let mut report = Report::new(args.redis_commands);
    report.header();
    for &delivery in &args.delivery {
        for &topology in &args.topology {
            let setup = Setup { delivery, topology };
            run_setup(&args, setup, &mut report).await?;
        }
    }
    report.finish();
    Ok(())
}

/// One (delivery, topology): a fresh network, the table rows, then the burst.
async fn run_setup(args: &Args, setup: Setup, report: &mut Report) -> anyhow::Result<()> {
    let net = Network::start(args, setup.delivery, setup.topology)
        .await
        .context("starting the network")?;
    let bots = bot::start(&net.redis_b, args.bot_workers).await?;
    eprintln!(
        "peer-bench ({}, {}): relays {} · Redis {} and {} · peer A twin {} · peer B twin {} · {} bot workers · {} s per row · threads: peers {}, relays {}, bench {}",
        setup.delivery.name(),
        setup.topology.name(),
        net.relay_urls.join(" "),
        net.redis_a,
        net.redis_b,
        net.twin_a,
        net.twin_b,
        args.bot_workers,
        args.duration,
        threads(args.threads),
        threads(args.relay_threads),
        threads(args.bench_threads)
    );
    // Warm up connections, registry caches and key lookups.
    load::measure(&net, 4, 256, Duration::from_secs(1)).await?;
    for &size in &args.sizes {
        for &clients in &args.clients {
            let o = load::measure(&net, clients, size, Duration::from_secs(args.duration)).await?;
            report.row(setup, size, clients, o);
        }
    }
    if args.burst > 0 {
        const BURST_SIZE: usize = 256;
        let burst = load::burst(&net, args.burst, BURST_SIZE).await?;
        report.burst(setup, BURST_SIZE, burst);
    }
    drop(bots);
    net.shutdown().await;
    Ok(())
}

/// The overload measurement, once per delivery mode, each on a fresh network.
async fn run_overload(args: &Args) -> anyhow::Result<()> {
    let plan = overload::Plan {
        capacity: args.overload,
        factor: args.overload_factor,
        secs: args.overload_secs,
        exp: args.overload_exp,
    };
    for &delivery in &args.delivery {
        let net = Network::start(args, delivery, Topology::OneRelay)
            .await
            .context("starting the network")?;
        let mut outcome = overload::run(&net, plan).await?;
        outcome.print(delivery.name());
        println!();
        net.shutdown().await;
    }
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
