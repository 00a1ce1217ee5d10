//! The Lua scripts that make the crash-safe steps of the API atomic in Redis.
//!
//! Each pairs a check with the write it guards, so a peer killed between two commands
//! can neither lose a message nor deliver it twice:
//!
//! - [`CLAIM`]: moves a batch from an app's list to the peer's claimed list (kept until
//!   the batch is recorded), or returns the batch a crashed run left claimed;
//! - [`DELIVER_REQUEST`]: pushes a remote request to its service only if its uid was
//!   never received from that twin, remembering it (a repeat gets the stored reply),
//!   and only within the bounds on command lists (bytes, TTL, number of commands);
//! - [`DELIVER_ONCE`]: pushes an answer to a client's `ret` only if the request still
//!   waits for that twin's answer, and marks it answered.

use std::sync::LazyLock;

use redis::Script;

/// `KEYS`: source list, claimed list. `ARGV`: most items. Returns what the claimed list
/// holds when a previous run left a batch there; otherwise moves up to that many of the
/// oldest items of the source to the claimed list and returns them, oldest first
/// (nothing when the source is empty). One round trip, whatever the case.
pub static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local left = redis.call('LRANGE', KEYS[2], 0, -1)
if #left > 0 then return left end
local items = redis.call('LRANGE', KEYS[1], -tonumber(ARGV[1]), -1)
local n = #items
if n == 0 then return {} end
redis.call('LTRIM', KEYS[1], 0, -n - 1)
local oldest_first = {}
for i = n, 1, -1 do oldest_first[#oldest_first + 1] = items[i] end
redis.call('RPUSH', KEYS[2], unpack(oldest_first))
return oldest_first
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

/// `KEYS`: seen marker, service list, command index (sorted set: list name → unix time
/// its last request expires), served commands (sorted set: list name → unix time until
/// which it counts as served). `ARGV`: request JSON, marker TTL (s), last index kept in
/// the list, most bytes in the list, most commands in the index, now (unix s),
/// [`SERVED_SECS`], `1` when [admission](super::admission) refuses it (else `0`).
///
/// Returns the list's length (≥ 1) when delivered; otherwise the marker's value (empty
/// while the service has not answered, the sealed reply once it has) for a repeat —
/// checked first, so admission never refuses a repeat of an answered request —,
/// [`SHED`] when admission refused it, [`QUEUE_FULL`] or [`TOO_MANY_COMMANDS`] when a
/// bound is hit (nothing is written then).
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
local prev = redis.call('GET', KEYS[1])
if prev then return prev end
if ARGV[8] == '1' then return -3 end
local ttl = tonumber(ARGV[2])
local now = tonumber(ARGV[6])
local served_secs = tonumber(ARGV[7])
local served = redis.call('ZSCORE', KEYS[4], KEYS[2])
served = served and tonumber(served) > now
if redis.call('EXISTS', KEYS[2]) == 1 then
  local used = redis.call('MEMORY', 'USAGE', KEYS[2], 'SAMPLES', 5) or 0
  if used + string.len(ARGV[1]) > tonumber(ARGV[4]) then return -1 end
elseif not served and not redis.call('ZSCORE', KEYS[3], KEYS[2]) then
  local most = tonumber(ARGV[5])
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= most then
    redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
    for _, name in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
      if redis.call('EXISTS', name) == 0 then
        redis.call('ZREM', KEYS[3], name)
        redis.call('ZADD', KEYS[4], now + served_secs, name)
      end
    end
    redis.call('EXPIRE', KEYS[4], served_secs)
    if redis.call('ZCARD', KEYS[3]) >= most then return -2 end
  end
end
if string.len(ARGV[1]) > tonumber(ARGV[4]) then return -1 end
redis.call('SET', KEYS[1], '', 'EX', ttl)
local len = redis.call('LPUSH', KEYS[2], ARGV[1])
local keep = tonumber(ARGV[3]) + 1
if len > keep then
  redis.call('LTRIM', KEYS[2], 0, keep - 1)
  len = keep
end
if redis.call('TTL', KEYS[2]) < ttl then redis.call('EXPIRE', KEYS[2], ttl) end
if served then
  redis.call('ZADD', KEYS[4], now + served_secs, KEYS[2])
else
  redis.call('ZADD', KEYS[3], 'GT', now + ttl, KEYS[2])
  if redis.call('TTL', KEYS[3]) < ttl then redis.call('EXPIRE', KEYS[3], ttl) end
end
return len
",
    )
});

/// `KEYS`: outbox hash, client list. `ARGV`: response JSON, the waiting field of the
/// answering twin (empty: any one, for a relay's error that names no twin), last index
/// kept in the list. Returns 1 when delivered, 0 when that answer was delivered already
/// (or the request is unknown or expired). The hash goes once every twin answered.
pub static DELIVER_ONCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local field = ARGV[2]
if field == '' then
  field = nil
  for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
    if string.sub(f, 1, 2) == 'd:' then field = f break end
  end
  if not field then return 0 end
end
if redis.call('HDEL', KEYS[1], field) == 0 then return 0 end
local keep = tonumber(ARGV[3]) + 1
if redis.call('LPUSH', KEYS[2], ARGV[1]) > keep then redis.call('LTRIM', KEYS[2], 0, keep - 1) end
if redis.call('HLEN', KEYS[1]) <= 1 then redis.call('DEL', KEYS[1]) end
return 1
",
    )
});
