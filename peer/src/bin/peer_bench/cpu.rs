//! What a measurement cost each process of the network in CPU: a reading of every
//! process (children and the bench itself) before and after ([`Sample`]), and the
//! differences by role ([`CpuUse`]), for the CPU µs per call of the report.

use std::time::Duration;

use super::processes::Network;
use crate::bench_common::cpu::CpuTime;

/// The roles of the processes, in the columns' order of the breakdown table (`relay 2`
/// only in the federated topology; `bench` runs the clients and the bot).
pub const ROLES: [&str; 7] = [
    "redis A", "redis B", "relay 1", "relay 2", "peer A", "peer B", "bench",
];

/// A CPU reading of every process of a network at one moment, by role.
pub struct Sample(Vec<(&'static str, CpuTime)>);

impl Sample {
    /// Reads every process of `net` now.
    pub fn take(net: &Network) -> Sample {
        Sample(
            net.processes()
                .into_iter()
                .map(|(role, pid)| (role, CpuTime::of(pid)))
                .collect(),
        )
    }

    /// The CPU each process used between `before` (of the same network) and this.
    pub fn since(&self, before: &Sample) -> CpuUse {
        CpuUse(
            self.0
                .iter()
                .zip(&before.0)
                .map(|((role, after), (_, before))| (*role, after.since(before)))
                .collect(),
        )
    }
}

/// The CPU each process used during one measurement, by role.
#[derive(Debug, Clone, Default)]
pub struct CpuUse(Vec<(&'static str, Duration)>);

impl CpuUse {
    /// All processes together.
    pub fn total(&self) -> Duration {
        self.0.iter().map(|(_, cpu)| *cpu).sum()
    }

    /// That of the process of `role`, if the network has one.
    pub fn of(&self, role: &str) -> Option<Duration> {
        self.0.iter().find(|(r, _)| *r == role).map(|(_, cpu)| *cpu)
    }
}

/// `cpu` per call in microseconds (NaN without calls).
pub fn per_call_us(cpu: Duration, calls: usize) -> f64 {
    if calls == 0 {
        return f64::NAN;
    }
    cpu.as_secs_f64() * 1e6 / calls as f64
}
