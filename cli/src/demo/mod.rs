//! `rmb demo`: a whole network on this machine in one command. A relay hosting the
//! twin registry (A), a second relay federating with it (B), two fresh twins, a Redis and
//! an `rmb-peer` per twin (peer 1 on A, peer 2 on B), echo bots on both peers (in this
//! process, through the Redis API), then calls across the federation. Every step is
//! reported with its timing. `--once` stops there; otherwise the network stays up until
//! Ctrl-C, with the `rmb call` line to paste in another terminal.
//!
//! - [`children`]: starting the processes, and never leaving one behind;
//! - [`network`]: each piece, started and checked ready;
//! - [`calls`]: the calls and their checks;
//! - [`topics`]: a topic on peer 1, subscribed to from peer 2, three messages across;
//! - [`report`]: progress and the report.

pub mod calls;
pub mod children;
pub mod network;
pub mod report;
pub mod topics;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use serde::Serialize;
use tokio::sync::watch;

use crate::bus::Bus;
use crate::commands::serve;
use children::{Children, ProcessInfo};
use network::{Binaries, PeerInfo, RelayInfo, TwinInfo};
use report::{Reporter, Step};

/// Exit status after Ctrl-C during set-up (as shells report SIGINT).
const EXIT_INTERRUPTED: u8 = 130;

/// Start a complete network on this machine (2 federating relays, a registry, 2 peers
/// with fresh twins, an echo bot), make calls across it, and keep it running until
/// Ctrl-C. Needs rmb-relay and rmb-peer next to rmb, and redis-server installed.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Make the calls, print the report and stop everything; exit 0 only if every call
    /// succeeded.
    #[arg(long)]
    pub once: bool,

    /// Print the report as one JSON line (with addresses, twins and process ids) instead
    /// of text. Without --once it is printed when the network is up.
    #[arg(long)]
    pub json: bool,

    /// Keep the directory with the processes' logs and data after stopping.
    #[arg(long)]
    pub keep: bool,

    /// Directory holding rmb-relay and rmb-peer (default: the one rmb is in).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
}

/// The running network, as reported.
#[derive(Debug, Clone, Serialize, Default)]
pub struct NetworkInfo {
    /// The relays (A hosts the registry).
    pub relays: Vec<RelayInfo>,
    /// Base URL of the embedded registry.
    pub registry: String,
    /// The twins.
    pub twins: Vec<TwinInfo>,
    /// The peers.
    pub peers: Vec<PeerInfo>,
    /// Every child process.
    pub processes: Vec<ProcessInfo>,
    /// Where logs and data are.
    pub dir: PathBuf,
}

/// The whole report (`--json`).
#[derive(Debug, Serialize)]
struct Report<'a> {
    ok: bool,
    steps: &'a [Step],
    network: &'a NetworkInfo,
    /// The `rmb call` line to paste (absent with --once).
    try_call: Option<String>,
}

/// Runs `rmb demo`.
pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let bins = Binaries::locate(args.bin_dir.as_deref())?;
    let dir = tempfile::Builder::new().prefix("rmb-demo-").tempdir()?;
    let mut children = Children::new(&dir.path().join("logs"))?;
    let mut reporter = Reporter::new(args.json);
    // Turns true on Ctrl-C/SIGTERM/SIGHUP, or when the demo ends; the echo bots watch it.
    let (stop_tx, mut stop) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let on_signal = Arc::clone(&stop_tx);
    tokio::spawn(async move {
        crate::signals::stop_signal().await;
        let _ = on_signal.send(true);
    });
    let mut bots = Vec::new();
    let mut info = NetworkInfo {
        dir: dir.path().to_path_buf(),
        ..NetworkInfo::default()
    };
    reporter.say("rmb demo: a two-relay network on this machine");

    let outcome = tokio::select! {
        outcome = set_up_and_call(&bins, &mut children, &mut reporter, &mut info, stop.clone(), &mut bots) => Some(outcome),
        _ = stop.wait_for(|stop| *stop) => None,
    };
    info.processes = children.list();
    let code = match outcome {
        None => {
            reporter.interrupt();
            ExitCode::from(EXIT_INTERRUPTED)
        }
        Some(Err(e)) => {
            print_report(&reporter, &info, None);
            if !args.json {
                eprintln!("rmb demo failed: {e:#}");
            }
            ExitCode::FAILURE
        }
        Some(Ok(())) if args.once => {
            print_report(&reporter, &info, None);
            ExitCode::SUCCESS
        }
        Some(Ok(())) => {
            let try_call = try_call_line(&info);
            print_report(&reporter, &info, Some(try_call));
            let died = tokio::select! {
                _ = stop.wait_for(|stop| *stop) => None,
                e = children.watch() => Some(e),
            };
            match died {
                None => ExitCode::SUCCESS,
                Some(e) => {
                    eprintln!("rmb demo: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    };
    // Stop the echo bots first (they use the peers' Redis), then every child.
    let _ = stop_tx.send(true);
    for bot in bots {
        let _ = bot.await;
    }
    let stopped = children.stop_all().await;
    if !args.json {
        eprintln!("stopped {stopped} processes");
    }
    if args.keep {
        let kept = dir.keep();
        if !args.json {
            eprintln!("logs and data kept in {}", kept.display());
        }
    }
    Ok(code)
}

/// Every step up to the calls; the first failure ends it.
async fn set_up_and_call(
    bins: &Binaries,
    children: &mut Children,
    reporter: &mut Reporter,
    info: &mut NetworkInfo,
    stop: watch::Receiver<bool>,
    bots: &mut Vec<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<()> {
    let data = info.dir.clone();
    let relay_a = reporter
        .step("relay A, hosting the twin registry", async {
            let relay = network::start_relay(children, bins, &data, "A", None).await?;
            let detail = format!("{} (registry at {})", relay.ws_url, relay.http_url);
            Ok((relay, Some(detail)))
        })
        .await?;
    info.registry = relay_a.http_url.clone();
    info.relays.push(relay_a.clone());
    let registry = info.registry.clone();
    let relay_b = reporter
        .step("relay B, federating with A, using A's registry", async {
            let relay = network::start_relay(children, bins, &data, "B", Some(&registry)).await?;
            let detail = relay.ws_url.clone();
            Ok((relay, Some(detail)))
        })
        .await?;
    info.relays.push(relay_b.clone());

    for (relay, n) in [(&relay_a, 1), (&relay_b, 2)] {
        let twin = reporter
            .step(
                format!(
                    "fresh identity {n}, registered as living on relay {}",
                    relay.name
                ),
                async {
                    let twin = network::register_twin(&registry, relay).await?;
                    let detail = format!("twin {} ({})", twin.twin, twin.account);
                    Ok((twin, Some(detail)))
                },
            )
            .await?;
        info.twins.push(twin);
    }

    for (n, relay) in [(1usize, &relay_a), (2, &relay_b)] {
        let twin = info.twins[n - 1].clone();
        let name = format!("redis-{n}");
        let redis = reporter
            .step(format!("redis-server for peer {n}"), async {
                let url = network::start_redis(children, bins, &data, &name).await?;
                Ok((url.clone(), Some(url)))
            })
            .await?;
        let peer = reporter
            .step(
                format!(
                    "peer {n} (twin {}) connected to relay {}",
                    twin.twin, relay.name
                ),
                async {
                    let peer = network::start_peer(
                        children,
                        bins,
                        &n.to_string(),
                        &twin,
                        relay,
                        &registry,
                        &redis,
                    )
                    .await?;
                    Ok((peer, None))
                },
            )
            .await?;
        info.peers.push(peer);
    }

    let mut buses = Vec::new();
    for peer in &info.peers {
        buses.push(Bus::connect(&peer.redis).await?);
    }
    reporter
        .step("echo bots serving `echo` on both peers", async {
            for bus in &buses {
                let bus = bus.clone();
                let stop = stop.clone();
                let quiet: Arc<dyn Fn(&serve::Handled) + Send + Sync> = Arc::new(|_| {});
                bots.push(tokio::spawn(async move {
                    let cmds = ["echo".to_string()];
                    if let Err(e) =
                        serve::serve(bus, &cmds, serve::echo_handler(), 16, stop, quiet).await
                    {
                        tracing::error!("echo bot stopped: {e:#}");
                    }
                }));
            }
            Ok(((), None))
        })
        .await?;

    let plan = calls::plan(info.twins[0].twin, info.twins[1].twin);
    let mut failures = 0;
    for call in &plan {
        let bus = &buses[call.from];
        let result = reporter
            .step(call.label.clone(), async {
                let detail = calls::run(bus, call).await?;
                Ok(((), Some(detail)))
            })
            .await;
        failures += usize::from(result.is_err());
    }
    let (owner, subscriber) = (&info.peers[0], &info.peers[1]);
    let topic_step = reporter
        .step(
            format!(
                "topic {}/{}: twin {} publishes, twin {} subscribed across the federation",
                owner.twin,
                topics::TOPIC,
                owner.twin,
                subscriber.twin
            ),
            async {
                let detail = topics::run(owner, subscriber).await?;
                Ok(((), Some(detail)))
            },
        )
        .await;
    failures += usize::from(topic_step.is_err());
    if failures > 0 {
        anyhow::bail!(
            "{failures} of {} calls and topic steps failed",
            plan.len() + 1
        );
    }
    Ok(())
}

/// The `rmb call` line a person can paste: peer 1 calls twin 2's echo bot.
fn try_call_line(info: &NetworkInfo) -> String {
    let rmb = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "rmb".into());
    format!(
        "{rmb} call --redis {} --dst {} --cmd echo --data 'hello'",
        info.peers[0].redis, info.peers[1].twin
    )
}

fn print_report(reporter: &Reporter, info: &NetworkInfo, try_call: Option<String>) {
    let ok = reporter.steps().iter().all(|s| s.ok);
    if reporter.json() {
        let report = Report {
            ok,
            steps: reporter.steps(),
            network: info,
            try_call,
        };
        println!(
            "{}",
            serde_json::to_string(&report).expect("the report serializes")
        );
        return;
    }
    let total: u64 = reporter.steps().iter().map(|s| s.ms).sum();
    let calls = reporter
        .steps()
        .iter()
        .filter(|s| s.name.starts_with("call "))
        .collect::<Vec<_>>();
    let good = calls.iter().filter(|s| s.ok).count();
    println!();
    println!(
        "{} in {:.1} s: {good} of {} calls succeeded across the federation.",
        if ok { "Done" } else { "FAILED" },
        total as f64 / 1000.0,
        calls.len()
    );
    let Some(try_call) = try_call else {
        return;
    };
    let rmb = try_call.split(' ').next().unwrap_or("rmb").to_string();
    let (p1, p2) = (&info.peers[0], &info.peers[1]);
    println!();
    println!(
        "The network is running. In another terminal, call twin {}'s echo bot:",
        p2.twin
    );
    println!();
    println!("    {try_call}");
    println!();
    println!("More to try:");
    println!("    {rmb} status --redis {}", p1.redis);
    println!(
        "    {rmb} serve --redis {} --cmd shout -- tr a-z A-Z      # a bot on twin {}",
        p2.redis, p2.twin
    );
    println!(
        "    {rmb} call --redis {} --dst {} --cmd shout --data 'hello'",
        p1.redis, p2.twin
    );
    let topic = format!("{}/{}", p1.twin, topics::TOPIC);
    println!(
        "    {rmb} sub --http {} {topic}                 # live, on twin {}",
        p2.http, p2.twin
    );
    println!(
        "    {rmb} pub --http {} {topic} 'hi there'       # publish as the owner",
        p1.http
    );
    println!(
        "    curl -s '{}/topics/{topic}/json?poll=1&since=all'",
        p2.http
    );
    println!("Logs: {}", info.dir.join("logs").display());
    println!("Press Ctrl-C to stop the network (every process started here stops with it).");
}
