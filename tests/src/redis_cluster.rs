//! [`RedisCluster`]: a private Redis Cluster (3 masters, 3 replicas) for one test, and
//! [`RedisSentinels`]: a master, a replica and three sentinels watching them.
//!
//! Every node listens on a free loopback port (its cluster bus too, set with
//! `--cluster-port`), keeps its files in a temporary directory, and is SIGKILLed on drop.
//! Failure detection is quick (`--cluster-node-timeout 1000`, sentinels'
//! `down-after-milliseconds 1000`) so a test can kill a master and wait for its replica's
//! promotion in a few seconds. Tests never touch a Redis they did not start.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::redis_server::free_port;

/// How long the cluster takes at most to form or to promote a replica.
const SETTLE: Duration = Duration::from_secs(30);

/// One `redis-server` process of a fixture.
struct Node {
    port: u16,
    args: Vec<String>,
    dir: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn new(root: &Path, port: u16, args: Vec<String>) -> Self {
        let dir = root.join(port.to_string());
        std::fs::create_dir_all(&dir).expect("node directory");
        let mut node = Node {
            port,
            args,
            dir,
            child: None,
        };
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(&self.args)
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (tests/run.sh installs it)");
        self.child = Some(child);
        wait_until(&format!("redis on port {} answers", self.port), || {
            cli(self.port, &["PING"]) == "PONG"
        });
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `redis-cli -p <port> <args…>`, its output trimmed.
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli is installed with redis-server");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Polls `done` every 100 ms for [`SETTLE`], then panics naming `what`.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + SETTLE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A node as `CLUSTER NODES` describes it.
#[derive(Debug, Clone)]
pub struct ClusterNode {
    /// Its client port.
    pub port: u16,
    /// True for a master that is not failed.
    pub master: bool,
    /// Slot ranges it serves (masters).
    pub slots: Vec<(u16, u16)>,
}

/// A 3-master, 3-replica Redis Cluster on loopback.
pub struct RedisCluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts six nodes, makes them a cluster (one replica per master) and waits until
    /// every node says `cluster_state:ok` and every master has its replica in sync.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let nodes: Vec<Node> = (0..6)
            .map(|_| {
                let (port, bus) = (free_port(), free_port());
                let args = [
                    "--port",
                    &port.to_string(),
                    "--cluster-port",
                    &bus.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "1000",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                Node::new(dir.path(), port, args)
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = RedisCluster { nodes, _dir: dir };
        cluster.wait_healthy(None);
        cluster
    }

    /// `redis+cluster://` with the three first nodes as seeds.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self.nodes[..3]
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// Ports of the nodes that run now.
    fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// The cluster's nodes, as a live node sees them.
    pub fn nodes(&self) -> Vec<ClusterNode> {
        let port = self.live_ports()[0];
        cli(port, &["CLUSTER", "NODES"])
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let address = fields.get(1)?;
                let port = address
                    .split('@')
                    .next()?
                    .rsplit(':')
                    .next()?
                    .parse()
                    .ok()?;
                let flags = fields.get(2)?;
                let master = flags.contains("master") && !flags.contains("fail");
                let slots = fields[8.min(fields.len())..]
                    .iter()
                    .filter(|s| !s.starts_with('['))
                    .filter_map(|s| match s.split_once('-') {
                        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                        None => s.parse().ok().map(|x| (x, x)),
                    })
                    .collect();
                Some(ClusterNode {
                    port,
                    master,
                    slots,
                })
            })
            .collect()
    }

    /// Ports of the live masters.
    pub fn masters(&self) -> Vec<u16> {
        self.nodes()
            .into_iter()
            .filter(|n| n.master)
            .map(|n| n.port)
            .collect()
    }

    /// `CLUSTER KEYSLOT key`.
    pub fn keyslot(&self, key: &str) -> u16 {
        cli(self.live_ports()[0], &["CLUSTER", "KEYSLOT", key])
            .parse()
            .expect("CLUSTER KEYSLOT answers a number")
    }

    /// The port of the master serving `slot` now.
    pub fn master_of(&self, slot: u16) -> u16 {
        self.nodes()
            .into_iter()
            .find(|n| n.master && n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .map(|n| n.port)
            .unwrap_or_else(|| panic!("no master serves slot {slot}"))
    }

    /// `redis-cli -c` (follows redirections) against a live node.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut all = vec!["-c"];
        all.extend_from_slice(args);
        cli(self.live_ports()[0], &all)
    }

    /// SIGKILLs the node on `port` (nothing is flushed).
    pub fn kill(&mut self, port: u16) {
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port == port) {
            node.kill();
        }
    }

    /// Starts the node on `port` again (it rejoins as a replica of whoever took its slots).
    pub fn relaunch(&mut self, port: u16) {
        if let Some(node) = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port && n.child.is_none())
        {
            node.spawn();
        }
    }

    /// Waits until a live master other than `dead` serves every slot, every live node
    /// says `cluster_state:ok`, and each live master has an online replica (if `dead` is
    /// `None`; after a kill the promoted master has none until the dead node returns).
    pub fn wait_healthy(&self, dead: Option<u16>) {
        wait_until("the cluster is ok", || {
            let live = self.live_ports();
            let ok = live
                .iter()
                .all(|p| cli(*p, &["CLUSTER", "INFO"]).contains("cluster_state:ok"));
            let nodes = self.nodes();
            let covered: u32 = nodes
                .iter()
                .filter(|n| n.master && Some(n.port) != dead && live.contains(&n.port))
                .flat_map(|n| n.slots.iter().map(|(a, b)| u32::from(b - a) + 1))
                .sum();
            let replicated = dead.is_some()
                || nodes.iter().filter(|n| n.master).all(|n| {
                    let info = cli(n.port, &["INFO", "replication"]);
                    info.contains("connected_slaves:1") && info.contains("state=online")
                });
            ok && covered == 16384 && replicated
        });
    }
}

/// A master, its replica and three sentinels (quorum 2) naming it `mymaster`.
pub struct RedisSentinels {
    data: Vec<Node>,
    sentinels: Vec<Node>,
    _dir: tempfile::TempDir,
}

/// The master's name in the sentinels' configuration.
pub const MASTER_NAME: &str = "mymaster";

impl RedisSentinels {
    /// Starts them and waits until the replica is in sync and every sentinel knows it.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let plain = |port: u16, extra: &[String]| {
            let mut args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend_from_slice(extra);
            args
        };
        let master_port = free_port();
        let master = Node::new(dir.path(), master_port, plain(master_port, &[]));
        let replica_port = free_port();
        let replica = Node::new(
            dir.path(),
            replica_port,
            plain(
                replica_port,
                &[
                    "--replicaof".into(),
                    "127.0.0.1".into(),
                    master_port.to_string(),
                ],
            ),
        );
        let sentinels = (0..3)
            .map(|_| {
                let port = free_port();
                let sdir = dir.path().join(format!("sentinel-{port}"));
                std::fs::create_dir_all(&sdir).expect("sentinel directory");
                let conf = sdir.join("sentinel.conf");
                std::fs::write(
                    &conf,
                    format!(
                        "port {port}\nbind 127.0.0.1\nsentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
                         sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                         sentinel failover-timeout {MASTER_NAME} 3000\n\
                         sentinel parallel-syncs {MASTER_NAME} 1\n"
                    ),
                )
                .expect("write sentinel.conf");
                Node::new(
                    dir.path(),
                    port,
                    vec![conf.display().to_string(), "--sentinel".into()],
                )
            })
            .collect();
        let set = RedisSentinels {
            data: vec![master, replica],
            sentinels,
            _dir: dir,
        };
        wait_until("the replica is in sync and the sentinels see it", || {
            let info = cli(master_port, &["INFO", "replication"]);
            info.contains("state=online")
                && set.sentinels.iter().all(|s| {
                    cli(s.port, &["SENTINEL", "replicas", MASTER_NAME])
                        .contains(&replica_port.to_string())
                        && cli(s.port, &["SENTINEL", "sentinels", MASTER_NAME])
                            .lines()
                            .filter(|l| *l == "ip")
                            .count()
                            >= 2
                })
        });
        set
    }

    /// `redis+sentinel://s1,s2,s3/mymaster`
    pub fn url(&self) -> String {
        let list: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("redis+sentinel://{}/{MASTER_NAME}", list.join(","))
    }

    /// The port of the master the first live sentinel names.
    pub fn master(&self) -> u16 {
        let answer = cli(
            self.sentinels[0].port,
            &["SENTINEL", "get-master-addr-by-name", MASTER_NAME],
        );
        answer
            .lines()
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("sentinel names no master: {answer}"))
    }

    /// `redis-cli` against the current master.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.master(), args)
    }

    /// SIGKILLs the current master and waits until the sentinels name the replica and it
    /// says it is a master; returns the new master's port.
    pub fn kill_master(&mut self) -> u16 {
        let old = self.master();
        if let Some(node) = self.data.iter_mut().find(|n| n.port == old) {
            node.kill();
        }
        let mut new = old;
        wait_until("a sentinel failover", || {
            new = self.master();
            new != old && cli(new, &["ROLE"]).starts_with("master")
        });
        new
    }
}
