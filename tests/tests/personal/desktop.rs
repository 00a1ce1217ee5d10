//! The desktop for real: the X clipboard through Xvfb and xclip, notifications through
//! a D-Bus notification server.

use std::io::Write;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rmb_testsupport::desktop::{NotificationServer, SessionBus, Xvfb, ensure_tools};
use rmb_testsupport::relay_process::RelayProcess;

use super::node::*;

/// A process killed (and reaped) on drop.
struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        rmb_testsupport::child::kill(&mut self.0);
    }
}

/// The X clipboard of `display` as `xclip` reads it (bounded by `timeout`).
fn xclip_out(display: &str) -> Output {
    Command::new("timeout")
        .args(["10", "xclip", "-o", "-selection", "clipboard"])
        .env("DISPLAY", display)
        .output()
        .expect("run xclip")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_desktop_clipboard_and_notifications_go_through_x11_and_dbus() {
    let tools = [
        ("Xvfb", "xvfb"),
        ("xclip", "xclip"),
        ("dbus-daemon", "dbus-daemon"),
    ];
    let desktop = ensure_tools(&tools).and_then(|()| Ok((Xvfb::start()?, SessionBus::start()?)));
    let (xvfb, bus) = match desktop {
        Ok(d) => d,
        Err(why) => {
            eprintln!(
                "SKIPPED the desktop test (clipboard through X11, D-Bus notifications): {why}"
            );
            return;
        }
    };
    let mut notifications = NotificationServer::start(bus.address())
        .await
        .expect("serve org.freedesktop.Notifications on the private bus");
    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let alice = Node::start("//Alice", &relay, &registry).await;
    let bob = Node::start("//Bob", &relay, &registry).await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (alice.twin.to_string(), bob.twin.to_string());
    let _owner = form_group(&alice, &[&bob], dir.path());
    let clipboard_file = dir.path().join("bob-clipboard");
    let listen_args = bob.args(
        &["listen"],
        &["--clipboard-file", clipboard_file.to_str().unwrap()],
    );
    let display = xvfb.display().to_string();
    let env = [
        ("DISPLAY", display.as_str()),
        ("DBUS_SESSION_BUS_ADDRESS", bus.address()),
    ];
    let bob_listener = Background::start(&listen_args, &env);

    // Copied into Bob's X clipboard: another X client (xclip) reads it there, and
    // `rmb paste` from Alice reads it back through Bob's listener.
    let copied = alice.rmb(&["copy"], &["--to", &b], "from the bus ✓\n");
    assert!(copied.status.success());
    assert!(text(&copied.stderr).contains("copied to the desktop clipboard"));
    let read = xclip_out(&display);
    assert!(read.status.success(), "{}", text(&read.stderr));
    assert_eq!(text(&read.stdout), "from the bus ✓\n");
    assert!(!clipboard_file.exists(), "the file fallback was used");
    let pasted = alice.rmb(&["paste"], &["--from", &b], "");
    assert!(pasted.status.success());
    assert_eq!(text(&pasted.stdout), "from the bus ✓\n");

    // Text another X client put into the clipboard is what `rmb paste` gets.
    let mut xclip = Command::new("xclip")
        .args(["-quiet", "-selection", "clipboard", "-i"])
        .env("DISPLAY", &display)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run xclip");
    let mut input = xclip.stdin.take().unwrap();
    let _xclip = Guard(Some(xclip));
    input.write_all(b"set by xclip").unwrap();
    drop(input);
    let deadline = Instant::now() + WAIT;
    loop {
        let pasted = alice.rmb(&["paste"], &["--from", &b], "");
        if pasted.stdout == b"set by xclip" {
            break;
        }
        assert!(Instant::now() < deadline, "xclip's text never pasted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Notifications go to the session bus's notification server (and the terminal),
    // and the acknowledgement says the desktop showed them.
    let sent = alice.rmb(
        &["notify"],
        &[
            "-m",
            "build done",
            "--title",
            "Build",
            "--level",
            "urgent",
            "--to",
            &b,
        ],
        "",
    );
    assert!(sent.status.success());
    assert!(
        text(&sent.stderr).contains(&format!("twin {b} acknowledged (shown on its desktop)")),
        "{}",
        text(&sent.stderr)
    );
    let shown = notifications
        .next(WAIT)
        .await
        .expect("no desktop notification");
    assert_eq!(
        (
            shown.app.as_str(),
            shown.summary.as_str(),
            shown.body.as_str()
        ),
        ("rmb", "Build", "build done")
    );
    assert_eq!(shown.urgency, Some(2), "urgent is critical");
    bob_listener.expect_line("build done");
    let sent = alice.rmb(
        &["notify"],
        &["-m", "fyi", "--level", "low", "--to", &b],
        "",
    );
    assert!(sent.status.success());
    let shown = notifications
        .next(WAIT)
        .await
        .expect("no desktop notification");
    assert!(
        shown.summary.starts_with(&format!("twin {a} (")),
        "{shown:?}"
    );
    assert_eq!((shown.body.as_str(), shown.urgency), ("fyi", Some(0)));
    drop(bob_listener);

    // --no-desktop with the same display and bus: the terminal and the file only.
    let mut quiet_args = listen_args.clone();
    quiet_args.push("--no-desktop".into());
    let _quiet = Background::start(&quiet_args, &env);
    let sent = alice.rmb(&["notify"], &["-m", "quiet", "--to", &b], "");
    assert!(
        text(&sent.stderr).contains(&format!("twin {b} acknowledged (printed in its terminal)")),
        "{}",
        text(&sent.stderr)
    );
    assert_eq!(notifications.next(Duration::from_secs(1)).await, None);
    let copied = alice.rmb(&["copy"], &["--to", &b], "to the file");
    assert!(text(&copied.stderr).contains("no desktop clipboard there"));
    assert_eq!(std::fs::read(&clipboard_file).unwrap(), b"to the file");
}
