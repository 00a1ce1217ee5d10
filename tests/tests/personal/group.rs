//! A group end to end (invites, joins, notifications, triggers, clipboard, links, an
//! outsider refused), the invite lockout, and `rmb listen --install`.

use std::time::{Duration, Instant};

use rmb_testsupport::relay_process::RelayProcess;

use super::node::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_bus_end_to_end() {
    let r1 = RelayProcess::start(&["--federation-http"]);
    let registry = r1.http_url();
    let r2 = RelayProcess::start(&["--federation-http", "--registry", &registry]);
    let alice = Node::start("//Alice", &r1, &registry).await; // owner (laptop)
    let bob = Node::start("//Bob", &r2, &registry).await; // server, other relay
    let charlie = Node::start("//Charlie", &r1, &registry).await; // phone
    let dave = Node::start("//Dave", &r2, &registry).await; // not in the group
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        alice.twin.to_string(),
        bob.twin.to_string(),
        charlie.twin.to_string(),
    );

    // The group: init once, invites, joins with bad codes refused.
    assert!(alice.rmb(&["agent", "init"], &[], "").status.success());
    let again = alice.rmb(&["agent", "init"], &[], "");
    assert!(!again.status.success());
    assert!(text(&again.stderr).contains("already in the group"));
    let _alice_listener = listen(&alice, dir.path());
    let invite = alice.rmb(&["agent", "invite"], &[], "");
    assert!(invite.status.success());
    let code = text(&invite.stdout).trim().to_string();
    assert!(code.starts_with(&format!("{a}-")), "{code}");
    // A wrong code with the right owner: refused, and Bob stays outside.
    let wrong = format!("{a}-AAAAA-AAAAA");
    assert_ne!(wrong, code);
    let refused = bob.rmb(&["agent", "join", &wrong], &[], "");
    assert!(!refused.status.success());
    assert!(text(&refused.stderr).contains("wrong or expired invite code"));
    assert!(!bob.rmb(&["agent", "list"], &[], "").status.success());
    // The right code joins; it cannot be used twice.
    let joined = bob.rmb(&["agent", "join", &code], &[], "");
    assert!(joined.status.success());
    let used = charlie.rmb(&["agent", "join", &code], &[], "");
    assert!(text(&used.stderr).contains("wrong or expired invite code"));
    // An expired code is refused.
    let short = alice.rmb(&["agent", "invite"], &["--expires", "1"], "");
    let short = text(&short.stdout).trim().to_string();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let expired = charlie.rmb(&["agent", "join", &short], &[], "");
    assert!(text(&expired.stderr).contains("wrong or expired invite code"));
    let fresh = alice.rmb(&["agent", "invite"], &[], "");
    let fresh = text(&fresh.stdout).trim().to_string();
    assert!(
        charlie
            .rmb(&["agent", "join", &fresh], &[], "")
            .status
            .success()
    );
    let mut sorted = vec![alice.twin, bob.twin, charlie.twin];
    sorted.sort();
    assert_eq!(members(&alice), sorted);
    assert_eq!(members(&charlie), sorted);

    // Bob learns of Charlie from the owner's event on the group topic (his listener
    // follows it).
    let mut bob_listener = listen(&bob, dir.path());
    let charlie_listener = listen(&charlie, dir.path());
    let deadline = Instant::now() + WAIT;
    while members(&bob) != sorted {
        assert!(Instant::now() < deadline, "Bob never learned of Charlie");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A notification with a level, shown and acknowledged (Alice on r1 to Bob on r2).
    let sent = alice.rmb(
        &["notify"],
        &[
            "-m",
            "backup done",
            "--title",
            "Backup",
            "--level",
            "high",
            "--to",
            &b,
        ],
        "",
    );
    assert!(sent.status.success());
    assert!(
        text(&sent.stderr).contains(&format!("twin {b} acknowledged (printed in its terminal)"))
    );
    let line = bob_listener.expect_line("backup done");
    assert!(line.starts_with(&format!("[high] twin {a} (")), "{line}");
    assert!(line.ends_with("): Backup: backup done"), "{line}");

    // Clipboard through the file fallback; paste reads it back from another machine.
    let copied = alice.rmb(&["copy"], &["--to", &b], "secret-free text\n");
    assert!(copied.status.success());
    assert!(text(&copied.stderr).contains("no desktop clipboard there"));
    let on_disk = std::fs::read(dir.path().join(format!("clipboard-{b}"))).unwrap();
    assert_eq!(on_disk, b"secret-free text\n");
    let pasted = charlie.rmb(&["paste"], &["--from", &b], "");
    assert!(pasted.status.success());
    assert_eq!(pasted.stdout, b"secret-free text\n");

    // Links: printed where there is no browser; only web URLs.
    let opened = alice.rmb(&["open"], &["https://example.com/a?b=1", "--to", &c], "");
    assert!(opened.status.success());
    charlie_listener.expect_line(&format!("[link] twin {a}: https://example.com/a?b=1"));
    let local = alice.rmb(&["open"], &["file:///etc/passwd"], "");
    assert!(!local.status.success());

    // Triggers across the relays: Charlie (r1) waits, Bob (r2) fires.
    let marker = dir.path().join("deployed");
    let script = format!("echo deployed > {}", marker.display());
    let mut waiter = charlie.background(
        &["run"],
        &[
            "--wait-trigger",
            "deploy",
            "--timeout",
            "60",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    let status = fire_until_exit(&mut waiter, || bob.rmb(&["trigger"], &["deploy"], ""));
    assert!(status.success());
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "deployed\n");
    // `rmb notify --send-trigger` fires when its command ends (with the command's status).
    let mut waiter = alice.background(
        &["run"],
        &[
            "--wait-trigger",
            "built",
            "--timeout",
            "60",
            "--",
            "sh",
            "-c",
            "exit 7",
        ],
    );
    let status = fire_until_exit(&mut waiter, || {
        let out = bob.rmb(&["notify"], &["--send-trigger", "built", "--", "true"], "");
        assert!(text(&out.stderr).contains("fired trigger \"built\""));
        out
    });
    assert_eq!(status.code(), Some(7));

    // Outside the group: Dave is refused by the services and by the group topic.
    let intruder = dave.rmb(&["notify"], &["-m", "hi", "--to", &a], "");
    assert_eq!(intruder.status.code(), Some(3));
    assert!(text(&intruder.stderr).contains("not in this machine's personal group"));
    let topic = format!("{a}/pmb");
    let event = r#"{"kind":"trigger","name":"deploy"}"#;
    let published = run(
        &["pub", "--http", &dave.http, &topic, event].map(String::from),
        "",
    );
    assert!(!published.status.success());
    assert!(text(&published.stderr).contains("403"));

    // Escalation: Bob's listener is down, so an urgent notification to Bob goes to the
    // group's other machine (Charlie) after the wait, marked escalated.
    bob_listener.stop();
    let urgent = alice.rmb(
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
    assert!(urgent.status.success());
    assert!(text(&urgent.stderr).contains("escalated to twins"));
    assert!(text(&urgent.stderr).contains(&format!("twin {c} acknowledged")));
    charlie_listener.expect_line("[urgent, escalated]");
    // A normal one is not escalated: nobody acknowledges, exit code 3.
    let sent = Instant::now();
    let normal = alice.rmb(
        &["notify"],
        &["-m", "fyi", "--to", &b, "--timeout", "2"],
        "",
    );
    assert_eq!(normal.status.code(), Some(3));
    assert!(!text(&normal.stderr).contains("escalated"));
    // It may end early: the request is stamped in whole seconds, so its 2 s can end
    // after 1, and a resend that reaches Bob's peer after that is answered "expired"
    // while the first copy waits in Bob's queue. Wait until the listener's own check
    // refuses it too (its deadline plus the listener's 5 s of grace for clock skew).
    tokio::time::sleep(Duration::from_secs(2 + 5 + 1).saturating_sub(sent.elapsed())).await;

    // Back up, Bob's listener shows none of the requests that expired while it was down
    // (the peer's queue expires with them; the listener also checks each request's
    // expiry): the first thing it shows is what is sent now.
    let bob_listener = listen(&bob, dir.path());
    let fresh = alice.rmb(&["notify"], &["-m", "after restart", "--to", &b], "");
    assert!(fresh.status.success());
    let first = bob_listener.lines.recv_timeout(WAIT).unwrap();
    assert!(first.contains("after restart"), "{first}");

    // Removal: Charlie is no longer served by the owner.
    assert!(alice.rmb(&["agent", "remove"], &[&c], "").status.success());
    assert_eq!(members(&alice), vec![alice.twin, bob.twin]);
    let removed = charlie.rmb(&["notify"], &["-m", "still here?", "--to", &a], "");
    assert_eq!(removed.status.code(), Some(3));
    assert!(text(&removed.stderr).contains("not in this machine's personal group"));
}

#[test]
fn listen_install_writes_a_user_unit_with_the_peer_flags() {
    let dir = tempfile::tempdir().unwrap();
    let out = command(
        &[
            "listen",
            "--install",
            "--redis",
            "redis://127.0.0.1:7000",
            "--no-desktop",
        ]
        .map(String::from),
    )
    .env("XDG_CONFIG_HOME", dir.path())
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let unit = std::fs::read_to_string(dir.path().join("systemd/user/rmb-listen.service")).unwrap();
    let exec = unit.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
    assert!(
        exec.contains("\"listen\" \"--redis\" \"redis://127.0.0.1:7000\""),
        "{exec}"
    );
    assert!(exec.contains("\"--no-desktop\""), "{exec}");
    assert!(text(&out.stdout).contains("systemctl --user enable --now rmb-listen.service"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_are_locked_out_after_twenty_wrong_codes() {
    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let alice = Node::start("//Alice", &relay, &registry).await;
    let bob = Node::start("//Bob", &relay, &registry).await;
    let dir = tempfile::tempdir().unwrap();
    let a = alice.twin.to_string();
    let _owner = form_group(&alice, &[], dir.path());
    let invite = alice.rmb(&["agent", "invite"], &[], "");
    let code = text(&invite.stdout).trim().to_string();

    // Twenty well-formed wrong codes for this owner: each refused as wrong (403).
    for c in "ABCDEFGHJKLMNPQRSTUV".chars() {
        let wrong = format!("{a}-{c}{c}{c}{c}{c}-{c}{c}{c}{c}{c}");
        assert_ne!(wrong, code);
        let refused = bob.rmb(&["agent", "join", &wrong], &[], "");
        assert!(!refused.status.success());
        assert!(
            text(&refused.stderr).contains("wrong or expired invite code (403)"),
            "{}",
            text(&refused.stderr)
        );
    }
    // Then every join of Bob's is refused (429), the right code too, and it is not used up.
    let locked = bob.rmb(&["agent", "join", &code], &[], "");
    assert!(!locked.status.success());
    assert!(
        text(&locked.stderr).contains("too many wrong invite codes lately"),
        "{}",
        text(&locked.stderr)
    );
    assert!(text(&locked.stderr).contains("(429)"));
    assert!(!bob.rmb(&["agent", "list"], &[], "").status.success());
    // The lockout lasts 15 minutes from Bob's first wrong code: his counter's expiry in
    // the owner's Redis.
    let bobs = format!("rmb.pmb.join.failures.{}", bob.twin);
    let ttl = alice.redis.inline(&["TTL", &bobs]);
    let ttl: u64 = ttl.trim_start_matches(':').parse().unwrap();
    assert!((800..=900).contains(&ttl), "{ttl}");
    // Its end, brought forward by expiring the counter now: the right code joins.
    assert_eq!(alice.redis.inline(&["PEXPIRE", &bobs, "1"]), ":1");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let joined = bob.rmb(&["agent", "join", &code], &[], "");
    assert!(joined.status.success(), "{}", text(&joined.stderr));
    let mut both = vec![alice.twin, bob.twin];
    both.sort();
    assert_eq!(members(&alice), both);
}
