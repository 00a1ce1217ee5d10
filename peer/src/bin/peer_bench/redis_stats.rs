//! What each measurement asked of the two Redis servers: `INFO commandstats` read before
//! and after ([`Sample`]), the difference per command ([`RedisUse`]), printed per call
//! with `--redis-commands`. It shows which commands the CPU of `redis A`/`redis B` goes
//! to, and how many round trips and script runs a call costs.
//!
//! Redis counts a command a script runs under its own name as well, and the script's
//! time (`evalsha`) includes that of the commands it ran.

use std::collections::BTreeMap;

use anyhow::Context;

/// Calls and microseconds Redis spent per command, since it started.
#[derive(Debug, Clone, Default)]
pub struct Counts(BTreeMap<String, (u64, u64)>);

impl Counts {
    /// Reads `INFO commandstats` of the server at `url`.
    pub async fn read(url: &str) -> anyhow::Result<Counts> {
        let client = redis::Client::open(url)?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await
            .context("INFO commandstats")?;
        Ok(Counts::parse(&info))
    }

    /// `cmdstat_lpush:calls=3,usec=12,…` lines into (calls, usec) per command.
    fn parse(info: &str) -> Counts {
        let mut counts = BTreeMap::new();
        for line in info.lines() {
            let Some((name, fields)) = line
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            let field = |key: &str| {
                fields
                    .split(',')
                    .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            counts.insert(name.to_string(), (field("calls"), field("usec")));
        }
        Counts(counts)
    }

    /// What was counted between `before` and this reading.
    fn since(&self, before: &Counts) -> Counts {
        Counts(
            self.0
                .iter()
                .filter_map(|(name, &(calls, usec))| {
                    let (c0, u0) = before.0.get(name).copied().unwrap_or((0, 0));
                    let d = (calls.saturating_sub(c0), usec.saturating_sub(u0));
                    (d.0 > 0).then(|| (name.clone(), d))
                })
                .collect(),
        )
    }
}

/// Both servers' counts at one moment.
pub struct Sample {
    a: Counts,
    b: Counts,
}

impl Sample {
    /// Reads both servers (an unreadable one counts nothing).
    pub async fn take(redis_a: &str, redis_b: &str) -> Sample {
        Sample {
            a: Counts::read(redis_a).await.unwrap_or_default(),
            b: Counts::read(redis_b).await.unwrap_or_default(),
        }
    }

    /// What each server did between `before` and this sample.
    pub fn since(&self, before: &Sample) -> RedisUse {
        RedisUse {
            a: self.a.since(&before.a),
            b: self.b.since(&before.b),
        }
    }
}

/// The commands each server ran during one measurement (this sample's own `INFO` and
/// connection set-up included: a handful, against thousands of calls).
#[derive(Debug, Clone, Default)]
pub struct RedisUse {
    a: Counts,
    b: Counts,
}

impl RedisUse {
    /// One line per (server, command): calls and µs per successful RPC, busiest first.
    pub fn print(&self, label: &str, calls: usize) {
        if calls == 0 {
            return;
        }
        println!();
        println!("Redis commands per successful RPC, {label}:");
        println!();
        println!("| server | command | calls/RPC | µs/RPC |");
        println!("|---|---|--:|--:|");
        for (server, counts) in [("redis A", &self.a), ("redis B", &self.b)] {
            let mut rows: Vec<_> = counts.0.iter().collect();
            rows.sort_by_key(|row| std::cmp::Reverse(row.1.1));
            for (name, &(n, usec)) in rows {
                println!(
                    "| {server} | {name} | {:.2} | {:.1} |",
                    n as f64 / calls as f64,
                    usec as f64 / calls as f64
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commandstats_lines_parse_and_subtract() {
        let before = Counts::parse(
            "# Commandstats\r\ncmdstat_lpush:calls=3,usec=12,usec_per_call=4.00,rejected_calls=0,failed_calls=0\r\n",
        );
        let after = Counts::parse(
            "# Commandstats\r\ncmdstat_lpush:calls=10,usec=40,usec_per_call=4.00\r\ncmdstat_evalsha:calls=2,usec=9\r\n",
        );
        let d = after.since(&before);
        assert_eq!(d.0.get("lpush"), Some(&(7, 28)));
        assert_eq!(d.0.get("evalsha"), Some(&(2, 9)));
        assert_eq!(d.0.len(), 2);
    }
}
