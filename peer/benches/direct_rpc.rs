//! RPC throughput and latency between two direct clients (`rmb_peer::Client`) through a
//! real `rmb-relay` process on this machine: what the core and links cost, without
//! Redis or JSON. Run with `cargo bench -p rmb-peer --bench direct_rpc`.
//!
//! Each round runs `concurrency` callers in a loop for a few seconds; every call is
//! sealed (encrypted + signed) by the caller, routed by the relay, verified and opened
//! by the server, answered the same way back. Printed: calls/s, p50 and p99 latency,
//! and the CPU time per call of both clients (this process) and of the relay, which
//! stays meaningful when other work shares the machine.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rmb_identity::registry::http::HttpRegistry;
use rmb_identity::registry::{Registry, RegistryChoice, TwinUpdate};
use rmb_identity::{Identity, KeyType};
use rmb_peer::{Client, ClientOptions, RemoteError};

const ROUND: Duration = Duration::from_secs(3);

fn relay_binary() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "--release",
            "-p",
            "rmb-relay",
            "--bin",
            "rmb-relay",
        ])
        .status()
        .expect("run cargo build");
    assert!(status.success(), "building rmb-relay failed");
    let exe = std::env::current_exe().expect("bench executable path");
    exe.parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .join("rmb-relay")
}

/// The relay process; the directory lives as long as it does.
struct Relay(Child, #[allow(dead_code)] tempfile::TempDir);

/// User + system CPU time of process `pid` so far (from `/proc`, Linux only).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_relay(port: u16) -> Relay {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay(
        Command::new(relay_binary())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--domain", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("start rmb-relay"),
        dir,
    );
    for _ in 0..500 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return relay;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("rmb-relay did not start");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn client(secret: &str, sid: &str, port: u16) -> Client {
    let registry = format!("http://127.0.0.1:{port}");
    let identity = Identity::from_secret(secret, KeyType::Ed25519).unwrap();
    let update = TwinUpdate {
        relays: [format!("127.0.0.1:{port}")].into(),
        pk: None,
        create: true,
    };
    HttpRegistry::new(&registry)
        .unwrap()
        .publish(identity.signer(), &update)
        .await
        .unwrap();
    let mut options = ClientOptions::new(
        secret,
        sid,
        vec![format!("ws://127.0.0.1:{port}/")],
        RegistryChoice::Embedded { url: registry },
    );
    options.key_type = KeyType::Ed25519;
    Client::connect(options).await.expect("client connects")
}

async fn round(
    caller: &Arc<Client>,
    server: &Client,
    relay_pid: u32,
    concurrency: usize,
    size: usize,
) {
    let deadline = Instant::now() + ROUND;
    let to = server.address().clone();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (caller, to) = (Arc::clone(caller), to.clone());
            tokio::spawn(async move {
                let payload = vec![7u8; size];
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let started = Instant::now();
                    caller
                        .call_address(to.clone(), "echo", payload.clone(), Duration::from_secs(30))
                        .await
                        .expect("call succeeds");
                    latencies.push(started.elapsed());
                }
                latencies
            })
        })
        .collect();
    let started = Instant::now();
    let (own_cpu, relay_cpu) = (cpu_time(std::process::id()), cpu_time(relay_pid));
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    let own_cpu = cpu_time(std::process::id()) - own_cpu;
    let relay_cpu = cpu_time(relay_pid) - relay_cpu;
    let calls = all.len() as f64;
    let per_call = |cpu: Duration| cpu.as_secs_f64() * 1e6 / calls;
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    println!(
        "| {concurrency:>4} | {size:>6} B | {:>8.0} | {:>7.2} ms | {:>7.2} ms | {:>6.0} µs | {:>6.0} µs |",
        all.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        per_call(own_cpu),
        per_call(relay_cpu),
    );
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to filter here.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let port = free_port();
        let relay = start_relay(port);
        let relay_pid = relay.0.id();
        let tag: u64 = rand::random();
        let caller = Arc::new(client(&format!("//bench-caller-{tag}"), "caller", port).await);
        let server = client(&format!("//bench-server-{tag}"), "server", port).await;
        server.serve(
            "echo",
            |req| async move { Ok::<_, RemoteError>(req.payload) },
        );
        // Warm up: registry lookups, e2e key agreement, connections.
        for _ in 0..200 {
            caller
                .call_address(
                    server.address().clone(),
                    "echo",
                    b"w".to_vec(),
                    Duration::from_secs(30),
                )
                .await
                .unwrap();
        }
        println!(
            "| callers | payload | calls/s | p50 | p99 | CPU/call, both clients | CPU/call, relay |"
        );
        println!("|---|---|---|---|---|---|---|");
        for size in [256, 16 * 1024] {
            for concurrency in [1, 16, 128] {
                round(&caller, &server, relay_pid, concurrency, size).await;
            }
        }
    });
}
