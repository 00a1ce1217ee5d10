//! The helpers every personal-bus test shares: a machine's processes ([`Node`]: its
//! Redis and its `rmb-peer` with `--http`), running `rmb` as a person would, commands
//! left running in the background, and forming a group.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rmb_identity::{Identity, KeyType};
use rmb_testsupport::peer_process::PeerProcess;
use rmb_testsupport::redis_server::{RedisServer, free_port};
use rmb_testsupport::relay_process::{RelayProcess, binaries};
use serde_json::Value;

/// Longest a test waits for anything (a broken system fails, never hangs).
pub(crate) const WAIT: Duration = Duration::from_secs(30);

/// One machine: its twin, Redis, peer (with `--http`) and the API's base URL.
pub(crate) struct Node {
    pub(crate) twin: u32,
    pub(crate) redis: RedisServer,
    pub(crate) http: String,
    pub(crate) _peer: PeerProcess,
}

impl Node {
    pub(crate) async fn start(secret: &str, relay: &RelayProcess, registry: &str) -> Node {
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
    pub(crate) fn peer_flags(&self) -> Vec<String> {
        vec![
            "--redis".into(),
            self.redis.url(),
            "--http".into(),
            self.http.clone(),
        ]
    }

    /// `rmb <sub…> <peer flags> <rest…>`.
    pub(crate) fn args(&self, sub: &[&str], rest: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = sub.iter().map(|s| s.to_string()).collect();
        args.extend(self.peer_flags());
        args.extend(rest.iter().map(|s| s.to_string()));
        args
    }

    /// Runs `rmb` to completion (stdin from `input`).
    pub(crate) fn rmb(&self, sub: &[&str], rest: &[&str], input: &str) -> Output {
        run(&self.args(sub, rest), input)
    }

    /// Starts a background `rmb` (stdout read line by line).
    pub(crate) fn background(&self, sub: &[&str], rest: &[&str]) -> Background {
        Background::start(&self.args(sub, rest), &[])
    }
}

pub(crate) fn command(args: &[String]) -> Command {
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

pub(crate) fn run(args: &[String], input: &str) -> Output {
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

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A background `rmb`, SIGINTed and reaped on drop.
pub(crate) struct Background {
    pub(crate) child: Child,
    pub(crate) lines: mpsc::Receiver<String>,
}

impl Background {
    /// Starts `rmb args…` with `env` added to the headless environment.
    pub(crate) fn start(args: &[String], env: &[(&str, &str)]) -> Background {
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
    pub(crate) fn expect_line(&self, needle: &str) -> String {
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
    pub(crate) fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    pub(crate) fn stop(&mut self) {
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
pub(crate) fn listen(node: &Node, dir: &std::path::Path) -> Background {
    let file = dir.join(format!("clipboard-{}", node.twin));
    // No need to wait for it: requests wait in the peer's Redis until it serves them.
    node.background(&["listen"], &["--clipboard-file", file.to_str().unwrap()])
}

/// The group as `rmb agent list --json` on `node` shows it.
pub(crate) fn members(node: &Node) -> Vec<u32> {
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
pub(crate) fn fire_until_exit(
    waiter: &mut Background,
    fire: impl Fn() -> Output,
) -> std::process::ExitStatus {
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

/// The messages of `topic` as `rmb pull` prints them (`<id> <line>`), just the lines.
pub(crate) fn pulled(node: &Node, topic: &str) -> Vec<String> {
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

/// Like [`pulled`], but a topic that does not exist yet is empty.
pub(crate) fn pulled_or_empty(node: &Node, topic: &str) -> Vec<String> {
    let out = run(
        &["pull", "--http", &node.http, topic, "--since", "0"].map(String::from),
        "",
    );
    text(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(_, line)| line.to_string()))
        .collect()
}

/// `owner` creates the group and starts its listener (which answers joins); each of
/// `members` joins with a fresh invite. The owner's listener.
pub(crate) fn form_group(owner: &Node, members: &[&Node], dir: &std::path::Path) -> Background {
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
