//! The echo bot: a service written against raw Redis, as apps of rmb-rs are:
//! `BRPOP msgbus.bench.echo` → `LPUSH msgbus.system.reply` with the payload sent back.

use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// The command the bot serves.
pub const COMMAND: &str = "bench.echo";

/// Running bot workers; aborted on drop.
pub struct Bots(Vec<JoinHandle<()>>);

impl Drop for Bots {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Starts `workers` bot loops on the Redis at `url`, each with its own connection.
pub async fn start(url: &str, workers: usize) -> anyhow::Result<Bots> {
    let client = redis::Client::open(url)?;
    let mut tasks = Vec::new();
    for _ in 0..workers.max(1) {
        let mut conn = client.get_multiplexed_async_connection().await?;
        tasks.push(tokio::spawn(async move {
            let queue = format!("msgbus.{COMMAND}");
            loop {
                let popped: Option<(String, String)> = match redis::cmd("BRPOP")
                    .arg(&queue)
                    .arg(0)
                    .query_async(&mut conn)
                    .await
                {
                    Ok(p) => p,
                    Err(e) => {
                        eprintln!("bot: {e}");
                        return;
                    }
                };
                let Some((_, text)) = popped else { continue };
                let Ok(req) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                let reply = json!({
                    "ver": 1, "ref": req["ref"], "dat": req["dat"], "dst": req["src"],
                    "shm": req["shm"], "now": 0, "err": null,
                });
                let pushed: redis::RedisResult<()> = redis::cmd("LPUSH")
                    .arg("msgbus.system.reply")
                    .arg(reply.to_string())
                    .query_async(&mut conn)
                    .await;
                if let Err(e) = pushed {
                    eprintln!("bot: {e}");
                    return;
                }
            }
        }));
    }
    Ok(Bots(tasks))
}
