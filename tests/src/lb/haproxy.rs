//! [`Haproxy`]: a real `haproxy` running the documented example configuration
//! (`docs/examples/haproxy.cfg`) in the foreground, on ports the test chose.
//!
//! The example reads its addresses from environment variables (`RMB_LB_BIND`,
//! `RMB_RELAY_1..3`, and `RMB_LB_MAXCONN`, lowered here to fit the open-file limits of
//! test machines), so the test runs the file exactly as documented, only with its
//! variables set: what the docs show is what is tested.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The example configuration the tests run.
pub fn example_config() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/haproxy.cfg")
}

/// Checks that `haproxy` can run here; installs the Debian package when it is missing
/// and this process is root (as `tests/run.sh` does). `Err` says why it cannot run, for
/// a test to print when it skips.
pub fn ensure_installed() -> Result<(), String> {
    if version().is_some() {
        return Ok(());
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    if !root {
        return Err(
            "haproxy is not installed and this is not root: run tests/run.sh \
                    or apt-get install haproxy"
                .into(),
        );
    }
    let quiet = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !quiet(&["install", "-y", "-qq", "haproxy"]) {
        quiet(&["update", "-qq"]);
        quiet(&["install", "-y", "-qq", "haproxy"]);
    }
    version()
        .map(|_| ())
        .ok_or_else(|| "apt-get install haproxy did not give a working haproxy".into())
}

/// `haproxy -v`'s first line, if it runs.
pub fn version() -> Option<String> {
    let out = Command::new("haproxy").arg("-v").output().ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    })
}

/// HAProxy's `maxconn` in tests: it needs about twice as many open files, and the hard
/// limit of a container may be as low as 20 000.
pub const MAXCONN: u32 = 2000;

/// A running `haproxy -db`; killed on drop.
pub struct Haproxy {
    child: Option<Child>,
    /// Where its output goes (shown when it fails to start).
    log: PathBuf,
    _dir: tempfile::TempDir,
    /// `127.0.0.1:<port>`: the frontend.
    pub address: String,
}

impl Haproxy {
    /// Runs `config` with `RMB_LB_BIND=127.0.0.1:<port>`, `RMB_RELAY_<i>` (from 1) set
    /// to `servers` and `RMB_LB_MAXCONN=`[`MAXCONN`]; waits until the frontend answers `GET /health` (through a server).
    pub fn start(config: &Path, port: u16, servers: &[String]) -> Haproxy {
        let dir = tempfile::tempdir().expect("temporary directory");
        let log = dir.path().join("haproxy.log");
        let out = std::fs::File::create(&log).expect("haproxy log file");
        let err = out.try_clone().expect("haproxy log file");
        let address = format!("127.0.0.1:{port}");
        let mut command = Command::new("haproxy");
        command
            .arg("-f")
            .arg(config)
            .arg("-db")
            .env("RMB_LB_BIND", &address)
            .env("RMB_LB_MAXCONN", MAXCONN.to_string())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (i, server) in servers.iter().enumerate() {
            command.env(format!("RMB_RELAY_{}", i + 1), server);
        }
        let child = command.spawn().expect("start haproxy");
        let mut proxy = Haproxy {
            child: Some(child),
            log,
            _dir: dir,
            address,
        };
        proxy.wait_serving();
        proxy
    }

    fn wait_serving(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("haproxy exited at start ({status}):\n{}", self.log());
            }
            if http_status(&self.address, "/health") == Some(200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("haproxy did not serve /health in 20 s:\n{}", self.log());
    }

    /// What haproxy printed so far (warnings, alerts, request logs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        crate::child::kill(&mut self.child);
    }
}

/// The status code of `GET <path>` at `address` (HTTP/1.0, no body read), if any.
pub fn http_status(address: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())
        .ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}
