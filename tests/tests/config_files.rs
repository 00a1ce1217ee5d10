//! Configuration files (`--config FILE`, issue #35) at the user's layer: the real
//! `rmb-relay` and `rmb-peer` started with a TOML file honour its settings, a flag on the
//! command line or an environment variable wins over it, a bad file stops them at start
//! with an error naming the file, line and key (and nothing starts), and the shipped
//! examples in deploy/config/ start both binaries.

use std::net::{IpAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rmb_identity::registry::TwinUpdate;
use rmb_identity::registry::api::PublishRequest;
use rmb_identity::{Identity, KeyType};
use rmb_testsupport::direct::{fresh_mnemonic, register_secret};
use rmb_testsupport::peer_process::{PeerProcess, STATUS_KEY};
use rmb_testsupport::redis_server::{RedisServer, free_port};
use rmb_testsupport::relay_process::{RelayProcess, binaries};

/// How long a binary may take to refuse a bad file, or a relay to start listening.
const WAIT: Duration = Duration::from_secs(20);

/// Writes a config file `name` in `dir` with the given mode.
fn config_file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write the config file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    path
}

/// The deploy/config/ example `name`.
fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/config")
        .join(name)
        .display()
        .to_string()
}

/// A relay started by a test with exactly its arguments; killed on drop.
struct Relay(Child);

impl Relay {
    /// Starts `rmb-relay args…` and waits until it listens on `addr`.
    fn start(args: &[&str], addr: &str) -> Self {
        let child = Command::new(binaries().join("rmb-relay"))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start rmb-relay");
        let mut relay = Relay(child);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = relay.0.try_wait().unwrap() {
                panic!("rmb-relay exited at start: {status}");
            }
            if TcpStream::connect(addr).is_ok() {
                return relay;
            }
            assert!(
                Instant::now() < deadline,
                "rmb-relay never listened on {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `binary args…` (without RMB_MNEMONIC) expecting it to exit by itself soon.
fn run_to_exit(binary: &str, args: &[&str]) -> Output {
    let mut child = Command::new(binaries().join(binary))
        .args(args)
        .env_remove("RMB_MNEMONIC")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the binary");
    let deadline = Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{binary} {args:?} kept running");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    eprintln!(
        "$ {binary} {}\n{}-> {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr),
        output.status
    );
    output
}

/// `/health` of the relay at `addr`.
async fn health(addr: &str) -> serde_json::Value {
    reqwest::get(format!("http://{addr}/health"))
        .await
        .expect("GET /health")
        .json()
        .await
        .expect("health JSON")
}

/// Registers a fresh twin on the relay at `addr` (its hosted registry): the status.
async fn register_fresh(addr: &str) -> u16 {
    let who = Identity::from_secret(&fresh_mnemonic(), KeyType::Ed25519).unwrap();
    let update = TwinUpdate {
        relays: [addr.to_string()].into(),
        pk: None,
        create: true,
    };
    let request =
        PublishRequest::signed(who.signer(), &update, rmb_relay::registry::hosted::now_ms());
    let here: IpAddr = "127.0.0.1".parse().unwrap();
    let client = reqwest::Client::builder()
        .local_address(here)
        .build()
        .unwrap();
    client
        .post(format!("http://{addr}/twins"))
        .json(&request)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A relay config file listening on `port`, with its registry in `data` and at most two
/// new twins per minute per address.
fn relay_config(dir: &Path, port: u16, data: &Path) -> PathBuf {
    let text = format!(
        "# a relay for one test\nlisten = \"127.0.0.1:{port}\"\ndomain = [\"127.0.0.1:{port}\"]\n\
         data-dir = \"{}\"\nfederation-allow = [\"127.0.0.1\"]\nregistry-register-rate = 2\n",
        data.display()
    );
    config_file(dir, "relay.toml", &text, 0o644)
}

#[tokio::test]
async fn the_relay_takes_its_settings_from_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let (port, data) = (free_port(), dir.path().join("data"));
    let file = relay_config(dir.path(), port, &data);
    let addr = format!("127.0.0.1:{port}");
    let _relay = Relay::start(&["--config", file.to_str().unwrap()], &addr);

    // It listens where the file says, under the file's domain, with its registry there.
    let health = health(&addr).await;
    assert_eq!(health["domains"], serde_json::json!([addr]), "{health}");
    assert!(
        data.join("registry.redb").exists(),
        "no registry in the file's data-dir"
    );
    // And the file's limit holds: two new twins a minute from one address.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(register_fresh(&addr).await);
    }
    assert_eq!(statuses, [200, 200, 429]);
}

#[tokio::test]
async fn a_flag_on_the_command_line_overrides_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let (port, data) = (free_port(), dir.path().join("data"));
    let file = relay_config(dir.path(), port, &data);
    let other = format!("127.0.0.1:{}", free_port());
    let _relay = Relay::start(
        &[
            "--listen",
            &other,
            "--config",
            file.to_str().unwrap(),
            "--registry-register-rate",
            "0",
        ],
        &other,
    );

    assert!(
        TcpStream::connect(format!("127.0.0.1:{port}")).is_err(),
        "the file's listen address was used too"
    );
    // The settings not given on the command line still come from the file.
    let health = health(&other).await;
    assert_eq!(
        health["domains"],
        serde_json::json!([format!("127.0.0.1:{port}")]),
        "{health}"
    );
    for _ in 0..3 {
        assert_eq!(register_fresh(&other).await, 200, "the file's limit held");
    }
}

#[test]
fn the_relay_refuses_a_bad_config_file_and_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (port, data) = (free_port(), dir.path().join("data"));
    let cases = [
        (
            "max-conections-per-ip = 0",
            "unknown setting `max-conections-per-ip`; did you mean `max-connections-per-ip`?",
        ),
        (
            "domain = \"relay.example.com\"",
            "`domain` is repeatable and takes a list, e.g. domain = [\"relay.example.com\"]",
        ),
        (
            "max-connections-per-ip = \"many\"",
            "`max-connections-per-ip`: invalid value 'many' for '--max-connections-per-ip <N>'",
        ),
        (
            "header-timeout = 0",
            "`header-timeout`: invalid value '0' for '--header-timeout <SECONDS>'",
        ),
        (
            "federation-http = \"yes\"",
            "`federation-http` is a switch: give true or false",
        ),
    ];
    for (bad, expected) in cases {
        let text = format!(
            "listen = \"127.0.0.1:{port}\"\ndata-dir = \"{}\"\n{bad}\n",
            data.display()
        );
        let file = config_file(dir.path(), "bad.toml", &text, 0o600);
        let output = run_to_exit("rmb-relay", &["--config", file.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{bad}: {stderr}");
        let at = format!("{}:3: ", file.display());
        assert!(stderr.contains(&at), "{bad}: no {at} in {stderr}");
        assert!(stderr.contains(expected), "{bad}: {stderr}");
        assert!(
            !data.exists(),
            "{bad}: the relay created its data directory"
        );
    }

    // Not TOML at all: the parser's line and column.
    let text = "listen = \"127.0.0.1:1\"\n\ndomain = [\"a\" \"b\"]\n";
    let file = config_file(dir.path(), "bad.toml", text, 0o600);
    let output = run_to_exit("rmb-relay", &["--config", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("config file {} is not valid TOML", file.display())),
        "{stderr}"
    );
    assert!(stderr.contains("line 3"), "{stderr}");

    // A file that is not there.
    let missing = dir.path().join("missing.toml");
    let output = run_to_exit("rmb-relay", &["--config", missing.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot read config file {}", missing.display())),
        "{stderr}"
    );
    assert!(TcpStream::connect(format!("127.0.0.1:{port}")).is_err());
}

/// A peer config file for `secret` on `redis_url`, through `relay`.
fn peer_config(dir: &Path, relay: &RelayProcess, redis_url: &str, secret: &str) -> PathBuf {
    let text = format!(
        "redis = \"{redis_url}\"\nrelay = [\"{}\"]\nregistry = \"{}\"\nmnemonic = \"{secret}\"\n\
         at-most-once = false\nreply-cache-mb = 8\n",
        relay.ws_url(),
        relay.http_url()
    );
    config_file(dir, "peer.toml", &text, 0o600)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_runs_from_a_config_file_and_the_environment_and_flags_win() {
    let relay = RelayProcess::start(&[]);
    let redis = RedisServer::start();
    let (a, b) = (fresh_mnemonic(), fresh_mnemonic());
    let twin_a = register_secret(&relay.http_url(), &a, &[relay.domain()]).await;
    let twin_b = register_secret(&relay.http_url(), &b, &[relay.domain()]).await;
    let dir = tempfile::tempdir().unwrap();

    // Everything from the file, the secret included (no RMB_MNEMONIC).
    let file = peer_config(dir.path(), &relay, &redis.url(), &a);
    let args = vec!["--config".to_string(), file.display().to_string()];
    let peer = PeerProcess::start_with_args("", &redis.url(), args, None);
    let status = peer.status().expect("status key");
    assert_eq!(status["twin"], twin_a, "{status}");
    drop(peer);

    // RMB_MNEMONIC wins over the file's mnemonic, and --redis over the file's redis
    // (where nothing listens).
    let nowhere = format!("redis://127.0.0.1:{}", free_port());
    let file = peer_config(dir.path(), &relay, &nowhere, &a);
    let args = vec![
        "--config".to_string(),
        file.display().to_string(),
        "--redis".to_string(),
        redis.url(),
    ];
    let peer = PeerProcess::start_with_args(&b, &redis.url(), args, None);
    let status = peer.status().expect("status key");
    assert_eq!(status["twin"], twin_b, "{status}");
}

#[test]
fn the_peer_refuses_a_bad_config_file_and_starts_nothing() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let head = format!(
        "redis = \"{}\"\nmnemonic = \"{}\"\n",
        redis.url(),
        fresh_mnemonic()
    );
    let cases = [
        (
            "relays = [\"ws://127.0.0.1:1/\"]",
            "unknown setting `relays`; did you mean `relay`?",
        ),
        (
            "relay = \"ws://127.0.0.1:1/\"",
            "`relay` is repeatable and takes a list, e.g. relay = [\"ws://127.0.0.1:1/\"]",
        ),
        (
            "key-type = \"rsa\"",
            "`key-type`: invalid value 'rsa' for '--key-type <sr25519|ed25519>'",
        ),
        (
            "max-lifetime = [60]",
            "`max-lifetime` takes one value, not a list",
        ),
        ("[topics]\nlease = 30", "`topics` is a table"),
    ];
    for (bad, expected) in cases {
        let file = config_file(dir.path(), "peer.toml", &format!("{head}{bad}\n"), 0o600);
        let output = run_to_exit("rmb-peer", &["--config", file.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{bad}: {stderr}");
        let at = format!("{}:3: ", file.display());
        assert!(stderr.contains(&at), "{bad}: no {at} in {stderr}");
        assert!(stderr.contains(expected), "{bad}: {stderr}");
        assert!(!stderr.contains("warning"), "{bad}: {stderr}");
        assert_eq!(
            redis.inline(&["EXISTS", STATUS_KEY]).trim(),
            ":0",
            "{bad}: it started"
        );
    }
}

#[test]
fn a_readable_file_holding_the_mnemonic_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let secret = fresh_mnemonic();
    let text = format!("mnemonic = \"{secret}\"\n");
    // A bad flag stops the peer right after the file is read.
    for (mode, warned) in [(0o644, true), (0o600, false)] {
        let file = config_file(dir.path(), "peer.toml", &text, mode);
        let output = run_to_exit(
            "rmb-peer",
            &["--config", file.to_str().unwrap(), "--max-lifetime", "0"],
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        let warning = format!(
            "warning: config file {} sets mnemonic but other users may read it (mode 0644)",
            file.display()
        );
        assert_eq!(stderr.contains(&warning), warned, "mode {mode:o}: {stderr}");
        assert!(
            !stderr.contains(&secret),
            "the secret was printed: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_examples_start_the_real_binaries() {
    // The relay example, with the addresses a test needs given as flags.
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let data = dir.path().join("data");
    let relay_example = example("relay.toml");
    let _relay = Relay::start(
        &[
            "--config",
            &relay_example,
            "--listen",
            &addr,
            "--domain",
            &addr,
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &addr,
    );
    assert_eq!(health(&addr).await["domains"], serde_json::json!([addr]));

    // The peer example, likewise, its secret from RMB_MNEMONIC.
    let relay = RelayProcess::start(&[]);
    let redis = RedisServer::start();
    let secret = fresh_mnemonic();
    let twin = register_secret(&relay.http_url(), &secret, &[relay.domain()]).await;
    let args = [
        "--config",
        &example("peer.toml"),
        "--redis",
        &redis.url(),
        "--relay",
        &relay.ws_url(),
        "--registry",
        &relay.http_url(),
    ];
    let args = args.iter().map(|s| s.to_string()).collect();
    let peer = PeerProcess::start_with_args(&secret, &redis.url(), args, None);
    assert_eq!(peer.status().expect("status key")["twin"], twin);
}
