//! The load: clients on peer A's Redis calling the echo bot on peer B exactly as rmb-rs
//! apps do (`LPUSH msgbus.system.local`, `BRPOP <ret>`), timing each call.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rmb_peer::redis_api::json::encode_dat;
use serde_json::{Value, json};

use super::app_conn::AppConn;
use super::bot::COMMAND;
use super::cpu::{CpuUse, Sample};
use super::processes::Network;
use super::redis_stats::{self, RedisUse};

/// Longest a client waits for one response before counting an error.
const CALL_TIMEOUT_SECS: u64 = 10;

static RUN: AtomicU64 = AtomicU64::new(0);

/// Results of one measurement.
pub struct Outcome {
    /// Latency of every successful call, sorted.
    pub latencies: Vec<Duration>,
    /// The slowest of the clients' first calls (each client opens a new Redis
    /// connection per row, so this is what a fresh app waits).
    pub first: Duration,
    pub errors: u64,
    pub elapsed: Duration,
    /// CPU every process used meanwhile (from before the first call to after the last).
    pub cpu: CpuUse,
    /// The commands both Redis servers ran meanwhile.
    pub redis: RedisUse,
}

impl Outcome {
    /// Successful calls per second.
    pub fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// The `q` quantile of latency, in milliseconds.
    pub fn percentile(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * q).round() as usize;
        self.latencies[i].as_secs_f64() * 1000.0
    }
}

fn request(reference: u64, dat: &str, twin: u32, ret: &str) -> String {
    json!({
        "ver": 1, "ref": reference.to_string(), "cmd": COMMAND, "exp": 60, "dat": dat,
        "tag": null, "dst": [twin], "ret": ret, "shm": "application/octet-stream", "now": 0,
    })
    .to_string()
}

/// Whether a response is a success (no `err`).
fn is_ok(text: &[u8]) -> bool {
    serde_json::from_slice::<Value>(text).is_ok_and(|v| v["err"].is_null())
}

/// `clients` concurrent callers with `size`-byte payloads for `duration`.
pub async fn measure(
    net: &Network,
    clients: usize,
    size: usize,
    duration: Duration,
) -> anyhow::Result<Outcome> {
    let dat = encode_dat(&vec![0x5a; size]);
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    let redis_before = redis_stats::Sample::take(&net.redis_a, &net.redis_b).await;
    let cpu_before = Sample::take(net);
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for i in 0..clients {
        let mut conn = AppConn::connect(&net.redis_a).await?;
        let dat = dat.clone();
        let twin = net.twin_b;
        tasks.push(tokio::spawn(async move {
            let ret = format!("bench.ret.{run}.{i}");
            let (mut latencies, mut errors) = (Vec::new(), 0u64);
            let mut first = None;
            let mut n = 0;
            while Instant::now() < deadline {
                n += 1;
                let t0 = Instant::now();
                let pushed = conn
                    .lpush(
                        "msgbus.system.local",
                        request(n, &dat, twin, &ret).as_bytes(),
                    )
                    .await;
                if pushed.is_err() {
                    errors += 1;
                    continue;
                }
                match conn.brpop(&ret, CALL_TIMEOUT_SECS).await {
                    Ok(Some(text)) if is_ok(&text) => {
                        latencies.push(t0.elapsed());
                        first.get_or_insert(t0.elapsed());
                    }
                    _ => errors += 1,
                }
            }
            (latencies, errors, first.unwrap_or_default())
        }));
    }
    let mut outcome = Outcome {
        latencies: Vec::new(),
        first: Duration::ZERO,
        errors: 0,
        elapsed: Duration::ZERO,
        cpu: CpuUse::default(),
        redis: RedisUse::default(),
    };
    for task in tasks {
        let (latencies, errors, first) = task.await?;
        outcome.first = outcome.first.max(first);
        outcome.latencies.extend(latencies);
        outcome.errors += errors;
    }
    outcome.elapsed = start.elapsed();
    outcome.cpu = Sample::take(net).since(&cpu_before);
    outcome.redis = redis_stats::Sample::take(&net.redis_a, &net.redis_b)
        .await
        .since(&redis_before);
    outcome.latencies.sort();
    Ok(outcome)
}

/// Results of the burst test.
pub struct Burst {
    pub sent: usize,
    pub answered: usize,
    pub errors: usize,
    pub elapsed: Duration,
    /// Envelopes peer A sent again during the burst (its status's `resent`), when known.
    pub resent: Option<u64>,
    /// CPU every process used from the first push to the last answer.
    pub cpu: CpuUse,
    /// The commands both Redis servers ran meanwhile.
    pub redis: RedisUse,
}

impl Burst {
    /// Resends as a share of the requests, in percent.
    pub fn resent_percent(&self) -> Option<f64> {
        self.resent
            .map(|r| r as f64 * 100.0 / self.sent.max(1) as f64)
    }
}

/// Peer A's `resent` counter, from its status key.
async fn resent_so_far(conn: &mut redis::aio::MultiplexedConnection) -> Option<u64> {
    let status: Option<String> = redis::cmd("GET")
        .arg("msgbus.system.status")
        .query_async(conn)
        .await
        .ok()?;
    let status: serde_json::Value = serde_json::from_str(&status?).ok()?;
    status["resent"].as_u64()
}

/// Pushes `count` requests as fast as one pipelined connection can, then collects.
pub async fn burst(net: &Network, count: usize, size: usize) -> anyhow::Result<Burst> {
    let client = redis::Client::open(net.redis_a.as_str())?;
    let mut push = client.get_multiplexed_async_connection().await?;
    let mut pop = client.get_multiplexed_async_connection().await?;
    let dat = encode_dat(&vec![0x5a; size]);
    let ret = format!("bench.burst.{}", RUN.fetch_add(1, Ordering::Relaxed));
    let resent_before = resent_so_far(&mut pop).await;
    let redis_before = redis_stats::Sample::take(&net.redis_a, &net.redis_b).await;
    let cpu_before = Sample::take(net);
    let start = Instant::now();
    for chunk in (0..count).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for &i in chunk {
            pipe.cmd("LPUSH")
                .arg("msgbus.system.local")
                .arg(request(i as u64, &dat, net.twin_b, &ret))
                .ignore();
        }
        pipe.query_async::<()>(&mut push).await?;
    }
    // One app collects every answer: it waits for one, then takes up to a thousand
    // that wait behind it in one `RPOP … COUNT`, so its own round trips (one per answer
    // would cap the burst near 7,000/s here) do not bound what is measured.
    let (mut answered, mut errors) = (0, 0);
    while answered + errors < count {
        let popped: Option<(String, String)> = redis::cmd("BRPOP")
            .arg(&ret)
            .arg(CALL_TIMEOUT_SECS * 3)
            .query_async(&mut pop)
            .await?;
        let Some((_, first)) = popped else { break };
        let more: Option<Vec<String>> = redis::cmd("RPOP")
            .arg(&ret)
            .arg(1000)
            .query_async(&mut pop)
            .await?;
        for text in std::iter::once(first).chain(more.into_iter().flatten()) {
            if is_ok(text.as_bytes()) {
                answered += 1;
            } else {
                errors += 1;
            }
        }
    }
    let elapsed = start.elapsed();
    let cpu = Sample::take(net).since(&cpu_before);
    let redis = redis_stats::Sample::take(&net.redis_a, &net.redis_b)
        .await
        .since(&redis_before);
    // The status key is refreshed every second: wait for a fresh one.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let resent_after = resent_so_far(&mut pop).await;
    Ok(Burst {
        sent: count,
        answered,
        errors,
        elapsed,
        resent: resent_before
            .zip(resent_after)
            .map(|(b, a)| a.saturating_sub(b)),
        cpu,
        redis,
    })
}
