//! The servers the bench runs against: rmb-relays (the first hosts the registry),
//! redis-servers and a nats-server, on free loopback ports, killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};

use crate::bench_common::cpu::CpuTime;
use crate::bench_common::{free_port, wait_for_port};

/// Child processes, killed on drop.
#[derive(Default)]
pub struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A scratch directory, removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new() -> anyhow::Result<Scratch> {
        let path = std::env::temp_dir().join(format!(
            "topic-bench-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&path)?;
        Ok(Scratch(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `rmb-relay` next to this executable (or given).
pub fn relay_binary(given: &Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path.clone());
    }
    let path = std::env::current_exe()?
        .parent()
        .context("executable has no directory")?
        .join("rmb-relay");
    if !path.exists() {
        bail!(
            "{} not found: build it (`cargo build --release -p rmb-relay`) or pass --relay-bin",
            path.display()
        );
    }
    Ok(path)
}

impl Children {
    /// CPU readings of these processes and of this one (the subscribers and the owner):
    /// with [`cpu_seconds_since`], what a measurement cost in all.
    pub fn cpu_times(&self) -> Vec<CpuTime> {
        self.0
            .iter()
            .map(Child::id)
            .chain([std::process::id()])
            .map(CpuTime::of)
            .collect()
    }

    /// Starts a redis-server; its URL.
    pub fn redis(&mut self, dir: &Path) -> anyhow::Result<String> {
        let port = free_port()?;
        let dir = dir.join(format!("redis-{port}"));
        std::fs::create_dir_all(&dir)?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (is it installed?)")?;
        self.0.push(child);
        wait_for_port(port, "redis-server")?;
        Ok(format!("redis://127.0.0.1:{port}/"))
    }

    /// Starts a relay (hosting the registry, or using `registry`) with `extra` flags;
    /// its domain.
    pub fn relay(
        &mut self,
        binary: &Path,
        extra: &[String],
        dir: &Path,
        registry: Option<&str>,
    ) -> anyhow::Result<String> {
        let port = free_port()?;
        let domain = format!("127.0.0.1:{port}");
        let mut command = Command::new(binary);
        command
            .args(["--listen", &domain, "--domain", &domain])
            .args(["--federation-http", "--federation-allow", "127.0.0.1"])
            .arg("--data-dir")
            .arg(dir.join(format!("relay-{port}")))
            .args(extra)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null());
        match registry {
            Some(registry) => {
                command.args(["--registry", registry]);
            }
            // The bench registers all its twins from this one address, faster than a
            // hosting relay lets one address register by default.
            None => {
                command.args(["--registry-register-rate", "0"]);
            }
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        self.0.push(child);
        wait_for_port(port, "rmb-relay")?;
        Ok(domain)
    }

    /// Starts a nats-server; its port.
    pub fn nats(&mut self) -> anyhow::Result<u16> {
        let port = free_port()?;
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nats-server (is it installed?)")?;
        self.0.push(child);
        wait_for_port(port, "nats-server")?;
        Ok(port)
    }
}

/// The machine's CPU time so far, in clock ticks: (stolen by the hypervisor, all).
/// The `cpu` line of `/proc/stat`; `steal` is its eighth value. (0, 0) when unreadable.
pub fn machine_ticks() -> (u64, u64) {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return (0, 0);
    };
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest times are within user).
    let all = values.iter().take(8).sum();
    (values.get(7).copied().unwrap_or(0), all)
}

/// Percent of the machine's CPU time the hypervisor took between two
/// [`machine_ticks`] readings: on a shared VM, the figures of a run with much steal
/// are slower for reasons outside the bench.
pub fn steal_percent(before: (u64, u64), after: (u64, u64)) -> f64 {
    let all = after.1.saturating_sub(before.1);
    if all == 0 {
        return 0.0;
    }
    100.0 * after.0.saturating_sub(before.0) as f64 / all as f64
}

/// CPU seconds used between two [`Children::cpu_times`] of the same processes.
pub fn cpu_seconds_since(before: &[CpuTime], after: &[CpuTime]) -> f64 {
    after
        .iter()
        .zip(before)
        .map(|(a, b)| a.since(b).as_secs_f64())
        .sum()
}
