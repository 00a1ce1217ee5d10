//! [`SoakReport`]: everything one soak counted, the tables it prints and its verdict.

use std::time::Duration;

use super::pipes::PipeReport;
use super::resources::{Bounds, ProcessUse};
use super::topics::TopicReport;
use crate::chaos::{Report, Target};

/// One stall of the schedule.
#[derive(Debug, Clone)]
pub struct PauseRecord {
    /// The process stopped.
    pub target: Target,
    /// Seconds from the first request.
    pub at: f64,
    /// How long it was stopped.
    pub secs: f64,
}

/// The outcome of one soak.
#[derive(Debug, Clone)]
pub struct SoakReport {
    /// The sending time asked for.
    pub duration: Duration,
    /// RPCs per second asked for.
    pub rpc_rate: u32,
    /// Topic publishes per second asked for.
    pub topic_rate: u32,
    /// The RPC accounting (the chaos harness's), with the kills done.
    pub rpc: Report,
    /// The topic accounting.
    pub topics: TopicReport,
    /// The pipe accounting.
    pub pipes: PipeReport,
    /// The stalls done.
    pub pauses: Vec<PauseRecord>,
    /// Memory and open files of each process.
    pub resources: Vec<ProcessUse>,
    /// The largest length each list the soak's apps read reached (they kept up when far
    /// below the peer's trim at 10,000).
    pub backlogs: Vec<(String, u64)>,
    /// The growth bounds the verdict used.
    pub bounds: Bounds,
}

impl SoakReport {
    /// No RPC lost, answered twice or handled twice, and nothing left behind.
    pub fn rpc_clean(&self) -> bool {
        let r = &self.rpc;
        r.lost == 0
            && r.duplicated == 0
            && r.handled_twice == 0
            && r.payloads_handled_twice == 0
            && r.strays == 0
            && r.mismatched == 0
            && r.leftover_total() == 0
    }

    /// The processes whose growth broke the bounds.
    pub fn grown(&self) -> Vec<&'static str> {
        self.resources
            .iter()
            .filter(|p| p.judged)
            .filter(|p| p.judge(&self.bounds).is_some_and(|j| !j.ok))
            .map(|p| p.name)
            .collect()
    }

    /// Why the soak failed; empty when it passed.
    pub fn failures(&self) -> Vec<String> {
        let mut why = Vec::new();
        if !self.rpc_clean() {
            why.push("RPCs lost, duplicated, handled twice or left behind".to_string());
        }
        if !self.topics.is_clean() {
            why.push("topic messages missing, repeated or out of order".to_string());
        }
        if !self.pipes.is_clean() {
            why.push("pipe transfers corrupted or hung".to_string());
        }
        for name in self.grown() {
            why.push(format!("{name} grew past the memory/open-file bound"));
        }
        why
    }

    /// Prints the tables and the verdict (stdout).
    pub fn print(&self) {
        println!(
            "\nsoak: {:.0} s, two federating relays, {} RPC/s, {} topic messages/s, \
             pipe transfers of {} KiB",
            self.rpc.send_secs,
            self.rpc_rate,
            self.topic_rate,
            self.pipes_kib(),
        );
        self.rpc.print_table();
        self.print_faults();
        let t = &self.topics;
        println!("\ntopics (twin A publishes to twin B's topic, twin A subscribed, Redis list)");
        println!(
            "  {:>9} {:>9} {:>8} {:>9} {:>9} {:>6} {:>10} {:>12} {:>12} {:>12}",
            "attempted",
            "published",
            "errors",
            "unknown",
            "delivered",
            "gaps",
            "duplicates",
            "out of order",
            "stored twice",
            "gap events"
        );
        println!(
            "  {:>9} {:>9} {:>8} {:>9} {:>9} {:>6} {:>10} {:>12} {:>12} {:>12}",
            t.attempted,
            t.published,
            t.publish_errors,
            t.publish_unknown,
            t.delivered,
            t.gaps,
            t.duplicates,
            t.out_of_order,
            t.stored_twice,
            t.gap_events
        );
        println!(
            "  highest id {}, acknowledged but never delivered {}, stray items {}, \
             publishes tried again after a refused connection {}",
            t.max_id, t.acked_not_delivered, t.strays, t.reconnects
        );
        for (text, n) in t.errors.iter().take(5) {
            println!("  publish error x{n}: {text}");
        }
        for (text, n) in t.unknown_why.iter().take(5) {
            println!("  publish without an answer x{n}: {text}");
        }
        let p = &self.pipes;
        println!("\npipes (rmb pipe listen / connect through the peers, direction alternating)");
        println!(
            "  {:>9} {:>7} {:>7} {:>8} {:>5} {:>12} {:>14} {:>12}",
            "transfers",
            "intact",
            "failed",
            "corrupt",
            "hung",
            "bytes sent",
            "bytes received",
            "bytes intact"
        );
        println!(
            "  {:>9} {:>7} {:>7} {:>8} {:>5} {:>12} {:>14} {:>12}",
            p.transfers,
            p.intact,
            p.failed,
            p.corrupt,
            p.hung,
            p.bytes_sent,
            p.bytes_received,
            p.bytes_intact
        );
        for (text, n) in p.errors.iter().take(5) {
            println!("  failure x{n}: {text}");
        }
        self.print_resources();
        let backlogs: Vec<String> = self
            .backlogs
            .iter()
            .map(|(list, n)| format!("{list} {n}"))
            .collect();
        println!(
            "\nlargest app backlogs (the peer trims these lists at 10,000): {}",
            backlogs.join(", ")
        );
        let failures = self.failures();
        if failures.is_empty() {
            println!(
                "\nverdict: PASS (nothing lost or duplicated; growth within RSS end <= base x{} + {} MiB, open files at most +{})",
                self.bounds.rss_factor, self.bounds.rss_slack_mib, self.bounds.fd_slack
            );
        } else {
            println!("\nverdict: FAIL: {}", failures.join("; "));
        }
    }

    fn pipes_kib(&self) -> u64 {
        self.pipes.transfer_bytes / 1024
    }

    fn print_faults(&self) {
        let mut kills: Vec<(&str, usize)> = Vec::new();
        for c in &self.rpc.crashes {
            match kills.iter_mut().find(|(n, _)| *n == c.target.name()) {
                Some((_, k)) => *k += 1,
                None => kills.push((c.target.name(), 1)),
            }
        }
        let kills: Vec<String> = kills.iter().map(|(n, k)| format!("{n} x{k}")).collect();
        println!(
            "\nfaults: {} kills ({}), {} stalls (SIGSTOP/SIGCONT)",
            self.rpc.crashes.len(),
            kills.join(", "),
            self.pauses.len()
        );
        for p in &self.pauses {
            println!(
                "  stall {:<8} at {:7.1}s for {:4.1}s",
                p.target.name(),
                p.at,
                p.secs
            );
        }
    }

    fn print_resources(&self) {
        println!(
            "\nprocesses: RSS (MiB) and open files; start = first sample, end = last; \
             judged on the longest life after {:.0} s of warm-up",
            self.bounds.warmup_secs
        );
        println!(
            "  {:<11} {:>5} {:>13} {:>13} {:>13} {:>9} {:>20} {:>8}",
            "process",
            "lives",
            "start rss/fd",
            "end rss/fd",
            "min-max rss",
            "min-max fd",
            "judged base->end",
            "verdict"
        );
        let mib = |kib: u64| kib as f64 / 1024.0;
        for p in &self.resources {
            let (Some(first), Some(last), Some(((rmin, rmax), (fmin, fmax)))) =
                (p.first(), p.last(), p.min_max())
            else {
                continue;
            };
            let judged = p.judge(&self.bounds);
            let (span, verdict) = match (judged, p.judged) {
                (Some(j), _) => (
                    format!(
                        "{:.0}->{:.0}/{}->{} {:.0}s",
                        mib(j.base.rss_kib),
                        mib(j.end.rss_kib),
                        j.base.fds,
                        j.end.fds,
                        j.end.t - j.base.t
                    ),
                    match (p.judged, j.ok) {
                        (false, _) => "info",
                        (true, true) => "ok",
                        (true, false) => "GREW",
                    },
                ),
                (None, true) => ("-".to_string(), "too short"),
                (None, false) => ("-".to_string(), "info"),
            };
            println!(
                "  {:<11} {:>5} {:>13} {:>13} {:>13} {:>9} {:>20} {:>8}",
                p.name,
                p.lives.len(),
                format!("{:.1}/{}", mib(first.rss_kib), first.fds),
                format!("{:.1}/{}", mib(last.rss_kib), last.fds),
                format!("{:.1}-{:.1}", mib(rmin), mib(rmax)),
                format!("{fmin}-{fmax}"),
                span,
                verdict
            );
        }
    }
}
