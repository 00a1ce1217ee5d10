//! A listener told to stop (SIGTERM) takes no new work: a notification sent right after
//! is escalated, not acknowledged by the dying process; and `rmb notify` asks whether
//! `rmb listen` runs only when nobody answered, not after a refusal.

use std::process::Command;
use std::time::{Duration, Instant};

use rmb_testsupport::relay_process::RelayProcess;

use super::node::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_listener_acknowledges_nothing_and_a_refusal_is_not_silence() {
    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let alice = Node::start("//Alice", &relay, &registry).await;
    let bob = Node::start("//Bob", &relay, &registry).await;
    let charlie = Node::start("//Charlie", &relay, &registry).await;
    let dave = Node::start("//Dave", &relay, &registry).await;
    let dir = tempfile::tempdir().unwrap();
    let _owner = form_group(&alice, &[&bob, &charlie], dir.path());
    let (b, c, d) = (
        bob.twin.to_string(),
        charlie.twin.to_string(),
        dave.twin.to_string(),
    );
    let mut bob_listener = listen(&bob, dir.path());
    let _charlie_listener = listen(&charlie, dir.path());
    let sent = alice.rmb(&["notify"], &["-m", "are you there", "--to", &b], "");
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    bob_listener.expect_line("are you there");

    // SIGTERM, then at once an urgent notification: Bob's listener must not take it; it
    // is escalated to Charlie.
    let term = Command::new("kill")
        .args(["-TERM", &bob_listener.child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let sent = alice.rmb(
        &["notify"],
        &[
            "-m",
            "disk full",
            "--level",
            "urgent",
            "--to",
            &b,
            "--escalate-after",
            "3",
        ],
        "",
    );
    let err = text(&sent.stderr);
    assert!(sent.status.success(), "{err}");
    assert!(
        err.contains(&format!("escalated to twins [{c}]"))
            && err.contains(&format!("twin {c} acknowledged"))
            && !err.contains(&format!("twin {b} acknowledged")),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "twin {b} did not answer within 3 s (is `rmb listen` running there?)"
        )),
        "{err}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = bob_listener.exited() {
            break status;
        }
        assert!(Instant::now() < deadline, "the listener did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    while let Ok(line) = bob_listener.lines.try_recv() {
        assert!(
            !line.contains("disk full"),
            "the stopping listener showed it"
        );
    }

    // A refusal is reported as one, without asking whether a listener runs: Dave has his
    // own group, and his listener refuses a twin outside it.
    assert!(dave.rmb(&["agent", "init"], &[], "").status.success());
    let _dave_listener = listen(&dave, dir.path());
    let refused = alice.rmb(&["notify"], &["-m", "hello", "--to", &d], "");
    let err = text(&refused.stderr);
    assert_eq!(refused.status.code(), Some(3), "{err}");
    assert!(
        err.contains(&format!(
            "twin {d} refused the notification: twin {}",
            alice.twin
        )),
        "{err}"
    );
    assert!(!err.contains("is `rmb listen` running there?"), "{err}");
}
