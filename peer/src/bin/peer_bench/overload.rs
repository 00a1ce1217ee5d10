//! The overload measurement (`peer-bench --overload C`): a bot that serves at most `C`
//! requests per second, offered `--overload-factor` × C for `--overload-secs`, each
//! request valid `--overload-exp` seconds. What a caller and the bot saw:
//! - requests answered in time, per second of the run (the bot's goodput);
//! - how long requests waited before the bot took them (p50/p99);
//! - the errors callers got instead, and how soon (p50/p99 after sending);
//! - the bot's work on requests whose validity had already passed;
//! - how long after the load stopped the last request got its answer or error;
//! - requests that got nothing at all (lost).
//!
//! The caller stamps each request's payload with its send time (unix ms), so waits are
//! measured against the caller's clock on both sides (all processes share the machine).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use super::processes::Network;

/// The command the slow bot serves.
const COMMAND: &str = "bench.slow";
/// Requests pushed per pipeline by the caller (every 1/PACE_HZ s).
const PACE_HZ: u64 = 100;

/// What one overload run is.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Requests per second the bot can serve.
    pub capacity: u64,
    /// Offered load as a multiple of `capacity`.
    pub factor: f64,
    /// How long the load lasts.
    pub secs: u64,
    /// Validity of each request, seconds.
    pub exp: u64,
}

/// What the bot saw, shared with the report.
#[derive(Default)]
struct BotLog {
    /// Wait (ms) of each request taken: take time minus send time.
    waits: Vec<u64>,
    /// Requests taken after their validity had passed.
    expired: u64,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The slow bot: one worker taking requests oldest first, spending 1/capacity s on each.
fn start_bot(url: String, plan: Plan, log: Arc<Mutex<BotLog>>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let client = redis::Client::open(url.as_str()).expect("redis url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("bot connects");
        let per_request = Duration::from_secs_f64(1.0 / plan.capacity as f64);
        let mut free_at = Instant::now();
        let queue = format!("msgbus.{COMMAND}");
        loop {
            let popped: Option<(String, String)> = match redis::cmd("BRPOP")
                .arg(&queue)
                .arg(1)
                .query_async(&mut conn)
                .await
            {
                Ok(p) => p,
                Err(_) => return,
            };
            let Some((_, text)) = popped else { continue };
            let Ok(req) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            let sent = req["dat"]
                .as_str()
                .and_then(|d| STANDARD.decode(d).ok())
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
            let now = unix_ms();
            {
                let mut log = log.lock().unwrap();
                log.waits.push(now.saturating_sub(sent));
                if now > sent + plan.exp * 1000 {
                    log.expired += 1;
                }
            }
            // The work: the bot's capacity is `capacity` per second, whatever comes; its
            // Redis round trips overlap the work (up to one request's time of credit).
            free_at = free_at.max(Instant::now() - per_request) + per_request;
            tokio::time::sleep_until(free_at.into()).await;
            let reply = json!({
                "ver": 1, "ref": req["ref"], "dat": "", "dst": req["src"],
                "shm": req["shm"], "now": 0, "err": null,
            });
            let pushed: redis::RedisResult<()> = redis::cmd("LPUSH")
                .arg("msgbus.system.reply")
                .arg(reply.to_string())
                .query_async(&mut conn)
                .await;
            if pushed.is_err() {
                return;
            }
        }
    })
}

/// What the caller saw.
pub struct Overload {
    plan: Plan,
    sent: u64,
    /// Answers in time, per second of the run since the load started.
    in_time: Vec<u64>,
    /// Errors, per second of the run.
    errors_per_sec: Vec<u64>,
    /// Answers that came after the request's validity.
    late_answers: u64,
    /// Milliseconds from sending to each error.
    error_ms: Vec<u64>,
    /// Milliseconds from sending to each answer.
    answer_ms: Vec<u64>,
    lost: u64,
    /// From the end of the load to the last answer or error.
    drain: Duration,
    bot_waits: Vec<u64>,
    bot_expired: u64,
}

/// Runs the plan against `net` and returns what was seen.
pub async fn run(net: &Network, plan: Plan) -> anyhow::Result<Overload> {
    let log = Arc::new(Mutex::new(BotLog::default()));
    let bot = start_bot(net.redis_b.clone(), plan, Arc::clone(&log));
    let client = redis::Client::open(net.redis_a.as_str())?;
    let mut push = client.get_multiplexed_async_connection().await?;
    let mut pop = client.get_multiplexed_async_connection().await?;
    let ret = format!("bench.overload.{}", rand::random::<u32>());
    let rate = plan.capacity as f64 * plan.factor;
    let sent_at: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let start = Instant::now();
    let load_end = start + Duration::from_secs(plan.secs);

    let sender = {
        let sent_at = Arc::clone(&sent_at);
        let (ret, twin, exp) = (ret.clone(), net.twin_b, plan.exp);
        tokio::spawn(async move {
            let mut n = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / PACE_HZ));
            while Instant::now() < load_end {
                tick.tick().await;
                let due = (start.elapsed().as_secs_f64() * rate) as u64;
                let mut pipe = redis::pipe();
                while n < due {
                    n += 1;
                    let dat = STANDARD.encode(unix_ms().to_string());
                    let doc = json!({
                        "ver": 1, "ref": n.to_string(), "cmd": COMMAND, "exp": exp,
                        "dat": dat, "tag": null, "dst": [twin], "ret": ret,
                        "shm": "", "now": unix_ms() / 1000,
                    });
                    pipe.cmd("LPUSH")
                        .arg("msgbus.system.local")
                        .arg(doc.to_string())
                        .ignore();
                    sent_at.lock().unwrap().insert(n, Instant::now());
                }
                if pipe.query_async::<()>(&mut push).await.is_err() {
                    break;
                }
            }
            n
        })
    };

    let seconds = (plan.secs + plan.exp + 15) as usize;
    let mut out = Overload {
        plan,
        sent: 0,
        in_time: vec![0; seconds + 1],
        errors_per_sec: vec![0; seconds + 1],
        late_answers: 0,
        error_ms: Vec::new(),
        answer_ms: Vec::new(),
        lost: 0,
        drain: Duration::ZERO,
        bot_waits: Vec::new(),
        bot_expired: 0,
    };
    let give_up = load_end + Duration::from_secs(plan.exp + 10);
    let mut last = start;
    let mut sent_total = None;
    let mut got = 0u64;
    let mut sender = Some(sender);
    loop {
        if let Some(done) = sender.take_if(|s| s.is_finished()) {
            sent_total = Some(done.await?);
        }
        if sent_total.is_some_and(|n| got >= n) || Instant::now() > give_up {
            break;
        }
        let popped: Option<(String, String)> = redis::cmd("BRPOP")
            .arg(&ret)
            .arg(0.2)
            .query_async(&mut pop)
            .await?;
        let Some((_, text)) = popped else { continue };
        let Ok(resp) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let Some(n) = resp["ref"].as_str().and_then(|r| r.parse::<u64>().ok()) else {
            continue;
        };
        let Some(at) = sent_at.lock().unwrap().remove(&n) else {
            continue;
        };
        got += 1;
        let now = Instant::now();
        last = now;
        let ms = now.duration_since(at).as_millis() as u64;
        let sec = (now.duration_since(start).as_secs() as usize).min(seconds);
        if resp["err"].is_null() {
            out.answer_ms.push(ms);
            if ms <= plan.exp * 1000 {
                out.in_time[sec] += 1;
            } else {
                out.late_answers += 1;
            }
        } else {
            out.error_ms.push(ms);
            out.errors_per_sec[sec] += 1;
        }
    }
    out.sent = sent_total.unwrap_or(got);
    out.lost = out.sent.saturating_sub(got);
    out.drain = last.saturating_duration_since(load_end);
    // Let the bot finish what it holds, then read its log.
    tokio::time::sleep(Duration::from_millis(500)).await;
    bot.abort();
    let log = std::mem::take(&mut *log.lock().unwrap());
    out.bot_waits = log.waits;
    out.bot_expired = log.expired;
    Ok(out)
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize] as f64
}

impl Overload {
    /// Prints the per-interval table and the summary.
    pub fn print(&mut self, label: &str) {
        let p = self.plan;
        println!(
            "overload ({label}): bot capacity {} req/s, offered {:.0} req/s for {} s, exp {} s",
            p.capacity,
            p.capacity as f64 * p.factor,
            p.secs,
            p.exp
        );
        println!("| seconds | answered in time /s | errors /s |");
        println!("|---|---:|---:|");
        let step = 5;
        let shown = (p.secs as usize + 15).min(self.in_time.len());
        for from in (0..shown).step_by(step) {
            let to = (from + step).min(shown);
            let span = (to - from) as f64;
            let ok: u64 = self.in_time[from..to].iter().sum();
            let err: u64 = self.errors_per_sec[from..to].iter().sum();
            println!(
                "| {from}–{to} | {:.0} | {:.0} |",
                ok as f64 / span,
                err as f64 / span
            );
        }
        self.error_ms.sort_unstable();
        self.answer_ms.sort_unstable();
        self.bot_waits.sort_unstable();
        // "Throughout": every whole second of the load after the first 5.
        let steady = &self.in_time[5.min(p.secs as usize)..p.secs as usize];
        let worst = steady.iter().copied().min().unwrap_or(0);
        let mean = steady.iter().sum::<u64>() as f64 / steady.len().max(1) as f64;
        let answered = self.answer_ms.len() as u64;
        println!();
        println!("| measure | value |");
        println!("|---|---:|");
        println!("| requests sent | {} |", self.sent);
        println!(
            "| answered in time | {} ({:.1}%) |",
            answered - self.late_answers,
            (answered - self.late_answers) as f64 * 100.0 / self.sent.max(1) as f64
        );
        println!("| answered late | {} |", self.late_answers);
        println!("| explicit errors | {} |", self.error_ms.len());
        println!("| lost (no answer, no error) | {} |", self.lost);
        println!(
            "| answered in time per second, 5 s – end of load: mean / worst second | {:.0} / {} ({:.2} / {:.2} × capacity) |",
            mean,
            worst,
            mean / p.capacity as f64,
            worst as f64 / p.capacity as f64
        );
        println!(
            "| wait before the bot took it, p50 / p99 | {:.0} / {:.0} ms |",
            percentile(&self.bot_waits, 0.5),
            percentile(&self.bot_waits, 0.99)
        );
        println!(
            "| answer latency p50 / p99 | {:.0} / {:.0} ms |",
            percentile(&self.answer_ms, 0.5),
            percentile(&self.answer_ms, 0.99)
        );
        println!(
            "| error latency p50 / p99 | {:.0} / {:.0} ms |",
            percentile(&self.error_ms, 0.5),
            percentile(&self.error_ms, 0.99)
        );
        println!(
            "| bot work on expired requests | {} of {} ({:.1}%) |",
            self.bot_expired,
            self.bot_waits.len(),
            self.bot_expired as f64 * 100.0 / self.bot_waits.len().max(1) as f64
        );
        println!(
            "| last answer or error after the load stopped | {:.1} s |",
            self.drain.as_secs_f64()
        );
    }
}
