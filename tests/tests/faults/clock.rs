//! A peer whose wall clock is 30 s ahead of everyone else's (libfaketime preloaded into
//! peer B): its login tokens and envelope timestamps come from the future, and it judges
//! what it receives by a clock 30 s later than the sender's.

use rmb_testsupport::faults::{Plan, Setup};

use super::{assert_accounted, run};

#[test]
fn peer_b_clock_thirty_seconds_ahead() {
    let setup = Setup {
        clock_b: Some("+30s".into()),
        ..Setup::default()
    };
    let Some(report) = run(Plan::new("peer B clock +30 s", setup)) else {
        return;
    };
    assert_accounted(&report);
    // Nothing else is wrong: everything must work, not merely fail cleanly. (Connection
    // opens, whose envelope lived only the 15 s open timeout, were refused as expired.)
    assert_eq!(report.rpc.ok, report.rpc.sent, "{:?}", report.rpc.errors);
    assert_eq!(report.topics.acked, report.topics.sent);
    assert_eq!(
        report.pipes.intact, report.pipes.rounds,
        "{:?}",
        report.pipes.error_texts
    );
}

/// Validity is judged by the receiver's clock (protocol.md §2, as in rmb-rs): requests
/// whose `exp` (20 s) is shorter than the receiver's offset (30 s ahead) are expired on
/// arrival. Each must still come back as an explicit error, none lost.
#[test]
fn rpcs_shorter_lived_than_the_clock_offset_fail_explicitly() {
    let setup = Setup {
        clock_b: Some("+30s".into()),
        ..Setup::default()
    };
    let mut plan = Plan::new("peer B +30 s, exp 20 s", setup);
    plan.duration = std::time::Duration::from_secs(5);
    plan.exp = 20;
    let Some(report) = run(plan) else { return };
    assert_accounted(&report);
    let expired = report
        .rpc
        .errors
        .iter()
        .filter(|(text, _)| text.contains("expired"))
        .map(|(_, n)| n)
        .sum::<u64>();
    assert_eq!(expired, report.rpc.sent, "{:?}", report.rpc.errors);
}
