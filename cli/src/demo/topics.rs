//! The topic step of `rmb demo`: twin 1 creates a topic, twin 2 (on the other relay)
//! subscribes, twin 1 publishes a few messages, and they must reach twin 2 in order with
//! the owner's ids, all through the peers' local HTTP APIs.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::network::PeerInfo;

/// The demo topic's name.
pub const TOPIC: &str = "news";
/// Messages published.
const MESSAGES: [&str; 3] = ["hello", "from the", "owner"];
/// How long the subscriber may take to have them all.
const PATIENCE: Duration = Duration::from_secs(20);

async fn json(request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
    let response = request.send().await.context("the peer's HTTP API")?;
    let status = response.status();
    let body: Value = response.json().await.context("the answer is not JSON")?;
    if !status.is_success() {
        bail!("{} ({status})", body["error"].as_str().unwrap_or("error"));
    }
    Ok(body)
}

/// Runs the step; the detail line for the report.
pub async fn run(owner: &PeerInfo, subscriber: &PeerInfo) -> anyhow::Result<String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let topic = format!("{}/{TOPIC}", owner.twin);
    json(
        http.put(format!("{}/topics/{topic}", owner.http))
            .json(&json!({ "publish": "owner", "subscribe": "anyone" })),
    )
    .await?;
    let sub = json(
        http.post(format!("{}/topics/{topic}/subscribe", subscriber.http))
            .json(&json!({})),
    )
    .await?;
    let start = sub["last_id"].as_u64().unwrap_or(0);
    let t0 = Instant::now();
    let mut ids = Vec::new();
    for text in MESSAGES {
        let answer = json(
            http.post(format!("{}/topics/{topic}", owner.http))
                .header("content-type", "application/octet-stream")
                .body(text.to_string()),
        )
        .await?;
        ids.push(answer["id"].as_u64().context("no id in the answer")?);
    }
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = http
            .get(format!(
                "{}/topics/{topic}/json?poll=1&since={start}",
                subscriber.http
            ))
            .send()
            .await?
            .text()
            .await?;
        let got: Vec<(u64, String)> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|v| {
                let text = v["message"].as_str().unwrap_or("").to_string();
                (v["id"].as_u64().unwrap_or(0), text)
            })
            .collect();
        let want: Vec<(u64, String)> = ids
            .iter()
            .zip(MESSAGES)
            .map(|(id, t)| (*id, t.to_string()))
            .collect();
        if got == want {
            return Ok(format!(
                "{} messages in order (ids {}..{}) in {} ms",
                ids.len(),
                ids[0],
                ids[ids.len() - 1],
                t0.elapsed().as_millis()
            ));
        }
        if Instant::now() > deadline {
            bail!("twin {} has {got:?}, expected {want:?}", subscriber.twin);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
