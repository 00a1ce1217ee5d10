//! Watching: `rmb watch --pid P` waits until a process (not necessarily a child of
//! `rmb`) exits, `rmb watch --file F` until a file stops changing for a quiet period;
//! then the caller sends a notification. PMB's `watch`, for the job started before one
//! thought of `rmb notify`, or the download whose end nothing announces.
//!
//! Both are polled (every [`POLL`]): another user's process cannot be waited for, and a
//! file written by a program that never closes it gives no event at its end anyway.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often the process or the file is looked at.
pub const POLL: Duration = Duration::from_millis(250);

/// Why watching could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// No process with that id is running.
    #[error("no process {0} is running")]
    NoProcess(u32),
    /// The file cannot be looked at.
    #[error("cannot watch {0}: {1}")]
    File(PathBuf, std::io::Error),
}

/// What identifies one process across pid reuse: its start time, in clock ticks since
/// boot (field 22 of `/proc/PID/stat`), and its command name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ProcessId {
    started: u64,
    name: String,
}

/// The process `pid` as `/proc` shows it; `None` when it is gone or a zombie (exited,
/// not yet reaped by its parent).
fn process(pid: u32) -> Option<ProcessId> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid …`: comm may hold spaces and parentheses, so split at the
    // last ')'.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_string();
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    if matches!(fields.first(), Some(&"Z" | &"X" | &"x")) {
        return None;
    }
    // Field 22 of the line is the 20th after the comm (fields 3.. are 0-based here).
    let started = fields.get(19)?.parse().ok()?;
    Some(ProcessId { started, name })
}

/// How a watched process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exited {
    /// Its command name (`comm`).
    pub name: String,
    /// How long it was watched.
    pub watched: Duration,
}

/// Checks that `pid` runs; its command name.
pub fn check_pid(pid: u32) -> Result<String, WatchError> {
    process(pid)
        .map(|p| p.name)
        .ok_or(WatchError::NoProcess(pid))
}

/// Waits until process `pid` exits (or is replaced by another process with its id).
pub async fn pid(pid: u32) -> Result<Exited, WatchError> {
    let first = process(pid).ok_or(WatchError::NoProcess(pid))?;
    let started = Instant::now();
    while process(pid).as_ref() == Some(&first) {
        tokio::time::sleep(POLL).await;
    }
    Ok(Exited {
        name: first.name,
        watched: started.elapsed(),
    })
}

/// What tells a change of a file: its inode, size and modification time.
fn file_state(path: &Path) -> Result<(u64, u64, i64, i64), std::io::Error> {
    let m = std::fs::metadata(path)?;
    Ok((m.ino(), m.len(), m.mtime(), m.mtime_nsec()))
}

/// How a watched file ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// Its size when it settled.
    pub bytes: u64,
    /// How long it was watched (the quiet period included).
    pub watched: Duration,
}

/// Checks that `path` can be watched.
pub fn check_file(path: &Path) -> Result<(), WatchError> {
    file_state(path)
        .map(|_| ())
        .map_err(|e| WatchError::File(path.into(), e))
}

/// Waits until `path` has not changed (size, modification time, or a new file in its
/// place) for `quiet`. A file missing for a moment (replaced by rename) counts as a
/// change, not as an end.
pub async fn file(path: &Path, quiet: Duration) -> Result<Settled, WatchError> {
    let mut state = file_state(path).map_err(|e| WatchError::File(path.into(), e))?;
    let started = Instant::now();
    let mut changed = Instant::now();
    loop {
        tokio::time::sleep(POLL.min(quiet).max(Duration::from_millis(20))).await;
        match file_state(path) {
            Ok(now) if now == state => {
                if changed.elapsed() >= quiet {
                    return Ok(Settled {
                        bytes: state.1,
                        watched: started.elapsed(),
                    });
                }
            }
            Ok(now) => {
                state = now;
                changed = Instant::now();
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => changed = Instant::now(),
            Err(e) => return Err(WatchError::File(path.into(), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_seen_and_a_pid_nobody_has_is_not() {
        let me = process(std::process::id()).expect("this process");
        assert!(!me.name.is_empty());
        assert!(matches!(check_pid(u32::MAX), Err(WatchError::NoProcess(_))));
    }
}
