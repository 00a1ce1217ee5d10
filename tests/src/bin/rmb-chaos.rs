//! `rmb-chaos`: the long chaos run of issue #7, as a benchmark-style binary.
//!
//! Minutes of RPCs between two real peers while the relay, both peers and the Redis
//! servers are SIGKILLed in turn; prints, per relay mode, how many requests were sent,
//! answered, failed, lost or answered twice. It never fails on figures: it reports.

/// mimalloc: glibc malloc cost a busy peer or relay about a tenth of its CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Duration;

use clap::{Parser, ValueEnum};
use rmb_testsupport::chaos::{self, Config, RelayMode, Report, Target};

/// Relay kinds to run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Relays {
    /// In-memory relay (offline queues die with it).
    Memory,
    /// `rmb-relay --redis` on a durable Redis (queues survive a relay crash).
    Redis,
    /// Two federating in-memory relays, peer A on one, peer B on the other.
    Federated,
    /// Memory, then Redis.
    Both,
    /// Memory, Redis, then federated.
    All,
}

/// Chaos run of the Reliable Message Bus: a client app on peer A's Redis calls an echo
/// bot on peer B's Redis at a fixed rate while the relay, the peers and the Redis
/// servers are SIGKILLed and relaunched in turn; then it waits for the answers and
/// prints sent / ok / error / lost / duplicated / handled twice / the peers' resend,
/// duplicate and replay counters, per relay mode.
///
/// The binaries it runs are built by `cargo build --workspace --bins --tests` first
/// (debug profile), unless RMB_BIN_DIR names a directory holding rmb-relay and rmb-peer.
/// Run it with `cargo run -p rmb-tests --bin rmb-chaos -- [FLAGS]`. Set RMB_TEST_LOG
/// (e.g. `info`) for the relay's and peers' logs on stderr.
#[derive(Parser, Debug)]
#[command(name = "rmb-chaos")]
struct Args {
    /// Seconds during which requests are sent (crashes happen in that window).
    #[arg(long, default_value_t = 180, value_name = "SECS")]
    duration: u64,

    /// Requests per second sent by the client app.
    #[arg(long, default_value_t = 200, value_name = "RPS")]
    rate: u32,

    /// Which relays to run against; `both` and `all` make one run with each kind.
    #[arg(long, value_enum, default_value_t = Relays::All)]
    relay: Relays,

    /// Seconds each crashed process stays down before it is relaunched.
    #[arg(long, default_value_t = 3, value_name = "SECS")]
    down: u64,

    /// Seconds between two crashes (the first comes after this long too). Must leave
    /// time for the relaunch: at least --down + 2.
    #[arg(long, default_value_t = 12, value_name = "SECS")]
    every: u64,

    /// What to crash, in turn, comma separated: relay, peer-a, peer-b, redis-a (peer
    /// A's and the client's Redis), redis-b (peer B's and the bot's Redis), relay-redis
    /// (only with the Redis relay), relay-b (peer B's relay, only when federated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "relay,peer-a,peer-b,redis-b,relay-redis,relay-b,redis-a",
        value_name = "LIST"
    )]
    targets: Vec<Target>,

    /// Crash nothing: checks the harness and the bus in calm conditions.
    #[arg(long)]
    calm: bool,

    /// Validity (`exp`, seconds) of each request.
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    exp: u64,

    /// Longest wait, once sending stops, for the requests still unanswered (they then
    /// count as lost).
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    drain: u64,
}

fn main() {
    let args = Args::parse();
    if !args.calm && args.every < args.down + 2 {
        eprintln!("--every must be at least --down + 2 (a crash must be over before the next)");
        std::process::exit(2);
    }
    let modes = match args.relay {
        Relays::Memory => vec![RelayMode::Memory],
        Relays::Redis => vec![RelayMode::Redis],
        Relays::Federated => vec![RelayMode::Federated],
        Relays::Both => vec![RelayMode::Memory, RelayMode::Redis],
        Relays::All => vec![RelayMode::Memory, RelayMode::Redis, RelayMode::Federated],
    };
    // Build (or find) the binaries before any timing starts.
    let bins = rmb_testsupport::relay_process::binaries();
    eprintln!("binaries from {}", bins.display());

    let mut reports = Vec::new();
    for mode in modes {
        let targets: Vec<Target> = args
            .targets
            .iter()
            .copied()
            .filter(|t| t.applies_to(mode))
            .collect();
        let duration = Duration::from_secs(args.duration);
        let mut config = Config::new(mode, duration, args.rate);
        if !args.calm {
            config.crashes = chaos::cycle(
                &targets,
                duration,
                Duration::from_secs(args.every),
                Duration::from_secs(args.down),
            );
        }
        config.exp = args.exp;
        config.drain = Duration::from_secs(args.drain);
        let report = chaos::run(&config);
        report.print_table();
        reports.push(report);
    }
    Report::print_summary(&reports);
}
