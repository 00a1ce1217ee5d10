//! CPU time a process has used, from `/proc`, so a bench can say what a measurement cost
//! each process under test and itself. Two readings, because neither is right alone:
//! `/proc/PID/stat` counts the threads that already exited but only in clock ticks
//! (10 ms), and `/proc/PID/task/*/schedstat` is in nanoseconds but only of live threads.
//! [`CpuTime::since`] takes the precise one unless threads exited in between.

use std::sync::OnceLock;
use std::time::Duration;

/// The CPU time one process had used at one moment, read both ways.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTime {
    /// Sum of the first field of every live thread's `schedstat` (ns on CPU).
    threads_ns: Option<u64>,
    /// utime + stime of the whole process, ticks converted to ns.
    process_ns: Option<u64>,
}

impl CpuTime {
    /// Reads process `pid` now (both readings `None` once it is gone).
    pub fn of(pid: u32) -> CpuTime {
        CpuTime {
            threads_ns: threads_ns(pid),
            process_ns: stat_ns(pid),
        }
    }

    /// CPU used between `before` and this reading. The threads' sum, unless the process's
    /// own count grew by more than two ticks beyond it: then threads that exited took
    /// their nanoseconds with them, and the coarser count is the truer one.
    pub fn since(&self, before: &CpuTime) -> Duration {
        let delta = |after: Option<u64>, before: Option<u64>| {
            after.zip(before).map(|(a, b)| a.saturating_sub(b))
        };
        let threads = delta(self.threads_ns, before.threads_ns);
        let process = delta(self.process_ns, before.process_ns);
        let ns = match (threads, process) {
            (Some(t), Some(p)) if p > t + 2 * tick_ns() => p,
            (Some(t), _) => t,
            (None, p) => p.unwrap_or(0),
        };
        Duration::from_nanos(ns)
    }
}

/// utime + stime of process `pid` (fields 14 and 15 of `/proc/PID/stat`, in clock
/// ticks), in nanoseconds; threads that exited included.
fn stat_ns(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after it are plain.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ")" come field 3 (state) onwards: utime is field 14, stime field 15.
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some((ticks(11)? + ticks(12)?) * tick_ns())
}

/// Nanoseconds on CPU of the live threads of process `pid`: the first field of each
/// `/proc/PID/task/TID/schedstat` (that of `/proc/PID/schedstat` is the main thread's
/// only). `None` when the kernel keeps no schedstat or the process is gone.
fn threads_ns(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut sum = 0;
    let mut read_any = false;
    for task in tasks.flatten() {
        // A thread may exit between the listing and the read: it then counts nothing.
        let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        if let Some(ns) = text
            .split_whitespace()
            .next()
            .and_then(|f| f.parse::<u64>().ok())
        {
            sum += ns;
            read_any = true;
        }
    }
    read_any.then_some(sum)
}

/// Nanoseconds of one clock tick of `/proc/PID/stat`: `AT_CLKTCK` of this process's
/// auxiliary vector (what `sysconf(_SC_CLK_TCK)` returns), else Linux's usual 100 Hz.
fn tick_ns() -> u64 {
    static TICK_NS: OnceLock<u64> = OnceLock::new();
    *TICK_NS.get_or_init(|| 1_000_000_000 / clock_ticks_per_second().unwrap_or(100).max(1))
}

/// `AT_CLKTCK` (type 17) from `/proc/self/auxv`: pairs of native words (type, value).
fn clock_ticks_per_second() -> Option<u64> {
    const AT_CLKTCK: usize = 17;
    const WORD: usize = std::mem::size_of::<usize>();
    let auxv = std::fs::read("/proc/self/auxv").ok()?;
    let word = |bytes: &[u8]| bytes.try_into().ok().map(usize::from_ne_bytes);
    auxv.chunks_exact(2 * WORD).find_map(|pair| {
        let (kind, value) = pair.split_at(WORD);
        (word(kind)? == AT_CLKTCK).then(|| word(value).map(|v| v as u64))?
    })
}
