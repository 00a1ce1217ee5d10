//! `rmb-soak`: the long soak of issue #33 as a binary (`scripts/soak.sh` runs it on
//! release builds of the relay, peer and CLI). RPCs, topics and pipes across two federating relays for `--duration`, with
//! kills and stalls on a schedule; prints the accounting, each process's memory and open
//! files, and a verdict; exits 0 only when it passed.

/// mimalloc: the harness keeps a record of every request of the run.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Duration;

use clap::Parser;
use rmb_testsupport::chaos::Target;
use rmb_testsupport::soak::{self, Bounds, PipeSettings, SoakConfig};

/// Soak of the Reliable Message Bus: two federating relays, twin A on the first and twin
/// B on the second, each peer on its own durable Redis with its HTTP API on. A client app
/// calls an echo bot through the Redis API (RPCs), an app publishes to twin B's topic to
/// which twin A is subscribed (checked for gaps and repeats), and `rmb pipe` transfers
/// alternate direction (bytes checked). Meanwhile relays, peers and Redis servers are
/// SIGKILLed and relaunched in turn, and between two kills a relay or a peer is stopped
/// (SIGSTOP) for a few seconds. At the end: the accounting, each process's RSS and open
/// files (start, end, min-max) and the verdict.
///
/// Exit code 0 only if no RPC was lost, answered twice or handled twice, no topic message
/// is missing or repeated, no pipe transfer corrupted or hung, and the longest life of
/// every relay and peer grew within the bounds after its warm-up; 1 otherwise.
///
/// The binaries it runs come from RMB_BIN_DIR when set (scripts/soak.sh points it at
/// target/release); otherwise they are built first (debug).
#[derive(Parser, Debug)]
#[command(name = "rmb-soak")]
struct Args {
    /// Seconds during which RPCs, publishes and transfers are started.
    #[arg(long, default_value_t = 3600, value_name = "SECS")]
    duration: u64,

    /// RPCs per second.
    #[arg(long, default_value_t = 400, value_name = "RPS")]
    rate: u32,

    /// Topic messages published per second.
    #[arg(long, default_value_t = 20, value_name = "N")]
    topic_rate: u32,

    /// KiB per pipe transfer (0: no pipes).
    #[arg(long, default_value_t = 1024, value_name = "KIB")]
    pipe_kib: usize,

    /// Seconds from the start of one pipe transfer to the next.
    #[arg(long, default_value_t = 5, value_name = "SECS")]
    pipe_every: u64,

    /// A pipe transfer still running after this long is killed and counted as hung.
    #[arg(long, default_value_t = 180, value_name = "SECS")]
    pipe_limit: u64,

    /// Seconds between two kills (0: no kills and no stalls); a stall falls halfway
    /// between. At least --down + --pause + 4.
    #[arg(long, default_value_t = 180, value_name = "SECS")]
    kill_every: u64,

    /// Seconds a killed process stays down before its relaunch.
    #[arg(long, default_value_t = 3, value_name = "SECS")]
    down: u64,

    /// What to kill, in turn: relay, relay-b, peer-a, peer-b, redis-a, redis-b.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "relay,peer-a,redis-b,relay-b,peer-b,redis-a",
        value_name = "LIST"
    )]
    kill: Vec<Target>,

    /// What to stop (SIGSTOP, then SIGCONT), in turn.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "relay-b,peer-a,relay,peer-b",
        value_name = "LIST"
    )]
    pause: Vec<Target>,

    /// Seconds a stopped process stays stopped.
    #[arg(long, default_value_t = 5, value_name = "SECS")]
    pause_secs: u64,

    /// Validity (`exp`, seconds) of each RPC (the peers keep what a request needs for
    /// that long: the warm-up should cover it).
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    exp: u64,

    /// Longest wait, once sending stops, for what is still missing (then it counts as
    /// lost).
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    drain: u64,

    /// Seconds after a process's (re)start before its memory baseline is taken: long
    /// enough for the caches bounded by the requests' validity to fill.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    warmup: u64,

    /// A relay's or peer's RSS at the end may be at most this factor of its baseline …
    #[arg(long, default_value_t = 1.5, value_name = "X")]
    rss_factor: f64,

    /// … plus this many MiB.
    #[arg(long, default_value_t = 20.0, value_name = "MIB")]
    rss_slack_mib: f64,

    /// Its open files at the end may exceed the baseline by at most this many.
    #[arg(long, default_value_t = 10, value_name = "N")]
    fd_slack: u64,
}

fn main() {
    let args = Args::parse();
    let applies = |t: &Target| t.applies_to(rmb_testsupport::chaos::RelayMode::Federated);
    if let Some(t) = args.kill.iter().chain(&args.pause).find(|t| !applies(t)) {
        eprintln!("{t} is not part of a federated soak");
        std::process::exit(2);
    }
    if args.kill_every > 0 && args.kill_every < args.down + args.pause_secs + 4 {
        eprintln!("--kill-every must be at least --down + --pause-secs + 4");
        std::process::exit(2);
    }
    let bins = rmb_testsupport::relay_process::binaries();
    eprintln!("binaries from {}", bins.display());
    let duration = Duration::from_secs(args.duration);
    let config = SoakConfig {
        duration,
        rpc_rate: args.rate,
        topic_rate: args.topic_rate,
        pipes: PipeSettings {
            bytes: args.pipe_kib * 1024,
            every: Duration::from_secs(args.pipe_every),
            limit: Duration::from_secs(args.pipe_limit),
        },
        events: soak::schedule(
            duration,
            Duration::from_secs(args.kill_every),
            Duration::from_secs(args.down),
            &args.kill,
            &args.pause,
            args.pause_secs as f64,
        ),
        exp: args.exp,
        drain: Duration::from_secs(args.drain),
        bounds: Bounds {
            warmup_secs: args.warmup as f64,
            rss_factor: args.rss_factor,
            rss_slack_mib: args.rss_slack_mib,
            fd_slack: args.fd_slack,
        },
        verbose: true,
    };
    let report = soak::run(&config);
    report.print();
    std::process::exit(if report.failures().is_empty() { 0 } else { 1 });
}
