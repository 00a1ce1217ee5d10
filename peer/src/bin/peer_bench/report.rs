//! The printed report: the main table, a row as each measurement ends (RPC/s, latency,
//! CPU per call of all processes together); then a line per burst; then the CPU per call
//! of each process, for every row and burst.

use super::cpu::{self, CpuUse, ROLES};
use super::load::{Burst, Outcome};
use super::redis_stats::RedisUse;
use super::{Delivery, Topology};

/// What a row or burst was measured on.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    /// How the peers deliver.
    pub delivery: Delivery,
    /// Where the peers' relays are.
    pub topology: Topology,
}

/// One line of the CPU breakdown.
struct CpuRow {
    setup: Setup,
    payload: String,
    clients: String,
    calls: usize,
    cpu: CpuUse,
    redis: RedisUse,
}

/// Everything printed after the main table, gathered while it is printed.
#[derive(Default)]
pub struct Report {
    bursts: Vec<(Setup, Burst)>,
    cpu_rows: Vec<CpuRow>,
    /// Whether to print the Redis commands of every row and burst (`--redis-commands`).
    redis_commands: bool,
}

impl Report {
    /// An empty report; `redis_commands` also prints what Redis ran per call.
    pub fn new(redis_commands: bool) -> Report {
        Report {
            redis_commands,
            ..Report::default()
        }
    }

    /// Prints the main table's header.
    pub fn header(&self) {
        println!(
            "| delivery | topology | payload | clients | RPC/s | p50 ms | p99 ms | first ms | errors | CPU µs/RPC |"
        );
        println!(
            "|----------|----------|--------:|--------:|------:|-------:|-------:|---------:|-------:|-----------:|"
        );
    }

    /// Prints the row of `clients` callers with `size`-byte payloads, and keeps its CPU.
    pub fn row(&mut self, setup: Setup, size: usize, clients: usize, o: Outcome) {
        let calls = o.latencies.len();
        println!(
            "| {} | {} | {} | {} | {:.0} | {:.3} | {:.3} | {:.3} | {} | {:.0} |",
            setup.delivery.name(),
            setup.topology.name(),
            human(size),
            clients,
            o.rate(),
            o.percentile(0.50),
            o.percentile(0.99),
            o.first.as_secs_f64() * 1000.0,
            o.errors,
            cpu::per_call_us(o.cpu.total(), calls)
        );
        self.cpu_rows.push(CpuRow {
            setup,
            payload: human(size),
            clients: clients.to_string(),
            calls,
            cpu: o.cpu,
            redis: o.redis,
        });
    }

    /// Keeps a burst of `size`-byte requests for [`Report::finish`].
    pub fn burst(&mut self, setup: Setup, size: usize, burst: Burst) {
        self.cpu_rows.push(CpuRow {
            setup,
            payload: human(size),
            clients: format!("burst {}", burst.sent),
            calls: burst.answered,
            cpu: burst.cpu.clone(),
            redis: burst.redis.clone(),
        });
        self.bursts.push((setup, burst));
    }

    /// Prints the burst lines and the CPU breakdown.
    pub fn finish(&self) {
        if !self.bursts.is_empty() {
            println!();
        }
        for (setup, b) in &self.bursts {
            let resends = match (b.resent, b.resent_percent()) {
                (Some(n), Some(pct)) => format!("{n} resends ({pct:.2}%)"),
                _ => "resends unknown".to_string(),
            };
            println!(
                "burst ({}, {}): {} requests pushed at once → {} answered ({} errors) in {:.2} s = {:.0} RPC/s, {}, CPU {:.0} µs/RPC",
                setup.delivery.name(),
                setup.topology.name(),
                b.sent,
                b.answered,
                b.errors,
                b.elapsed.as_secs_f64(),
                b.answered as f64 / b.elapsed.as_secs_f64(),
                resends,
                cpu::per_call_us(b.cpu.total(), b.answered)
            );
        }
        if self.cpu_rows.is_empty() {
            return;
        }
        println!();
        println!("CPU µs per successful RPC, by process (bench: the clients and the echo bot):");
        println!();
        let roles = ROLES.join(" | ");
        println!("| delivery | topology | payload | clients | {roles} | all |");
        println!("|---|---|--:|--:|{}--:|", "--:|".repeat(ROLES.len()));
        for r in &self.cpu_rows {
            let per_call = |cpu| format!("{:.1}", cpu::per_call_us(cpu, r.calls));
            let cells: Vec<String> = ROLES
                .iter()
                .map(|role| r.cpu.of(role).map_or_else(|| "–".to_string(), per_call))
                .collect();
            println!(
                "| {} | {} | {} | {} | {} | {} |",
                r.setup.delivery.name(),
                r.setup.topology.name(),
                r.payload,
                r.clients,
                cells.join(" | "),
                per_call(r.cpu.total())
            );
        }
        if self.redis_commands {
            for r in &self.cpu_rows {
                let label = format!(
                    "{}, {}, {}, {} clients",
                    r.setup.delivery.name(),
                    r.setup.topology.name(),
                    r.payload,
                    r.clients
                );
                r.redis.print(&label, r.calls);
            }
        }
    }
}

/// `256 B`, `64 KiB`.
fn human(size: usize) -> String {
    if size >= 1024 && size.is_multiple_of(1024) {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}
