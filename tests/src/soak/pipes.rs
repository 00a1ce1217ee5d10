//! The pipe workload of the soak: one transfer after another through the peers' HTTP
//! APIs with the real CLI, `rmb pipe listen` on one twin and `rmb pipe connect < data` on
//! the other (direction alternating), so every byte crosses both relays. A transfer is
//! intact when both processes exit 0 and the listener wrote exactly the bytes sent; an
//! exit code other than 0 is an explicit failure (a kill or a stall broke it, and the
//! user is told); both exiting 0 with other bytes, or a transfer that never ends, is a
//! defect.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::chaos::apps::lock;
use crate::chaos::net::Net;
use crate::relay_process::binaries;

/// Longest wait for `rmb pipe listen` to say it listens.
const LISTEN_LIMIT: Duration = Duration::from_secs(20);
/// How long a listener that was never connected may outlive a failed connector (an
/// open still on its way would reach it by then).
const UNOPENED_GRACE: Duration = Duration::from_secs(20);
/// Pause after a failed transfer before the next.
const AFTER_FAILURE: Duration = Duration::from_secs(1);

/// What the pipe workload does.
#[derive(Debug, Clone, Copy)]
pub struct PipeSettings {
    /// Bytes per transfer (0: no pipes).
    pub bytes: usize,
    /// Start-to-start time between transfers (a longer transfer is followed at once).
    pub every: Duration,
    /// A transfer still running after this long is killed and counted as hung.
    pub limit: Duration,
}

/// The figures of the pipe workload.
#[derive(Debug, Clone, Default)]
pub struct PipeReport {
    /// Bytes per transfer.
    pub transfer_bytes: u64,
    /// Transfers started.
    pub transfers: u64,
    /// Both exits 0, bytes equal.
    pub intact: u64,
    /// At least one exit code other than 0 (or the listener never listened).
    pub failed: u64,
    /// Both exits 0 but the bytes differ: a defect.
    pub corrupt: u64,
    /// Killed after [`PipeSettings::limit`]: a defect.
    pub hung: u64,
    /// Bytes given to the connecting side's stdin.
    pub bytes_sent: u64,
    /// Bytes the listening side wrote out.
    pub bytes_received: u64,
    /// Bytes of the intact transfers.
    pub bytes_intact: u64,
    /// Failure reasons (last stderr line), most frequent first.
    pub errors: Vec<(String, u64)>,
}

impl PipeReport {
    /// No corrupted and no hung transfer.
    pub fn is_clean(&self) -> bool {
        self.corrupt == 0 && self.hung == 0
    }
}

/// The running transfer loop.
pub(crate) struct PipeLoad {
    report: Arc<Mutex<PipeReport>>,
    errors: Arc<Mutex<BTreeMap<String, u64>>>,
    stop: Arc<AtomicBool>,
    worker: Option<JoinHandle<()>>,
}

/// One twin's side: its id and its peer's API.
#[derive(Clone)]
struct End {
    twin: u32,
    api: String,
}

impl PipeLoad {
    /// Starts transfers between twins A and B until [`PipeLoad::stop`].
    pub(crate) fn start(net: &Net, settings: PipeSettings, verbose: bool) -> Self {
        let report = Arc::new(Mutex::new(PipeReport {
            transfer_bytes: settings.bytes as u64,
            ..PipeReport::default()
        }));
        let errors = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let end = |twin: u32, api: &Option<String>| End {
            twin,
            api: format!(
                "http://{}",
                api.as_deref().expect("peers started with --http")
            ),
        };
        let ends = [end(net.twin_a, &net.http_a), end(net.twin_b, &net.http_b)];
        let worker = (settings.bytes > 0).then(|| {
            let (report, errors, stop) =
                (Arc::clone(&report), Arc::clone(&errors), Arc::clone(&stop));
            std::thread::spawn(move || {
                let dir = tempfile::tempdir().expect("temporary directory");
                for n in 0u64.. {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let began = Instant::now();
                    let (from, to) = if n % 2 == 0 {
                        (&ends[0], &ends[1])
                    } else {
                        (&ends[1], &ends[0])
                    };
                    let outcome = transfer(n, from, to, settings, dir.path());
                    let ok = file(&mut lock(&report), &mut lock(&errors), outcome);
                    if !ok && verbose {
                        let r = lock(&report);
                        eprintln!(
                            "[soak pipes] transfer {n} (twin {} -> {}) started {:.1}s ago failed \
                             (failed {}, corrupt {}, hung {} so far)",
                            from.twin,
                            to.twin,
                            began.elapsed().as_secs_f64(),
                            r.failed,
                            r.corrupt,
                            r.hung
                        );
                    }
                    let pause = if ok {
                        settings.every.saturating_sub(began.elapsed())
                    } else {
                        AFTER_FAILURE
                    };
                    sleep_unless(pause, &stop);
                }
            })
        });
        PipeLoad {
            report,
            errors,
            stop,
            worker,
        }
    }

    /// Transfers done and intact so far.
    pub(crate) fn progress(&self) -> (u64, u64) {
        let r = lock(&self.report);
        (r.transfers, r.intact)
    }

    /// Stops after the transfer under way.
    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(w) = self.worker.take() {
            w.join().expect("the pipe worker panicked");
        }
    }

    /// The accounting.
    pub(crate) fn report(&self) -> PipeReport {
        let mut r = lock(&self.report).clone();
        r.errors = lock(&self.errors)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        r.errors.sort_by_key(|e| std::cmp::Reverse(e.1));
        r
    }
}

impl Drop for PipeLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn sleep_unless(pause: Duration, stop: &AtomicBool) {
    let until = Instant::now() + pause;
    while Instant::now() < until && !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100).min(until - Instant::now()));
    }
}

/// How one transfer ended.
enum Outcome {
    Ended {
        sent: u64,
        received: Vec<u8>,
        expected: Vec<u8>,
        listener: ExitStatus,
        connector: ExitStatus,
        why: String,
    },
    NotListening(String),
    Hung {
        sent: u64,
        received: u64,
        /// The last stderr lines of the listener and the connector.
        stderr: (String, String),
    },
}

/// Adds one outcome to the figures; whether the transfer was intact.
fn file(report: &mut PipeReport, errors: &mut BTreeMap<String, u64>, outcome: Outcome) -> bool {
    report.transfers += 1;
    match outcome {
        Outcome::NotListening(why) => {
            report.failed += 1;
            *errors.entry(format!("listen: {why}")).or_default() += 1;
            false
        }
        Outcome::Hung {
            sent,
            received,
            stderr,
        } => {
            report.hung += 1;
            let text = format!("hung: listen: {} / connect: {}", stderr.0, stderr.1);
            *errors.entry(text).or_default() += 1;
            report.bytes_sent += sent;
            report.bytes_received += received;
            false
        }
        Outcome::Ended {
            sent,
            received,
            expected,
            listener,
            connector,
            why,
        } => {
            report.bytes_sent += sent;
            report.bytes_received += received.len() as u64;
            if listener.success() && connector.success() {
                if received == expected {
                    report.intact += 1;
                    report.bytes_intact += sent;
                    return true;
                }
                report.corrupt += 1;
            } else {
                report.failed += 1;
                *errors.entry(why).or_default() += 1;
            }
            false
        }
    }
}

/// `n`-th transfer of `settings.bytes` from `from`'s twin to `to`'s.
fn transfer(n: u64, from: &End, to: &End, settings: PipeSettings, dir: &Path) -> Outcome {
    let protocol = format!("soak{n}");
    let data = pattern(settings.bytes, n);
    let input = dir.join("in");
    std::fs::write(&input, &data).expect("write the pipe's input");
    let (out, listen_err, connect_err) = (dir.join("out"), dir.join("l.err"), dir.join("c.err"));
    let mut listener = Proc::spawn(
        &["pipe", "listen", "--protocol", &protocol, "--http", &to.api],
        None,
        &out,
        &listen_err,
    );
    let deadline = Instant::now() + LISTEN_LIMIT;
    loop {
        if read(&listen_err).contains("listening for") {
            break;
        }
        if listener.exited().is_some() || Instant::now() >= deadline {
            listener.kill();
            return Outcome::NotListening(last_line(&listen_err));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let to_twin = to.twin.to_string();
    let mut connector = Proc::spawn(
        &[
            "pipe",
            "connect",
            "--to",
            &to_twin,
            "--protocol",
            &protocol,
            "--http",
            &from.api,
        ],
        Some(&input),
        Path::new("/dev/null"),
        &connect_err,
    );
    let deadline = Instant::now() + settings.limit;
    let (mut l_status, mut c_status) = (None, None);
    let mut connector_done: Option<Instant> = None;
    while l_status.is_none() || c_status.is_none() {
        if Instant::now() >= deadline {
            listener.kill();
            connector.kill();
            let received = std::fs::metadata(&out).map_or(0, |m| m.len());
            return Outcome::Hung {
                sent: data.len() as u64,
                received,
                stderr: (last_line(&listen_err), last_line(&connect_err)),
            };
        }
        l_status = l_status.or_else(|| listener.exited());
        c_status = c_status.or_else(|| connector.exited());
        // A connector that failed before its connection reached the listener (its peer
        // down, say): the listener would wait forever for it; it is not part of the bus.
        if let (None, Some(failed)) = (l_status, c_status) {
            let since = *connector_done.get_or_insert_with(Instant::now);
            if !failed.success()
                && since.elapsed() >= UNOPENED_GRACE
                && !read(&listen_err).contains("connected:")
            {
                listener.kill();
                l_status = Some(ExitStatus::from_raw(9));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (listener, connector) = (l_status.expect("ended"), c_status.expect("ended"));
    let why = if !connector.success() {
        format!("connect: {}", last_line(&connect_err))
    } else {
        format!("listen: {}", last_line(&listen_err))
    };
    Outcome::Ended {
        sent: data.len() as u64,
        received: std::fs::read(&out).unwrap_or_default(),
        expected: data,
        listener,
        connector,
        why,
    }
}

/// Deterministic bytes for transfer `seed` (xorshift), so a shifted or repeated block
/// cannot compare equal.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The last non-empty line of a stderr file: the reason given.
fn last_line(path: &Path) -> String {
    let text = read(path);
    let line = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    line.chars().take(160).collect()
}

/// One `rmb` process with its output in files; killed on drop.
struct Proc(Option<Child>);

impl Proc {
    fn spawn(args: &[&str], stdin: Option<&PathBuf>, out: &Path, err: &Path) -> Proc {
        let stdin = match stdin {
            Some(path) => Stdio::from(std::fs::File::open(path).expect("open the pipe input")),
            None => Stdio::null(),
        };
        let child = Command::new(binaries().join("rmb"))
            .args(args)
            .stdin(stdin)
            .stdout(std::fs::File::create(out).expect("create the pipe output"))
            .stderr(std::fs::File::create(err).expect("create the stderr file"))
            .spawn()
            .expect("start rmb");
        Proc(Some(child))
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.0.as_mut()?.try_wait().ok().flatten();
        if status.is_some() {
            self.0 = None;
        }
        status
    }

    fn kill(&mut self) {
        crate::child::kill(&mut self.0);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}
