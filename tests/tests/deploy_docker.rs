//! The container images and the compose example, run for real: builds the FROM scratch
//! images from the binaries just built (deploy/docker/build-images.sh, a tag of this run
//! only), starts deploy/compose/compose.yaml (a relay hosting the registry, two peers
//! each with its own Redis, an echo bot on the second), waits for the images' health
//! checks, makes an echo call from twin a to twin b and checks the answer, then removes
//! everything it made: containers, network, volumes, images, and the Docker daemon when
//! this test started it.
//!
//! Needs root, Debian's docker.io (dockerd) and a compose: the `docker compose` plugin or
//! Debian's docker-compose (tests/run.sh installs both packages). Without a daemon that
//! can start, or without a compose, it prints `SKIPPED: <reason>` and passes.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rmb_testsupport::relay_process::binaries;

const IMAGES: [&str; 4] = ["rmb-relay", "rmb-peer", "rmb", "rmb-redis"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root")
}

/// Runs a command to completion, echoing it and what it printed.
fn run(command: &mut Command) -> Output {
    let shown = format!("{command:?}");
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {shown}: {e}"));
    eprintln!(
        "$ {shown}\n{}{}-> {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        output.status
    );
    output
}

fn quiet_ok(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// A Docker daemon to talk to: the running one, or `dockerd` started here (returned, to
/// be stopped at the end). `Err` says why there is none.
fn daemon() -> Result<Option<Dockerd>, String> {
    if !on_path("docker") {
        return Err("no docker client on PATH".into());
    }
    if quiet_ok("docker", &["info"]) {
        return Ok(None);
    }
    if !on_path("dockerd") {
        return Err("no Docker daemon running and no dockerd (Debian's docker.io)".into());
    }
    let uid = Command::new("id").arg("-u").output().map(|o| o.stdout);
    if !uid.is_ok_and(|uid| uid.trim_ascii() == b"0") {
        return Err("no Docker daemon running, and starting dockerd needs root".into());
    }
    let log = std::env::temp_dir().join(format!("rmb-dockerd-{}.log", std::process::id()));
    let file = std::fs::File::create(&log).map_err(|e| format!("dockerd log: {e}"))?;
    // Without --iptables=false dockerd sets the host's FORWARD policy to DROP and leaves
    // its chains behind when it stops: every later test that routes between network
    // namespaces (tests/tests/faults/) would then lose all its packets. The compose
    // network is internal, so the containers need no NAT or published ports.
    let mut child = Command::new("dockerd")
        .arg("--iptables=false")
        .stdin(Stdio::null())
        .stdout(Stdio::from(file.try_clone().expect("log file")))
        .stderr(Stdio::from(file))
        .spawn()
        .map_err(|e| format!("starting dockerd: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if quiet_ok("docker", &["info"]) {
            eprintln!(
                "started dockerd (pid {}), log {}",
                child.id(),
                log.display()
            );
            return Ok(Some(Dockerd { child, log }));
        }
        if let Ok(Some(status)) = child.try_wait() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            return Err(format!("dockerd exited ({status}): {tail:?}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    stop(&mut child);
    Err("dockerd did not answer within 60 s".into())
}

/// A `dockerd` this test started, and its log.
struct Dockerd {
    child: Child,
    log: PathBuf,
}

impl Dockerd {
    fn stop(mut self) {
        stop(&mut self.child);
        let _ = std::fs::remove_file(&self.log);
    }
}

/// SIGTERM (dockerd stops its containers and cleans up), then SIGKILL after 20 s.
fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The compose command: the v2 plugin, else Debian's docker-compose (v1).
fn compose_program() -> Option<Vec<String>> {
    if quiet_ok("docker", &["compose", "version"]) {
        return Some(vec!["docker".into(), "compose".into()]);
    }
    if on_path("docker-compose") && quiet_ok("docker-compose", &["version"]) {
        return Some(vec!["docker-compose".into()]);
    }
    None
}

/// One run of the compose example under its own project name and image tag; takes it
/// all down on drop.
struct Deployment {
    compose: Vec<String>,
    project: String,
    tag: String,
    dockerd: Option<Dockerd>,
}

impl Deployment {
    fn compose(&self, args: &[&str]) -> Output {
        let file = repo().join("deploy/compose/compose.yaml");
        let mut command = Command::new(&self.compose[0]);
        command
            .args(&self.compose[1..])
            .arg("-f")
            .arg(file)
            .args(["-p", &self.project])
            .args(args)
            .env("RMB_TAG", &self.tag);
        run(&mut command)
    }

    /// The container id of `service`.
    fn container(&self, service: &str) -> String {
        let output = self.compose(&["ps", "-q", service]);
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// Waits until `service`'s health check says healthy.
    fn wait_healthy(&self, service: &str, within: Duration) {
        let id = self.container(service);
        assert!(!id.is_empty(), "{service} has no container");
        let deadline = Instant::now() + within;
        loop {
            let output = run(Command::new("docker").args([
                "inspect",
                "-f",
                "{{.State.Health.Status}}",
                &id,
            ]));
            let status = String::from_utf8_lossy(&output.stdout).trim().to_string();
            if status == "healthy" {
                return;
            }
            if Instant::now() > deadline {
                self.compose(&["logs", "--no-color", "--tail", "40"]);
                panic!("{service} is {status:?} after {within:?}");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        self.compose(&[
            "--profile",
            "cli",
            "down",
            "-v",
            "--remove-orphans",
            "-t",
            "5",
        ]);
        let images: Vec<String> = IMAGES.iter().map(|i| format!("{i}:{}", self.tag)).collect();
        run(Command::new("docker").args(["rmi", "-f"]).args(&images));
        if let Some(dockerd) = self.dockerd.take() {
            dockerd.stop();
        }
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string()
}

#[test]
fn compose_example_answers_an_echo_call_across_two_peers() {
    let started = Instant::now();
    let dockerd = match daemon() {
        Ok(child) => child,
        Err(why) => {
            println!("SKIPPED: {why}");
            return;
        }
    };
    let Some(compose) = compose_program() else {
        if let Some(dockerd) = dockerd {
            dockerd.stop();
        }
        println!("SKIPPED: neither `docker compose` nor docker-compose is installed");
        return;
    };
    let bins = binaries();
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        % 1_000_000;
    let tag = format!("test{}x{nonce}", std::process::id());
    let deployment = Deployment {
        compose,
        project: format!("rmbtest{}x{nonce}", std::process::id()),
        tag: tag.clone(),
        dockerd,
    };

    // The images, from this build's binaries.
    let output = run(Command::new("bash")
        .arg(repo().join("deploy/docker/build-images.sh"))
        .arg("--bin-dir")
        .arg(&bins)
        .args(["--tag", &tag]));
    assert!(output.status.success(), "build-images.sh failed");
    for image in IMAGES {
        let output = run(Command::new("docker").args([
            "image",
            "inspect",
            "-f",
            "{{.Config.User}}",
            &format!("{image}:{tag}"),
        ]));
        assert_eq!(
            stdout(&output).trim(),
            "10001:10001",
            "{image} runs as uid 10001"
        );
    }
    // No shell in them.
    let output = run(Command::new("docker").args([
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "/bin/sh",
        &format!("rmb:{tag}"),
        "-c",
        "true",
    ]));
    assert!(!output.status.success(), "the rmb image has no /bin/sh");

    // The whole example. `up -d` returns once the one-shot steps have completed and
    // the echo bot is started (after peer-b's health check passed).
    let output = deployment.compose(&["up", "-d"]);
    assert!(output.status.success(), "compose up failed");
    for service in ["relay", "peer-a", "peer-b"] {
        deployment.wait_healthy(service, Duration::from_secs(90));
    }
    let logs = stdout(&deployment.compose(&["logs", "--no-color", "register-b"]));
    let twin_b: u32 = logs
        .lines()
        .filter_map(|l| l.split('|').next_back())
        .filter_map(|l| l.trim().strip_prefix("twin"))
        .find_map(|rest| rest.trim().parse().ok())
        .unwrap_or_else(|| panic!("no twin id in register-b's log: {logs}"));
    println!("twin b is {twin_b}");

    // Twin a calls the echo bot of twin b: relay, both peers, both Redis, the bot.
    let data = format!("hello from {tag}");
    let output = deployment.compose(&[
        "run",
        "--rm",
        "-T",
        "cli-a",
        "call",
        "--dst",
        &twin_b.to_string(),
        "--cmd",
        "echo",
        "--data",
        &data,
        "--timeout",
        "30",
    ]);
    assert!(output.status.success(), "the call failed");
    assert!(
        stdout(&output).contains(&data),
        "echoed: {}",
        stdout(&output)
    );

    let output = deployment.compose(&["run", "--rm", "-T", "cli-a", "status"]);
    assert!(output.status.success(), "peer a reports a connected relay");

    drop(deployment);
    for image in IMAGES {
        assert!(
            !quiet_ok("docker", &["image", "inspect", &format!("{image}:{tag}")]),
            "{image}:{tag} removed"
        );
    }
    println!(
        "compose example: images, up, echo call and clean-up in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
