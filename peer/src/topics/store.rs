//! What topics keep in the peer's Redis, and the scripts that keep it consistent.
//!
//! Owner side, per topic `N` (prefix `rmb.` by default):
//! - `rmb.topics`: the set of own topic names; `rmb.topic.N.conf`: its [`TopicConfig`];
//! - `rmb.topic.N.seq`: the sequence counter (`INCR`, so ids are never reused);
//! - `rmb.topic.N.log`: hash id → `"<time>:<message json>"`, contiguous from
//!   `rmb.topic.N.first` to `seq` (retention only ever drops the oldest);
//! - `rmb.topic.N.subs`: the subscribers (hash twin → unix time of the last renewal);
//! - `rmb.topic.N.dup.<twin>.<uid>`: the id given to a publish request, for an hour, so
//!   a repeated request (the publisher resends until answered) gets the same id.
//!
//! Subscriber side, per topic `O/N`: `rmb.subs` (set of topics), `rmb.sub.O/N.last` (last
//! id handed to apps), `rmb.sub.O/N.log` (the messages received, for local replay),
//! `rmb.sub.O/N.list` (only with the Redis-list delivery option: a list apps `BLPOP`).
//!
//! One Lua script allocates an id, stores the message and trims the log, so a message
//! is stored before the publish is answered, whatever crashes when.

use std::collections::BTreeMap;
use std::sync::Arc;

use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, Script};
use tokio::sync::Mutex;

use super::config::TopicConfig;
use super::wire::{MessageJson, TopicName};

/// Messages a subscriber keeps for local replay, per topic.
pub const REPLICA_KEEP: u64 = 10_000;
/// Most entries kept in a Redis delivery list (oldest dropped past it).
pub const LIST_KEEP: u64 = 100_000;
/// Seconds a publish request's id is remembered against repeats.
pub const DEDUP_SECS: u64 = 3600;

/// A Redis failure (connection or reply).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("corrupt entry in redis at {key}: {detail}")]
    Corrupt { key: String, detail: String },
}

/// Allocates an id, stores the message, trims; a repeat of a publish gets its id again.
const PUBLISH_LUA: &str = r#"
local seq, log, first_key, dup = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if dup ~= '' then
  local known = redis.call('GET', dup)
  if known then return {tonumber(known), 1} end
end
local id = redis.call('INCR', seq)
redis.call('HSET', log, id, ARGV[1] .. ':{"id":' .. id .. ARGV[2])
if dup ~= '' then redis.call('SET', dup, id, 'EX', ARGV[5]) end
local first = tonumber(redis.call('GET', first_key) or '1')
local n = 0
while first <= id and n < 1000 do
  local drop = (id - first + 1) > tonumber(ARGV[3])
  if not drop then
    local v = redis.call('HGET', log, first)
    drop = (not v) or tonumber(string.match(v, '^(%d+):')) < tonumber(ARGV[4])
  end
  if not drop then break end
  redis.call('HDEL', log, first)
  first = first + 1
  n = n + 1
end
redis.call('SET', first_key, first)
return {id, 0}
"#;

/// Drops what retention expired, then returns first, last and the entries asked for.
const PULL_LUA: &str = r#"
local seq, log, first_key = KEYS[1], KEYS[2], KEYS[3]
local last = tonumber(redis.call('GET', seq) or '0')
local first = tonumber(redis.call('GET', first_key) or '1')
local n = 0
while first <= last and n < 1000 do
  local v = redis.call('HGET', log, first)
  local drop = (not v) or (last - first + 1) > tonumber(ARGV[3])
    or tonumber(string.match(v, '^(%d+):')) < tonumber(ARGV[4])
  if not drop then break end
  redis.call('HDEL', log, first)
  first = first + 1
  n = n + 1
end
if n > 0 then redis.call('SET', first_key, first) end
local from = math.max(tonumber(ARGV[1]) + 1, first)
local to = math.min(last, tonumber(ARGV[1]) + tonumber(ARGV[2]))
local out = {first, last}
for i = from, to do
  local v = redis.call('HGET', log, i)
  if v then table.insert(out, v) end
end
return out
"#;

/// Hands a message (or a gap) to apps once: only when `last` is what the caller saw.
const DELIVER_LUA: &str = r#"
local last_key, log, list = KEYS[1], KEYS[2], KEYS[3]
local last = tonumber(redis.call('GET', last_key) or '0')
if last ~= tonumber(ARGV[1]) then return last end
local new = tonumber(ARGV[2])
redis.call('SET', last_key, new)
if ARGV[3] ~= '' then
  redis.call('HSET', log, new, ARGV[3])
  local old = new - tonumber(ARGV[4])
  if old > 0 then redis.call('HDEL', log, old) end
end
if list ~= '' then
  redis.call('RPUSH', list, ARGV[5])
  redis.call('LTRIM', list, -tonumber(ARGV[6]), -1)
end
return new
"#;

/// Hands consecutive messages to apps once, from the position the caller saw: stops at
/// the first one that is not next; returns the position after the call. One command
/// per key for the whole run (a call per message cost Redis about twice the CPU).
const DELIVER_MANY_LUA: &str = r#"
local last_key, log, list = KEYS[1], KEYS[2], KEYS[3]
local last = tonumber(redis.call('GET', last_key) or '0')
if last ~= tonumber(ARGV[1]) then return last end
local keep = tonumber(ARGV[2])
local fields, old, items = {}, {}, {}
for i = 4, #ARGV, 2 do
  local id = tonumber(ARGV[i])
  if id ~= last + 1 then break end
  fields[#fields + 1] = ARGV[i]
  fields[#fields + 1] = ARGV[i + 1]
  if id - keep > 0 then old[#old + 1] = id - keep end
  if list ~= '' then items[#items + 1] = ARGV[i + 1] end
  last = id
end
if #fields > 0 then
  redis.call('HSET', log, unpack(fields))
  if #old > 0 then redis.call('HDEL', log, unpack(old)) end
  if list ~= '' then
    redis.call('RPUSH', list, unpack(items))
    redis.call('LTRIM', list, -tonumber(ARGV[3]), -1)
  end
  redis.call('SET', last_key, last)
end
return last
"#;

/// Moves a subscription without a Redis list from `ARGV[1]` to `ARGV[4]` over messages
/// `ARGV[3]..=ARGV[4]` that the same pipeline has just written to the log, and drops
/// what leaves the replica. The messages go to `HSET` directly rather than through this
/// script: passing ~110 messages of ~450 bytes through Lua cost Redis more than the
/// `HSET` itself (264 µs per call against 120). Writing them first is harmless when the
/// position moved elsewhere meanwhile: an id's message is the same wherever it is
/// written, and what is older than the replica keeps is deleted again here.
const ADVANCE_LUA: &str = r#"
local last_key, log = KEYS[1], KEYS[2]
local keep, first, upto = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local last = tonumber(redis.call('GET', last_key) or '0')
local old = {}
if last ~= tonumber(ARGV[1]) then
  for id = first, math.min(upto, last - keep) do old[#old + 1] = id end
  if #old > 0 then redis.call('HDEL', log, unpack(old)) end
  return last
end
for id = math.max(first - keep, 1), upto - keep do old[#old + 1] = id end
if #old > 0 then redis.call('HDEL', log, unpack(old)) end
redis.call('SET', last_key, upto)
return upto
"#;

/// Owner-side topic state answered by [`Store::pull`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slice {
    /// Oldest id kept (`last_id + 1` when none).
    pub first_id: u64,
    /// Newest id given (0: none yet).
    pub last_id: u64,
    /// The messages asked for, in id order.
    pub messages: Vec<MessageJson>,
}

/// What the subscriber side keeps about one subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubRecord {
    /// The subscribed topic.
    pub topic: TopicName,
    /// Last id handed to apps.
    pub last: u64,
    /// Also delivered to a Redis list.
    pub list: bool,
}

/// The topics' Redis: one multiplexed connection, made again after a failure.
pub struct Store {
    client: redis::Client,
    conn: Mutex<Option<MultiplexedConnection>>,
    prefix: String,
    publish: Arc<Script>,
    pull: Arc<Script>,
    deliver: Arc<Script>,
    deliver_many: Arc<Script>,
    advance: Arc<Script>,
}

impl Store {
    /// A store on `redis_url` with keys under `prefix` (`rmb.` for rmb-peer); connects
    /// once to fail fast.
    pub async fn connect(redis_url: &str, prefix: &str) -> Result<Store, StoreError> {
        let client = redis::Client::open(redis_url)?;
        let conn = client.get_multiplexed_async_connection().await?;
        Ok(Store {
            client,
            conn: Mutex::new(Some(conn)),
            prefix: prefix.to_string(),
            publish: Arc::new(Script::new(PUBLISH_LUA)),
            pull: Arc::new(Script::new(PULL_LUA)),
            deliver: Arc::new(Script::new(DELIVER_LUA)),
            deliver_many: Arc::new(Script::new(DELIVER_MANY_LUA)),
            advance: Arc::new(Script::new(ADVANCE_LUA)),
        })
    }

    async fn conn(&self) -> Result<MultiplexedConnection, StoreError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = self.client.get_multiplexed_async_connection().await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Forgets a connection that failed, so the next call connects again.
    async fn failed<T>(&self, r: redis::RedisResult<T>) -> Result<T, StoreError> {
        if let Err(e) = &r
            && (e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal())
        {
            *self.conn.lock().await = None;
        }
        Ok(r?)
    }

    fn key(&self, topic: &str, part: &str) -> String {
        format!("{}topic.{topic}.{part}", self.prefix)
    }

    fn sub_key(&self, topic: &TopicName, part: &str) -> String {
        format!("{}sub.{topic}.{part}", self.prefix)
    }

    /// The Redis list a subscription with list delivery fills.
    pub fn list_key(&self, topic: &TopicName) -> String {
        self.sub_key(topic, "list")
    }

    // ---- owner side ----

    /// Own topic names.
    pub async fn topics(&self) -> Result<Vec<String>, StoreError> {
        let mut c = self.conn().await?;
        let r = c.smembers(format!("{}topics", self.prefix)).await;
        let mut names: Vec<String> = self.failed(r).await?;
        names.sort();
        Ok(names)
    }

    /// The configuration of own topic `name` (`None`: no such topic).
    pub async fn config(&self, name: &str) -> Result<Option<TopicConfig>, StoreError> {
        let key = self.key(name, "conf");
        let mut c = self.conn().await?;
        let r = c.get(&key).await;
        let raw: Option<String> = self.failed(r).await?;
        raw.map(|raw| {
            serde_json::from_str(&raw).map_err(|e| StoreError::Corrupt {
                key,
                detail: e.to_string(),
            })
        })
        .transpose()
    }

    /// Creates or reconfigures own topic `name`.
    pub async fn set_config(&self, name: &str, config: &TopicConfig) -> Result<(), StoreError> {
        let json = serde_json::to_string(config).expect("a config serialises");
        let mut c = self.conn().await?;
        let r = redis::pipe()
            .atomic()
            .set(self.key(name, "conf"), json)
            .sadd(format!("{}topics", self.prefix), name)
            .query_async::<()>(&mut c)
            .await;
        self.failed(r).await
    }

    /// Stores a message of own topic `topic` (a repeat of request `dedup` gets its
    /// first id back); returns the id and whether it was a repeat.
    pub async fn append(
        &self,
        topic: &TopicName,
        config: &TopicConfig,
        message: &MessageJson,
        dedup: Option<(u32, &str)>,
        now: u64,
    ) -> Result<(u64, bool), StoreError> {
        let json = serde_json::to_string(message).expect("a message serialises");
        // `{"id":0` is rewritten by the script with the id it allocates.
        let rest = json
            .strip_prefix("{\"id\":0")
            .expect("id is the first field");
        let dup = match dedup {
            Some((twin, uid)) => self.key(&topic.name, &format!("dup.{twin}.{uid}")),
            None => String::new(),
        };
        let cutoff = now.saturating_sub(config.retention_secs);
        let mut c = self.conn().await?;
        let r = self
            .publish
            .key(self.key(&topic.name, "seq"))
            .key(self.key(&topic.name, "log"))
            .key(self.key(&topic.name, "first"))
            .key(dup)
            .arg(message.time)
            .arg(rest)
            .arg(config.retention_count)
            .arg(cutoff)
            .arg(DEDUP_SECS)
            .invoke_async(&mut c)
            .await;
        let (id, repeat): (u64, u8) = self.failed(r).await?;
        Ok((id, repeat == 1))
    }

    /// Messages of own topic `name` after `since` (at most `limit`), with the range kept.
    pub async fn pull(
        &self,
        name: &str,
        config: &TopicConfig,
        since: u64,
        limit: u32,
        now: u64,
    ) -> Result<Slice, StoreError> {
        let log = self.key(name, "log");
        let mut c = self.conn().await?;
        let r = self
            .pull
            .key(self.key(name, "seq"))
            .key(&log)
            .key(self.key(name, "first"))
            .arg(since)
            .arg(limit)
            .arg(config.retention_count)
            .arg(now.saturating_sub(config.retention_secs))
            .invoke_async(&mut c)
            .await;
        let raw: Vec<redis::Value> = self.failed(r).await?;
        let mut it = raw.into_iter();
        let num = |v: Option<redis::Value>| -> Result<u64, StoreError> {
            v.and_then(|v| redis::from_redis_value::<u64>(&v).ok())
                .ok_or_else(|| StoreError::Corrupt {
                    key: log.clone(),
                    detail: "pull script answer".into(),
                })
        };
        let first_id = num(it.next())?;
        let last_id = num(it.next())?;
        let mut messages = Vec::new();
        for v in it {
            let entry: String = redis::from_redis_value(&v)?;
            messages.push(parse_entry(&log, &entry)?);
        }
        Ok(Slice {
            first_id,
            last_id,
            messages,
        })
    }

    /// Subscribers of own topic `name`.
    pub async fn subscribers(&self, name: &str) -> Result<Vec<u32>, StoreError> {
        let mut c = self.conn().await?;
        let r = c.hkeys(self.key(name, "subs")).await;
        self.failed(r).await
    }

    /// Adds (or renews) a subscriber of own topic `name`.
    pub async fn add_subscriber(&self, name: &str, twin: u32, now: u64) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let r = c.hset(self.key(name, "subs"), twin, now).await;
        self.failed(r).await
    }

    /// Removes a subscriber of own topic `name`.
    pub async fn remove_subscriber(&self, name: &str, twin: u32) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let r = c.hdel(self.key(name, "subs"), twin).await;
        self.failed(r).await
    }

    // ---- subscriber side ----

    /// Every subscription, with the last id handed to apps.
    pub async fn subscriptions(&self) -> Result<Vec<SubRecord>, StoreError> {
        let mut c = self.conn().await?;
        let r = c.smembers(format!("{}subs", self.prefix)).await;
        let entries: Vec<String> = self.failed(r).await?;
        let mut out = Vec::new();
        for entry in entries {
            // `<topic>` or `<topic> list`.
            let (topic, list) = match entry.split_once(' ') {
                Some((t, "list")) => (t, true),
                _ => (entry.as_str(), false),
            };
            let Ok(topic) = topic.parse::<TopicName>() else {
                continue;
            };
            let last = self.last_delivered(&topic).await?;
            out.push(SubRecord { topic, last, list });
        }
        out.sort_by(|a, b| a.topic.cmp(&b.topic));
        Ok(out)
    }

    /// Records a subscription (with or without list delivery).
    pub async fn add_subscription(&self, topic: &TopicName, list: bool) -> Result<(), StoreError> {
        let set = format!("{}subs", self.prefix);
        let (with, without) = (format!("{topic} list"), topic.to_string());
        let (add, remove) = if list {
            (with, without)
        } else {
            (without, with)
        };
        let mut c = self.conn().await?;
        let r = redis::pipe()
            .atomic()
            .srem(&set, remove)
            .sadd(&set, add)
            .query_async::<()>(&mut c)
            .await;
        self.failed(r).await
    }

    /// Forgets a subscription (its replica and position too).
    pub async fn remove_subscription(&self, topic: &TopicName) -> Result<(), StoreError> {
        let set = format!("{}subs", self.prefix);
        let mut c = self.conn().await?;
        let r = redis::pipe()
            .atomic()
            .srem(&set, topic.to_string())
            .srem(&set, format!("{topic} list"))
            .del(self.sub_key(topic, "last"))
            .del(self.sub_key(topic, "log"))
            .query_async::<()>(&mut c)
            .await;
        self.failed(r).await
    }

    /// The last id handed to apps for a subscription (0: none yet).
    pub async fn last_delivered(&self, topic: &TopicName) -> Result<u64, StoreError> {
        let mut c = self.conn().await?;
        let r = c.get(self.sub_key(topic, "last")).await;
        let last: Option<u64> = self.failed(r).await?;
        Ok(last.unwrap_or(0))
    }

    /// Moves a subscription from `expected` to `new` (the message with id `new`, or a
    /// gap up to `new` when `message` is `None`), once: returns the position after the
    /// call, which is not `new` when another delivery came first.
    pub async fn deliver(
        &self,
        topic: &TopicName,
        expected: u64,
        new: u64,
        message: Option<&MessageJson>,
        list_entry: Option<&str>,
    ) -> Result<u64, StoreError> {
        let json = message
            .map(|m| serde_json::to_string(m).expect("a message serialises"))
            .unwrap_or_default();
        let list = match list_entry {
            Some(_) => self.list_key(topic),
            None => String::new(),
        };
        let mut c = self.conn().await?;
        let r = self
            .deliver
            .key(self.sub_key(topic, "last"))
            .key(self.sub_key(topic, "log"))
            .key(list)
            .arg(expected)
            .arg(new)
            .arg(json)
            .arg(REPLICA_KEEP)
            .arg(list_entry.unwrap_or(""))
            .arg(LIST_KEEP)
            .invoke_async(&mut c)
            .await;
        self.failed(r).await
    }

    /// Moves a subscription from `expected` over `messages` (consecutive, with their
    /// JSON), recording each (and pushing it to the Redis list when `list`), once:
    /// returns the position after the call (short of the last message when another
    /// delivery came first).
    pub async fn deliver_many(
        &self,
        topic: &TopicName,
        expected: u64,
        messages: &[(u64, &str)],
        list: bool,
    ) -> Result<u64, StoreError> {
        if !list {
            return self.advance(topic, expected, messages).await;
        }
        let list = self.list_key(topic);
        let mut invocation = self.deliver_many.prepare_invoke();
        invocation
            .key(self.sub_key(topic, "last"))
            .key(self.sub_key(topic, "log"))
            .key(list)
            .arg(expected)
            .arg(REPLICA_KEEP)
            .arg(LIST_KEEP);
        for (id, json) in messages {
            invocation.arg(*id).arg(*json);
        }
        let mut c = self.conn().await?;
        let r = invocation.invoke_async(&mut c).await;
        self.failed(r).await
    }

    /// [`Store::deliver_many`] without a Redis list: the consecutive start of
    /// `messages` written with one `HSET`, then [`ADVANCE_LUA`], in one pipeline.
    async fn advance(
        &self,
        topic: &TopicName,
        expected: u64,
        messages: &[(u64, &str)],
    ) -> Result<u64, StoreError> {
        let run = messages
            .iter()
            .zip(expected.saturating_add(1)..)
            .take_while(|((id, _), next)| id == next)
            .count();
        if run == 0 {
            return self.last_delivered(topic).await;
        }
        let log = self.sub_key(topic, "log");
        let mut hset = redis::cmd("HSET");
        hset.arg(&log);
        for (id, json) in &messages[..run] {
            hset.arg(*id).arg(*json);
        }
        let mut pipe = redis::pipe();
        pipe.add_command(hset).ignore();
        pipe.cmd("EVALSHA")
            .arg(self.advance.get_hash())
            .arg(2)
            .arg(self.sub_key(topic, "last"))
            .arg(&log)
            .arg(expected)
            .arg(REPLICA_KEEP)
            .arg(expected + 1)
            .arg(expected + run as u64);
        let mut c = self.conn().await?;
        let mut r: redis::RedisResult<(u64,)> = pipe.query_async(&mut c).await;
        if matches!(&r, Err(e) if e.kind() == redis::ErrorKind::NoScriptError) {
            // A Redis that restarted or was flushed: load the script and run the whole
            // pipeline again (writing the same messages twice changes nothing).
            let loaded = self.advance.load_async(&mut c).await;
            self.failed(loaded).await?;
            r = pipe.query_async(&mut c).await;
        }
        Ok(self.failed(r).await?.0)
    }

    /// Messages of a subscription kept locally, after `since` up to `last` (at most
    /// `limit`), in id order.
    pub async fn replica(
        &self,
        topic: &TopicName,
        since: u64,
        last: u64,
        limit: u32,
    ) -> Result<Vec<MessageJson>, StoreError> {
        let from = since
            .saturating_add(1)
            .max(last.saturating_sub(REPLICA_KEEP) + 1);
        let to = last.min(since.saturating_add(u64::from(limit)));
        if from > to {
            return Ok(Vec::new());
        }
        let key = self.sub_key(topic, "log");
        let ids: Vec<u64> = (from..=to).collect();
        let mut c = self.conn().await?;
        let r = redis::cmd("HMGET")
            .arg(&key)
            .arg(&ids)
            .query_async(&mut c)
            .await;
        let raw: Vec<Option<String>> = self.failed(r).await?;
        let mut by_id = BTreeMap::new();
        for entry in raw.into_iter().flatten() {
            let m: MessageJson = serde_json::from_str(&entry).map_err(|e| StoreError::Corrupt {
                key: key.clone(),
                detail: e.to_string(),
            })?;
            by_id.insert(m.id, m);
        }
        Ok(by_id.into_values().collect())
    }
}

/// `"<time>:<json>"` → message.
fn parse_entry(key: &str, entry: &str) -> Result<MessageJson, StoreError> {
    let json = entry.split_once(':').map(|(_, j)| j).unwrap_or(entry);
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        detail: e.to_string(),
    })
}
