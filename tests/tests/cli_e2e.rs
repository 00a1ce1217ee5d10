//! The `rmb` command line, driven as a user drives it: the real binaries (rmb, rmb-relay,
//! rmb-peer, redis-server) as processes on 127.0.0.1.
//!
//! Most tests start `rmb demo` in the background (two federating relays, two peers, echo
//! bots) and use the network it prints; each demo is stopped with SIGINT, as Ctrl-C would,
//! and must leave none of its processes behind.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rmb_testsupport::relay_process::{RelayProcess, binaries};
use serde_json::Value;

/// Generous bound for anything to happen; a broken system fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(60);

fn rmb() -> PathBuf {
    binaries().join("rmb")
}

/// Runs `rmb args…` to completion.
fn run(args: &[&str]) -> Output {
    run_with_env(args, &[])
}

fn run_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let output = Command::new(rmb())
        .args(args)
        .env_remove("RMB_MNEMONIC")
        .env_remove("RMB_REGISTRY")
        .env_remove("RMB_REDIS")
        .env_remove("RMB_NOTIFY_TO")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run rmb");
    eprintln!(
        "$ rmb {}\n{}{}-> {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        output.status
    );
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn alive(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn interrupt(child: &Child) {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

/// Waits for `child` to exit, failing the test (after killing it) if it does not.
fn wait_exit(child: &mut Child, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not exit within {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Lines of a child's stdout, read on a thread so waits can time out.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let out = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A background `rmb demo --json`: its report, and SIGINT on drop.
struct Demo {
    child: Child,
    report: Value,
}

impl Demo {
    fn start() -> Demo {
        let mut child = Command::new(rmb())
            .args(["demo", "--json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start rmb demo");
        let lines = lines_of(&mut child);
        let line = match lines.recv_timeout(PATIENCE) {
            Ok(line) => line,
            Err(e) => {
                let _ = child.kill();
                panic!("rmb demo printed no report within {PATIENCE:?}: {e}");
            }
        };
        let report: Value = serde_json::from_str(&line).expect("the demo's report is JSON");
        assert_eq!(report["ok"], true, "the demo failed: {report:#}");
        Demo { child, report }
    }

    /// Redis URL of peer `n` (0 or 1).
    fn redis(&self, n: usize) -> String {
        self.report["network"]["peers"][n]["redis"]
            .as_str()
            .expect("peer redis URL")
            .to_string()
    }

    /// Twin id of peer `n`.
    fn twin(&self, n: usize) -> String {
        self.report["network"]["peers"][n]["twin"].to_string()
    }

    fn pids(&self) -> Vec<u64> {
        self.report["network"]["processes"]
            .as_array()
            .expect("process list")
            .iter()
            .map(|p| p["pid"].as_u64().expect("pid"))
            .collect()
    }

    /// SIGINT, as Ctrl-C; returns the exit status.
    fn stop(&mut self) -> std::process::ExitStatus {
        interrupt(&self.child);
        wait_exit(&mut self.child, "rmb demo after SIGINT")
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            interrupt(&self.child);
            let _ = wait_exit(&mut self.child, "rmb demo");
        }
    }
}

/// A background `rmb` (serve, listen), SIGINTed and reaped on drop.
struct Background {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Background {
    fn start(args: &[&str]) -> Background {
        let mut child = Command::new(rmb())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start rmb");
        let lines = lines_of(&mut child);
        Background { child, lines }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        interrupt(&self.child);
        let _ = wait_exit(&mut self.child, "background rmb");
    }
}

#[test]
fn demo_once_makes_its_calls_and_leaves_nothing_running() {
    let output = run(&["demo", "--once", "--json"]);
    assert!(output.status.success(), "rmb demo --once failed");
    let report: Value = serde_json::from_str(stdout(&output).trim()).expect("JSON report");
    assert_eq!(report["ok"], true);
    let steps = report["steps"].as_array().expect("steps");
    let calls: Vec<&Value> = steps
        .iter()
        .filter(|s| s["name"].as_str().unwrap().starts_with("call "))
        .collect();
    assert!(calls.len() >= 3, "too few calls: {steps:#?}");
    for call in calls {
        assert_eq!(call["ok"], true, "{call}");
    }
    // Relays, Redis servers and peers: all started, all gone.
    let processes = report["network"]["processes"].as_array().unwrap();
    assert_eq!(processes.len(), 6, "{processes:#?}");
    for p in processes {
        let pid = p["pid"].as_u64().unwrap();
        assert!(
            !alive(pid),
            "{} (pid {pid}) outlived rmb demo --once",
            p["name"]
        );
    }
}

#[test]
fn demo_runs_until_sigint_then_stops_every_child() {
    let mut demo = Demo::start();
    let pids = demo.pids();
    assert_eq!(pids.len(), 6);
    for pid in &pids {
        assert!(alive(*pid), "pid {pid} is not running while the demo is up");
    }
    // The line the demo tells people to paste works.
    let line = demo.report["try_call"]
        .as_str()
        .expect("try_call")
        .to_string();
    let args: Vec<&str> = line
        .split(' ')
        .skip(1)
        .map(|a| a.trim_matches('\''))
        .collect();
    let output = run(&args);
    assert!(output.status.success());
    assert_eq!(stdout(&output).split(" (").next(), Some("twin 2: hello"));

    let status = demo.stop();
    assert!(
        status.success(),
        "rmb demo exited with {status} after SIGINT"
    );
    for pid in pids {
        assert!(!alive(pid), "pid {pid} outlived rmb demo");
    }
}

#[test]
fn call_and_serve_across_the_federation() {
    let demo = Demo::start();
    let (caller, server) = (demo.redis(0), demo.redis(1));
    let twin = demo.twin(1);
    let _shout = Background::start(&[
        "serve", "--redis", &server, "--cmd", "shout", "--", "tr", "a-z", "A-Z",
    ]);
    let _fail = Background::start(&[
        "serve",
        "--redis",
        &server,
        "--cmd",
        "fail",
        "--",
        "sh",
        "-c",
        "cat >/dev/null; echo 'no such thing' >&2; exit 3",
    ]);

    let output = run(&[
        "call",
        "--redis",
        &caller,
        "--dst",
        &twin,
        "--cmd",
        "shout",
        "--data",
        "hello bots",
        "--json",
    ]);
    assert!(output.status.success());
    let first: Value = serde_json::from_str(stdout(&output).lines().next().unwrap()).unwrap();
    assert_eq!(first["src"], twin.as_str());
    assert_eq!(first["body"]["text"], "HELLO BOTS");

    // A handler's non-zero exit is an error reply: code = exit status, message = stderr.
    let output = run(&[
        "call", "--redis", &caller, "--dst", &twin, "--cmd", "fail", "--data", "x",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stdout(&output).contains("error 3: no such thing"));

    // Nobody serves this command: the call times out with exit status 3.
    let output = run(&[
        "call",
        "--redis",
        &caller,
        "--dst",
        &twin,
        "--cmd",
        "nobody",
        "--timeout",
        "2",
    ]);
    assert_eq!(output.status.code(), Some(3));

    // An unknown twin is an error from the local peer.
    let output = run(&["call", "--redis", &caller, "--dst", "999", "--cmd", "shout"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stdout(&output).contains("unknown twin"));
}

#[test]
fn notify_reports_a_failed_command_to_a_listener() {
    let demo = Demo::start();
    let (sender, listener) = (demo.redis(0), demo.redis(1));
    let listen = Background::start(&[
        "listen",
        "notifications",
        "--redis",
        &listener,
        "--json",
        "--no-desktop",
    ]);

    let output = run(&[
        "notify",
        "--redis",
        &sender,
        "--to",
        &demo.twin(1),
        "--",
        "false",
    ]);
    assert_eq!(
        output.status.code(),
        Some(1),
        "rmb notify keeps the command's exit status"
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("notified twin"));

    let line = listen
        .lines
        .recv_timeout(PATIENCE)
        .expect("the listener printed the notification");
    let shown: Value = serde_json::from_str(&line).expect("JSON line");
    assert_eq!(shown["src"], demo.twin(0).as_str());
    assert_eq!(shown["notification"]["command"], "false");
    assert_eq!(shown["notification"]["exit_code"], 1);
    assert_eq!(shown["notification"]["success"], false);
}

/// A reader that went away (`rmb … | head -1`) ends a command quietly: no panic, and
/// the status a shell gives a process ended by SIGPIPE.
#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(rmb())
        .args(["key", "new"])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(141), "{stderr}");
}

#[test]
fn key_new_show_and_twin_register_round_trip() {
    let output = run(&["key", "new", "--json"]);
    assert!(output.status.success());
    let new: Value = serde_json::from_str(&stdout(&output)).unwrap();
    let mnemonic = new["mnemonic"].as_str().unwrap().to_string();
    assert_eq!(mnemonic.split(' ').count(), 12);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, format!("{mnemonic}\n")).unwrap();
    let from_file = run(&[
        "key",
        "show",
        "--json",
        "--mnemonic-file",
        file.to_str().unwrap(),
    ]);
    let from_env = run_with_env(&["key", "show", "--json"], &[("RMB_MNEMONIC", &mnemonic)]);
    for output in [&from_file, &from_env] {
        assert!(output.status.success());
        let shown: Value = serde_json::from_str(&stdout(output)).unwrap();
        assert_eq!(
            shown, new["keys"],
            "rmb key show disagrees with rmb key new"
        );
    }
    // No secret at all: a clear error.
    let output = run(&["key", "show"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("RMB_MNEMONIC"));

    // Register on a real relay's embedded registry, then find the twin by the secret.
    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let env = [("RMB_MNEMONIC", mnemonic.as_str())];
    let output = run_with_env(
        &[
            "twin",
            "register",
            "--json",
            "--registry",
            &registry,
            "--relay",
            &relay.ws_url(),
        ],
        &env,
    );
    assert!(output.status.success());
    let twin: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(twin["account"], new["keys"]["sr25519"]);
    assert_eq!(twin["relays"], serde_json::json!([relay.domain()]));
    assert_eq!(twin["pk"], new["keys"]["x25519"]);
    let id = twin["id"].to_string();

    let output = run_with_env(&["key", "show", "--json", "--registry", &registry], &env);
    let shown: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(shown["twins"][0]["twin"].to_string(), id);
    let output = run(&["twin", "show", &id, "--json", "--registry", &registry]);
    assert_eq!(
        serde_json::from_str::<Value>(&stdout(&output)).unwrap(),
        twin
    );
    let output = run(&["twin", "show", "4242", "--registry", &registry]);
    assert_eq!(output.status.code(), Some(1));
}

#[test]
fn demo_without_sibling_binaries_says_how_to_build_them() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(&["demo", "--once", "--bin-dir", dir.path().to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cargo build --release"));
}

#[test]
fn every_subcommand_has_help() {
    for sub in [
        vec!["key", "new"],
        vec!["key", "show"],
        vec!["twin", "register"],
        vec!["twin", "show"],
        vec!["call"],
        vec!["serve"],
        vec!["notify"],
        vec!["listen", "notifications"],
        vec!["status"],
        vec!["demo"],
    ] {
        let mut args = sub.clone();
        args.push("--help");
        let output = run(&args);
        assert!(
            output.status.success(),
            "rmb {} --help failed",
            sub.join(" ")
        );
        assert!(
            stdout(&output).contains("Usage: rmb"),
            "rmb {} --help",
            sub.join(" ")
        );
    }
}

/// The README's Python bot, run as written (only its Redis URL changed) with today's
/// redis-py, answers a call after idling longer than redis-py's default read timeout.
/// Skipped, saying why, where no redis-py 8 can be installed (no network to PyPI).
#[test]
fn the_readme_python_bot_serves_calls_after_idling() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("read README.md");
    let block = readme
        .split("```python\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a Python block in the README");
    assert!(block.contains("msgbus.hello"), "the bot block: {block}");
    let venv = tempfile::tempdir().unwrap();
    let python = venv.path().join("bin/python");
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(venv.path())
        .status();
    let installed = made.is_ok_and(|s| s.success())
        && Command::new(&python)
            .args(["-m", "pip", "install", "-q", "redis>=8"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !installed {
        println!("skipped: python3 -m venv or pip install 'redis>=8' failed (no PyPI here?)");
        return;
    }
    let demo = Demo::start();
    let (caller, server) = (demo.redis(0), demo.redis(1));
    let script = venv.path().join("bot.py");
    std::fs::write(&script, block.replace("redis://127.0.0.1:6379", &server)).unwrap();
    let mut bot = Command::new(&python)
        .arg(&script)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the bot");
    // Longer than redis-py 8's default 5 s read timeout.
    std::thread::sleep(Duration::from_secs(7));
    let alive = bot.try_wait().unwrap().is_none();
    let output = run(&[
        "call",
        "--redis",
        &caller,
        "--dst",
        &demo.twin(1),
        "--cmd",
        "hello",
        "--data",
        "world",
        "--timeout",
        "20",
    ]);
    let _ = bot.kill();
    let bot_out = bot.wait_with_output().unwrap();
    assert!(
        alive,
        "the bot died while idle: {}",
        String::from_utf8_lossy(&bot_out.stderr)
    );
    assert!(output.status.success(), "{}", stdout(&output));
    assert!(
        stdout(&output).contains("hello, world!"),
        "{}",
        stdout(&output)
    );
}
