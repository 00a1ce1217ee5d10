//! Operations traps a new user hits, replayed with the real binaries over loopback:
//! restarting a relay on its data directory, calls that could only time out, a relay
//! with a certificate from a private CA, a peer replaced while it shuts down, and the
//! `-m` flag of `rmb-relay`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rmb_testsupport::peer_node::Node;
use rmb_testsupport::peer_process::PeerProcess;
use rmb_testsupport::peer_process::resp::Resp;
use rmb_testsupport::redis_server::{RedisServer, free_port};
use rmb_testsupport::relay_process::{RelayProcess, binaries};
use serde_json::Value;

/// Runs `rmb args…` to completion.
fn rmb(args: &[&str]) -> Output {
    let output = Command::new(binaries().join("rmb"))
        .args(args)
        .env_remove("RMB_MNEMONIC")
        .env_remove("RMB_REGISTRY")
        .env_remove("RMB_REDIS")
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
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

/// A background `rmb serve --echo` for `cmd` on a peer's Redis; killed on drop.
struct Echo(Child);

impl Echo {
    fn start(redis: &str, cmd: &str) -> Echo {
        let child = Command::new(binaries().join("rmb"))
            .args(["serve", "-r", redis, "--cmd", cmd, "--echo"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start rmb serve");
        Echo(child)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

/// Waits up to `bound` for `child` to exit; its status and how long that took.
fn wait_exit(child: &mut Child, bound: Duration) -> Option<(std::process::ExitStatus, Duration)> {
    let started = Instant::now();
    while started.elapsed() < bound {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some((status, started.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Kills a child on drop (a test that fails leaves nothing running).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `rmb-relay` on `port` with the registry in `data_dir`, logging to `log`.
fn spawn_relay(port: u16, data_dir: &Path, log: &Path, extra: &[&str]) -> Child {
    let out = std::fs::File::create(log).expect("relay log");
    Command::new(binaries().join("rmb-relay"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--domain", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--federation-allow", "127.0.0.1"])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out))
        .spawn()
        .expect("start rmb-relay")
}

/// Waits until `url` answers 200; the body.
fn wait_get(url: &str, bound: Duration) -> Option<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    while started.elapsed() < bound {
        let got = runtime.block_on(async {
            let response = reqwest::get(url).await.ok()?;
            if !response.status().is_success() {
                return None;
            }
            response.text().await.ok()
        });
        if got.is_some() {
            return got;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Item 1: SIGTERM a relay whose peers long-poll its registry, start the new one on
/// the same data directory and port at once: the old one exits fast, the new one waits
/// for the database and serves; a relay that never gets the file says why.
#[test]
fn a_relay_restarted_at_once_on_its_data_dir_comes_up_and_the_old_one_exits_fast() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let mut old = Reaped(spawn_relay(port, &data, &dir.path().join("old.log"), &[]));
    let base = format!("http://127.0.0.1:{port}");
    wait_get(&format!("{base}/health"), Duration::from_secs(20)).expect("old relay up");

    // A relay on the same data directory while it runs: a bounded wait, then a clear error.
    let other_log = dir.path().join("other.log");
    let mut other = Reaped(spawn_relay(
        free_port(),
        &data,
        &other_log,
        &["--data-dir-lock-wait", "1"],
    ));
    let (status, took) =
        wait_exit(&mut other.0, Duration::from_secs(10)).expect("the second relay gave up");
    assert!(!status.success());
    assert!(took >= Duration::from_secs(1), "it waited: {took:?}");
    let log = std::fs::read_to_string(&other_log).unwrap();
    assert!(
        log.contains("another process holds the registry database"),
        "{log}"
    );
    assert!(log.contains("still held by another process"), "{log}");

    // Two peers long-polling the registry's /changes.
    let domain = format!("127.0.0.1:{port}");
    let a = Node::start_on("//Alice", &domain, &[]);
    let b = Node::start_on("//Bob", &domain, &[]);
    std::thread::sleep(Duration::from_millis(500));

    sigterm(&old.0);
    let new_log = dir.path().join("new.log");
    let _new = Reaped(spawn_relay(port, &data, &new_log, &[]));
    let (status, took) =
        wait_exit(&mut old.0, Duration::from_secs(15)).expect("the old relay exited");
    eprintln!("old relay exited {took:?} after SIGTERM ({status})");
    assert!(status.success(), "{status}");
    assert!(
        took < Duration::from_secs(2),
        "the old relay took {took:?} to exit"
    );
    // The new one serves the registry it inherited, and the peers come back to it.
    let twin = wait_get(&format!("{base}/twins/{}", a.twin), Duration::from_secs(20))
        .unwrap_or_else(|| {
            panic!(
                "the new relay does not serve: {}",
                std::fs::read_to_string(&new_log).unwrap()
            )
        });
    let twin: Value = serde_json::from_str(&twin).unwrap();
    assert_eq!(twin["id"], a.twin);
    let _echo = Echo::start(&b.redis.url(), "echo");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = rmb(&[
            "call",
            "-r",
            &a.redis.url(),
            "--dst",
            &b.twin.to_string(),
            "--cmd",
            "echo",
            "--data",
            "after restart",
            "--timeout",
            "3",
        ]);
        if out.status.success() {
            assert!(String::from_utf8_lossy(&out.stdout).contains("after restart"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no call went through the new relay"
        );
    }
    drop((a.peer, b.peer));
}

/// Item 2a: `rmb call` against a Redis no peer serves says so within seconds and takes
/// its request back, instead of only timing out.
#[test]
fn rmb_call_says_when_no_peer_serves_its_redis() {
    let redis = RedisServer::start();
    let started = Instant::now();
    let out = rmb(&[
        "call",
        "-r",
        &redis.url(),
        "--dst",
        "7",
        "--cmd",
        "echo",
        "--timeout",
        "30",
    ]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no rmb-peer is serving the Redis")
            && stderr.contains("no heartbeat at msgbus.system.status"),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(
        Resp::connect(&redis.url()).llen("msgbus.system.local"),
        0,
        "the request was taken back"
    );
}

/// Item 2b: a call for a command nobody serves on the remote twin gets an error from
/// that twin before the caller's timeout (and the request leaves the remote list); a
/// destination that stays silent gets the likely causes listed.
#[test]
fn a_command_nobody_serves_is_answered_with_an_error_and_silence_lists_causes() {
    let relay = RelayProcess::start(&[]);
    let a = Node::start("//Alice", &relay, &[]);
    let b = Node::start("//Bob", &relay, &[]);
    let started = Instant::now();
    let out = rmb(&[
        "call",
        "-r",
        &a.redis.url(),
        "--dst",
        &b.twin.to_string(),
        "--cmd",
        "nobody.here",
        "--timeout",
        "10",
    ]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "an error came back");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("twin {}: error", b.twin))
            && stdout.contains("no service took the request for 'nobody.here'"),
        "{stdout}"
    );
    assert!(
        took < Duration::from_secs(10),
        "before the timeout: {took:?}"
    );
    assert_eq!(b.peer.redis().llen("msgbus.nobody.here"), 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = b.peer.status().expect("status");
        if status["rejected_by"]["unserved"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "not counted: {status}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Too short-lived to be answered: the caller times out, with the likely causes.
    let out = rmb(&[
        "call",
        "-r",
        &a.redis.url(),
        "--dst",
        &b.twin.to_string(),
        "--cmd",
        "nobody.here",
        "--timeout",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no response within 2 s")
            && stderr.contains("likely causes: no service reads msgbus.nobody.here"),
        "{stderr}"
    );
}

/// A CA and a certificate it issued for 127.0.0.1, as PEM files in `dir`:
/// (ca, cert, key).
fn private_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "rmb test private CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, leaf.pem()).unwrap();
    std::fs::write(&paths.2, leaf_key.serialize_pem()).unwrap();
    paths
}

/// `rmb-peer` for `secret` with its own log file and environment; not waited for.
fn spawn_peer(
    secret: &str,
    redis: &str,
    args: &[&str],
    env: &[(&str, &Path)],
    log: &Path,
) -> Reaped {
    let out = std::fs::File::create(log).unwrap();
    let child = Command::new(binaries().join("rmb-peer"))
        .args(["--redis", redis])
        .args(args)
        .env("RMB_MNEMONIC", secret)
        .env("RUST_LOG", "info")
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out))
        .spawn()
        .expect("start rmb-peer");
    Reaped(child)
}

/// True once the peer on `redis` reports a connected relay (within `bound`).
fn connected(redis: &str, bound: Duration) -> bool {
    let mut conn = Resp::connect(redis);
    let started = Instant::now();
    while started.elapsed() < bound {
        if let Some(status) = conn.get("msgbus.system.status") {
            let status: Value = serde_json::from_slice(&status).unwrap();
            if status["relays"][0]["connected"] == true {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Item 3: a relay serving wss:// and https:// with a certificate from a private CA is
/// refused without that CA, and reached with `--relay-ca` or `SSL_CERT_FILE`, by
/// rmb-peer (relay and registry) and by `rmb twin`.
#[test]
fn a_relay_with_a_private_ca_is_reached_with_relay_ca_or_ssl_cert_file() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = private_ca(dir.path());
    let relay = RelayProcess::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let registry = format!("https://{}", relay.domain());
    let wss = format!("wss://{}/", relay.domain());
    let ca_text = ca.to_str().unwrap();

    // rmb twin (registry over https): refused, then accepted with either way of trust.
    let register = |extra: &[&str], env: Option<&Path>| {
        let mut command = Command::new(binaries().join("rmb"));
        command
            .args(["twin", "register", "-m", "//Alice", "--registry", &registry])
            .args(["--relay", &relay.domain()])
            .args(extra)
            .env_remove("SSL_CERT_FILE")
            .env_remove("SSL_CERT_DIR")
            .env_remove("RMB_REGISTRY");
        if let Some(file) = env {
            command.env("SSL_CERT_FILE", file);
        }
        let out = command.output().unwrap();
        eprintln!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let refused = register(&[], None);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("UnknownIssuer"),
        "the error names the certificate problem"
    );
    assert!(register(&["--relay-ca", ca_text], None).status.success());
    assert!(register(&[], Some(&ca)).status.success());

    // rmb-peer: relay over wss and registry over https.
    let redis = RedisServer::start();
    let args = ["--relay", &wss, "--registry", &registry];
    let log = dir.path().join("peer-no-ca.log");
    let without = spawn_peer("//Alice", &redis.url(), &args, &[], &log);
    assert!(!connected(&redis.url(), Duration::from_secs(3)));
    drop(without);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("UnknownIssuer"), "{text}");

    let mut with_flag: Vec<&str> = args.to_vec();
    with_flag.extend(["--relay-ca", ca_text]);
    let log = dir.path().join("peer-relay-ca.log");
    let peer = spawn_peer("//Alice", &redis.url(), &with_flag, &[], &log);
    assert!(
        connected(&redis.url(), Duration::from_secs(20)),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    drop(peer);
    Resp::connect(&redis.url()).del("msgbus.system.status");

    let log = dir.path().join("peer-ssl-cert-file.log");
    let peer = spawn_peer(
        "//Alice",
        &redis.url(),
        &args,
        &[("SSL_CERT_FILE", &ca)],
        &log,
    );
    assert!(
        connected(&redis.url(), Duration::from_secs(20)),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    drop(peer);
}

/// Item 4: peer A is SIGTERMed and, while it shuts down (slowed here by its Redis
/// pausing writes, as a busy Redis would), B of the same twin starts and takes over
/// A's relay session: A does not log in again, so B is never displaced and keeps
/// receiving calls.
#[test]
fn a_peer_shutting_down_does_not_displace_its_replacement() {
    let relay = RelayProcess::start(&[]);
    let caller = Node::start("//Bob", &relay, &[]);
    let mut a = Node::start("//Alice", &relay, &[]);
    let paused = a.redis.inline(&["CLIENT", "PAUSE", "3000", "WRITE"]);
    assert!(paused.contains("OK"), "{paused}");
    a.peer.signal_term();
    let b_redis = RedisServer::start();
    let b = PeerProcess::start(
        "//Alice",
        &b_redis.url(),
        &[relay.ws_url()],
        &relay.http_url(),
        &[],
    );
    // A finishes its shutdown once its Redis answers again.
    let status = a.peer.wait_exit(Duration::from_secs(15));
    eprintln!("peer A exited: {status:?}");
    assert!(status.is_some(), "peer A exited");
    let _echo = Echo::start(&b_redis.url(), "echo");
    for i in 0..3 {
        let text = format!("call {i}");
        let out = rmb(&[
            "call",
            "-r",
            &caller.redis.url(),
            "--dst",
            &a.twin.to_string(),
            "--cmd",
            "echo",
            "--data",
            &text,
            "--timeout",
            "10",
        ]);
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains(&text));
    }
    let status = b.status().expect("B's status");
    assert_eq!(
        status["relays"][0]["reconnects"], 0,
        "B's session was never displaced: {status}"
    );
    assert_eq!(status["relays"][0]["connected"], true);
}

/// Item 5: `-m` is `--domain` on rmb-relay (as rmb-rs's) and `--mnemonic` elsewhere;
/// rmb-relay's help says so.
#[test]
fn relay_help_says_what_m_means() {
    let help = Command::new(binaries().join("rmb-relay"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("-m, --domain"), "{help}");
    assert!(help.contains("as in rmb-rs's rmb-relay"), "{help}");
    let help = Command::new(binaries().join("rmb-peer"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("-m, --mnemonic"));
}
