//! `rmb status`: what the local peer sees, read from its Redis: its twin, each relay
//! link (connected or not, since when, last error), message counters and queue depths.
//!
//! The peer refreshes `msgbus.system.status` every second with a short expiry, so a
//! missing key means the peer is not running (or uses another Redis).

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use redis::AsyncCommands;
use rmb_peer::redis_api::conn::scan_keys;
use rmb_peer::redis_api::keys;
use serde_json::Value;

use crate::args::RedisArgs;
use crate::bus::{self, Bus};

/// Show the local rmb-peer's twin, relay links, counters and queue depths.
///
/// Exit status: 0 when the peer is running and at least one relay is connected, 1 when
/// the peer is not running (no status in its Redis), 2 when no relay is connected.
#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub redis: RedisArgs,

    /// Print JSON: the peer's status document plus `queues` (list lengths).
    #[arg(long)]
    pub json: bool,
}

/// Lengths of the peer's lists: its two inbound queues and every `msgbus.<cmd>` list.
async fn queue_depths(bus: &Bus) -> anyhow::Result<Vec<(String, i64)>> {
    let mut conn = bus.conn();
    let mut names: Vec<String> = vec![keys::LOCAL.to_string(), keys::REPLY.to_string()];
    let mut found = scan_keys(&mut conn, "msgbus.*").await?;
    found.sort();
    for key in found {
        let is_meta = key.starts_with(keys::BACKLOG_PREFIX)
            || key.starts_with(keys::OUTBOX_PREFIX)
            || key.starts_with(keys::SEEN_PREFIX)
            || key == keys::STATUS;
        if !is_meta && !names.contains(&key) {
            names.push(key);
        }
    }
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let kind: String = redis::cmd("TYPE").arg(&name).query_async(&mut conn).await?;
        if kind == "list" || kind == "none" {
            let len: i64 = conn.llen(&name).await?;
            out.push((name, len));
        }
    }
    Ok(out)
}

/// "3 min ago" style age of a unix timestamp.
pub fn ago(then: u64, now: u64) -> String {
    let s = now.saturating_sub(then);
    match s {
        0..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86_399 => format!("{} h {} min ago", s / 3600, s % 3600 / 60),
        _ => format!("{} days ago", s / 86_400),
    }
}

/// Runs `rmb status`.
pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let bus = Bus::connect(&args.redis.redis).await?;
    let text: Option<String> = bus.conn().get(keys::STATUS).await?;
    let Some(text) = text else {
        eprintln!(
            "no rmb-peer status in the Redis at {} (key {}): the peer is not running, or \
             runs with another -r/--redis",
            bus.url(),
            keys::STATUS
        );
        return Ok(ExitCode::FAILURE);
    };
    let status: Value = serde_json::from_str(&text).context("the peer's status is not JSON")?;
    let queues = queue_depths(&bus).await?;
    let links = status["relays"].as_array().cloned().unwrap_or_default();
    let connected = links.iter().filter(|l| l["connected"] == true).count();

    if args.json {
        let mut out = status.clone();
        out["queues"] = queues
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(*v)))
            .collect::<serde_json::Map<_, _>>()
            .into();
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let now = bus::unix_now();
        let num = |v: &Value| v.as_u64().map_or("?".to_string(), |n| n.to_string());
        println!(
            "twin {} ({})",
            num(&status["twin"]),
            status["account"].as_str().unwrap_or("?")
        );
        if let Some(started) = status["started_at"].as_u64() {
            println!("up since {}", ago(started, now));
        }
        println!(
            "messages: {} sent, {} received, {} rejected",
            num(&status["sent"]),
            num(&status["received"]),
            num(&status["rejected"])
        );
        if let Some(reasons) = status["rejected_by"].as_object().filter(|r| !r.is_empty()) {
            let reasons: Vec<String> = reasons
                .iter()
                .map(|(reason, count)| format!("{reason} {}", num(count)))
                .collect();
            println!("rejected by reason: {}", reasons.join(", "));
        }
        // Requests whose sender nothing proved are dropped, not answered (protocol.md §3.4).
        if status["unanswered"].as_u64().is_some_and(|n| n > 0) {
            println!(
                "{} rejected requests left unanswered (nothing proved who sent them)",
                num(&status["unanswered"])
            );
        }
        // Peers that take them exchange RPCs unsigned (protocol.md §3.4).
        if status["sent_unsigned"].as_u64().is_some_and(|n| n > 0)
            || status["received_unsigned"].as_u64().is_some_and(|n| n > 0)
        {
            println!(
                "unsigned (authenticated by their encryption): {} sent, {} received",
                num(&status["sent_unsigned"]),
                num(&status["received_unsigned"])
            );
        }
        println!(
            "delivery: {} awaiting an answer, {} resent, {} duplicates dropped, {} answered again from the reply cache",
            num(&status["awaiting"]),
            num(&status["resent"]),
            num(&status["duplicates"]),
            num(&status["replayed"])
        );
        println!("relays ({connected} of {} connected):", links.len());
        for link in &links {
            let state = if link["connected"] == true {
                "connected   "
            } else {
                "DISCONNECTED"
            };
            let since = link["since"]
                .as_u64()
                .map_or(String::new(), |s| ago(s, now));
            println!(
                "  {state} {}  since {since}; {} sent, {} received, {} reconnects",
                link["url"].as_str().unwrap_or("?"),
                num(&link["sent"]),
                num(&link["received"]),
                num(&link["reconnects"])
            );
            if let Some(err) = link["last_error"].as_str() {
                println!("      last error: {err}");
            }
        }
        println!("queues:");
        for (name, len) in &queues {
            println!("  {len:>6}  {name}");
        }
    }
    Ok(if connected == 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_naturally() {
        assert_eq!(ago(100, 105), "5 s ago");
        assert_eq!(ago(0, 125), "2 min ago");
        assert_eq!(ago(0, 3_900), "1 h 5 min ago");
        assert_eq!(ago(0, 200_000), "2 days ago");
        assert_eq!(ago(10, 5), "0 s ago");
    }
}
