//! The benchmark itself: set-up ([`processes`]), the echo bot ([`bot`]), the load
//! ([`load`]) and the report.

pub mod bot;
pub mod load;
pub mod processes;

use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use load::{Burst, Outcome};
use processes::Network;

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
    #[arg(long, value_delimiter = ',', default_value = "256,16384")]
    pub sizes: Vec<usize>,

    /// Requests pushed at once in the burst test (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    pub burst: usize,

    /// Echo bot workers (each its own Redis connection, like several service processes).
    #[arg(long, default_value_t = 8)]
    pub bot_workers: usize,

    /// rmb-relay binary (default: next to this one; built when missing).
    #[arg(long)]
    pub relay_bin: Option<std::path::PathBuf>,

    /// rmb-peer binary (default: next to this one; built when missing).
    #[arg(long)]
    pub peer_bin: Option<std::path::PathBuf>,
}

/// Runs every measurement and prints the table.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let net = Network::start(&args)
        .await
        .context("starting the network")?;
    let bots = bot::start(&net.redis_b, args.bot_workers).await?;
    println!(
        "peer-bench: relay {} · peer A twin {} · peer B twin {} · {} bot workers · {} s per row",
        net.relay_url, net.twin_a, net.twin_b, args.bot_workers, args.duration
    );
    // Warm up connections, registry caches and key lookups.
    load::measure(&net, 4, 256, Duration::from_secs(1)).await?;

    println!();
    println!("| payload | clients | RPC/s | p50 ms | p99 ms | errors |");
    println!("|--------:|--------:|------:|-------:|-------:|-------:|");
    for &size in &args.sizes {
        for &clients in &args.clients {
            let o: Outcome =
                load::measure(&net, clients, size, Duration::from_secs(args.duration)).await?;
            println!(
                "| {} | {} | {:.0} | {:.3} | {:.3} | {} |",
                human(size),
                clients,
                o.rate(),
                o.percentile(0.50),
                o.percentile(0.99),
                o.errors
            );
        }
    }
    if args.burst > 0 {
        let b: Burst = load::burst(&net, args.burst, 256).await?;
        println!();
        println!(
            "burst: {} requests pushed at once → {} answered ({} errors) in {:.2} s = {:.0} RPC/s",
            b.sent,
            b.answered,
            b.errors,
            b.elapsed.as_secs_f64(),
            b.answered as f64 / b.elapsed.as_secs_f64()
        );
    }
    drop(bots);
    net.shutdown().await;
    Ok(())
}

fn human(size: usize) -> String {
    if size >= 1024 && size % 1024 == 0 {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}
