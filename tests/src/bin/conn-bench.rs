//! `conn-bench`: throughput and round-trip latency of connections (issue #15), beside a
//! plain TCP loopback copy and a bare WebSocket forwarder measured in the same run.
//!
//! Rows: TCP loopback; the bare tokio-tungstenite forwarder of relay-bench (no login,
//! no routing, no protobuf, no signatures); a connection through one real rmb-relay; a
//! connection across two federated rmb-relays. Throughput: `--mib` MiB written in 64 KiB
//! writes until the far side has read everything. Latency: `--rounds` round trips of a
//! 64-byte message (p50/p99). Then `rmb pipe` as a user runs it (two processes moving a
//! file): through the twins' rmb-peers over one relay and two, and as direct clients.
//! Everything shares the same CPUs, so figures are relative;
//! throughput is the median of `--repeat` runs per path, the paths taking turns.
//! Run optimised: `cargo run --release -p rmb-tests --bin conn-bench` (binaries come
//! from the same target directory).

/// mimalloc: glibc malloc cost a busy peer or relay about a tenth of its CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../../../relay/src/bin/relay_bench/bare.rs"]
mod bare;
#[path = "conn_bench/cli_pipe.rs"]
mod cli_pipe;

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use rmb_identity::registry::RegistryChoice;
use rmb_identity::{Identity, KeyType};
use rmb_peer::conn::{ListenOptions, Stream};
use rmb_peer::{Client, ClientOptions};
use rmb_testsupport::redis_server::free_port;
use rmb_testsupport::relay_process::RelayProcess;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::{Bytes, Message};

const WRITE: usize = 64 << 10;
const SMALL: usize = 64;

/// Connections benchmark: MB/s and round trips, against TCP and a bare forwarder.
#[derive(Parser, Debug)]
struct Args {
    /// MiB moved per throughput run.
    #[arg(long, default_value_t = 64)]
    mib: usize,
    /// Round trips per latency run.
    #[arg(long, default_value_t = 1000)]
    rounds: usize,
    /// Throughput runs per path, taken in turns; the table shows each path's median.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Data bytes per frame (KiB); the peers' default when not given.
    #[arg(long)]
    frame_kib: Option<usize>,
    /// Receive window and send buffer per connection (KiB); the peers' default when not
    /// given.
    #[arg(long)]
    window_kib: Option<usize>,
    /// One more flag for every relay (repeatable), e.g. `--relay-arg=--federation-batch=0`
    /// to compare with one federation POST per frame.
    #[arg(long, value_name = "FLAG", allow_hyphen_values = true)]
    relay_arg: Vec<String>,
}

struct Row {
    name: &'static str,
    mb_s: f64,
    p50: Duration,
    p99: Duration,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if std::env::var_os("RMB_BIN_DIR").is_none() {
        let dir = std::env::current_exe()?
            .parent()
            .context("the executable's directory")?
            .to_path_buf();
        // SAFETY: no other thread exists yet (the runtime is built below).
        unsafe { std::env::set_var("RMB_BIN_DIR", dir) };
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let bytes = args.mib << 20;
    let mut rows = Vec::new();

    eprintln!("tcp loopback…");
    let (a, b) = tcp_pair().await?;
    let mb_s = stream_throughput(a, b, bytes).await?;
    let (a, b) = tcp_pair().await?;
    let (p50, p99) = stream_latency(a, b, args.rounds).await?;
    rows.push(Row {
        name: "tcp loopback",
        mb_s,
        p50,
        p99,
    });

    // Every path stays up while throughput is measured in turns (forwarder, one relay,
    // two relays, again…): the machine's speed drifts between runs, and the median of
    // interleaved runs compares the paths under the same conditions.
    eprintln!("setting up: bare websocket forwarder, one relay, two relays…");
    let forwarder = bare::Forwarder::start(false).await?;
    let extra: Vec<&str> = args.relay_arg.iter().map(String::as_str).collect();
    let relay = RelayProcess::start(&extra);
    let (alice1, bob1) = clients(&relay, &relay, &relay.http_url(), &args).await?;
    let (p1, p2) = (free_port(), free_port());
    let r1 = RelayProcess::start_on(p1, &[&["--federation-http"], &extra[..]].concat());
    let registry = r1.http_url();
    let r2 = RelayProcess::start_on(
        p2,
        &[&["--federation-http", "--registry", &registry], &extra[..]].concat(),
    );
    let (alice2, bob2) = clients(&r1, &r2, &registry, &args).await?;

    // The command line: `rmb pipe` processes through the twins' peers (one relay, two
    // relays) and as direct clients.
    let (peer_a1, peer_b1) = (
        cli_pipe::PeerNode::start(&relay, &relay.http_url()).await,
        cli_pipe::PeerNode::start(&relay, &relay.http_url()).await,
    );
    let (peer_a2, peer_b2) = (
        cli_pipe::PeerNode::start(&r1, &registry).await,
        cli_pipe::PeerNode::start(&r2, &registry).await,
    );
    let direct_pair = cli_pipe::DirectPair::start(&relay).await;
    let dir = tempfile::tempdir()?;
    let file = cli_pipe::data_file(dir.path(), bytes)?;

    let mut runs: [Vec<f64>; 6] = Default::default();
    for round in 0..args.repeat.max(1) {
        eprintln!("throughput, round {} of {}…", round + 1, args.repeat.max(1));
        runs[0].push(ws_throughput(&forwarder, 0, bytes).await?);
        runs[1].push(connection_throughput(&alice1, &bob1, bytes).await?);
        runs[2].push(connection_throughput(&alice2, &bob2, bytes).await?);
        runs[3].push(cli_pipe::via_peers(&peer_a1, &peer_b1, &file).await?);
        runs[4].push(cli_pipe::via_peers(&peer_a2, &peer_b2, &file).await?);
        runs[5].push(cli_pipe::direct(&direct_pair, &file).await?);
    }
    let [
        forwarder_mb_s,
        one_mb_s,
        two_mb_s,
        pipe_one_mb_s,
        pipe_two_mb_s,
        pipe_direct_mb_s,
    ] = runs.map(median);
    drop((peer_a1, peer_b1, peer_a2, peer_b2, direct_pair));

    eprintln!("round trips…");
    let (p50, p99) = ws_latency(&forwarder, 1, args.rounds).await?;
    rows.push(Row {
        name: "bare ws forwarder",
        mb_s: forwarder_mb_s,
        p50,
        p99,
    });
    let (p50, p99) = connection_latency(&alice1, &bob1, args.rounds).await?;
    rows.push(Row {
        name: "connection, 1 relay",
        mb_s: one_mb_s,
        p50,
        p99,
    });
    let (p50, p99) = connection_latency(&alice2, &bob2, args.rounds).await?;
    rows.push(Row {
        name: "connection, 2 relays",
        mb_s: two_mb_s,
        p50,
        p99,
    });
    drop((alice1, bob1, relay, alice2, bob2, r1, r2));
    let none = Duration::ZERO;
    for (name, mb_s) in [
        ("rmb pipe via peers, 1 relay", pipe_one_mb_s),
        ("rmb pipe via peers, 2 relays", pipe_two_mb_s),
        ("rmb pipe --relay, 1 relay", pipe_direct_mb_s),
    ] {
        rows.push(Row {
            name,
            mb_s,
            p50: none,
            p99: none,
        });
    }

    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!(
        "\nconnections benchmark ({build} build, {} MiB in 64 KiB writes, median of {} runs per path taken in turns; {} round trips of {SMALL} B)",
        args.mib,
        args.repeat.max(1),
        args.rounds
    );
    println!(
        "{:<30} {:>10} {:>12} {:>12}",
        "path", "MB/s", "p50 rtt", "p99 rtt"
    );
    for row in &rows {
        if row.p50.is_zero() {
            // The command-line rows measure throughput only.
            println!(
                "{:<30} {:>10.1} {:>12} {:>12}",
                row.name, row.mb_s, "-", "-"
            );
            continue;
        }
        println!(
            "{:<30} {:>10.1} {:>9.3} ms {:>9.3} ms",
            row.name,
            row.mb_s,
            row.p50.as_secs_f64() * 1e3,
            row.p99.as_secs_f64() * 1e3
        );
    }
    let bare = rows[1].mb_s;
    println!(
        "connection / bare forwarder throughput: 1 relay {:.2}, 2 relays {:.2}",
        rows[2].mb_s / bare,
        rows[3].mb_s / bare
    );
    println!(
        "rmb pipe (files through two processes, start to exit) / connection: via peers 1 relay {:.2}, 2 relays {:.2}; --relay 1 relay {:.2}",
        rows[4].mb_s / rows[2].mb_s,
        rows[5].mb_s / rows[3].mb_s,
        rows[6].mb_s / rows[2].mb_s
    );
    Ok(())
}

async fn tcp_pair() -> anyhow::Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let a = TcpStream::connect(listener.local_addr()?).await?;
    let (b, _) = listener.accept().await?;
    a.set_nodelay(true)?;
    b.set_nodelay(true)?;
    Ok((a, b))
}

/// `a` writes `bytes` and half-closes; `b` reads to the end and answers one byte.
async fn stream_throughput<A, B>(mut a: A, mut b: B, bytes: usize) -> anyhow::Result<f64>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 256 << 10];
        let mut total = 0;
        loop {
            let n = b.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            total += n;
        }
        b.write_all(&[1]).await?;
        b.shutdown().await?;
        Ok::<_, std::io::Error>((total, b))
    });
    let chunk = vec![0x5au8; WRITE];
    let started = Instant::now();
    for _ in 0..bytes / WRITE {
        a.write_all(&chunk).await?;
    }
    a.shutdown().await?;
    let mut done = [0u8; 1];
    a.read_exact(&mut done).await?;
    let secs = started.elapsed().as_secs_f64();
    let (total, _b) = reader.await??;
    anyhow::ensure!(total == bytes / WRITE * WRITE, "{total} bytes arrived");
    Ok(total as f64 / secs / 1e6)
}

/// Round trips of a small message; `b` echoes.
async fn stream_latency<A, B>(
    mut a: A,
    mut b: B,
    rounds: usize,
) -> anyhow::Result<(Duration, Duration)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let echo = tokio::spawn(async move {
        let mut buf = [0u8; SMALL];
        for _ in 0..rounds {
            b.read_exact(&mut buf).await?;
            b.write_all(&buf).await?;
        }
        Ok::<_, std::io::Error>(b)
    });
    let mut times = Vec::with_capacity(rounds);
    let mut buf = [7u8; SMALL];
    for _ in 0..rounds {
        let t = Instant::now();
        a.write_all(&buf).await?;
        a.read_exact(&mut buf).await?;
        times.push(t.elapsed());
    }
    let _b = echo.await??;
    Ok(percentiles(times))
}

fn percentiles(mut times: Vec<Duration>) -> (Duration, Duration) {
    times.sort();
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    (at(0.5), at(0.99))
}

async fn ws_connect(
    url: &str,
) -> anyhow::Result<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>>
{
    Ok(tokio_tungstenite::connect_async(url).await?.0)
}

async fn ws_throughput(
    forwarder: &bare::Forwarder,
    pair: usize,
    bytes: usize,
) -> anyhow::Result<f64> {
    let mut a = ws_connect(&forwarder.url(pair, true)).await?;
    let mut b = ws_connect(&forwarder.url(pair, false)).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let frames = bytes / WRITE;
    let reader = tokio::spawn(async move {
        let mut total = 0;
        while total < frames * WRITE {
            match b.next().await {
                Some(Ok(Message::Binary(data))) => total += data.len(),
                Some(Ok(_)) => {}
                _ => break,
            }
        }
        total
    });
    let chunk = Bytes::from(vec![0x5au8; WRITE]);
    let started = Instant::now();
    for _ in 0..frames {
        a.send(Message::Binary(chunk.clone())).await?;
    }
    let total = reader.await?;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(total == frames * WRITE, "{total} bytes arrived");
    Ok(total as f64 / secs / 1e6)
}

async fn ws_latency(
    forwarder: &bare::Forwarder,
    pair: usize,
    rounds: usize,
) -> anyhow::Result<(Duration, Duration)> {
    let mut a = ws_connect(&forwarder.url(pair, true)).await?;
    let mut b = ws_connect(&forwarder.url(pair, false)).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let echo = tokio::spawn(async move {
        for _ in 0..rounds {
            match b.next().await {
                Some(Ok(Message::Binary(data))) => b.send(Message::Binary(data)).await?,
                Some(Ok(_)) => {}
                _ => break,
            }
        }
        Ok::<_, anyhow::Error>(())
    });
    let mut times = Vec::with_capacity(rounds);
    let small = Bytes::from(vec![7u8; SMALL]);
    for _ in 0..rounds {
        let t = Instant::now();
        a.send(Message::Binary(small.clone())).await?;
        loop {
            match a.next().await {
                Some(Ok(Message::Binary(_))) => break,
                Some(Ok(_)) => continue,
                other => anyhow::bail!("forwarder ended: {other:?}"),
            }
        }
        times.push(t.elapsed());
    }
    echo.await??;
    Ok(percentiles(times))
}

/// Two direct clients of fresh twins, A on `ra`, B on `rb`.
async fn clients(
    ra: &RelayProcess,
    rb: &RelayProcess,
    registry: &str,
    args: &Args,
) -> anyhow::Result<(Client, Client)> {
    let mut out = Vec::new();
    for (relay, sid) in [(ra, "bench-a"), (rb, "bench-b")] {
        let mut entropy = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut entropy);
        let secret = bip39::Mnemonic::from_entropy(&entropy)?.to_string();
        let identity = Identity::from_secret(&secret, KeyType::Sr25519)?;
        rmb_testsupport::registry::register(registry, &identity, &[relay.domain()]).await;
        let choice = RegistryChoice::Embedded {
            url: registry.to_string(),
        };
        let mut options = ClientOptions::new(secret, sid, vec![relay.ws_url()], choice);
        if let Some(kib) = args.frame_kib {
            options.connections.stream.max_frame = kib << 10;
        }
        if let Some(kib) = args.window_kib {
            options.connections.stream.window = (kib << 10) as u32;
            options.connections.stream.send_buffer = kib << 10;
        }
        out.push(Client::connect(options).await?);
    }
    let b = out.pop().context("two clients")?;
    let a = out.pop().context("two clients")?;
    Ok((a, b))
}

async fn open(alice: &Client, bob: &Client, protocol: &str) -> anyhow::Result<(Stream, Stream)> {
    let mut listener = bob
        .connections()
        .listen(protocol, ListenOptions::default())?;
    let (a, b) = tokio::join!(
        alice
            .connections()
            .connect_address(bob.address().clone(), protocol),
        listener.accept()
    );
    Ok((a?, b.context("listener closed")??))
}

/// MB/s of one connection opened for the purpose.
async fn connection_throughput(alice: &Client, bob: &Client, bytes: usize) -> anyhow::Result<f64> {
    let (a, b) = open(alice, bob, "bench-throughput").await?;
    stream_throughput(a, b, bytes).await
}

/// Round trips of small messages over one connection opened for the purpose.
async fn connection_latency(
    alice: &Client,
    bob: &Client,
    rounds: usize,
) -> anyhow::Result<(Duration, Duration)> {
    let (a, b) = open(alice, bob, "bench-latency").await?;
    stream_latency(a, b, rounds).await
}

/// The middle value (the mean of the middle two for an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}
