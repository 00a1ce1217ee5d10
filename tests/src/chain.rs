//! [`LocalChain`]: the real tfchain runtime, run locally for tests.
//!
//! `../shared/tfchain/start-local-chain PORT PIDFILE` runs tfchain's runtime under
//! chopsticks, in memory, on `ws://127.0.0.1:PORT` (see `../shared/tfchain/README.md`).
//! Tests get their own chain on a free port, can stop it and start it again on the same
//! port (to check reconnection; its state is lost), and it is killed when dropped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use rmb_identity::AccountId;

/// Balance given to accounts by [`fund`]: plenty for fees (tfchain has 7 decimals).
const FUNDS: &str = "10000000000000";

/// A running local tfchain; stopped on drop.
pub struct LocalChain {
    script: PathBuf,
    port: u16,
    pidfile: PathBuf,
    _dir: tempfile::TempDir,
    running: bool,
}

impl LocalChain {
    /// Starts a chain on a free port, or returns `None` (saying why on stderr) when the
    /// start script is missing, so the caller can skip. Panics if the script fails.
    pub fn start() -> Option<LocalChain> {
        let script = start_script();
        if !script.is_file() {
            eprintln!(
                "skipping: {} not found (tfchain tests need the shared folder beside the \
                 checkout, or RMB_SHARED_DIR)",
                script.display()
            );
            return None;
        }
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut chain = LocalChain {
            script,
            port: free_port(),
            pidfile: dir.path().join("chain.pid"),
            _dir: dir,
            running: false,
        };
        chain.restart();
        Some(chain)
    }

    /// `ws://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// Starts the chain again on the same port (no-op if running). State starts afresh.
    pub fn restart(&mut self) {
        if self.running {
            return;
        }
        let output = Command::new(&self.script)
            .arg(self.port.to_string())
            .arg(&self.pidfile)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.script.display()));
        assert!(
            output.status.success(),
            "{} failed: {}",
            self.script.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        self.running = true;
    }

    /// Stops the chain and waits until its port is closed.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        let Some(pid) = std::fs::read_to_string(&self.pidfile)
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok())
        else {
            eprintln!(
                "no pid in {}; cannot stop the chain",
                self.pidfile.display()
            );
            return;
        };
        // The script starts chopsticks with `setsid`: its pid is its process group.
        signal(pid, "TERM");
        if !self.wait_closed(Duration::from_secs(10)) {
            signal(pid, "KILL");
            self.wait_closed(Duration::from_secs(5));
        }
    }

    fn wait_closed(&self, limit: Duration) -> bool {
        let address = SocketAddr::from(([127, 0, 0, 1], self.port));
        let start = Instant::now();
        while start.elapsed() < limit {
            if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for LocalChain {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Gives `account` funds on the chain at `url`, through chopsticks' `dev_setStorage`.
pub async fn fund(url: &str, account: &AccountId) {
    let rpc = subxt::rpcs::RpcClient::from_insecure_url(url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    let storage = serde_json::json!({
        "System": {"Account": [[[account.to_string()], {"providers": 1, "data": {"free": FUNDS}}]]}
    });
    rpc.request::<serde_json::Value>("dev_setStorage", subxt::rpcs::rpc_params![storage])
        .await
        .unwrap_or_else(|e| panic!("dev_setStorage failed: {e}"));
}

/// A port nothing listens on (just released by the OS).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free local port")
        .port()
}

/// `../shared/tfchain/start-local-chain`, or under `$RMB_SHARED_DIR` if set.
fn start_script() -> PathBuf {
    let shared = std::env::var_os("RMB_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared"));
    shared.join("tfchain/start-local-chain")
}

fn signal(pid: u32, name: &str) {
    let group = format!("-{pid}");
    let status = Command::new("kill")
        .args([format!("-{name}").as_str(), "--", group.as_str()])
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        // Not a group leader after all: signal the process itself.
        let _ = Command::new("kill")
            .args([format!("-{name}"), pid.to_string()])
            .status();
    }
}
