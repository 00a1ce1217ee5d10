//! [`PeerProcess`]: the real `rmb-peer` binary serving one twin over its own Redis.
//!
//! The secret is passed in `RMB_MNEMONIC` (as an operator keeping it out of `ps` would).
//! "Ready" means what an app can see: the peer's `msgbus.system.status` key exists in its
//! Redis and reports a connected relay.

pub mod resp;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::relay_process::binaries;
use resp::Resp;

/// The status key the peer refreshes every second.
pub const STATUS_KEY: &str = "msgbus.system.status";

/// A running peer; killed on drop.
pub struct PeerProcess {
    mnemonic: String,
    redis_url: String,
    args: Vec<String>,
    /// Run in a private mount namespace with this file as its `/etc/hosts`.
    hosts: Option<PathBuf>,
    /// Command prefix and environment it runs with ([`PeerProcess::start_wrapped`]).
    wrap: Wrap,
    child: Option<Child>,
}

/// How a peer is run beyond its flags: inside a network namespace, with a shifted clock.
#[derive(Debug, Clone, Default)]
pub struct Wrap {
    /// Words put before the binary (`ip netns exec <ns>`); the program must exec the
    /// peer so that the child's pid is the peer's.
    pub prefix: Vec<String>,
    /// Extra environment (e.g. libfaketime's `LD_PRELOAD` and `FAKETIME`).
    pub env: Vec<(String, String)>,
}

impl PeerProcess {
    /// Starts `rmb-peer` for `mnemonic` with `--redis redis_url`, one `--relay` per entry
    /// of `relays`, `--registry registry_url` and `extra` flags; waits until it is ready.
    pub fn start(
        mnemonic: &str,
        redis_url: &str,
        relays: &[String],
        registry_url: &str,
        extra: &[&str],
    ) -> Self {
        let mut args = vec![
            "--redis".to_string(),
            redis_url.to_string(),
            "--registry".to_string(),
            registry_url.to_string(),
        ];
        for relay in relays {
            args.push("--relay".into());
            args.push(relay.clone());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::start_with_args(mnemonic, redis_url, args, None)
    }

    /// Starts `rmb-peer` with exactly `args` (the secret still also in `RMB_MNEMONIC`;
    /// a `-m` in `args` wins; an empty `mnemonic` leaves `RMB_MNEMONIC` unset, for a
    /// secret given otherwise, e.g. in a `--config` file). With `hosts`, the peer runs
    /// in its own mount namespace where that file is `/etc/hosts`, so it resolves test
    /// names such as `relay.localtest` as a deployment's DNS would (needs root: see
    /// [`private_hosts_supported`]). `redis_url` is the Redis its `args` name.
    pub fn start_with_args(
        mnemonic: &str,
        redis_url: &str,
        args: Vec<String>,
        hosts: Option<PathBuf>,
    ) -> Self {
        let mut peer = PeerProcess {
            mnemonic: mnemonic.to_string(),
            redis_url: redis_url.to_string(),
            args,
            hosts,
            wrap: Wrap::default(),
            child: None,
        };
        peer.spawn();
        peer
    }

    /// Starts `rmb-peer` with exactly `args`, run as `wrap` says; `redis_url` is where
    /// this process reaches the Redis its `args` name (waits until it is ready).
    pub fn start_wrapped(mnemonic: &str, redis_url: &str, args: Vec<String>, wrap: Wrap) -> Self {
        let mut peer = PeerProcess {
            mnemonic: mnemonic.to_string(),
            redis_url: redis_url.to_string(),
            args,
            hosts: None,
            wrap,
            child: None,
        };
        peer.spawn();
        peer
    }

    fn spawn(&mut self) {
        // A stale status key from a previous run must not count as ready.
        Resp::connect(&self.redis_url).del(STATUS_KEY);
        let binary = binaries().join("rmb-peer");
        let mut command = match &self.hosts {
            None => match self.wrap.prefix.split_first() {
                Some((first, rest)) => {
                    let mut command = Command::new(first);
                    command.args(rest).arg(&binary);
                    command
                }
                None => Command::new(&binary),
            },
            Some(hosts) => {
                // `unshare` execs sh, which execs the peer: the child's pid is the peer's.
                let mut wrapper = Command::new("unshare");
                wrapper
                    .args(["--mount", "sh", "-c"])
                    .arg(r#"mount --bind "$1" /etc/hosts && shift && exec "$@""#)
                    .arg("sh")
                    .arg(hosts)
                    .arg(&binary);
                wrapper
            }
        };
        if self.mnemonic.is_empty() {
            command.env_remove("RMB_MNEMONIC");
        } else {
            command.env("RMB_MNEMONIC", &self.mnemonic);
        }
        let child = command
            .args(&self.args)
            .envs(self.wrap.env.iter().map(|(k, v)| (k, v)))
            .env(
                "RUST_LOG",
                std::env::var("RMB_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut redis = Resp::connect(&self.redis_url);
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("rmb-peer exited at start: {status}");
            }
            if let Some(status) = redis.get(STATUS_KEY) {
                let status: serde_json::Value =
                    serde_json::from_slice(&status).expect("status key holds JSON");
                let connected = status["relays"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|l| l["connected"] == true));
                if connected {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("rmb-peer on {} did not become ready", self.redis_url);
    }

    /// The peer's Redis URL.
    pub fn redis_url(&self) -> &str {
        &self.redis_url
    }

    /// A new raw connection to the peer's Redis (an app's view).
    pub fn redis(&self) -> Resp {
        Resp::connect(&self.redis_url)
    }

    /// The current `msgbus.system.status` JSON (`None` when the key is absent).
    pub fn status(&self) -> Option<serde_json::Value> {
        self.redis()
            .get(STATUS_KEY)
            .map(|s| serde_json::from_slice(&s).expect("status key holds JSON"))
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILLs the peer.
    pub fn kill(&mut self) {
        crate::child::kill(&mut self.child);
    }

    /// Sends SIGTERM without waiting (see [`PeerProcess::wait_exit`]).
    pub fn signal_term(&self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
    }

    /// Waits up to `bound` for the peer to exit by itself; its status.
    pub fn wait_exit(&mut self, bound: Duration) -> Option<std::process::ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < bound {
            if let Some(status) = self.child.as_mut()?.try_wait().ok().flatten() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGTERMs the peer and returns its exit status (graceful shutdown).
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        crate::child::terminate(&mut self.child)
    }

    /// Starts it again after [`PeerProcess::kill`] (same secret, Redis and flags) and
    /// waits until ready, so a test can keep it down for a while; does nothing if it runs.
    pub fn relaunch(&mut self) {
        if self.child.is_none() {
            self.spawn();
        }
    }

    /// Starts it again with the same secret, Redis and flags; waits until ready.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// True when this process may run a peer with its own `/etc/hosts` (root, and a kernel
/// that allows mount namespaces); says why not on stderr otherwise.
pub fn private_hosts_supported() -> bool {
    let probe = Command::new("unshare")
        .args(["--mount", "sh", "-c", "mount --bind /etc/hosts /etc/hosts"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match probe {
        Ok(status) if status.success() => true,
        other => {
            eprintln!(
                "cannot give a process its own /etc/hosts here (unshare --mount as root: {other:?})"
            );
            false
        }
    }
}
