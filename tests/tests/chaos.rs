//! Issue #7's short chaos run: 20 s of RPCs at 100 per second between two real peers
//! (client app on A's Redis, echo bot on B's) while the in-memory relay, peer A and peer
//! B are each SIGKILLed and kept down 3 s (and, in a second run, each of two federating
//! relays). Every request must get its own payload back exactly once, the bot must
//! handle each request once, and nothing may be left behind.
//! `--nocapture` shows the report table; `rmb-chaos` is the long version.

use std::sync::Mutex;
use std::time::Duration;

use rmb_testsupport::chaos::{self, Config, Crash, RelayMode, Report, Target};

/// The runs start many processes and time their crashes: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn assert_clean(report: &Report) {
    assert_eq!(report.lost, 0, "requests without an answer");
    assert_eq!(
        report.error, 0,
        "requests answered with an error: {:?}",
        report.errors
    );
    assert_eq!(report.mismatched, 0, "answers carrying another payload");
    assert_eq!(report.duplicated, 0, "answers beyond the first");
    assert_eq!(report.strays, 0, "answers to requests never sent");
    assert_eq!(
        report.ok, report.sent,
        "requests answered with their own payload"
    );
    assert_eq!(
        report.handled_twice, 0,
        "envelope uids the bot handled twice"
    );
    assert_eq!(
        report.payloads_handled_twice, 0,
        "requests the bot handled twice under different uids"
    );
    assert_eq!(
        report.handler_runs, report.sent,
        "bot runs, one per request"
    );
    let left: Vec<_> = report.leftovers.iter().filter(|(_, n)| *n > 0).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(report.is_clean());
}

/// The harness itself: with nothing crashing, every request comes back once.
#[test]
fn calm_run_is_clean() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut config = Config::new(RelayMode::Memory, Duration::from_secs(4), 100);
    config.drain = Duration::from_secs(15);
    let report = chaos::run(&config);
    report.print_table();
    assert_eq!(report.sent, 400);
    assert_clean(&report);
}

/// Runs `mode` for `secs` at 100 RPC/s, killing each `(at second, target)` for 3 s,
/// and checks that every crash happened and the run is clean.
fn crash_run(mode: RelayMode, secs: u64, crashes: &[(u64, Target)]) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut config = Config::new(mode, Duration::from_secs(secs), 100);
    config.crashes = crashes
        .iter()
        .map(|&(at, target)| Crash {
            at: Duration::from_secs(at),
            target,
            down: Duration::from_secs(3),
        })
        .collect();
    config.drain = Duration::from_secs(20);
    let report = chaos::run(&config);
    report.print_table();
    assert_eq!(report.crashes.len(), crashes.len(), "every crash happened");
    assert_clean(&report);
}

#[test]
fn rpcs_survive_relay_and_peer_crashes() {
    crash_run(
        RelayMode::Memory,
        20,
        &[(4, Target::Relay), (9, Target::PeerA), (14, Target::PeerB)],
    );
}

/// Federation: peer A on one relay (which also hosts the registry), peer B on another;
/// each relay is killed once. Replies cross back through a relay that is down for a
/// while, and the registry is unreachable while the first relay is down.
#[test]
fn rpcs_survive_crashes_of_federating_relays() {
    crash_run(
        RelayMode::Federated,
        15,
        &[(4, Target::RelayB), (10, Target::Relay)],
    );
}
