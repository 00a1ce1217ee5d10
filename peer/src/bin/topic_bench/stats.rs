//! Latency samples and what the table prints of them.

use std::time::Duration;

/// One measured configuration.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// One message at a time: publish → each subscriber, in ms.
    pub p50: f64,
    pub p99: f64,
    /// The burst: deliveries per second (all subscribers together).
    pub rate: f64,
    /// The burst: latency under load, in ms.
    pub burst_p50: f64,
    pub burst_p99: f64,
    /// Deliveries missing when the burst's deadline passed (0 when complete).
    pub missing: usize,
    /// One message at a time: CPU µs per delivery, of every process involved (the bench
    /// with all peers, relays, Redis) — what a delivery costs the machine in all.
    pub cpu_us: f64,
    /// One message at a time: p50 over messages of its first and of its last delivery,
    /// in ms — where in the fan-out the time goes (a late first means the path is slow,
    /// a late last that the fan-out's work is).
    pub first_p50: f64,
    pub last_p50: f64,
    /// One message at a time: percent of the machine's CPU time taken by the hypervisor
    /// (steal) meanwhile; `None` when not measured (NATS shares the rmb rows' machine).
    pub steal: Option<f64>,
    /// The burst: pulls the subscribers asked of the owner, and messages they received
    /// twice (a push lost or dropped on the way makes both).
    pub burst_pulls_duplicates: Option<(u64, u64)>,
}

/// Every delivery of the one-at-a-time run, and each message's first and last.
#[derive(Debug, Default)]
pub struct ClosedLoop {
    all: Vec<Duration>,
    first: Vec<Duration>,
    last: Vec<Duration>,
}

impl ClosedLoop {
    /// Notes one message's deliveries (latency from its publish).
    pub fn message(&mut self, deliveries: impl IntoIterator<Item = Duration>) {
        let start = self.all.len();
        self.all.extend(deliveries);
        let of_this = &self.all[start..];
        if let (Some(first), Some(last)) = (of_this.iter().min(), of_this.iter().max()) {
            self.first.push(*first);
            self.last.push(*last);
        }
    }

    /// Deliveries noted so far.
    pub fn deliveries(&self) -> usize {
        self.all.len()
    }

    /// Fills the closed-loop fields of `figures`.
    pub fn finish(mut self, figures: &mut Figures) {
        figures.p50 = percentile(&mut self.all, 0.5);
        figures.p99 = percentile(&mut self.all, 0.99);
        figures.first_p50 = percentile(&mut self.first, 0.5);
        figures.last_p50 = percentile(&mut self.last, 0.5);
    }
}

/// The `q` quantile (0..=1) of `samples`, in ms.
pub fn percentile(samples: &mut [Duration], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_unstable();
    let i = ((samples.len() - 1) as f64 * q).round() as usize;
    samples[i].as_secs_f64() * 1000.0
}
