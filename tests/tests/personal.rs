//! The personal bus (issue #16) with real processes: two federated `rmb-relay`s, four
//! `rmb-peer`s (each with its own Redis and `--http`) and the `rmb` command line as a
//! person runs it.
//!
//! - a group: `rmb agent init`, an invite, joins with a wrong, a used and an expired code
//!   refused, joins with fresh codes, members learning of each other, `agent remove`;
//! - notifications with a level shown by the listener and acknowledged; an urgent one
//!   escalated to the group's other machine when its target's listener is down;
//! - triggers fired across the two relays, by `rmb trigger` and by
//!   `rmb notify --send-trigger`, starting `rmb run --wait-trigger`;
//! - clipboard through the file fallback (no display here), `rmb paste --from`;
//! - links printed by the listener, a non-web URL refused;
//! - a twin outside the group refused by every service and by the group topic;
//! - the desktop for real (when Xvfb, xclip and dbus-daemon are there or can be
//!   installed; skipped with the reason otherwise): text copied into the X clipboard and
//!   read by xclip, text put there by xclip pasted, notifications shown through a D-Bus
//!   notification server with their title, text and urgency;
//! - the owner's lockout after 20 wrong invite codes, a right code refused during it and
//!   accepted once it ends.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rmb_identity::{Identity, KeyType};
use rmb_testsupport::desktop::{NotificationServer, SessionBus, Xvfb, ensure_tools};
use rmb_testsupport::peer_process::PeerProcess;
use rmb_testsupport::redis_server::{RedisServer, free_port};
use rmb_testsupport::relay_process::{RelayProcess, binaries};
use serde_json::Value;

/// Longest a test waits for anything (a broken system fails, never hangs).
const WAIT: Duration = Duration::from_secs(30);

/// One machine: its twin, Redis, peer (with `--http`) and the API's base URL.
struct Node {
    twin: u32,
    redis: RedisServer,
    http: String,
    _peer: PeerProcess,
}

impl Node {
    async fn start(secret: &str, relay: &RelayProcess, registry: &str) -> Node {
        let identity = Identity::from_secret(secret, KeyType::Sr25519).unwrap();
        let twin =
            rmb_testsupport::registry::register(registry, &identity, &[relay.domain()]).await;
        let redis = RedisServer::start();
        let addr = format!("127.0.0.1:{}", free_port());
        let extra = ["--http", addr.as_str(), "--topic-renew", "2"];
        let peer = tokio::task::block_in_place(|| {
            PeerProcess::start(secret, &redis.url(), &[relay.ws_url()], registry, &extra)
        });
        let node = Node {
            twin,
            redis,
            http: format!("http://{addr}"),
            _peer: peer,
        };
        let deadline = Instant::now() + WAIT;
        while reqwest::get(format!("{}/", node.http)).await.is_err() {
            assert!(Instant::now() < deadline, "HTTP API of {secret} not up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        node
    }

    /// `--redis … --http …` for this machine's peer.
    fn peer_flags(&self) -> Vec<String> {
        vec![
            "--redis".into(),
            self.redis.url(),
            "--http".into(),
            self.http.clone(),
        ]
    }

    /// `rmb <sub…> <peer flags> <rest…>`.
    fn args(&self, sub: &[&str], rest: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = sub.iter().map(|s| s.to_string()).collect();
        args.extend(self.peer_flags());
        args.extend(rest.iter().map(|s| s.to_string()));
        args
    }

    /// Runs `rmb` to completion (stdin from `input`).
    fn rmb(&self, sub: &[&str], rest: &[&str], input: &str) -> Output {
        run(&self.args(sub, rest), input)
    }

    /// Starts a background `rmb` (stdout read line by line).
    fn background(&self, sub: &[&str], rest: &[&str]) -> Background {
        Background::start(&self.args(sub, rest), &[])
    }
}

fn command(args: &[String]) -> Command {
    let mut cmd = Command::new(binaries().join("rmb"));
    cmd.args(args)
        .env_remove("RMB_REDIS")
        .env_remove("RMB_HTTP")
        .env_remove("RMB_NOTIFY_TO")
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        // No session bus either (zbus would also try $XDG_RUNTIME_DIR/bus): headless.
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .env_remove("XDG_RUNTIME_DIR");
    cmd
}

fn run(args: &[String], input: &str) -> Output {
    tokio::task::block_in_place(|| {
        let started = Instant::now();
        let mut child = command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run rmb");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        eprintln!(
            "$ rmb {}\n{}{}-> {} in {:?}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            output.status,
            started.elapsed()
        );
        output
    })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A background `rmb`, SIGINTed and reaped on drop.
struct Background {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Background {
    /// Starts `rmb args…` with `env` added to the headless environment.
    fn start(args: &[String], env: &[(&str, &str)]) -> Background {
        let mut child = command(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start rmb");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Background { child, lines }
    }

    /// Waits for a stdout line containing `needle`; the line.
    fn expect_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("no line with {needle:?} within {WAIT:?}"),
            }
        }
    }

    /// The exit status, if it has exited.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + WAIT;
        while self.child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `rmb listen` on `node` with its clipboard file in `dir`.
fn listen(node: &Node, dir: &std::path::Path) -> Background {
    let file = dir.join(format!("clipboard-{}", node.twin));
    // No need to wait for it: requests wait in the peer's Redis until it serves them.
    node.background(&["listen"], &["--clipboard-file", file.to_str().unwrap()])
}

/// The group as `rmb agent list --json` on `node` shows it.
fn members(node: &Node) -> Vec<u32> {
    let out = node.rmb(&["agent", "list"], &["--json"], "");
    assert!(out.status.success());
    let group: Value = serde_json::from_slice(&out.stdout).unwrap();
    group["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

/// Repeats `fire` until `waiter` exits (a trigger fired before the waiter follows the
/// topic is rightly not seen); its exit status.
fn fire_until_exit(waiter: &mut Background, fire: impl Fn() -> Output) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = fire();
        assert!(out.status.success(), "firing failed");
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            if let Some(status) = waiter.exited() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(Instant::now() < deadline, "the waiter never ran");
    }
}

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
    let normal = alice.rmb(
        &["notify"],
        &["-m", "fyi", "--to", &b, "--timeout", "2"],
        "",
    );
    assert_eq!(normal.status.code(), Some(3));
    assert!(!text(&normal.stderr).contains("escalated"));

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

/// The messages of `topic` as `rmb pull` prints them (`<id> <line>`), just the lines.
fn pulled(node: &Node, topic: &str) -> Vec<String> {
    let out = run(
        &["pull", "--http", &node.http, topic, "--since", "0"].map(String::from),
        "",
    );
    assert!(out.status.success());
    text(&out.stdout)
        .lines()
        .map(|l| l.split_once(' ').unwrap().1.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_stream_survives_rotation_without_losing_a_line() {
    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let alice = Node::start("//Alice", &relay, &registry).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let write = |path: &std::path::Path, lines: std::ops::RangeInclusive<u32>| {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        for i in lines {
            writeln!(f, "line {i}").unwrap();
        }
    };
    write(&log, 1..=3);
    let topic = format!("{}/logs", alice.twin);
    let _streamer = alice.background(
        &["stream"],
        &[log.to_str().unwrap(), "--topic", "logs", "--from-start"],
    );
    let deadline = Instant::now() + WAIT;
    while pulled_or_empty(&alice, &topic).len() < 3 {
        assert!(Instant::now() < deadline, "the first lines never arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Lines, then a rotation (renamed away, recreated) right after, then more lines.
    write(&log, 4..=50);
    std::fs::rename(&log, dir.path().join("app.log.1")).unwrap();
    write(&log, 51..=100);
    let expected: Vec<String> = (1..=100).map(|i| format!("line {i}")).collect();
    let deadline = Instant::now() + WAIT;
    loop {
        let got = pulled(&alice, &topic);
        if got.len() >= expected.len() {
            assert_eq!(got, expected);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} lines arrived",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_publishes_its_output_and_reads_a_topic() {
    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let alice = Node::start("//Alice", &relay, &registry).await;
    let created = run(
        &["topic", "create", "in", "--http", &alice.http].map(String::from),
        "",
    );
    assert!(created.status.success());
    let out = format!("{}/out", alice.twin);
    let program = "echo ready; while read l; do echo \"got $l\"; done";
    let _plugin = alice.background(
        &["plugin"],
        &["--topic", "out", "--input", "in", "--", "sh", "-c", program],
    );
    let deadline = Instant::now() + WAIT;
    while pulled_or_empty(&alice, &out).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the plugin's first line never arrived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for text in ["a", "b c"] {
        let sent = run(
            &["pub", "--http", &alice.http, "in", text].map(String::from),
            "",
        );
        assert!(sent.status.success());
    }
    let deadline = Instant::now() + WAIT;
    while pulled(&alice, &out).len() < 3 {
        assert!(
            Instant::now() < deadline,
            "the plugin's answers never arrived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pulled(&alice, &out), ["ready", "got a", "got b c"]);
}

/// Like [`pulled`], but a topic that does not exist yet is empty.
fn pulled_or_empty(node: &Node, topic: &str) -> Vec<String> {
    let out = run(
        &["pull", "--http", &node.http, topic, "--since", "0"].map(String::from),
        "",
    );
    text(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(_, line)| line.to_string()))
        .collect()
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

/// `owner` creates the group and starts its listener (which answers joins); each of
/// `members` joins with a fresh invite. The owner's listener.
fn form_group(owner: &Node, members: &[&Node], dir: &std::path::Path) -> Background {
    assert!(owner.rmb(&["agent", "init"], &[], "").status.success());
    let listener = listen(owner, dir);
    for member in members {
        let invite = owner.rmb(&["agent", "invite"], &[], "");
        let code = text(&invite.stdout).trim().to_string();
        let joined = member.rmb(&["agent", "join", &code], &[], "");
        assert!(joined.status.success(), "{}", text(&joined.stderr));
    }
    listener
}

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
    // Then every join is refused (429), the right code too, and it is not used up.
    let locked = bob.rmb(&["agent", "join", &code], &[], "");
    assert!(!locked.status.success());
    assert!(
        text(&locked.stderr).contains("too many wrong invite codes lately"),
        "{}",
        text(&locked.stderr)
    );
    assert!(text(&locked.stderr).contains("(429)"));
    assert!(!bob.rmb(&["agent", "list"], &[], "").status.success());
    // The lockout lasts 15 minutes from the first wrong code: the counter's expiry in
    // the owner's Redis.
    let ttl = alice.redis.inline(&["TTL", "rmb.pmb.join.failures"]);
    let ttl: u64 = ttl.trim_start_matches(':').parse().unwrap();
    assert!((800..=900).contains(&ttl), "{ttl}");
    // Its end, brought forward by expiring the counter now: the right code joins.
    assert_eq!(
        alice
            .redis
            .inline(&["PEXPIRE", "rmb.pmb.join.failures", "1"]),
        ":1"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let joined = bob.rmb(&["agent", "join", &code], &[], "");
    assert!(joined.status.success(), "{}", text(&joined.stderr));
    let mut both = vec![alice.twin, bob.twin];
    both.sort();
    assert_eq!(members(&alice), both);
}
