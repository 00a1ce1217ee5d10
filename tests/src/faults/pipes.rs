//! [`PipeLoad`]: `rmb pipe` connections from twin A to twin B during a fault run, one
//! after the other, each ending intact or with a clean error.
//!
//! Each round starts `rmb pipe listen` through B's peer and `rmb pipe connect --to B`
//! through A's with a file on stdin, as a user runs them. A round is intact when both
//! exit 0 and the listener's stdout is the file; a clean error when one of them exits
//! non-zero and neither claims success with wrong bytes. A side that exits 0 while the
//! bytes are not intact is a false success; one still running after [`PIPE_LIMIT`] hung.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::fed::Fed;
use crate::relay_process::binaries;

/// Bytes each round sends.
pub const PIPE_BYTES: usize = 256 << 10;
/// Longest a round may take before both processes are killed and it counts as hung.
pub const PIPE_LIMIT: Duration = Duration::from_secs(45);
/// How long the listener may take to end after the connector failed.
const LISTENER_GRACE: Duration = Duration::from_secs(5);

/// What became of the rounds.
#[derive(Debug, Clone, Default)]
pub struct PipeReport {
    pub rounds: u64,
    /// Both exited 0, the bytes arrived intact.
    pub intact: u64,
    /// Some side exited non-zero; nobody claimed success with wrong bytes.
    pub clean_errors: u64,
    /// A side exited 0 although the bytes did not all arrive intact.
    pub false_success: u64,
    /// Still running after [`PIPE_LIMIT`].
    pub hung: u64,
    /// The last line of stderr of each failing side, most frequent first.
    pub error_texts: Vec<(String, u64)>,
}

impl PipeReport {
    /// Every round intact or a clean error.
    pub fn is_clean(&self) -> bool {
        self.rounds == self.intact + self.clean_errors && self.false_success == 0 && self.hung == 0
    }
}

/// The thread running rounds until its time is up.
pub struct PipeLoad {
    report: Arc<Mutex<PipeReport>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PipeLoad {
    /// Runs rounds back to back until `duration` from `start` (a round started in time is
    /// always finished).
    pub fn start(fed: &Fed, duration: Duration, start: Instant) -> PipeLoad {
        let report = Arc::new(Mutex::new(PipeReport::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (http_a, http_b, twin_b) = (fed.http_a.clone(), fed.http_b.clone(), fed.twin_b);
        let thread = {
            let (report, stop) = (Arc::clone(&report), Arc::clone(&stop));
            std::thread::spawn(move || {
                let dir = tempfile::tempdir().expect("temporary directory");
                let data = dir.path().join("data");
                std::fs::write(&data, pattern(PIPE_BYTES)).expect("write the data file");
                let mut round = 0;
                while start.elapsed() < duration && !stop.load(Ordering::SeqCst) {
                    let outcome = one_round(&http_a, &http_b, twin_b, &data, dir.path(), round);
                    round += 1;
                    let mut report = report.lock().unwrap_or_else(|e| e.into_inner());
                    report.rounds += 1;
                    match outcome {
                        Round::Intact => report.intact += 1,
                        Round::CleanError(why) => {
                            report.clean_errors += 1;
                            count(&mut report.error_texts, why);
                        }
                        Round::FalseSuccess(why) => {
                            report.false_success += 1;
                            count(&mut report.error_texts, why);
                        }
                        Round::Hung(why) => {
                            report.hung += 1;
                            count(&mut report.error_texts, why);
                        }
                    }
                }
            })
        };
        PipeLoad {
            report,
            stop,
            thread: Some(thread),
        }
    }

    /// Whether its last round is over.
    pub fn finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Waits for the round in progress and returns the counts.
    pub fn finish(mut self) -> PipeReport {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the pipe rounds panicked");
        }
        let mut report = self
            .report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        report.error_texts.sort_by_key(|e| std::cmp::Reverse(e.1));
        report
    }
}

impl Drop for PipeLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn count(texts: &mut Vec<(String, u64)>, text: String) {
    match texts.iter_mut().find(|(t, _)| *t == text) {
        Some((_, n)) => *n += 1,
        None => texts.push((text, 1)),
    }
}

/// `len` bytes in which every 8-byte word differs (a lost or repeated chunk shows).
fn pattern(len: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(len + 8);
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    while bytes.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

enum Round {
    Intact,
    CleanError(String),
    FalseSuccess(String),
    Hung(String),
}

/// One `rmb pipe` process with its output in files; killed on drop.
struct Side {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Side {
    fn start(args: &[&str], stdin: Option<&Path>, dir: &Path, name: &str) -> Side {
        let (out, err) = (
            dir.join(format!("{name}.out")),
            dir.join(format!("{name}.err")),
        );
        let stdin = match stdin {
            Some(path) => Stdio::from(std::fs::File::open(path).expect("data file")),
            None => Stdio::null(),
        };
        let child = Command::new(binaries().join("rmb"))
            .args(args)
            .stdin(stdin)
            .stdout(std::fs::File::create(&out).expect("stdout file"))
            .stderr(std::fs::File::create(&err).expect("stderr file"))
            .spawn()
            .expect("start rmb pipe");
        Side { child, out, err }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    fn last_line(&self, who: &str) -> String {
        let text = self.stderr();
        let line = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        format!("{who}: {}", line.trim())
    }

    /// Its status once it exits before `deadline`.
    fn wait_until(&mut self, deadline: Instant) -> Option<ExitStatus> {
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Side {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn one_round(
    http_a: &str,
    http_b: &str,
    twin_b: u32,
    data: &Path,
    dir: &Path,
    round: u32,
) -> Round {
    let deadline = Instant::now() + PIPE_LIMIT;
    let listen = ["pipe", "listen", "--protocol", "cat", "--http", http_b];
    let mut listener = Side::start(&listen, None, dir, &format!("listen{round}"));
    while !listener.stderr().contains("listening for") {
        if let Ok(Some(status)) = listener.child.try_wait() {
            return Round::CleanError(format!(
                "{} ({status})",
                listener.last_line("listener did not listen")
            ));
        }
        if Instant::now() >= deadline {
            return Round::Hung(listener.last_line("hung listener"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let to = twin_b.to_string();
    let connect = [
        "pipe",
        "connect",
        "--protocol",
        "cat",
        "--to",
        &to,
        "--http",
        http_a,
    ];
    let mut connector = Side::start(&connect, Some(data), dir, &format!("connect{round}"));
    let Some(c) = connector.wait_until(deadline) else {
        return Round::Hung(format!(
            "hung: {}; {}",
            connector.last_line("connector"),
            listener.last_line("listener")
        ));
    };
    // A connector that failed may never have reached the listener, which then rightly
    // goes on listening: it gets a moment to end, then is stopped.
    let listener_deadline = if c.success() {
        deadline
    } else {
        deadline.min(Instant::now() + LISTENER_GRACE)
    };
    let l = match listener.wait_until(listener_deadline) {
        Some(status) => status,
        None if !c.success() => return Round::CleanError(connector.last_line("connector")),
        None => {
            return Round::Hung(format!(
                "hung: listener after the connector exited 0: {}",
                listener.last_line("listener")
            ));
        }
    };
    let intact = std::fs::read(&listener.out).ok() == std::fs::read(data).ok();
    let _ = std::fs::remove_file(&listener.out);
    match (c.success(), l.success(), intact) {
        (true, true, true) => Round::Intact,
        (false, false, _) => Round::CleanError(connector.last_line("connector")),
        (false, true, true) => Round::CleanError(connector.last_line("connector")),
        (true, false, true) => Round::CleanError(listener.last_line("listener")),
        (true, false, false) => Round::FalseSuccess(format!(
            "connector exited 0, bytes not intact; {}",
            listener.last_line("listener")
        )),
        (true, true, false) => Round::FalseSuccess("both exited 0, bytes differ".into()),
        (false, true, false) => Round::FalseSuccess(format!(
            "listener exited 0 with wrong bytes; {}",
            connector.last_line("connector")
        )),
    }
}
