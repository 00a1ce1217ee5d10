//! NATS core pub/sub measured like the topics: a minimal client of NATS's text protocol
//! (`CONNECT`, `SUB`, `PUB`, `MSG`, `PING`/`PONG`), one connection per subscriber and
//! one for the publisher. Each payload starts with its sequence number.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::stats::{ClosedLoop, Figures, percentile};
use std::sync::Arc;

use super::tally::Tally;
use super::{PAYLOAD, Plan};

const SUBJECT: &str = "bench.topic";

/// Connects and handshakes; the reader (for `MSG`s) and the writer.
async fn connect(
    port: u16,
) -> anyhow::Result<(BufReader<tokio::net::tcp::OwnedReadHalf>, OwnedWriteHalf)> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut line = String::new();
    read.read_line(&mut line).await?;
    if !line.starts_with("INFO") {
        bail!("nats said {line:?}");
    }
    write
        .write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n")
        .await?;
    line.clear();
    read.read_line(&mut line).await?;
    if !line.starts_with("PONG") {
        bail!("nats said {line:?} to CONNECT");
    }
    Ok((read, write))
}

/// One subscriber: reports each message's sequence number and arrival time.
async fn subscriber(port: u16, tally: Arc<Tally>, ready: mpsc::Sender<()>) -> anyhow::Result<()> {
    let (mut read, mut write) = connect(port).await?;
    write
        .write_all(format!("SUB {SUBJECT} 1\r\nPING\r\n").as_bytes())
        .await?;
    let mut line = String::new();
    let mut payload = vec![0u8; PAYLOAD + 2];
    loop {
        line.clear();
        if read.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        if line.starts_with("PONG") {
            let _ = ready.send(()).await;
        } else if line.starts_with("PING") {
            write.write_all(b"PONG\r\n").await?;
        } else if let Some(rest) = line.strip_prefix("MSG ") {
            let size: usize = rest
                .split_whitespace()
                .last()
                .and_then(|s| s.parse().ok())
                .context("a MSG without size")?;
            payload.resize(size + 2, 0);
            read.read_exact(&mut payload).await?;
            let seq = u64::from_le_bytes(payload[..8].try_into()?);
            tally.note(seq);
        }
    }
}

/// Measures NATS for `plan`.
pub async fn measure(port: u16, plan: &Plan) -> anyhow::Result<Figures> {
    let tally = Arc::new(Tally::default());
    let (ready_tx, mut ready_rx) = mpsc::channel(plan.subscribers);
    let mut subs = JoinSet::new();
    for _ in 0..plan.subscribers {
        let (tally, ready) = (Arc::clone(&tally), ready_tx.clone());
        subs.spawn(async move { subscriber(port, tally, ready).await });
    }
    for _ in 0..plan.subscribers {
        ready_rx.recv().await.context("a NATS subscriber failed")?;
    }
    let (_read, mut publisher) = connect(port).await?;
    let mut seq = 0u64;
    let publish = |seq: u64| {
        let mut frame = format!("PUB {SUBJECT} {PAYLOAD}\r\n").into_bytes();
        let mut body = vec![b'x'; PAYLOAD];
        body[..8].copy_from_slice(&seq.to_le_bytes());
        frame.extend_from_slice(&body);
        frame.extend_from_slice(b"\r\n");
        frame
    };

    let mut figures = Figures::default();
    // One at a time.
    let mut closed = ClosedLoop::default();
    for _ in 0..plan.closed_loop {
        tally.start(seq);
        seq += 1;
        let t0 = Instant::now();
        publisher.write_all(&publish(seq)).await?;
        if !tally
            .wait_for(plan.subscribers, Duration::from_secs(10))
            .await
        {
            bail!("NATS lost message {seq}");
        }
        closed.message(tally.take().iter().map(|d| d.at - t0));
    }
    closed.finish(&mut figures);

    // Burst: every message written at once (one write each), per-message latency.
    tally.start(seq);
    let first = seq + 1;
    let mut sent = Vec::with_capacity(plan.burst);
    let t0 = Instant::now();
    for _ in 0..plan.burst {
        seq += 1;
        publisher.write_all(&publish(seq)).await?;
        sent.push(Instant::now());
    }
    let expected = plan.burst * plan.subscribers;
    tally.wait_for(expected, Duration::from_secs(60)).await;
    let mut lat = Vec::with_capacity(expected);
    let mut last = t0;
    for d in tally.take() {
        if let Some(at) = d.id.checked_sub(first).and_then(|i| sent.get(i as usize)) {
            last = last.max(d.at);
            lat.push(d.at - *at);
        }
    }
    figures.missing = expected.saturating_sub(lat.len());
    figures.rate = lat.len() as f64 / (last - t0).as_secs_f64().max(1e-9);
    figures.burst_p50 = percentile(&mut lat, 0.5);
    figures.burst_p99 = percentile(&mut lat, 0.99);
    subs.shutdown().await;
    Ok(figures)
}
