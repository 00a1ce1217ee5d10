//! A peer whose wall clock is 30 s ahead of everyone else's (libfaketime preloaded into
//! peer B): its login tokens and envelope timestamps come from the future.

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
}
