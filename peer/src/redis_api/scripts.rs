//! The Lua scripts that make the crash-safe steps of the API atomic in Redis.
//!
//! Each pairs a check with the write it guards, so a peer killed between two commands
//! can neither lose a message nor deliver it twice:
//!
//! - [`CLAIM`]: moves a batch from an app's list to the peer's claimed list (kept until
//!   the batch is recorded), or returns the batch a crashed run left claimed;
//! - [`DELIVER_REQUEST`]: pushes each remote request of a batch to its service only if
//!   its uid was never received from that twin, remembering it (a repeat gets the
//!   stored reply), and only within the bounds on command lists (bytes, TTL, number of
//!   commands);
//! - [`DELIVER_ONCE`]: pushes each answer of a batch to a client's `ret` only if the
//!   request still waits for that twin's answer, and marks it answered.

use std::sync::LazyLock;

use redis::{Script, ScriptInvocation};

use super::keys::{COMMANDS, MAX_LIST_LEN, SERVED};

/// `KEYS`: source list, claimed list. `ARGV`: most items. Returns what the claimed list
/// holds when a previous run left a batch there; otherwise moves up to that many of the
/// oldest items of the source to the claimed list and returns them (nothing when the
/// source is empty). One round trip, whatever the case.
///
/// Both lists keep the order the apps' `LPUSH`es give (newest first), and so does what
/// it returns: the caller reverses it. When the whole source fits in a batch (nearly
/// always), it becomes the claimed list by `RENAME`, which copies nothing; only a
/// longer source has its oldest items copied over. `PERSIST` keeps a TTL an app may
/// have set on its list from expiring a claimed batch.
pub static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local left = redis.call('LRANGE', KEYS[2], 0, -1)
if #left > 0 then return left end
local n = redis.call('LLEN', KEYS[1])
if n == 0 then return {} end
local most = tonumber(ARGV[1])
if n <= most then
  redis.call('RENAME', KEYS[1], KEYS[2])
  redis.call('PERSIST', KEYS[2])
  return redis.call('LRANGE', KEYS[2], 0, -1)
end
local items = redis.call('LRANGE', KEYS[1], -most, -1)
redis.call('LTRIM', KEYS[1], 0, -most - 1)
redis.call('RPUSH', KEYS[2], unpack(items))
return items
",
    )
});

/// What [`DELIVER_REQUEST`] returns when the service list is over its byte budget.
pub const QUEUE_FULL: i64 = -1;
/// What [`DELIVER_REQUEST`] returns when too many commands have requests waiting.
pub const TOO_MANY_COMMANDS: i64 = -2;

/// How long a command whose list a service was seen consuming counts as served
/// (exempt from the limit on commands; refreshed by each request for it).
pub const SERVED_SECS: u64 = 24 * 3600;

/// What [`DELIVER_REQUEST`] returns for a request admission refused (and that is not a
/// repeat): nothing is written.
pub const SHED: i64 = -3;

/// Delivers a batch of remote requests, each only once. `KEYS`: command index (sorted
/// set: list name → unix time its last request expires), served commands (sorted set:
/// list name → unix time until which it counts as served), then per request its seen
/// marker and service list. `ARGV`: last index kept in a list, most bytes in a list,
/// most commands in the index, now (unix s), [`SERVED_SECS`], then per request its JSON,
/// marker TTL (s), and `1` when [admission](super::admission) refuses it (else `0`).
///
/// Returns one result per request, in order: the list's length (≥ 1) when delivered;
/// otherwise the marker's value (empty while the service has not answered, the sealed
/// reply once it has) for a repeat — checked first, so admission never refuses a repeat
/// of an answered request —, [`SHED`] when admission refused it, [`QUEUE_FULL`] or
/// [`TOO_MANY_COMMANDS`] when a bound is hit (nothing is written then).
///
/// One script run per batch, and what concerns a list (its size, TTL, index entry) is
/// read or written once per run, not per request: Redis spends several times as long in
/// a script as in the commands it calls, so a request usually costs two calls (`SET …
/// NX` of its marker, which a repeat finds set and only then reads, and `LPUSH`); a
/// request refused for a bound has its marker deleted again.
///
/// Bounds what other twins can make the peer keep: the list expires with the last
/// deadline of what it holds (clamped by the caller); its size is estimated with
/// `MEMORY USAGE … SAMPLES 5` (cheap); and a command with no list yet is refused while
/// the index holds the maximum of commands with requests waiting. When the index is
/// full, members whose time passed are dropped, and members whose list is gone before
/// its time (a service consumed it) move to the served set: a served command is never
/// refused for the number of commands, only for its bytes.
pub static DELIVER_REQUEST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local keep = tonumber(ARGV[1]) + 1
local most_bytes = tonumber(ARGV[2])
local most = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
local served_secs = tonumber(ARGV[5])
local index, served_set = KEYS[1], KEYS[2]
-- What this run knows of each list, read once: whether it exists, its bytes (estimated
-- once, then counted), its TTL and the times it is indexed or served until.
local lists = {}
local function list_state(list)
  local st = lists[list]
  if st then return st end
  local served = redis.call('ZSCORE', served_set, list)
  st = { served = served and tonumber(served) > now, used = 0, ttl = -2, until_ = 0 }
  if redis.call('EXISTS', list) == 1 then
    st.exists = true
    st.used = redis.call('MEMORY', 'USAGE', list, 'SAMPLES', 5) or 0
    st.ttl = redis.call('TTL', list)
  end
  lists[list] = st
  return st
end
local function make_room(list)
  if redis.call('ZSCORE', index, list) then return true end
  redis.call('ZREMRANGEBYSCORE', index, '-inf', now)
  if redis.call('ZCARD', index) < most then return true end
  redis.call('ZREMRANGEBYSCORE', served_set, '-inf', now)
  for _, name in ipairs(redis.call('ZRANGE', index, 0, -1)) do
    if redis.call('EXISTS', name) == 0 then
      redis.call('ZREM', index, name)
      redis.call('ZADD', served_set, now + served_secs, name)
    end
  end
  redis.call('EXPIRE', served_set, served_secs)
  return redis.call('ZCARD', index) < most
end
local function deliver(marker, list, json, ttl_text, shed)
  if shed == '1' then return redis.call('GET', marker) or -3 end
  -- Claim the marker first: a repeat finds it set, and only then is it read.
  if not redis.call('SET', marker, '', 'EX', ttl_text, 'NX') then
    return redis.call('GET', marker)
  end
  local ttl = tonumber(ttl_text)
  local st = list_state(list)
  local refused
  if st.exists then
    if st.used + string.len(json) > most_bytes then refused = -1 end
  elseif not st.served and not make_room(list) then
    refused = -2
  end
  if not refused and string.len(json) > most_bytes then refused = -1 end
  if refused then
    redis.call('DEL', marker)
    return refused
  end
  local len = redis.call('LPUSH', list, json)
  if len > keep then
    redis.call('LTRIM', list, 0, keep - 1)
    len = keep
  end
  st.exists = true
  st.used = st.used + string.len(json)
  if st.ttl < ttl then
    redis.call('EXPIRE', list, ttl)
    st.ttl = ttl
  end
  if st.served then
    if st.until_ < now + served_secs then
      redis.call('ZADD', served_set, now + served_secs, list)
      st.until_ = now + served_secs
    end
  elseif st.until_ < now + ttl then
    redis.call('ZADD', index, 'GT', now + ttl, list)
    if redis.call('TTL', index) < ttl then redis.call('EXPIRE', index, ttl) end
    st.until_ = now + ttl
  end
  return len
end
local results = {}
for i = 1, (#KEYS - 2) / 2 do
  local a = 5 + 3 * (i - 1)
  results[i] = deliver(KEYS[1 + 2 * i], KEYS[2 + 2 * i], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3])
end
return results
",
    )
});

/// Delivers a batch of answers, each only once. `KEYS`: per answer, the request's outbox
/// hash and the client's list. `ARGV`: last index kept in a list, then per answer its
/// JSON, the waiting field of the answering twin (empty: any one, for a relay's error
/// that names no twin), and `1` when it answers for the request's sole destination (the
/// hash then waits for nothing else: it is deleted, and its existing is the check) or
/// `0`. Returns one result per answer, in order: 1 when delivered, 0 when that answer
/// was delivered already (or the request is unknown or expired). A hash goes once every
/// twin answered. One script run per batch, as [`DELIVER_REQUEST`].
pub static DELIVER_ONCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local keep = tonumber(ARGV[1]) + 1
local results = {}
for i = 1, #KEYS / 2 do
  local outbox, list = KEYS[2 * i - 1], KEYS[2 * i]
  local json, field, sole = ARGV[3 * i - 1], ARGV[3 * i], ARGV[3 * i + 1]
  local waited
  if sole == '1' then
    waited = redis.call('DEL', outbox) == 1
  else
    if field == '' then
      field = nil
      for _, f in ipairs(redis.call('HKEYS', outbox)) do
        if string.sub(f, 1, 2) == 'd:' then field = f break end
      end
    end
    waited = field and redis.call('HDEL', outbox, field) == 1
    if waited and redis.call('HLEN', outbox) <= 1 then redis.call('DEL', outbox) end
  end
  results[i] = 0
  if waited then
    if redis.call('LPUSH', list, json) > keep then redis.call('LTRIM', list, 0, keep - 1) end
    results[i] = 1
  end
end
return results
",
    )
});

/// A request for [`deliver_requests`]: its seen marker, its service list, its JSON, how
/// long the marker lives (s), and whether [admission](super::admission) refused it.
pub struct Request<'a> {
    pub marker: &'a str,
    pub list: &'a str,
    pub json: &'a str,
    pub ttl: u64,
    pub shed: bool,
}

/// One [`DELIVER_REQUEST`] run delivering `requests` at unix time `now`, with at most
/// `most_bytes` in a list and `most_commands` commands with requests waiting; its result
/// holds one value per request.
pub fn deliver_requests<'a>(
    most_bytes: u64,
    most_commands: u64,
    now: u64,
    requests: impl IntoIterator<Item = Request<'a>>,
) -> ScriptInvocation<'static> {
    let mut run = DELIVER_REQUEST.prepare_invoke();
    run.key(COMMANDS)
        .key(SERVED)
        .arg(MAX_LIST_LEN - 1)
        .arg(most_bytes)
        .arg(most_commands)
        .arg(now)
        .arg(SERVED_SECS);
    for r in requests {
        run.key(r.marker)
            .key(r.list)
            .arg(r.json)
            .arg(r.ttl)
            .arg(u8::from(r.shed));
    }
    run
}

/// An answer for [`deliver_answers`]: the request's outbox hash, the client's list, the
/// answer's JSON, the field of the twin that answered (empty: any one), and whether it
/// answers for the request's sole destination ([`Pending::answered`]).
///
/// [`Pending::answered`]: super::pending::Pending::answered
pub struct Answer<'a> {
    pub outbox: &'a str,
    pub list: &'a str,
    pub json: &'a str,
    pub field: &'a str,
    pub sole: bool,
}

/// One [`DELIVER_ONCE`] run delivering `answers`; its result holds one `0`/`1` per answer.
pub fn deliver_answers<'a>(
    answers: impl IntoIterator<Item = Answer<'a>>,
) -> ScriptInvocation<'static> {
    let mut run = DELIVER_ONCE.prepare_invoke();
    run.arg(MAX_LIST_LEN - 1);
    for a in answers {
        run.key(a.outbox)
            .key(a.list)
            .arg(a.json)
            .arg(a.field)
            .arg(u8::from(a.sole));
    }
    run
}
