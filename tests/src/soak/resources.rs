//! Memory and open files of the soak's processes, sampled from `/proc` along the way:
//! what each process held at the start and at the end, its minimum and maximum, and the
//! growth verdict. A process that is killed and relaunched starts a new incarnation;
//! growth is judged on each rmb process's longest incarnation, from its first sample
//! after the warm-up to its last one (a leak shows as growth within one life).

use std::time::Instant;

use crate::chaos::Target;
use crate::chaos::net::Net;

/// The processes sampled: the two relays, the two peers, their Redis servers.
pub const TRACKED: [Target; 6] = [
    Target::Relay,
    Target::RelayB,
    Target::PeerA,
    Target::PeerB,
    Target::RedisA,
    Target::RedisB,
];

/// The growth bounds of the verdict.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Seconds after a (re)start before the baseline sample.
    pub warmup_secs: f64,
    /// End RSS may be at most `rss_factor` × baseline …
    pub rss_factor: f64,
    /// … plus this many MiB.
    pub rss_slack_mib: f64,
    /// Open files may exceed the baseline by this many (fewer is never a leak).
    pub fd_slack: u64,
}

/// One reading.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Seconds from the start of the run.
    pub t: f64,
    /// Resident memory, KiB.
    pub rss_kib: u64,
    /// Open file descriptors.
    pub fds: u64,
}

/// One life of a process (between two kills).
#[derive(Debug, Clone)]
pub struct Incarnation {
    /// Its process id.
    pub pid: u32,
    /// Its readings, in time order.
    pub samples: Vec<Sample>,
}

/// Growth over one incarnation, and whether it is within the bounds.
#[derive(Debug, Clone, Copy)]
pub struct Judgement {
    /// The first reading after the warm-up.
    pub base: Sample,
    /// The last reading of that life.
    pub end: Sample,
    /// Within the bounds.
    pub ok: bool,
}

/// All incarnations of one process.
#[derive(Debug, Clone)]
pub struct ProcessUse {
    /// Which process.
    pub target: Target,
    /// Its name in the tables.
    pub name: &'static str,
    /// Judged against the bounds (the rmb processes; Redis holds the apps' data).
    pub judged: bool,
    /// Its lives, oldest first.
    pub lives: Vec<Incarnation>,
}

impl ProcessUse {
    fn all(&self) -> impl Iterator<Item = &Sample> {
        self.lives.iter().flat_map(|l| l.samples.iter())
    }

    /// The first sample of the run.
    pub fn first(&self) -> Option<Sample> {
        self.all().next().copied()
    }

    /// The last sample of the run.
    pub fn last(&self) -> Option<Sample> {
        self.all().last().copied()
    }

    /// Smallest and largest RSS (KiB) and open files over the run.
    pub fn min_max(&self) -> Option<((u64, u64), (u64, u64))> {
        let rss = (
            self.all().map(|s| s.rss_kib).min()?,
            self.all().map(|s| s.rss_kib).max()?,
        );
        let fds = (
            self.all().map(|s| s.fds).min()?,
            self.all().map(|s| s.fds).max()?,
        );
        Some((rss, fds))
    }

    /// Growth over the longest incarnation, from its first sample after the warm-up to
    /// its last, if that spans at least the warm-up again; `None` when none did (e.g. a
    /// short run with kills).
    pub fn judge(&self, bounds: &Bounds) -> Option<Judgement> {
        self.lives
            .iter()
            .filter_map(|life| {
                let born = life.samples.first()?.t;
                let base = *life
                    .samples
                    .iter()
                    .find(|s| s.t - born >= bounds.warmup_secs)?;
                let end = *life.samples.last()?;
                // A window shorter than the warm-up shows no trend.
                (end.t - base.t >= bounds.warmup_secs).then_some((base, end))
            })
            .max_by(|a, b| (a.1.t - a.0.t).total_cmp(&(b.1.t - b.0.t)))
            .map(|(base, end)| {
                let rss_limit =
                    base.rss_kib as f64 * bounds.rss_factor + bounds.rss_slack_mib * 1024.0;
                let ok = end.rss_kib as f64 <= rss_limit
                    && end.fds.saturating_sub(base.fds) <= bounds.fd_slack;
                Judgement { base, end, ok }
            })
    }
}

/// The samples of every tracked process.
pub(crate) struct Resources {
    start: Instant,
    pub(crate) procs: Vec<ProcessUse>,
}

impl Resources {
    /// Nothing sampled yet; times count from `start`.
    pub(crate) fn new(start: Instant, net: &Net) -> Self {
        let procs = TRACKED
            .iter()
            .filter(|t| net.pid(**t).is_some())
            .map(|t| ProcessUse {
                target: *t,
                name: t.name(),
                judged: !matches!(t, Target::RedisA | Target::RedisB),
                lives: Vec::new(),
            })
            .collect();
        Resources { start, procs }
    }

    /// Reads every tracked process once (those not running are skipped).
    pub(crate) fn sample(&mut self, net: &Net) {
        let t = self.start.elapsed().as_secs_f64();
        for process in &mut self.procs {
            let Some(pid) = net.pid(process.target) else {
                continue;
            };
            let Some((rss_kib, fds)) = read_proc(pid) else {
                continue;
            };
            if process.lives.last().is_none_or(|l| l.pid != pid) {
                process.lives.push(Incarnation {
                    pid,
                    samples: Vec::new(),
                });
            }
            let life = process.lives.last_mut().expect("pushed above");
            life.samples.push(Sample { t, rss_kib, fds });
        }
    }
}

/// Resident memory (KiB, `VmRSS`) and number of open file descriptors of `pid`.
pub fn read_proc(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((rss, fds))
}
