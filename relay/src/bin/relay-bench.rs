//! `relay-bench`: how fast and how heavy is rmb-relay, next to the simplest possible
//! WebSocket forwarder on the same machine?
//!
//! ```text
//! cargo run -p rmb-relay --release --bin relay-bench -- [--pairs 16] [--seconds 5] [--idle-sessions 10000]
//! ```
//!
//! What is measured, in one run:
//!
//! 1. **bare forwarder**: a minimal tokio-tungstenite server in this binary. Clients
//!    connect to `/pair/<n>/a|b` and every binary frame from one side of a pair is written
//!    to the other: no login, no routing, no protobuf. This is the ceiling for this
//!    WebSocket stack on this machine.
//! 2. **rmb-relay**: the real relay started in this process (`RelayState` + `RelayServer`,
//!    embedded registry in a temporary redb file), 2×N twins registered through it, every
//!    client logged in with a real JWT, sending signed request envelopes (256-byte plain
//!    payload by default) to its partner. With `--url`/`--registry` the load goes to a
//!    relay running elsewhere instead.
//! 3. **rmb-relay redis**: Redis mode (`--redis`): a private `redis-server` and two
//!    in-process replicas serving the same domain; senders log in to one replica and
//!    receivers to the other, so every envelope is queued in Redis by one replica and
//!    handed over by the other (the worst case; `--skip-redis` leaves it out).
//! 4. **rmb-relay cluster** (`--cluster`): a private Redis Cluster (`--cluster-masters`
//!    nodes) and three replicas, each a process of its own, with pairs spread so every
//!    envelope crosses the cluster; prints Redis's commands and CPU per envelope summed
//!    over the nodes, and envelopes per relay CPU-second.
//!
//! All get the same load: N sender → receiver pairs, at most `--window` frames in flight
//! per pair (the receiver hands a permit back to its sender for each arrival), for
//! `--seconds` after a `--warmup`, or exactly `--messages` per pair. Both send the same
//! bytes: the relay's envelope encoding, with the uid's counter and the send time (ns
//! since a clock shared by sender and receiver) rewritten in place for every message.
//! Envelopes are therefore signed once per pair, not per message: the rewritten ones no
//! longer verify, which the relay never checks (it only decodes and routes).
//!
//! How to read the table: `msgs/s` counts frames that arrived at receivers during the
//! measured interval; `p50`/`p99` are one-way latencies (send call → receiver read),
//! including time queued in the sending client; `lost` were sent but never arrived
//! (should be 0); `errors` are frames that were not ours (error envelopes) or failed
//! connections. `ratio relay/bare` is the relay's throughput over the bare forwarder's
//! (target ≥ 0.6). Load generator, server and forwarder share the same CPUs, so
//! absolute figures depend heavily on the machine; the ratio is what carries over.
//!
//! **Idle sessions** (`--idle-sessions M`): M more twins are registered and logged in
//! from a child process (this binary, re-run with a hidden flag), and the relay's
//! resident memory (VmRSS) is compared before and after: the KiB per idle session is the
//! relay's own cost. This phase runs first, on a fresh relay, so the allocator has no
//! freed load-test memory to reuse. The child's own growth is shown for comparison.
//! With `--idle-redis` the phase runs instead on an in-process relay in Redis mode (a
//! private `redis-server` holding queues, presence, registry and used logins), and also
//! reports Redis's `used_memory` and keys per session.

/// mimalloc: glibc malloc cost a busy peer or relay about a tenth of its CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "relay_bench/bare.rs"]
mod bare;
#[path = "relay_bench/cluster.rs"]
mod cluster;
#[path = "relay_bench/idle.rs"]
mod idle;
#[path = "relay_bench/load.rs"]
mod load;
#[path = "relay_bench/redis_servers.rs"]
mod redis_servers;
#[path = "relay_bench/replicas.rs"]
mod replicas;
#[path = "relay_bench/twins.rs"]
mod twins;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use crate::load::{Pair, Plan, Stats, Template};
use crate::twins::{Target, login_url};

/// Throughput, latency and idle-session memory of rmb-relay, against a bare WebSocket
/// forwarder measured in the same run. See the crate docs (top of relay-bench.rs) for
/// what every figure means.
#[derive(Parser, Debug)]
#[command(name = "relay-bench")]
struct Args {
    /// Sender → receiver pairs (2 WebSocket connections each) in both load tests.
    #[arg(long, default_value_t = 16)]
    pairs: usize,

    /// Seconds of measured load per mode (after --warmup).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,

    /// Seconds of unmeasured load before --seconds starts.
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,

    /// Send exactly this many messages per pair instead of running for --seconds; the
    /// rate is then over the time until the last one arrived (no warm-up).
    #[arg(long, value_name = "COUNT")]
    messages: Option<u64>,

    /// Most messages in flight (sent, not yet received) per pair.
    #[arg(long, default_value_t = 128)]
    window: usize,

    /// Plain payload bytes per envelope (at least 16: the marker and send time).
    #[arg(long, default_value_t = 256)]
    payload: usize,

    /// Idle logged-in sessions to open for the memory measurement; 0 skips it. Needs an
    /// open-file limit above this (raised to the hard limit automatically).
    #[arg(long, default_value_t = 10_000)]
    idle_sessions: usize,

    /// Measure the idle sessions (--idle-sessions) on an in-process relay in Redis mode
    /// (a private redis-server) instead of the in-memory one; also reports Redis's
    /// memory and keys per session.
    #[arg(long, conflicts_with = "url")]
    idle_redis: bool,

    /// Skip the Redis-mode run (two replicas on a private redis-server, senders on one,
    /// receivers on the other).
    #[arg(long)]
    skip_redis: bool,

    /// Also run the cluster mode: a private Redis Cluster and three relay replica
    /// processes on it (needs redis-server and redis-cli).
    #[arg(long)]
    cluster: bool,

    /// Masters of the cluster mode's Redis Cluster (no Redis replicas: the bench measures
    /// cost, not failover).
    #[arg(long, default_value_t = 3, value_name = "N", requires = "cluster")]
    cluster_masters: usize,

    /// Internal: be a cluster-mode relay replica on this redis+cluster:// URL.
    #[arg(long, hide = true, value_name = "URL", requires_all = ["replica_domain", "replica_registry"])]
    replica_child: Option<String>,

    /// Internal: the domain the replica serves.
    #[arg(long, hide = true)]
    replica_domain: Option<String>,

    /// Internal: the registry the replica reads twins from.
    #[arg(long, hide = true)]
    replica_registry: Option<String>,

    /// Redis mode without replica links (`rmb-relay --replica-listen off`): every
    /// envelope between the replicas goes through the Redis queue.
    #[arg(long)]
    redis_queue_only: bool,

    /// Skip the bare forwarder (no ratio is printed then).
    #[arg(long)]
    skip_bare: bool,

    /// Make the bare forwarder flush after every frame instead of batching what is queued
    /// (rmb-relay's writer flushes per envelope): shows what write batching alone is worth.
    #[arg(long)]
    bare_flush_each: bool,

    /// Diagnostic: serve the in-process relay's routes with TCP_NODELAY on accepted
    /// sockets (RelayServer::start leaves Nagle on), to show what that setting changes.
    #[arg(long, conflicts_with = "url")]
    relay_nodelay: bool,

    /// Benchmark a relay already running at this WebSocket URL (e.g. ws://127.0.0.1:8080/)
    /// instead of one in this process. Needs --registry. Best effort: any relay that
    /// accepts rmb JWT logins and routes between twins of that registry will do. Every
    /// client connects (and registers) from one address: run rmb-relay with
    /// --max-connections-per-ip 0 --registry-register-rate 0.
    #[arg(long, value_name = "WS_URL", requires = "registry")]
    url: Option<String>,

    /// With --url: base URL of the embedded twin registry (e.g. http://127.0.0.1:8080)
    /// where the benchmark registers its fresh twins.
    #[arg(long, value_name = "HTTP_URL", requires = "url")]
    registry: Option<String>,

    /// With --url: the relay name put in the twins' relay list [default: host:port of --url].
    #[arg(long, value_name = "DOMAIN", requires = "url")]
    relay_domain: Option<String>,

    /// With --url: the relay's process id, to read its memory for --idle-sessions
    /// (without it only the client side is reported).
    #[arg(long, value_name = "PID", requires = "url")]
    relay_pid: Option<u32>,

    /// Internal: be the idle-session client process for the relay at this URL.
    #[arg(long, hide = true, value_name = "WS_URL")]
    idle_child: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(url) = &args.idle_child {
        return idle::child(url).await;
    }
    if let (Some(redis), Some(domain), Some(registry)) = (
        &args.replica_child,
        &args.replica_domain,
        &args.replica_registry,
    ) {
        return cluster::child(redis, domain, registry, !args.redis_queue_only).await;
    }
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    anyhow::ensure!(args.pairs > 0, "--pairs must be at least 1");
    anyhow::ensure!(
        args.seconds > 0.0 && args.warmup >= 0.0,
        "bad --seconds/--warmup"
    );
    let plan = Plan {
        window: args.window,
        warmup: Duration::from_secs_f64(args.warmup),
        duration: Duration::from_secs_f64(args.seconds),
        messages: args.messages,
    };
    let fd_limit = idle::raise_fd_limit();

    let target = match (&args.url, &args.registry) {
        (Some(url), Some(registry)) => Target::external(url, registry, args.relay_domain.clone())?,
        _ => Target::in_process(args.relay_nodelay).await?,
    };
    let (relay_label, relay_pid) = match &target.local {
        Some(_) if args.relay_nodelay => ("rmb-relay nodelay", Some(std::process::id())),
        Some(_) => ("rmb-relay mem", Some(std::process::id())),
        None => ("rmb-relay ext", args.relay_pid),
    };

    let idle = if args.idle_sessions > 0 {
        if target.local.is_some() && args.idle_sessions as u64 + 256 > fd_limit {
            eprintln!(
                "warning: open-file limit {fd_limit} is too low for {} idle sessions; expect failures",
                args.idle_sessions
            );
        }
        eprintln!(
            "idle sessions: registering and logging in {} twins…",
            args.idle_sessions
        );
        if args.idle_redis {
            Some(idle::measure_redis(args.idle_sessions).await?)
        } else {
            Some(idle::measure(&target, args.idle_sessions, relay_pid).await?)
        }
    } else {
        None
    };

    eprintln!("load: registering {} twins…", 2 * args.pairs);
    let (twins, _) = target.register(2 * args.pairs).await?;
    let mut templates = Vec::with_capacity(args.pairs);
    for (i, pair) in twins.chunks(2).enumerate() {
        let (from, to) = (&pair[0], &pair[1]);
        templates.push(Template::request(
            &from.signer,
            from.id,
            to.id,
            i,
            args.payload,
        )?);
    }

    let bare = if args.skip_bare {
        None
    } else {
        eprintln!("load: bare forwarder…");
        let forwarder = bare::Forwarder::start(args.bare_flush_each).await?;
        let pairs = templates
            .iter()
            .enumerate()
            .map(|(i, template)| Pair {
                sender: forwarder.url(i, true),
                receiver: forwarder.url(i, false),
                template: template.clone(),
            })
            .collect();
        Some(load::run(pairs, plan).await.context("bare forwarder run")?)
    };

    eprintln!("load: {relay_label} at {}…", target.ws_url);
    let pairs = twins
        .chunks(2)
        .zip(&templates)
        .map(|(pair, template)| Pair {
            sender: login_url(&target.ws_url, &pair[0].signer, pair[0].id),
            receiver: login_url(&target.ws_url, &pair[1].signer, pair[1].id),
            template: template.clone(),
        })
        .collect();
    let relay = load::run(pairs, plan).await.context("relay run")?;

    let redis = if args.skip_redis || target.local.is_none() {
        None
    } else {
        let links = !args.redis_queue_only;
        let path = if links {
            "replica links"
        } else {
            "the redis queue"
        };
        eprintln!("load: rmb-relay redis (2 replicas, every envelope across {path})…");
        let replicas =
            replicas::Replicas::start(&target.domain, Arc::clone(&target.registry), links).await?;
        let [one, two] = &replicas.ws_urls;
        let pairs = twins
            .chunks(2)
            .zip(&templates)
            .map(|(pair, template)| Pair {
                sender: login_url(one, &pair[0].signer, pair[0].id),
                receiver: login_url(two, &pair[1].signer, pair[1].id),
                template: template.clone(),
            })
            .collect();
        let before = replicas
            .redis_usage()
            .await
            .context("reading Redis's INFO")?;
        let cpu_before = replicas::Replicas::cpu_secs();
        let stats = load::run(pairs, plan).await.context("redis run")?;
        let used = replicas
            .redis_usage()
            .await
            .context("reading Redis's INFO")?
            .since(&before);
        let relay_cpu = replicas::Replicas::cpu_secs() - cpu_before;
        replicas.shutdown().await;
        Some((stats, used, relay_cpu))
    };

    let cluster = if args.cluster && target.local.is_some() {
        eprintln!(
            "load: rmb-relay cluster (3 replica processes, {} masters)…",
            args.cluster_masters
        );
        let replicas = cluster::ClusterReplicas::start(
            args.cluster_masters,
            3,
            &target.domain,
            &format!("http://{}", target.domain),
            !args.redis_queue_only,
        )
        .await?;
        let n = replicas.ws_urls.len();
        let pairs = twins
            .chunks(2)
            .zip(&templates)
            .enumerate()
            .map(|(i, (pair, template))| Pair {
                sender: login_url(&replicas.ws_urls[i % n], &pair[0].signer, pair[0].id),
                receiver: login_url(&replicas.ws_urls[(i + 1) % n], &pair[1].signer, pair[1].id),
                template: template.clone(),
            })
            .collect();
        let before = replicas
            .redis_usage()
            .await
            .context("reading the cluster's INFO")?;
        let cpu_before = replicas.cpu_secs();
        let stats = load::run(pairs, plan).await.context("cluster run")?;
        let cpu = replicas.cpu_secs() - cpu_before;
        let used = replicas
            .redis_usage()
            .await
            .context("reading the cluster's INFO")?
            .since(&before);
        replicas.shutdown();
        Some((stats, used, cpu))
    } else {
        None
    };

    print_report(
        &args,
        &plan,
        templates[0].len(),
        bare.as_ref(),
        &RelayRuns {
            label: relay_label,
            memory: &relay,
            redis: redis.as_ref().map(|(stats, _, _)| stats),
            redis_usage: redis.as_ref().map(|(_, used, cpu)| (used, *cpu)),
            cluster: cluster.as_ref(),
        },
        idle.as_ref(),
    );
    if let Some(local) = target.local {
        local.shutdown().await;
    }
    Ok(())
}

/// The relay's runs: the main one (in memory, or an external relay) and Redis mode.
struct RelayRuns<'a> {
    label: &'a str,
    memory: &'a Stats,
    redis: Option<&'a Stats>,
    /// What Redis did during the Redis-mode run, and the replicas' CPU seconds.
    redis_usage: Option<(&'a replicas::RedisUsage, f64)>,
    /// The cluster-mode run, what the cluster did in it, and its replicas' CPU seconds.
    cluster: Option<&'a (Stats, replicas::RedisUsage, f64)>,
}

fn print_report(
    args: &Args,
    plan: &Plan,
    frame: usize,
    bare: Option<&Stats>,
    relay: &RelayRuns<'_>,
    idle: Option<&idle::IdleReport>,
) {
    let relay_runs = relay;
    let (relay_label, redis, relay, redis_usage) =
        (relay.label, relay.redis, relay.memory, relay.redis_usage);
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let span = match plan.messages {
        Some(n) => format!("{n} messages per pair"),
        None => format!(
            "{:.1} s measured after {:.1} s warm-up",
            args.seconds, args.warmup
        ),
    };
    println!();
    println!(
        "relay-bench: {} pairs, window {}, {span}, {frame}-byte frames ({}-byte payload), {cpus} CPUs shared by everything",
        args.pairs, plan.window, args.payload
    );
    println!(
        "{:<17} {:>5} {:>10} {:>10} {:>10} {:>10} {:>6} {:>6}",
        "mode", "pairs", "msgs/s", "p50", "p99", "sent", "lost", "errors"
    );
    let row = |label: &str, s: &Stats| {
        println!(
            "{:<17} {:>5} {:>10.0} {:>10} {:>10} {:>10} {:>6} {:>6}",
            label,
            args.pairs,
            s.rate(),
            latency(s.quantile(0.5)),
            latency(s.quantile(0.99)),
            s.sent,
            s.sent.saturating_sub(s.received),
            s.errors
        );
    };
    if let Some(bare) = bare {
        let label = if args.bare_flush_each {
            "bare flush-each"
        } else {
            "bare forwarder"
        };
        row(label, bare);
    }
    row(relay_label, relay);
    if let Some(redis) = redis {
        row("rmb-relay redis", redis);
    }
    if let Some((stats, _, _)) = relay_runs.cluster {
        row("rmb-relay cluster", stats);
    }
    if let Some(bare) = bare {
        let ratio = relay.rate() / bare.rate().max(1e-9);
        let verdict = if ratio >= 0.6 { "meets" } else { "below" };
        println!("ratio relay/bare: {ratio:.2} ({verdict} the 0.60 target)");
    }
    for (label, stats) in bare
        .map(|b| ("bare", b))
        .into_iter()
        .chain([("relay", relay)])
        .chain(redis.map(|r| ("redis", r)))
        .chain(relay_runs.cluster.map(|(s, _, _)| ("cluster", s)))
    {
        if let Some(first) = &stats.first_error {
            println!("{label} errors: {} (first: {first})", stats.errors);
        }
    }
    if let Some(redis) = redis {
        let ratio = redis.rate() / relay.rate().max(1e-9);
        let verdict = if ratio >= 0.5 { "meets" } else { "below" };
        println!("ratio redis (2 replicas)/{relay_label}: {ratio:.2} ({verdict} the 0.50 target)");
    }
    if let (Some(stats), Some((used, relay_cpu))) = (redis, redis_usage) {
        print_redis_usage("rmb-relay redis", stats, used);
        println!(
            "replicas' CPU (their runtime's threads, whole run): {relay_cpu:.2} s for {} envelopes: {:.0} msgs per relay CPU-second, {:.1} µs per envelope",
            stats.received,
            stats.received as f64 / relay_cpu.max(1e-9),
            relay_cpu * 1e6 / stats.received.max(1) as f64
        );
    }
    if let Some((stats, used, cpu)) = relay_runs.cluster {
        print_redis_usage("rmb-relay cluster, all nodes", stats, used);
        println!(
            "cluster: {:.0} msgs/s = {:.2} × the in-memory relay; relay replicas used {:.2} CPU-s: {:.0} msgs per relay CPU-second",
            stats.rate(),
            stats.rate() / relay.rate().max(1e-9),
            cpu,
            stats.received as f64 / cpu.max(1e-9)
        );
    }
    if let Some(idle) = idle {
        print_idle(idle);
        idle::print_redis(idle);
    }
    println!(
        "note: envelopes are signed once per pair; each message rewrites the uid counter and \
         send time in the encoded bytes, so signatures no longer verify (relays do not check \
         them). Both modes send identical frames."
    );
}

/// Redis's cost per envelope delivered in the Redis-mode run (the whole run, warm-up
/// included, over every envelope received in it).
fn print_redis_usage(label: &str, stats: &Stats, used: &replicas::RedisUsage) {
    let envelopes = stats.received.max(1) as f64;
    let (all, scripts) = used.totals();
    let mut top: Vec<(&String, &u64)> = used.calls.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1));
    let top: Vec<String> = top
        .iter()
        .take(6)
        .map(|(name, n)| format!("{name} {:.2}", **n as f64 / envelopes))
        .collect();
    println!(
        "redis per envelope ({label}, {} envelopes): {:.2} commands ({:.2} of them scripts; counts include commands run inside scripts): {}; redis CPU {:.1} µs",
        stats.received,
        all as f64 / envelopes,
        scripts as f64 / envelopes,
        top.join(", "),
        used.cpu_secs * 1e6 / envelopes
    );
    let mut by_time: Vec<(&String, &u64)> = used.usec.iter().collect();
    by_time.sort_by(|a, b| b.1.cmp(a.1));
    let by_time: Vec<String> = by_time
        .iter()
        .take(4)
        .map(|(name, us)| format!("{name} {:.1}", **us as f64 / envelopes))
        .collect();
    println!(
        "  redis time in commands per envelope, µs (a script's includes what it ran): {}",
        by_time.join(", ")
    );
}

fn print_idle(idle: &idle::IdleReport) {
    let per = |(before, after): (u64, u64)| {
        let grown = after as i64 - before as i64;
        let each = grown as f64 / idle.connected.max(1) as f64 / 1024.0;
        format!(
            "{:+.1} MiB, {each:.1} KiB/session",
            grown as f64 / 1_048_576.0
        )
    };
    let relay = match idle.relay_rss {
        Some(rss) => format!("relay RSS {}", per(rss)),
        None => "relay RSS not measured (give --relay-pid)".to_string(),
    };
    let sessions = idle
        .relay_sessions
        .map(|n| format!(", relay counts {n} sessions"))
        .unwrap_or_default();
    println!(
        "idle sessions: {} of {}, {relay}{sessions}",
        idle.connected, idle.requested
    );
    println!(
        "  clients (separate process, not in the relay figure): RSS {}; registration {:.1} s, logins {:.1} s",
        per(idle.client_rss),
        idle.register_secs,
        idle.connect_secs
    );
    if idle.failed > 0 {
        println!(
            "  {} logins failed; first: {}",
            idle.failed,
            idle.first_failure.as_deref().unwrap_or("?")
        );
    }
}

/// Nanoseconds as µs or ms.
fn latency(ns: Option<u64>) -> String {
    match ns {
        None => "-".into(),
        Some(ns) if ns < 1_000_000 => format!("{:.0} µs", ns as f64 / 1e3),
        Some(ns) => format!("{:.2} ms", ns as f64 / 1e6),
    }
}
