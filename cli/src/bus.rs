//! The client side of a local `rmb-peer`'s Redis API: push requests and replies, pop
//! responses and incoming requests. Everything speaks the JSON documents of
//! [`rmb_peer::redis_api::json`], so what `rmb` does is what any rmb-rs bot could do.

use std::time::Duration;

use anyhow::Context;
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use rmb_peer::redis_api::json::{JsonIncomingRequest, JsonOutgoingRequest, JsonOutgoingResponse};
use rmb_peer::redis_api::keys;
use serde::de::DeserializeOwned;

/// A connection to the Redis of a local `rmb-peer`.
///
/// Holds one connection for ordinary commands; blocking pops get their own
/// ([`Bus::blocking`]) so a `BRPOP` never delays a push.
#[derive(Clone)]
pub struct Bus {
    url: String,
    client: redis::Client,
    conn: MultiplexedConnection,
}

impl Bus {
    /// Connects to the Redis at `url` and checks it answers.
    pub async fn connect(url: &str) -> anyhow::Result<Bus> {
        let client = redis::Client::open(url).with_context(|| format!("bad Redis URL '{url}'"))?;
        let conn = tokio::time::timeout(
            Duration::from_secs(5),
            client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| anyhow::anyhow!("connecting to Redis at {url} timed out"))?
        .with_context(|| {
            format!("cannot connect to Redis at {url}: is rmb-peer's Redis running there?")
        })?;
        Ok(Bus {
            url: url.to_string(),
            client,
            conn,
        })
    }

    /// The URL this bus was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A connection for ordinary (non-blocking) commands.
    pub fn conn(&self) -> MultiplexedConnection {
        self.conn.clone()
    }

    /// A fresh connection reserved for blocking pops.
    pub async fn blocking(&self) -> anyhow::Result<MultiplexedConnection> {
        self.client
            .get_multiplexed_async_connection()
            .await
            .with_context(|| format!("cannot connect to Redis at {}", self.url))
    }

    /// Hands a request to the peer (`LPUSH msgbus.system.local`).
    pub async fn send_request(&self, request: &JsonOutgoingRequest) -> anyhow::Result<()> {
        self.push(keys::LOCAL, request).await
    }

    /// Hands a service's reply to the peer (`LPUSH msgbus.system.reply`).
    pub async fn send_reply(&self, reply: &JsonOutgoingResponse) -> anyhow::Result<()> {
        self.push(keys::REPLY, reply).await
    }

    /// True when an rmb-peer of ours serves this Redis: its status key, refreshed every
    /// second with a 5 s expiry, exists. (rmb-rs's peer keeps no such key.)
    pub async fn peer_heartbeat(&self) -> anyhow::Result<bool> {
        let exists: bool = self
            .conn()
            .exists(keys::STATUS)
            .await
            .with_context(|| format!("EXISTS {} on {}", keys::STATUS, self.url))?;
        Ok(exists)
    }

    /// True while `request` (as [`Bus::send_request`] pushed it) is still in
    /// `msgbus.system.local`, i.e. no peer took it yet.
    pub async fn request_waiting(&self, request: &JsonOutgoingRequest) -> anyhow::Result<bool> {
        let text = serde_json::to_string(request)?;
        let at: Option<i64> = redis::cmd("LPOS")
            .arg(keys::LOCAL)
            .arg(text)
            .query_async(&mut self.conn())
            .await
            .with_context(|| format!("LPOS {} on {}", keys::LOCAL, self.url))?;
        Ok(at.is_some())
    }

    /// Removes `request` from `msgbus.system.local` if no peer took it; true when it
    /// was removed (so no peer will ever send it).
    pub async fn take_back_request(&self, request: &JsonOutgoingRequest) -> anyhow::Result<bool> {
        let text = serde_json::to_string(request)?;
        let removed: i64 = self
            .conn()
            .lrem(keys::LOCAL, 1, text)
            .await
            .with_context(|| format!("LREM {} on {}", keys::LOCAL, self.url))?;
        Ok(removed > 0)
    }

    async fn push<T: serde::Serialize>(&self, list: &str, value: &T) -> anyhow::Result<()> {
        let text = serde_json::to_string(value)?;
        let _: i64 = self
            .conn()
            .lpush(list, text)
            .await
            .with_context(|| format!("LPUSH {list} on {}", self.url))?;
        Ok(())
    }
}

/// One item popped from a list: the list it came from and its JSON, parsed or not.
pub struct Popped<T> {
    /// The list the item was popped from.
    pub list: String,
    /// The parsed document, or why it could not be parsed (with the raw text).
    pub value: Result<T, String>,
}

/// `BRPOP lists… wait`: the oldest item of the first non-empty list, or `None` after `wait`.
///
/// `wait` is rounded up to Redis's resolution; zero is turned into a short wait, never
/// into "block forever".
pub async fn pop<T: DeserializeOwned>(
    conn: &mut MultiplexedConnection,
    lists: &[String],
    wait: Duration,
) -> anyhow::Result<Option<Popped<T>>> {
    let seconds = wait.as_secs_f64().max(0.01);
    let item: Option<(String, String)> = conn
        .brpop(lists, seconds)
        .await
        .with_context(|| format!("BRPOP {}", lists.join(" ")))?;
    Ok(item.map(|(list, text)| Popped {
        list,
        value: serde_json::from_str(&text).map_err(|e| format!("{e}: {text}")),
    }))
}

/// The twin id in an address text (`"7"` or `"7:sid"`); `None` for `""` and garbage.
pub fn twin_of(src: &str) -> Option<u32> {
    src.split(':').next()?.parse().ok()
}

/// Unix time in seconds (what `now` fields carry).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Makes the reply a service sends for `request`: same `ref`, back to its `src`.
pub fn reply_to(
    request: &JsonIncomingRequest,
    result: Result<Vec<u8>, rmb_peer::redis_api::json::JsonError>,
    schema: Option<String>,
) -> JsonOutgoingResponse {
    use rmb_peer::redis_api::json::{VERSION, encode_dat};
    let (dat, err) = match result {
        Ok(body) => (encode_dat(&body), None),
        Err(e) => (String::new(), Some(e)),
    };
    JsonOutgoingResponse {
        ver: VERSION,
        reference: request.reference.clone(),
        dat,
        dst: request.src.clone(),
        shm: schema,
        now: unix_now(),
        err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twin_ids_are_read_from_addresses() {
        assert_eq!(twin_of("7"), Some(7));
        assert_eq!(twin_of("7:abc"), Some(7));
        assert_eq!(twin_of(""), None);
        assert_eq!(twin_of("x"), None);
    }
}
