//! `topic-bench`: how fast do topic messages reach subscribers?
//!
//! Starts its own `rmb-relay`s, redis-servers and a `nats-server`, then measures one
//! publisher (the topic owner's app) to 1, 10 and 100 subscribers with 256-byte messages,
//! through one relay and across two federated relays: publish → subscriber latency
//! p50/p99 one message at a time, then a burst (deliveries per second and latency under
//! load). NATS core pub/sub (not encrypted, not federated) is measured the same way in
//! the same run, as the anchor. The peers run in this process (the library, as
//! `rmb-peer` uses it); relays, Redis and NATS are the real servers.
//!
//! Run: `cargo run -p rmb-peer --release --bin topic-bench`.

/// mimalloc: glibc malloc cost a busy peer or relay about a tenth of its CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "bench_common/mod.rs"]
mod bench_common;
mod topic_bench;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = topic_bench::Args::parse();
    // The subscribers' runtime (the owner's is made per measurement).
    topic_bench::Runtime::new(args.threads)?.block_on(bench(args))
}

async fn bench(args: topic_bench::Args) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .init();
    // Ctrl-C or SIGTERM drops the run, and with it the relays and Redis servers it
    // started: left running, they would weigh on the next measurement.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = topic_bench::run(args) => result,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
        _ = term.recv() => anyhow::bail!("terminated"),
    }
}
