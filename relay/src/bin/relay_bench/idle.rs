//! Memory of idle sessions: register M twins, log all of them in, and compare the relay's
//! resident memory before and after.
//!
//! In Redis mode (`--idle-redis`, [`measure_redis`]) the relay in this process keeps its
//! queues, presence, hosted registry and used logins in a private `redis-server`, as
//! `rmb-relay --redis` does; besides the relay's RSS the phase then reports what Redis
//! holds per session (`INFO memory` `used_memory` and `DBSIZE`, before and after the
//! logins; the twins are registered before the first reading).
//!
//! The clients run in a child process (this same binary, re-run with a hidden
//! `--idle-child` flag), so the relay's figure holds only server-side memory. The child
//! reads `<twin> <seed>` lines on stdin up to an empty line, logs every twin in, reports
//! on stdout (`failure …` lines, then `ready <ok> <failed> <rss before> <rss after>`),
//! and keeps the sessions open until its stdin closes.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use rmb_identity::{KeyType, Signer};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use std::sync::Arc;

use rmb_relay::queue::{Queues, RedisQueues};
use rmb_relay::registry::{HostedRegistry, RedisStore};
use rmb_relay::{Config, RelayServer, RelayState};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::load;
use crate::replicas::RedisChild;
use crate::twins::{Target, login_url};

/// Logins in flight at once from the child.
const CONNECT_CONCURRENCY: usize = 64;
/// Longest the child may take to log everyone in.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(600);

/// What the idle-session phase found. Memory figures are bytes.
#[derive(Debug, Default)]
pub struct IdleReport {
    pub requested: usize,
    pub connected: usize,
    pub failed: usize,
    pub first_failure: Option<String>,
    pub register_secs: f64,
    pub connect_secs: f64,
    /// Relay RSS before and after, when it can be read.
    pub relay_rss: Option<(u64, u64)>,
    /// Sessions the in-process relay counted once everyone was in.
    pub relay_sessions: Option<usize>,
    /// The client process's RSS before and after its logins.
    pub client_rss: (u64, u64),
    /// Redis mode: what Redis held before and after the logins.
    pub redis: Option<RedisIdle>,
}

/// What the relay's Redis held before and after the logins (Redis mode).
#[derive(Debug, Default, Clone, Copy)]
pub struct RedisIdle {
    /// `used_memory` of `INFO memory`, bytes.
    pub used_before: u64,
    pub used_after: u64,
    /// `DBSIZE`: keys.
    pub keys_before: u64,
    pub keys_after: u64,
}

impl RedisIdle {
    /// Reads `used_memory` and `DBSIZE` from the Redis at `url`.
    async fn read(url: &str) -> anyhow::Result<(u64, u64)> {
        let client = redis::Client::open(url)?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let memory: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut conn)
            .await?;
        let used = memory
            .lines()
            .find_map(|l| l.trim().strip_prefix("used_memory:"))
            .and_then(|v| v.parse().ok())
            .context("no used_memory in INFO memory")?;
        let keys: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await?;
        Ok((used, keys))
    }
}

/// Runs the phase against `target`; `relay_pid` is whose RSS to read (this process for
/// the in-process relay, `--relay-pid` otherwise, none if unknown).
pub async fn measure(
    target: &Target,
    count: usize,
    relay_pid: Option<u32>,
) -> anyhow::Result<IdleReport> {
    measure_with(target, &|| target.sessions(), count, relay_pid, None).await
}

/// The phase in Redis mode: an in-process relay (this process's RSS) whose queues,
/// presence, hosted registry and used logins are in a private `redis-server`.
pub async fn measure_redis(count: usize) -> anyhow::Result<IdleReport> {
    let redis = RedisChild::start()?;
    let store = RedisStore::connect(&redis.url, "rmb:registry:")
        .await
        .context("the hosted registry in redis")?;
    let hosted = HostedRegistry::new(Arc::new(store));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let domain = format!("127.0.0.1:{}", listener.local_addr()?.port());
    let config = Config {
        domains: [domain.clone()].into(),
        // Every bench client connects (and registers) from 127.0.0.1.
        max_connections_per_ip: 0,
        registry_register_rate: 0,
        max_connections: usize::MAX,
        ..Config::default()
    };
    let shutdown = CancellationToken::new();
    let queues: Arc<dyn Queues> = Arc::new(
        RedisQueues::connect(
            &redis.url,
            "rmb:relay:",
            config.queue_per_session,
            shutdown.clone(),
        )
        .await?
        .with_limits(config.queue_limits()),
    );
    let state = RelayState::with_queues(
        config,
        hosted.clone(),
        Some(hosted.clone()),
        queues,
        shutdown,
    );
    let server = RelayServer::start(Arc::clone(&state), listener)?;
    let target = Target {
        ws_url: format!("ws://{domain}/"),
        domain,
        registry: hosted,
        local: None,
    };
    let sessions = || Some(state.switch.len());
    let pid = Some(std::process::id());
    let report = measure_with(&target, &sessions, count, pid, Some(&redis.url)).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), server.shutdown()).await;
    drop(redis);
    report
}

/// [`measure`] with the relay's session count from `sessions` and, given a Redis URL,
/// Redis's memory and keys read where the relay's RSS is.
async fn measure_with(
    target: &Target,
    sessions: &dyn Fn() -> Option<usize>,
    count: usize,
    relay_pid: Option<u32>,
    redis_url: Option<&str>,
) -> anyhow::Result<IdleReport> {
    let mut report = IdleReport {
        requested: count,
        ..Default::default()
    };
    let (twins, register_secs) = target.register(count).await?;
    report.register_secs = register_secs;
    wait_for_sessions(sessions, |n| n == 0, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = relay_pid.map(rss_of).transpose()?;
    let redis_before = match redis_url {
        Some(url) => Some(RedisIdle::read(url).await?),
        None => None,
    };

    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .arg("--idle-child")
        .arg(&target.ws_url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting the idle-session client process")?;
    let mut stdin = child.stdin.take().context("child stdin")?;
    let mut lines = BufReader::new(child.stdout.take().context("child stdout")?).lines();
    let mut list = String::with_capacity(count * 80);
    for twin in &twins {
        let _ = writeln!(list, "{} {}", twin.id, twin.seed);
    }
    list.push('\n');
    drop(twins);
    let started = Instant::now();
    stdin.write_all(list.as_bytes()).await?;
    stdin.flush().await?;

    let ready = tokio::time::timeout(CONNECT_TIMEOUT, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(failure) = line.strip_prefix("failure ") {
                report.first_failure.get_or_insert(failure.to_string());
            } else if let Some(ready) = line.strip_prefix("ready ") {
                return Ok(ready.to_string());
            }
        }
        bail!("the idle-session client exited before logging in")
    })
    .await
    .context("the idle-session client took too long")??;
    report.connect_secs = started.elapsed().as_secs_f64();
    let numbers = ready
        .split(' ')
        .map(str::parse::<u64>)
        .collect::<Result<Vec<_>, _>>()
        .context("bad ready line from the child")?;
    let [ok, failed, client_before, client_after] = numbers[..] else {
        bail!("bad ready line from the child: {ready}");
    };
    (report.connected, report.failed) = (ok as usize, failed as usize);
    report.client_rss = (client_before, client_after);

    // The relay registers a session just after the upgrade answer: wait until it has all.
    wait_for_sessions(sessions, |n| n >= report.connected, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    report.relay_sessions = sessions();
    if let (Some(pid), Some(before)) = (relay_pid, before) {
        report.relay_rss = Some((before, rss_of(pid)?));
    }
    if let (Some(url), Some((used_before, keys_before))) = (redis_url, redis_before) {
        let (used_after, keys_after) = RedisIdle::read(url).await?;
        report.redis = Some(RedisIdle {
            used_before,
            used_after,
            keys_before,
            keys_after,
        });
    }

    drop(stdin);
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    wait_for_sessions(sessions, |n| n == 0, Duration::from_secs(10)).await;
    Ok(report)
}

/// Prints what Redis holds per idle session (Redis mode), as a table.
pub fn print_redis(report: &IdleReport) {
    let Some(redis) = report.redis else { return };
    let n = report.connected.max(1) as f64;
    let grown = redis.used_after as f64 - redis.used_before as f64;
    let keys = redis.keys_after as f64 - redis.keys_before as f64;
    let relay = report.relay_rss.map_or("-".to_string(), |(before, after)| {
        format!("{:.2}", (after as f64 - before as f64) / n / 1024.0)
    });
    println!(
        "idle sessions in Redis mode ({} sessions):",
        report.connected
    );
    println!(
        "  {:<26} {:>12} {:>12} {:>14}",
        "", "before", "after", "per session"
    );
    println!(
        "  {:<26} {:>12} {:>12} {:>14}",
        "relay RSS (KiB)",
        report.relay_rss.map_or(0, |r| r.0 / 1024),
        report.relay_rss.map_or(0, |r| r.1 / 1024),
        relay
    );
    println!(
        "  {:<26} {:>12} {:>12} {:>14.0}",
        "redis used_memory (bytes)",
        redis.used_before,
        redis.used_after,
        grown / n
    );
    println!(
        "  {:<26} {:>12} {:>12} {:>14.2}",
        "redis keys",
        redis.keys_before,
        redis.keys_after,
        keys / n
    );
}

async fn wait_for_sessions(
    sessions: &dyn Fn() -> Option<usize>,
    done: impl Fn(usize) -> bool,
    at_most: Duration,
) {
    let deadline = Instant::now() + at_most;
    while let Some(n) = sessions() {
        if done(n) || Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The hidden `--idle-child <ws url>` mode: see the module docs.
pub async fn child(ws_url: &str) -> anyhow::Result<()> {
    raise_fd_limit();
    let mut input = std::io::stdin().lines();
    let mut twins = Vec::new();
    for line in input.by_ref() {
        let line = line?;
        if line.is_empty() {
            break;
        }
        let (id, seed) = line.split_once(' ').context("bad twin line")?;
        twins.push((id.parse::<u32>()?, seed.to_string()));
    }
    let pid = std::process::id();
    let before = rss_of(pid)?;
    let results: Vec<anyhow::Result<load::Ws>> = futures_util::stream::iter(twins)
        .map(|(id, seed)| async move {
            let signer = Signer::from_secret(&seed, KeyType::Ed25519)?;
            load::connect(&login_url(ws_url, &signer, id)).await
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect()
        .await;
    let (mut open, mut failed, mut out) = (Vec::new(), 0, String::new());
    for result in results {
        match result {
            Ok(ws) => open.push(ws),
            Err(e) if failed == 0 => {
                failed += 1;
                let _ = writeln!(out, "failure {}", format!("{e:#}").replace('\n', " "));
            }
            Err(_) => failed += 1,
        }
    }
    let _ = writeln!(
        out,
        "ready {} {failed} {before} {}",
        open.len(),
        rss_of(pid)?
    );
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes())?;
    stdout.flush()?;
    drop(stdout);
    // Hold the sessions until the parent is done measuring and closes our stdin.
    drop(input);
    tokio::task::spawn_blocking(|| std::io::stdin().lines().for_each(drop)).await?;
    drop(open);
    Ok(())
}

/// Resident memory of process `pid`, in bytes (VmRSS of /proc/<pid>/status).
pub fn rss_of(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .with_context(|| format!("no VmRSS in {path}"))?;
    Ok(kib * 1024)
}

/// Raises this process's open-file limit to its hard limit; returns the limit in force.
pub fn raise_fd_limit() -> u64 {
    rmb_relay::open_files::raise_open_file_limit().unwrap_or(0)
}
