//! [`Report`]: what one chaos run counted, and the table it prints.

use super::*;

/// The outcome of one run (shared by the test and the `rmb-chaos` binary).
#[derive(Debug, Clone)]
pub struct Report {
    pub relay: RelayMode,
    pub rate: u32,
    /// Seconds requests were sent for.
    pub send_secs: f64,
    /// Seconds from the end of sending until the last answer came (or the drain gave up).
    pub drain_secs: f64,
    /// Requests pushed by the client.
    pub sent: u64,
    /// Requests whose first response carried their own payload.
    pub ok: u64,
    /// Requests whose first response was an error, or a success with a wrong payload.
    pub error: u64,
    /// Of `error`: successes carrying another payload.
    pub mismatched: u64,
    /// Requests without any response.
    pub lost: u64,
    /// Responses beyond the first, over all requests.
    pub duplicated: u64,
    /// Responses whose `ref` the client never sent.
    pub strays: u64,
    /// Requests the bot handled (every delivery counts).
    pub handler_runs: u64,
    /// Envelope uids the bot handled more than once.
    pub handled_twice: u64,
    /// Payloads (client requests) the bot handled more than once, under any uid.
    pub payloads_handled_twice: u64,
    /// Requests the bot could not read.
    pub bot_unreadable: u64,
    /// Peers' `resent` counters (A + B, summed over their restarts; 0 if absent).
    pub resent: u64,
    /// Peers' `duplicates` counters (dropped duplicates).
    pub duplicates: u64,
    /// Peers' `replayed` counters.
    pub replayed: u64,
    /// Entries left in lists and outboxes that should be empty at the end.
    pub leftovers: Vec<(String, u64)>,
    /// Other end-of-run figures, for information (not expected to be zero).
    pub info: Vec<(String, u64)>,
    /// Error responses by text, most frequent first.
    pub errors: Vec<(String, u64)>,
    /// Lost requests by the second they were sent in (seconds from the first request).
    pub lost_by_second: Vec<(u64, u64)>,
    pub crashes: Vec<CrashRecord>,
}

impl Report {
    /// Sum of [`Report::leftovers`].
    pub fn leftover_total(&self) -> u64 {
        self.leftovers.iter().map(|(_, n)| n).sum()
    }

    /// Every request answered once with its own payload, handled once, nothing left.
    pub fn is_clean(&self) -> bool {
        self.ok == self.sent
            && self.error == 0
            && self.lost == 0
            && self.duplicated == 0
            && self.strays == 0
            && self.handled_twice == 0
            && self.payloads_handled_twice == 0
            && self.handler_runs == self.sent
            && self.leftover_total() == 0
    }

    /// Prints the run's details and its figures as a table (stdout).
    pub fn print_table(&self) {
        println!(
            "\nchaos run, {} relay: {:.1} s at {} RPC/s, {} crash(es), drained in {:.1} s",
            self.relay,
            self.send_secs,
            self.rate,
            self.crashes.len(),
            self.drain_secs
        );
        if !self.crashes.is_empty() {
            println!(
                "  {:<12} {:>8} {:>7} {:>10} {:>11}",
                "crash", "at", "down", "relaunch", "back after"
            );
            for c in &self.crashes {
                let back = c
                    .back_after
                    .map_or_else(|| "not seen".to_string(), |s| format!("{s:.1}s"));
                println!(
                    "  {:<12} {:>7.1}s {:>6.1}s {:>9.2}s {:>11}",
                    c.target.name(),
                    c.at,
                    c.down,
                    c.relaunch,
                    back
                );
            }
        }
        print_rows(std::slice::from_ref(self));
        println!(
            "  handler runs {}, payloads handled twice {}, mismatched payloads {}, stray responses {}, unreadable requests {}",
            self.handler_runs,
            self.payloads_handled_twice,
            self.mismatched,
            self.strays,
            self.bot_unreadable
        );
        let left: Vec<String> = self
            .leftovers
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        if left.is_empty() {
            println!(
                "  leftovers: none ({} lists/key sets checked)",
                self.leftovers.len()
            );
        } else {
            println!("  leftovers: {}", left.join(", "));
        }
        let info: Vec<String> = self.info.iter().map(|(k, n)| format!("{k}={n}")).collect();
        println!("  info: {}", info.join(", "));
        for (text, n) in self.errors.iter().take(8) {
            println!("  error x{n}: {text}");
        }
        if !self.lost_by_second.is_empty() {
            let lost: Vec<String> = self
                .lost_by_second
                .iter()
                .map(|(s, n)| format!("{s}s:{n}"))
                .collect();
            println!("  lost by send second: {}", lost.join(" "));
        }
    }

    /// Prints one figures row per report under one header (stdout), e.g. one per relay
    /// mode at the end of the long run.
    pub fn print_summary(reports: &[Report]) {
        println!("\nsummary");
        print_rows(reports);
    }
}

fn print_rows(reports: &[Report]) {
    println!(
        "  {:<7} {:>7} {:>7} {:>6} {:>6} {:>10} {:>13} {:>8} {:>18} {:>8} {:>9}",
        "relay",
        "sent",
        "ok",
        "error",
        "lost",
        "duplicated",
        "handled twice",
        "resends",
        "duplicates dropped",
        "replayed",
        "leftovers"
    );
    for r in reports {
        println!(
            "  {:<7} {:>7} {:>7} {:>6} {:>6} {:>10} {:>13} {:>8} {:>18} {:>8} {:>9}",
            r.relay.to_string(),
            r.sent,
            r.ok,
            r.error,
            r.lost,
            r.duplicated,
            r.handled_twice,
            r.resent,
            r.duplicates,
            r.replayed,
            r.leftover_total()
        );
    }
}
