//! [`Children`]: the processes a demo starts, and the promise that none outlives it.
//!
//! Each child gets its own process group, so a Ctrl-C in the terminal reaches only `rmb`,
//! which then stops them in order (SIGTERM, then SIGKILL after a grace period) and reaps
//! them. Should `rmb` itself be killed outright, the kernel sends each child SIGTERM
//! (`PR_SET_PDEATHSIG`), and `kill_on_drop` covers every early return in between.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

/// How long a child may take to exit after SIGTERM before it is killed.
const GRACE: Duration = Duration::from_secs(5);

/// A started child, for reports.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessInfo {
    /// What it is, e.g. `relay-a`.
    pub name: String,
    /// Its process id.
    pub pid: u32,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
}

struct Running {
    info: ProcessInfo,
    child: tokio::process::Child,
}

/// The running children, in start order.
pub struct Children {
    log_dir: PathBuf,
    running: Vec<Running>,
}

impl Children {
    /// No children yet; their logs will go to `log_dir`.
    pub fn new(log_dir: &Path) -> anyhow::Result<Children> {
        std::fs::create_dir_all(log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
        Ok(Children {
            log_dir: log_dir.to_path_buf(),
            running: Vec::new(),
        })
    }

    /// Starts `program args…` as child `name`, output to `<log dir>/<name>.log`.
    pub fn spawn(
        &mut self,
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
    ) -> anyhow::Result<ProcessInfo> {
        let log = self.log_dir.join(format!("{name}.log"));
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .process_group(0);
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe system calls (prctl, getppid, kill).
        unsafe {
            command.pre_exec(|| {
                // Linux: SIGTERM this child when the thread that spawned it dies. The
                // spawning thread is a tokio worker, which lives as long as `rmb`.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // `rmb` died between fork and prctl: do not run orphaned.
                if libc::getppid() == 1 {
                    libc::kill(libc::getpid(), libc::SIGTERM);
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let info = ProcessInfo {
            name: name.to_string(),
            pid: child.id().unwrap_or(0),
            log,
        };
        self.running.push(Running {
            info: info.clone(),
            child,
        });
        Ok(info)
    }

    /// Every child started so far.
    pub fn list(&self) -> Vec<ProcessInfo> {
        self.running.iter().map(|r| r.info.clone()).collect()
    }

    /// Fails, naming the child and quoting its log, if any child has exited.
    pub fn check(&mut self) -> anyhow::Result<()> {
        for running in &mut self.running {
            if let Some(status) = running.child.try_wait()? {
                anyhow::bail!(
                    "{} (pid {}) exited with {status}; the end of its log ({}):\n{}",
                    running.info.name,
                    running.info.pid,
                    running.info.log.display(),
                    tail(&running.info.log, 15)
                );
            }
        }
        Ok(())
    }

    /// Resolves (with the reason) when a child exits on its own.
    pub async fn watch(&mut self) -> anyhow::Error {
        loop {
            if let Err(e) = self.check() {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Stops every child, last started first: SIGTERM, up to [`GRACE`] to exit, then
    /// SIGKILL; each is reaped. Returns how many were stopped.
    pub async fn stop_all(&mut self) -> usize {
        self.stop_within(GRACE).await
    }

    /// [`Children::stop_all`] with another grace period.
    pub async fn stop_within(&mut self, grace: Duration) -> usize {
        let count = self.running.len();
        while let Some(mut running) = self.running.pop() {
            if let Ok(Some(_)) = running.child.try_wait() {
                continue;
            }
            let pid = running.child.id();
            // Each child leads its own process group: signal the group, so anything it
            // started goes too.
            signal_group(pid, libc::SIGTERM);
            if tokio::time::timeout(grace, running.child.wait())
                .await
                .is_err()
            {
                tracing::warn!(name = %running.info.name, "did not stop on SIGTERM; killing it");
                signal_group(pid, libc::SIGKILL);
                let _ = running.child.kill().await;
            }
            // Leftovers of the group (e.g. a grandchild ignoring SIGTERM).
            signal_group(pid, libc::SIGKILL);
        }
        count
    }
}

fn signal_group(pid: Option<u32>, signal: libc::c_int) {
    if let Some(pid) = pid {
        // SAFETY: kill(2) on the process group our own child leads.
        unsafe {
            libc::kill(-(pid as libc::pid_t), signal);
        }
    }
}

/// The last `n` lines of a log file (or why it could not be read).
pub fn tail(path: &Path, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(n);
            lines[start..]
                .iter()
                .map(|l| format!("    {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        }
        Err(e) => format!("    (cannot read it: {e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn children_are_stopped_and_reaped() {
        let dir = tempfile::tempdir().unwrap();
        let mut children = Children::new(dir.path()).unwrap();
        let sleeper = children
            .spawn("sleeper", Path::new("sleep"), &["600".into()], &[])
            .unwrap();
        // A child ignoring SIGTERM is killed after the grace period.
        let stubborn = children
            .spawn(
                "stubborn",
                Path::new("sh"),
                &[
                    "-c".into(),
                    "trap '' TERM; echo ready; exec sleep 600".into(),
                ],
                &[],
            )
            .unwrap();
        while !tail(&stubborn.log, 1).contains("ready") {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        children.check().unwrap();
        assert_eq!(children.stop_within(Duration::from_millis(300)).await, 2);
        for pid in [sleeper.pid, stubborn.pid] {
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "pid {pid} is left"
            );
        }
    }

    #[tokio::test]
    async fn an_exited_child_is_reported_with_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut children = Children::new(dir.path()).unwrap();
        children
            .spawn(
                "failing",
                Path::new("sh"),
                &["-c".into(), "echo 'no twin found'; exit 3".into()],
                &[],
            )
            .unwrap();
        let err = children.watch().await.to_string();
        assert!(err.contains("failing"), "{err}");
        assert!(err.contains("no twin found"), "{err}");
    }
}
