//! `peer-bench`: how fast is a call through the Redis API, end to end?
//!
//! Starts its own redis-servers, an `rmb-relay` (or two that federate) and two `rmb-peer`
//! processes (release binaries next to this one, built when missing), an echo bot on
//! peer B written against raw Redis like any app, then measures clients on peer A calling
//! it: RPC/s, p50/p99 latency and the CPU per call of every process for several
//! concurrency levels and payload sizes, and a burst of requests pushed at once. Run:
//! `cargo run -p rmb-peer --release --bin peer-bench`.

/// mimalloc: glibc malloc cost a busy peer or relay about a tenth of its CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "bench_common/mod.rs"]
mod bench_common;
mod peer_bench;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = peer_bench::Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    rmb_peer::runtime::build(args.bench_threads)?.block_on(peer_bench::run(args))
}
