//! [`FaultReport`]: what one fault run counted for its three loads, the rules it is held
//! to ([`FaultReport::problems`]) and the table it prints.

use super::{PipeReport, TopicReport};
use crate::chaos::Report;

/// The outcome of one fault run.
#[derive(Debug, Clone)]
pub struct FaultReport {
    pub name: String,
    /// RPCs through the Redis API (client on A, echo bot on B).
    pub rpc: Report,
    pub topics: TopicReport,
    pub pipes: PipeReport,
    /// When each fault step happened (seconds from the first request).
    pub timeline: Vec<(f64, String)>,
    /// Packets the nftables rules dropped.
    pub dropped_packets: u64,
    /// Connections each proxy accepted (reconnections show here), in the order of
    /// [`super::fed::Proxies::all`]: peer A's, peer B's, to relay A, to relay B.
    pub proxy_connections: Vec<u64>,
}

impl FaultReport {
    /// Every broken promise: an RPC without an answer, answered twice or handled twice,
    /// a publish without an outcome, an acknowledged message missing, repeated or out of
    /// its place, a pipe that hung or claimed success with wrong bytes, leftovers.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let r = &self.rpc;
        let mut check = |bad: bool, what: String| {
            if bad {
                out.push(what);
            }
        };
        check(r.lost > 0, format!("{} RPCs without an answer", r.lost));
        check(
            r.ok + r.error != r.sent,
            format!("RPCs: {} sent, {} answered", r.sent, r.ok + r.error),
        );
        check(
            r.duplicated > 0,
            format!("{} RPC answers beyond the first", r.duplicated),
        );
        check(
            r.mismatched > 0,
            format!("{} RPC answers with another payload", r.mismatched),
        );
        check(
            r.strays > 0,
            format!("{} answers to RPCs never sent", r.strays),
        );
        check(
            r.handled_twice > 0,
            format!("{} envelopes handled twice", r.handled_twice),
        );
        check(
            r.payloads_handled_twice > 0,
            format!("{} requests handled twice", r.payloads_handled_twice),
        );
        check(
            r.leftover_total() > 0,
            format!(
                "left behind: {:?}",
                r.leftovers
                    .iter()
                    .filter(|(_, n)| *n > 0)
                    .collect::<Vec<_>>()
            ),
        );
        let t = &self.topics;
        check(
            t.sent != t.acked + t.errors,
            format!(
                "publishes: {} sent, {} acked, {} errors",
                t.sent, t.acked, t.errors
            ),
        );
        check(
            t.lost > 0,
            format!("{} acknowledged messages not delivered", t.lost),
        );
        check(
            t.duplicated > 0,
            format!("{} messages delivered twice", t.duplicated),
        );
        check(t.gaps > 0, format!("{} ids missing or gap events", t.gaps));
        check(
            t.wrong > 0,
            format!("{} messages with a wrong id or text", t.wrong),
        );
        let p = &self.pipes;
        check(p.hung > 0, format!("{} pipe rounds hung", p.hung));
        check(
            p.false_success > 0,
            format!("{} pipe rounds exited 0 with wrong bytes", p.false_success),
        );
        out
    }

    /// Prints the timeline, one table row and the error texts (stdout).
    pub fn print(&self) {
        let steps: Vec<String> = self
            .timeline
            .iter()
            .map(|(t, what)| format!("{t:.1}s {what}"))
            .collect();
        println!(
            "\nfault run {:?}: {}; {} packets dropped by nftables, proxied connections {:?}",
            self.name,
            steps.join("; "),
            self.dropped_packets,
            self.proxy_connections
        );
        print_rows(std::slice::from_ref(self));
        for (text, n) in self.rpc.errors.iter().take(5) {
            println!("  RPC error x{n}: {text}");
        }
        for (text, n) in self.topics.error_texts.iter().take(5) {
            println!("  publish error x{n}: {text}");
        }
        for (text, n) in self.pipes.error_texts.iter().take(5) {
            println!("  pipe error x{n}: {text}");
        }
        if self.topics.delivered_after_error > 0 {
            println!(
                "  publishes answered with an error and delivered all the same: {}",
                self.topics.delivered_after_error
            );
        }
        for problem in self.problems() {
            println!("  PROBLEM: {problem}");
        }
    }
}

/// One row per run under one header (stdout).
pub fn print_rows(reports: &[FaultReport]) {
    println!(
        "  {:<26} | {:>5} {:>5} {:>4} {:>4} {:>4} {:>5} | {:>4} {:>5} {:>4} {:>5} {:>4} {:>4} {:>4} | {:>4} {:>6} {:>5} {:>5} {:>4}",
        "fault",
        "rpc",
        "ok",
        "err",
        "lost",
        "dup",
        "twice",
        "pub",
        "acked",
        "err",
        "deliv",
        "lost",
        "dup",
        "gaps",
        "pipe",
        "intact",
        "error",
        "false",
        "hung"
    );
    for f in reports {
        let (r, t, p) = (&f.rpc, &f.topics, &f.pipes);
        println!(
            "  {:<26} | {:>5} {:>5} {:>4} {:>4} {:>4} {:>5} | {:>4} {:>5} {:>4} {:>5} {:>4} {:>4} {:>4} | {:>4} {:>6} {:>5} {:>5} {:>4}",
            f.name,
            r.sent,
            r.ok,
            r.error,
            r.lost,
            r.duplicated,
            r.handled_twice + r.payloads_handled_twice,
            t.sent,
            t.acked,
            t.errors,
            t.delivered,
            t.lost,
            t.duplicated,
            t.gaps,
            p.rounds,
            p.intact,
            p.clean_errors,
            p.false_success,
            p.hung
        );
    }
}
