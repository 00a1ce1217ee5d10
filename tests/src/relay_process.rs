//! [`RelayProcess`]: the real `rmb-relay` binary, started on a free loopback port.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::redis_server::free_port;

/// Builds every workspace binary (rmb-relay, rmb-peer, rmb, benches) once per test process
/// and returns their directory; `RMB_BIN_DIR=<dir>` skips the build and uses that one.
pub fn binaries() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            // Use binaries built elsewhere (e.g. `cargo build --release`) when asked to.
            if let Some(dir) = std::env::var_os("RMB_BIN_DIR") {
                return PathBuf::from(dir);
            }
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut build = Command::new(cargo);
            // Cargo gives test processes their package's CARGO_MANIFEST_DIR, CARGO_PKG_*
            // etc. Some build scripts (ring's) declare `rerun-if-env-changed` on those, so
            // passing them on would make this build and the next plain `cargo test`
            // rebuild ring and everything above it, in turn, every time.
            for (name, _) in std::env::vars_os() {
                let Some(name) = name.to_str() else { continue };
                if name.starts_with("CARGO_PKG_")
                    || name.starts_with("CARGO_BIN_")
                    || matches!(
                        name,
                        "CARGO_MANIFEST_DIR"
                            | "CARGO_MANIFEST_PATH"
                            | "CARGO_MANIFEST_LINKS"
                            | "CARGO_CRATE_NAME"
                            | "CARGO_PRIMARY_PACKAGE"
                            | "CARGO_TARGET_TMPDIR"
                    )
                {
                    build.env_remove(name);
                }
            }
            let status = build
                // `--tests` makes the feature set the same as `cargo test --workspace`'s, so
                // this reuses its dependencies instead of building them a second time.
                .args(["build", "--quiet", "--workspace", "--bins", "--tests"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .expect("run cargo build");
            assert!(status.success(), "building the rmb binaries failed");
            // Tests run from target/<profile>/deps/<test-binary>; binaries of this crate
            // (rmb-chaos) from target/<profile>/ itself.
            let exe = std::env::current_exe().expect("test executable path");
            let dir = exe.parent().expect("target dir");
            match dir.file_name() {
                Some(name) if name == "deps" => dir.parent().expect("target dir").to_path_buf(),
                _ => dir.to_path_buf(),
            }
        })
        .clone()
}

/// A running relay; killed on drop.
pub struct RelayProcess {
    pub port: u16,
    child: Option<Child>,
    args: Vec<String>,
    /// Passes `--federation-allow 127.0.0.1` (the test relays federate over loopback).
    allow_loopback: bool,
    pub data_dir: tempfile::TempDir,
    /// `RUST_LOG` and stderr file, when started with [`RelayProcess::start_logged`].
    log: Option<(String, PathBuf)>,
    /// Where it runs, when not on loopback ([`RelayProcess::start_placed`]).
    place: Option<Placement>,
}

/// Where a relay runs when not on loopback: e.g. in a network namespace of a fault run,
/// under a domain that names a proxy in front of it.
#[derive(Debug, Clone)]
pub struct Placement {
    /// Words put before the binary (`ip netns exec <ns>`).
    pub prefix: Vec<String>,
    /// The address it listens on (also used to wait for it and for [`RelayProcess::http_url`]).
    pub host: String,
    /// Its `--domain`, as registered for its twins (`host:port`, or a proxy's address).
    pub domain: String,
    /// Its `--federation-allow` entries.
    pub federation_allow: Vec<String>,
}

impl RelayProcess {
    /// Starts `rmb-relay` on a free port with `--domain 127.0.0.1:<port>` and `extra` flags.
    pub fn start(extra: &[&str]) -> Self {
        Self::start_on(free_port(), extra)
    }

    /// Starts it without `--federation-allow 127.0.0.1`: it then federates only to public
    /// domain names, as in production.
    pub fn start_strict(extra: &[&str]) -> Self {
        Self::start_with(free_port(), extra, false)
    }

    /// Starts it on a given port (to know its domain in advance, or to restart it).
    pub fn start_on(port: u16, extra: &[&str]) -> Self {
        Self::start_with(port, extra, true)
    }

    fn start_with(port: u16, extra: &[&str], allow_loopback: bool) -> Self {
        let mut relay = RelayProcess {
            port,
            child: None,
            args: extra.iter().map(|s| s.to_string()).collect(),
            allow_loopback,
            data_dir: tempfile::tempdir().expect("temporary directory"),
            log: None,
            place: None,
        };
        relay.spawn();
        relay
    }

    /// Starts it as `place` says, listening on `place.host:port`, with `extra` flags.
    pub fn start_placed(place: Placement, port: u16, extra: &[&str]) -> Self {
        let mut relay = RelayProcess {
            port,
            child: None,
            args: extra.iter().map(|s| s.to_string()).collect(),
            allow_loopback: false,
            data_dir: tempfile::tempdir().expect("temporary directory"),
            log: None,
            place: Some(place),
        };
        relay.spawn();
        relay
    }

    /// Starts it with `RUST_LOG=<filter>` and its output kept in a file ([`RelayProcess::log`]).
    pub fn start_logged(extra: &[&str], filter: &str) -> Self {
        let data_dir = tempfile::tempdir().expect("temporary directory");
        let path = data_dir.path().join("relay.log");
        let mut relay = RelayProcess {
            port: free_port(),
            child: None,
            args: extra.iter().map(|s| s.to_string()).collect(),
            allow_loopback: true,
            data_dir,
            log: Some((filter.to_string(), path)),
            place: None,
        };
        relay.spawn();
        relay
    }

    /// What it logged (stdout and stderr) so far (started with [`RelayProcess::start_logged`]).
    pub fn log(&self) -> String {
        self.log
            .as_ref()
            .and_then(|(_, path)| std::fs::read_to_string(path).ok())
            .unwrap_or_default()
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn spawn(&mut self) {
        let binary = binaries().join("rmb-relay");
        // The relay logs to stdout; a logged relay's stdout and stderr both go to the file.
        let (filter, stdout, stderr) = match &self.log {
            Some((filter, path)) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .expect("relay log file");
                let copy = file.try_clone().expect("relay log file");
                (filter.clone(), Stdio::from(file), Stdio::from(copy))
            }
            None => (
                std::env::var("RMB_TEST_LOG").unwrap_or_else(|_| "warn".into()),
                Stdio::null(),
                Stdio::inherit(),
            ),
        };
        let prefix = self.place.as_ref().map_or(&[][..], |p| &p.prefix[..]);
        let mut command = match prefix.split_first() {
            Some((first, rest)) => {
                let mut command = Command::new(first);
                command.args(rest).arg(&binary);
                command
            }
            None => Command::new(&binary),
        };
        for allowed in self.place.iter().flat_map(|p| &p.federation_allow) {
            command.args(["--federation-allow", allowed]);
        }
        let child = command
            .args(["--listen", &self.addr()])
            .args(["--domain", &self.domain()])
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .args(if self.allow_loopback {
                &["--federation-allow", "127.0.0.1"][..]
            } else {
                &[]
            })
            .args(&self.args)
            .env("RUST_LOG", filter)
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        self.child = Some(child);
        self.wait_healthy();
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("rmb-relay exited at start: {status}");
            }
            if std::net::TcpStream::connect(self.addr()).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("rmb-relay on port {} did not start listening", self.port);
    }

    /// The value of one sample of its `/metrics`, e.g. `relay_queue_bytes` or
    /// `relay_errors_total{kind="oversize"}` (0 when absent).
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.http_url()))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// `relay_errors_total{kind}`: how many refusals of that kind it counted.
    pub async fn error_count(&self, kind: &str) -> u64 {
        self.metric(&format!("relay_errors_total{{kind=\"{kind}\"}}"))
            .await as u64
    }

    /// `127.0.0.1:<port>`: the relay's domain (a placed relay's own).
    pub fn domain(&self) -> String {
        match &self.place {
            Some(place) => place.domain.clone(),
            None => self.addr(),
        }
    }

    /// `<host>:<port>`: where it listens (`127.0.0.1` unless placed elsewhere).
    pub fn addr(&self) -> String {
        let host = self.place.as_ref().map_or("127.0.0.1", |p| p.host.as_str());
        format!("{host}:{}", self.port)
    }

    /// `http://<addr>`: where its registry and metrics are.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// `ws://<addr>/`
    pub fn ws_url(&self) -> String {
        format!("ws://{}/", self.addr())
    }

    /// SIGKILLs the relay.
    pub fn kill(&mut self) {
        crate::child::kill(&mut self.child);
    }

    /// SIGTERMs the relay and returns its exit status (graceful shutdown).
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        crate::child::terminate(&mut self.child)
    }

    /// Starts it again after [`RelayProcess::kill`] (same port, flags and data
    /// directory), so a test can keep it down for a while; does nothing if it runs.
    pub fn relaunch(&mut self) {
        if self.child.is_none() {
            self.spawn();
        }
    }

    /// Starts it again with the same port, flags and data directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes a self-signed certificate for `127.0.0.1` and its key as PEM files into `dir`
/// and returns their paths: what a relay started with `--tls-cert`/`--tls-key` serves in
/// a test.
pub fn self_signed_pem(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])
        .expect("self-signed certificate");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).expect("write cert.pem");
    std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write key.pem");
    (cert, key)
}
