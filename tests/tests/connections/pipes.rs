//! `rmb pipe listen` and `rmb pipe connect` as a user runs them, both as processes: each
//! direction ends on its own stdin's EOF, everything arrives (sha256 of what each side
//! wrote to stdout), and the exit codes tell the truth: 0 both when all was delivered, not
//! 0 with a reason when the far side is lost. Through one relay and across two.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rmb_testsupport::direct::{fresh_mnemonic, register_secret};
use rmb_testsupport::redis_server::free_port;
use rmb_testsupport::relay_process::RelayProcess;
use sha2::{Digest, Sha256};

use super::common::*;

/// Longest a pipe process may take to end after both stdins ended.
const EXIT_WAIT: Duration = Duration::from_secs(120);

/// What one side reads from: a file, or nothing (`/dev/null`: EOF at once).
pub(super) enum Input<'a> {
    File(&'a Path),
    Nothing,
}

impl Input<'_> {
    fn stdio(&self) -> Stdio {
        match self {
            Input::File(path) => Stdio::from(std::fs::File::open(path).unwrap()),
            Input::Nothing => Stdio::null(),
        }
    }
}

/// One `rmb pipe` process, with its stdout and stderr in files.
pub(super) struct Side {
    pub(super) child: Option<Child>,
    pub(super) out: PathBuf,
    err: PathBuf,
}

impl Side {
    pub(super) fn start(
        args: &[String],
        secret: &str,
        input: Input,
        dir: &Path,
        name: &str,
    ) -> Side {
        let (out, err) = (
            dir.join(format!("{name}.out")),
            dir.join(format!("{name}.err")),
        );
        let rmb = rmb_testsupport::relay_process::binaries().join("rmb");
        let child = Command::new(rmb)
            .args(args)
            .env("RMB_MNEMONIC", secret)
            .stdin(input.stdio())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("start rmb pipe");
        Side {
            child: Some(child),
            out,
            err,
        }
    }

    pub(super) fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Waits (bounded) for the process to exit.
    pub(super) async fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + EXIT_WAIT;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "rmb pipe did not exit: {}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(super) fn digest(&self) -> (u64, Vec<u8>) {
        file_digest(&self.out)
    }
}

impl Drop for Side {
    fn drop(&mut self) {
        rmb_testsupport::child::kill(&mut self.child);
    }
}

pub(super) fn file_digest(path: &Path) -> (u64, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    (bytes.len() as u64, Sha256::digest(&bytes).to_vec())
}

/// The relay and registry flags of a pipe command.
fn direct(relay: &RelayProcess, registry: &str) -> Vec<String> {
    vec![
        "--relay".into(),
        relay.ws_url(),
        "--registry".into(),
        registry.into(),
    ]
}

/// A listener on `relay` for twin `secret` (as TWIN:pipe) and, once it listens, a
/// connector on `their_relay`; each reading `inputs.0` / `inputs.1`.
async fn pipe_pair(
    (listener_relay, connector_relay): (&RelayProcess, &RelayProcess),
    registry: &str,
    inputs: (Input<'_>, Input<'_>),
    dir: &Path,
) -> (Side, Side) {
    let (sl, sc) = (fresh_mnemonic(), fresh_mnemonic());
    let listener_twin = register_secret(registry, &sl, &[listener_relay.domain()]).await;
    register_secret(registry, &sc, &[connector_relay.domain()]).await;
    let mut args: Vec<String> = ["pipe", "listen", "--protocol", "cat", "--sid", "pipe"]
        .map(String::from)
        .to_vec();
    args.extend(direct(listener_relay, registry));
    let listener = Side::start(&args, &sl, inputs.0, dir, "listener");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !listener.stderr().contains("listening for") {
        assert!(Instant::now() < deadline, "{}", listener.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let to = format!("{listener_twin}:pipe");
    let mut args: Vec<String> = ["pipe", "connect", "--protocol", "cat", "--to", &to]
        .map(String::from)
        .to_vec();
    args.extend(direct(connector_relay, registry));
    let connector = Side::start(&args, &sc, inputs.1, dir, "connector");
    (listener, connector)
}

/// Waits for both pipe processes and checks each exited 0.
pub(super) async fn both_exit_zero(listener: &mut Side, connector: &mut Side) {
    let (cs, ls) = (connector.wait().await, listener.wait().await);
    assert!(cs.success(), "connector: {cs} {}", connector.stderr());
    assert!(ls.success(), "listener: {ls} {}", listener.stderr());
}

pub(super) fn write_data(dir: &Path, name: &str, len: usize, seed: u64) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, data(len, seed)).unwrap();
    path
}

/// The cases through one relay: the listener's stdin at EOF from the start
/// while the connector sends a file (and the reverse), and a line piped in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipes_deliver_everything_either_way_and_exit_zero() {
    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let dir = tempfile::tempdir().unwrap();
    let big = write_data(dir.path(), "big", big_mib() << 20, 7);

    // connector → listener, the listener's stdin at EOF at once.
    let (mut l, mut c) = pipe_pair(
        (&relay, &relay),
        &registry,
        (Input::Nothing, Input::File(&big)),
        dir.path(),
    )
    .await;
    both_exit_zero(&mut l, &mut c).await;
    assert_eq!(l.digest(), file_digest(&big), "listener's stdout");
    assert_eq!(c.digest().0, 0);

    // listener → connector, the connector's stdin at EOF at once.
    let (mut l, mut c) = pipe_pair(
        (&relay, &relay),
        &registry,
        (Input::File(&big), Input::Nothing),
        dir.path(),
    )
    .await;
    both_exit_zero(&mut l, &mut c).await;
    assert_eq!(c.digest(), file_digest(&big), "connector's stdout");

    // `echo hello | rmb pipe connect …`.
    let hello = dir.path().join("hello");
    std::fs::write(&hello, b"hello\n").unwrap();
    let (mut l, mut c) = pipe_pair(
        (&relay, &relay),
        &registry,
        (Input::Nothing, Input::File(&hello)),
        dir.path(),
    )
    .await;
    both_exit_zero(&mut l, &mut c).await;
    assert_eq!(std::fs::read(&l.out).unwrap(), b"hello\n");
}

/// Both directions at once across two federated relays, then a far side that dies
/// mid-transfer: the survivor exits non-zero and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipes_across_two_relays_and_a_lost_far_side_is_a_failure() {
    let (p1, p2) = (free_port(), free_port());
    let r1 = RelayProcess::start_on(p1, &["--federation-http"]);
    let registry = r1.http_url();
    let r2 = RelayProcess::start_on(p2, &["--federation-http", "--registry", &registry]);
    let dir = tempfile::tempdir().unwrap();
    let up = write_data(dir.path(), "up", big_mib() << 20, 8);
    let down = write_data(dir.path(), "down", (big_mib() << 20) / 2, 9);

    let (mut l, mut c) = pipe_pair(
        (&r2, &r1),
        &registry,
        (Input::File(&down), Input::File(&up)),
        dir.path(),
    )
    .await;
    both_exit_zero(&mut l, &mut c).await;
    assert_eq!(l.digest(), file_digest(&up), "listener's stdout");
    assert_eq!(c.digest(), file_digest(&down), "connector's stdout");

    // The listener is killed while the connector still sends (its stdin is a FIFO that
    // stays open): the connector must fail, not exit 0.
    let fifo = dir.path().join("fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let feeder = std::thread::spawn({
        let fifo = fifo.clone();
        move || {
            use std::io::Write;
            let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
            let chunk = vec![7u8; 64 << 10];
            // Keeps writing until the reader (the connector) is gone.
            while w.write_all(&chunk).is_ok() {}
        }
    });
    let (mut l, mut c) = pipe_pair(
        (&r2, &r1),
        &registry,
        (Input::Nothing, Input::File(&fifo)),
        dir.path(),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(&l.out).map_or(0, |m| m.len()) < (1 << 20) {
        assert!(Instant::now() < deadline, "nothing arrived: {}", c.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rmb_testsupport::child::kill(&mut l.child);
    let cs = c.wait().await;
    assert!(
        !cs.success(),
        "the connector lost its far side and exited 0"
    );
    assert!(c.stderr().contains("rmb:"), "{}", c.stderr());
    drop(c);
    feeder.join().unwrap();
}
