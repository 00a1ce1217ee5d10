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
