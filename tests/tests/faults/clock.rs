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
