//! Triggers report whether the work that fired them succeeded: `--send-trigger` fires on
//! success only (or always with `--trigger-always`, reporting the failure), and a waiter
//! does not run its command on a failure unless `--run-on-failure`.

use std::time::{Duration, Instant};

use rmb_testsupport::relay_process::RelayProcess;
use serde_json::Value;

use super::node::*;

/// The trigger events named `name` on the group topic of `owner`, as `rmb pull` shows them.
fn triggers(node: &Node, owner: u32, name: &str) -> Vec<Value> {
    pulled(node, &format!("{owner}/pmb"))
        .iter()
        .filter_map(|m| serde_json::from_str::<Value>(m).ok())
        .filter(|e| e["kind"] == "trigger" && e["name"] == name)
        .collect()
}

/// Runs `fire` (whatever its exit status) until `waiter` exits; its exit status.
fn fire_until_done(
    waiter: &mut Background,
    fire: impl Fn() -> std::process::Output,
) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        fire();
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            if let Some(status) = waiter.exited() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(Instant::now() < deadline, "the waiter never ended");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_say_whether_the_command_succeeded() {
    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let alice = Node::start("//Alice", &relay, &registry).await;
    let bob = Node::start("//Bob", &relay, &registry).await;
    let dir = tempfile::tempdir().unwrap();
    let _owner = form_group(&alice, &[&bob], dir.path());
    let a = alice.twin;

    // A failed command fires nothing by default, and says so.
    let failed = bob.rmb(
        &["notify"],
        &["--send-trigger", "built", "--", "sh", "-c", "exit 2"],
        "",
    );
    assert_eq!(failed.status.code(), Some(2));
    assert!(
        text(&failed.stderr).contains("trigger \"built\" not fired"),
        "{}",
        text(&failed.stderr)
    );
    assert!(triggers(&alice, a, "built").is_empty());

    // --trigger-always fires it, reporting the failure; the waiter does not run its
    // command and exits with 4.
    let marker = dir.path().join("deployed");
    let mut waiter = alice.background(
        &["run"],
        &[
            "--wait-trigger",
            "built",
            "--timeout",
            "60",
            "--",
            "touch",
            marker.to_str().unwrap(),
        ],
    );
    let status = fire_until_done(&mut waiter, || {
        let out = bob.rmb(
            &["notify"],
            &[
                "--send-trigger",
                "built",
                "--trigger-always",
                "--",
                "sh",
                "-c",
                "exit 2",
            ],
            "",
        );
        assert_eq!(out.status.code(), Some(2), "the command's own status");
        assert!(text(&out.stderr).contains("reporting the failure"));
        out
    });
    assert_eq!(status.code(), Some(4));
    assert!(!marker.exists(), "the command ran on a failed trigger");
    let fired = triggers(&alice, a, "built");
    assert!(!fired.is_empty());
    assert!(
        fired
            .iter()
            .all(|e| e["success"] == false && e["exit_code"] == 2),
        "{fired:?}"
    );

    // --run-on-failure runs it anyway and tells the command how the trigger went.
    let seen = dir.path().join("seen");
    let script = format!(
        "echo $RMB_TRIGGER $RMB_TRIGGER_SUCCESS $RMB_TRIGGER_BY > {}",
        seen.display()
    );
    let mut waiter = alice.background(
        &["run"],
        &[
            "--wait-trigger",
            "tests",
            "--run-on-failure",
            "--timeout",
            "60",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    let status = fire_until_done(&mut waiter, || {
        let out = bob.rmb(&["trigger"], &["tests", "--failed"], "");
        assert!(out.status.success());
        out
    });
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        std::fs::read_to_string(&seen).unwrap().trim(),
        format!("tests 0 {}", bob.twin)
    );

    // `rmb run --send-trigger` chains: a success fires, reporting success; a failure
    // does not.
    let ok = bob.rmb(&["run"], &["--send-trigger", "deployed", "--", "true"], "");
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let not = bob.rmb(&["run"], &["--send-trigger", "deployed", "--", "false"], "");
    assert_eq!(not.status.code(), Some(1));
    let fired = triggers(&alice, a, "deployed");
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(fired[0]["success"], true);
    assert_eq!(fired[0]["exit_code"], 0);
}
