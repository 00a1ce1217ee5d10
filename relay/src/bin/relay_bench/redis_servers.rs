//! Private Redis servers for the bench's Redis modes: [`RedisChild`] (one
//! `redis-server`), [`RedisClusterChild`] (a cluster of them), and [`RedisUsage`], what
//! Redis did (commands by name, its CPU) as `INFO commandstats` and `INFO cpu` say, so
//! the bench can print Redis's cost per envelope.

use std::collections::BTreeMap;
use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// A `redis-server` on a free loopback port, persisting nothing; killed on drop.
pub struct RedisChild {
    child: Child,
    pub url: String,
    /// Its client port.
    pub port: u16,
}

/// A TCP port nobody listens on right now.
fn free_port() -> anyhow::Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl RedisChild {
    /// Starts it, or explains that `redis-server` is missing.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(&[], None)
    }

    /// Starts it with `extra` options, in `dir` if given (cluster nodes write a file).
    pub fn start_with(extra: &[&str], dir: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let port = free_port()?;
        let mut command = Command::new("redis-server");
        if let Some(dir) = dir {
            command.current_dir(dir);
        }
        let child = command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (install it, e.g. apt-get install redis-server)")?;
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not come up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(RedisChild {
            child,
            url: format!("redis://127.0.0.1:{port}/"),
            port,
        })
    }
}

impl Drop for RedisChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private Redis Cluster of `masters` nodes without replicas (the bench measures cost,
/// not failover), each node's cluster bus on a free port of its own; killed on drop.
pub struct RedisClusterChild {
    nodes: Vec<RedisChild>,
    /// `redis+cluster://` naming every node.
    pub url: String,
    _dir: tempfile::TempDir,
}

impl RedisClusterChild {
    /// Starts the nodes, joins them with `redis-cli --cluster create` and waits until
    /// every node says `cluster_state:ok`.
    pub async fn start(masters: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(masters >= 3, "a Redis Cluster needs at least 3 masters");
        let dir = tempfile::tempdir()?;
        let mut nodes = Vec::new();
        for i in 0..masters {
            let node_dir = dir.path().join(i.to_string());
            std::fs::create_dir_all(&node_dir)?;
            let bus = free_port()?.to_string();
            nodes.push(RedisChild::start_with(
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-port",
                    &bus,
                ],
                Some(&node_dir),
            )?);
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .context("running redis-cli --cluster create")?;
        anyhow::ensure!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let started = Instant::now();
        for node in &nodes {
            loop {
                let client = redis::Client::open(node.url.as_str())?;
                let mut conn = client.get_multiplexed_async_connection().await?;
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut conn)
                    .await?;
                if info.contains("cluster_state:ok") {
                    break;
                }
                anyhow::ensure!(
                    started.elapsed() < Duration::from_secs(30),
                    "the cluster did not form"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(RedisClusterChild {
            url: format!("redis+cluster://{}", addresses.join(",")),
            nodes,
            _dir: dir,
        })
    }

    /// What all nodes together have done so far.
    pub async fn usage(&self) -> anyhow::Result<RedisUsage> {
        let mut total = RedisUsage::default();
        for node in &self.nodes {
            total.add(&RedisUsage::read(&node.url).await?);
        }
        Ok(total)
    }
}

/// What Redis has done since it started: calls per command (commands run inside scripts
/// included, as Redis counts them) and its CPU time, from `INFO commandstats` and
/// `INFO cpu`.
#[derive(Debug, Clone, Default)]
pub struct RedisUsage {
    /// Calls by command name (lower case, as INFO names them).
    pub calls: BTreeMap<String, u64>,
    /// Microseconds spent in each command (a script's include the commands it ran).
    pub usec: BTreeMap<String, u64>,
    /// Seconds of CPU, user and system.
    pub cpu_secs: f64,
}

impl RedisUsage {
    /// Reads it from the Redis at `url`.
    pub async fn read(url: &str) -> anyhow::Result<RedisUsage> {
        let client = redis::Client::open(url)?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await?;
        let cpu: String = redis::cmd("INFO").arg("cpu").query_async(&mut conn).await?;
        Ok(RedisUsage::parse(&stats, &cpu))
    }

    /// Parses the two INFO sections.
    pub fn parse(commandstats: &str, cpu: &str) -> RedisUsage {
        let mut usage = RedisUsage::default();
        for line in commandstats.lines() {
            let Some((name, fields)) = line
                .trim()
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            let field = |key: &str| {
                fields
                    .split(',')
                    .find_map(|f| f.strip_prefix(key))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            usage.calls.insert(name.to_string(), field("calls="));
            usage.usec.insert(name.to_string(), field("usec="));
        }
        for line in cpu.lines() {
            if let Some((key, value)) = line.trim().split_once(':')
                && (key == "used_cpu_sys" || key == "used_cpu_user")
            {
                usage.cpu_secs += value.parse::<f64>().unwrap_or(0.0);
            }
        }
        usage
    }

    /// What was done between `before` and this reading.
    pub fn since(&self, before: &RedisUsage) -> RedisUsage {
        let minus = |now: &BTreeMap<String, u64>, then: &BTreeMap<String, u64>| {
            now.iter()
                .map(|(name, n)| {
                    (
                        name.clone(),
                        n.saturating_sub(*then.get(name).unwrap_or(&0)),
                    )
                })
                .filter(|(_, n)| *n > 0)
                .collect()
        };
        RedisUsage {
            calls: minus(&self.calls, &before.calls),
            usec: minus(&self.usec, &before.usec),
            cpu_secs: (self.cpu_secs - before.cpu_secs).max(0.0),
        }
    }

    /// Adds `other`'s calls and CPU to these (a cluster's nodes together).
    pub fn add(&mut self, other: &RedisUsage) {
        for (name, n) in &other.calls {
            *self.calls.entry(name.clone()).or_default() += n;
        }
        for (name, n) in &other.usec {
            *self.usec.entry(name.clone()).or_default() += n;
        }
        self.cpu_secs += other.cpu_secs;
    }

    /// All calls, and those that were scripts (EVAL, EVALSHA, FCALL).
    pub fn totals(&self) -> (u64, u64) {
        let scripts = [
            "eval",
            "evalsha",
            "eval_ro",
            "evalsha_ro",
            "fcall",
            "fcall_ro",
        ];
        let all = self.calls.values().sum();
        let script_calls = self
            .calls
            .iter()
            .filter(|(name, _)| scripts.contains(&name.as_str()))
            .map(|(_, n)| n)
            .sum();
        (all, script_calls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_sections_parse_and_subtract() {
        let before = RedisUsage::parse(
            "# Commandstats\r\ncmdstat_evalsha:calls=10,usec=50,usec_per_call=5.00\r\ncmdstat_lpush:calls=3,usec=1\r\n",
            "# CPU\r\nused_cpu_sys:1.5\r\nused_cpu_user:2.0\r\nused_cpu_sys_children:9\r\n",
        );
        assert_eq!(before.calls["evalsha"], 10);
        assert!((before.cpu_secs - 3.5).abs() < 1e-9);
        let after = RedisUsage::parse(
            "cmdstat_evalsha:calls=30,usec=90\r\ncmdstat_lpush:calls=3,usec=1\r\ncmdstat_publish:calls=7,usec=2\r\n",
            "used_cpu_sys:2.0\r\nused_cpu_user:2.5\r\n",
        );
        let used = after.since(&before);
        assert_eq!(used.calls.len(), 2, "lpush did not move: {used:?}");
        assert_eq!(used.totals(), (27, 20));
        assert!((used.cpu_secs - 1.0).abs() < 1e-9);
    }
}
