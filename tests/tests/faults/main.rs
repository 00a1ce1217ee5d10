//! Network faults (issue #33) across two federated relays, each relay and each peer in
//! its own network namespace: RPCs through the Redis API, topic deliveries and `rmb
//! pipe` connections run while the network misbehaves, then every one is accounted for
//! (sent = answered + explicit errors; none lost, duplicated or handled twice; topic ids
//! without a gap; pipes intact or failing with a non-zero exit).
//!
//! - `drops`: random packet loss on every hop, a partition between the relays, and one
//!   between a peer and its relay (nftables rules in the namespaces);
//! - `proxied`: latency and a bandwidth cap, then links stalled and cut (the harness's
//!   TCP proxy on every hop);
//! - `clock`: a peer whose wall clock is 30 s ahead (libfaketime).
//!
//! Needs root (namespaces, nftables): without it each test prints why and passes
//! without running. `--nocapture` shows each run's table; the runs go one at a time.

mod clock;
mod drops;
mod proxied;

use std::sync::Mutex;

use rmb_testsupport::faults::{self, FaultReport, Plan};

/// The runs create namespaces and start many processes: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `plan` and prints its report; `None` (after printing why) where it cannot run.
fn run(plan: Plan) -> Option<FaultReport> {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let name = plan.name.clone();
    match faults::run(plan) {
        Ok(report) => {
            report.print();
            Some(report)
        }
        Err(why) => {
            println!("skipped fault run {name:?}: {why}");
            None
        }
    }
}

/// The harness itself: with nothing wrong, everything is answered, delivered and intact.
#[test]
fn calm_network() {
    let mut plan = Plan::new("calm", faults::Setup::default());
    plan.duration = std::time::Duration::from_secs(6);
    let Some(report) = run(plan) else { return };
    assert_accounted(&report);
    assert_eq!(report.rpc.ok, report.rpc.sent, "{:?}", report.rpc.errors);
    assert_eq!(report.topics.acked, report.topics.sent);
    assert_eq!(report.pipes.intact, report.pipes.rounds);
}

/// Fails with every broken promise of the run.
fn assert_accounted(report: &FaultReport) {
    let problems = report.problems();
    assert!(problems.is_empty(), "{}: {problems:#?}", report.name);
    assert!(report.rpc.sent > 0 && report.topics.sent > 0 && report.pipes.rounds > 0);
}
