//! Memory of idle sessions: register M twins, log all of them in, and compare the relay's
//! resident memory before and after.
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

use crate::load;
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
}

/// Runs the phase against `target`; `relay_pid` is whose RSS to read (this process for
/// the in-process relay, `--relay-pid` otherwise, none if unknown).
pub async fn measure(
    target: &Target,
    count: usize,
    relay_pid: Option<u32>,
) -> anyhow::Result<IdleReport> {
    let mut report = IdleReport {
        requested: count,
        ..Default::default()
    };
    let (twins, register_secs) = target.register(count).await?;
    report.register_secs = register_secs;
    wait_for_sessions(target, |n| n == 0, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = relay_pid.map(rss_of).transpose()?;

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
    wait_for_sessions(target, |n| n >= report.connected, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    report.relay_sessions = target.sessions();
    if let (Some(pid), Some(before)) = (relay_pid, before) {
        report.relay_rss = Some((before, rss_of(pid)?));
    }

    drop(stdin);
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    wait_for_sessions(target, |n| n == 0, Duration::from_secs(10)).await;
    Ok(report)
}

async fn wait_for_sessions(target: &Target, done: impl Fn(usize) -> bool, at_most: Duration) {
    let deadline = Instant::now() + at_most;
    while let Some(n) = target.sessions() {
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
