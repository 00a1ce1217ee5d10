//! The echo bot: a service written against raw Redis, as apps of rmb-rs are:
//! `BRPOP msgbus.bench.echo` → `LPUSH msgbus.system.reply` with the payload sent back,
//! on its own plain connection per worker ([`AppConn`]).

use serde_json::{Value, json};
use tokio::task::JoinHandle;

use super::app_conn::AppConn;

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
    let mut tasks = Vec::new();
    for _ in 0..workers.max(1) {
        let mut conn = AppConn::connect(url).await?;
        tasks.push(tokio::spawn(async move {
            let queue = format!("msgbus.{COMMAND}");
            loop {
                let popped = match conn.brpop(&queue, 0).await {
                    Ok(p) => p,
                    Err(e) => {
                        eprintln!("bot: {e}");
                        return;
                    }
                };
                let Some(text) = popped else { continue };
                let Ok(req) = serde_json::from_slice::<Value>(&text) else {
                    continue;
                };
                let reply = json!({
                    "ver": 1, "ref": req["ref"], "dat": req["dat"], "dst": req["src"],
                    "shm": req["shm"], "now": 0, "err": null,
                });
                let pushed = conn
                    .lpush("msgbus.system.reply", reply.to_string().as_bytes())
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
