//! The Lua scripts of [`RedisQueues`](super::RedisQueues), and what each costs Redis.
//!
//! Every script touches only keys of one twin, which share the hash tag `{<twin>}`
//! (see the key table in [`super`]), so each runs on one node of a Redis Cluster.
//!
//! Commands run per call, in the common case (`INFO commandstats` counts them besides
//! the `EVALSHA`):
//!
//! | script | commands |
//! |---|---|
//! | push | `GET` presence, `HGETALL` twin hash, `RPUSH`, `HSET`, `PUBLISH` (single Redis and Sentinel only); `EXPIRE` of the queue (and twin hash) only when a key is new or its expiry must move later, with [`RENEW_SLACK`](super::RENEW_SLACK) to spare |
//! | take | `LRANGE`, then `LTRIM` (or `DEL` when emptied) and `HINCRBY` (or `HDEL` when emptied); an empty queue costs the `LRANGE` alone, and a take after one that emptied the queue is not sent at all unless something may have been queued since ([`super::EmptyQueues`]) |
//!
//! The twin hash keeps, per session id `<sid>` ("" for none), `b:<sid>` (bytes queued)
//! and `e:<sid>` (unix second at which the session's queue key expires), and `t` (when
//! the hash itself expires). A session's queue counts toward the twin (bytes, number of
//! session ids) only while its `e:` lies ahead; a field found past it is dropped. The
//! twin's bytes are the sum of its sessions' (at most `--sessions-per-twin` of them), so
//! a take updates one field.

/// Queue entries for one session.
///
/// KEYS = queue, presence, twin hash.
/// ARGV = 1 cap, 2 seconds the keys must live from now, 3 fail-fast 0/1, 4 session text,
/// 5 now, 6 wake channel prefix ('' = do not publish), 7 front 0/1, 8 session byte limit,
/// 9 twin byte limit, 10 session ids per twin, 11 sid ('' for none), 12 renewal slack
/// seconds, 13… entries.
/// Returns {0, length, owner or ''} queued, {1, length, ''} full, {2, 0, ''} offline
/// (fail-fast), {3, limit, ''} session bytes, {4, limit, ''} too many session ids,
/// {5, limit, ''} twin bytes.
pub const PUSH: &str = r#"
local owner = redis.call('GET', KEYS[2])
if ARGV[3] == '1' and not owner then return {2, 0, ''} end
local cap = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local now = tonumber(ARGV[5])
local slimit = tonumber(ARGV[8])
local tlimit = tonumber(ARGV[9])
local sid = ARGV[11]
local entries = {}
local add = 0
for i = 13, #ARGV do
  entries[#entries + 1] = ARGV[i]
  add = add + #ARGV[i]
end
local n = #entries
local flat = redis.call('HGETALL', KEYS[3])
local bytes, exps = {}, {}
local texp = 0
for i = 1, #flat, 2 do
  local f = flat[i]
  local kind = string.sub(f, 1, 2)
  if f == 't' then texp = tonumber(flat[i + 1])
  elseif kind == 'b:' then bytes[string.sub(f, 3)] = tonumber(flat[i + 1])
  elseif kind == 'e:' then exps[string.sub(f, 3)] = tonumber(flat[i + 1]) end
end
local sbytes, sexp, tbytes, others, live = 0, 0, 0, 0, false
local stale = {}
for s, b in pairs(bytes) do
  local e = exps[s] or 0
  if e > now then
    tbytes = tbytes + b
    if s == sid then sbytes = b; sexp = e; live = true else others = others + 1 end
  else
    stale[#stale + 1] = 'b:' .. s
    stale[#stale + 1] = 'e:' .. s
  end
end
if #stale > 0 then redis.call('HDEL', KEYS[3], unpack(stale)) end
local popped = false
-- Pushes in chunks (Lua's unpack has a stack limit); returns the new length.
local function pushall(verb, list)
  local len
  for i = 1, #list, 1000 do
    len = redis.call(verb, KEYS[1], unpack(list, i, math.min(i + 999, #list)))
  end
  return len
end
-- Drops expired heads while a bound would be crossed; returns a refusal, or nil.
local function room(len)
  while len + n > cap or sbytes + add > slimit or tbytes + add > tlimit do
    local head = redis.call('LINDEX', KEYS[1], 0)
    if not head then break end
    local deadline = tonumber(string.match(head, '^(%d+)|'))
    if deadline and deadline > now then break end
    redis.call('LPOP', KEYS[1])
    len = len - 1
    sbytes = sbytes - #head
    tbytes = tbytes - #head
    popped = true
  end
  local refusal = nil
  if len + n > cap then refusal = {1, len, ''}
  elseif sbytes + add > slimit then refusal = {3, slimit, ''}
  elseif tbytes + add > tlimit then refusal = {5, tlimit, ''} end
  if refusal and popped then redis.call('HSET', KEYS[3], 'b:' .. sid, sbytes) end
  return refusal
end
local len
if ARGV[7] == '1' then
  local reversed = {}
  for i = n, 1, -1 do reversed[#reversed + 1] = entries[i] end
  len = pushall('LPUSH', reversed)
else
  if not live and others >= tonumber(ARGV[10]) then return {4, tonumber(ARGV[10]), ''} end
  if sbytes + add > slimit or tbytes + add > tlimit then
    local refusal = room(redis.call('LLEN', KEYS[1]))
    if refusal then return refusal end
  end
  len = pushall('RPUSH', entries)
  if len > cap then
    redis.call('LTRIM', KEYS[1], 0, -(n + 1))
    local refusal = room(len - n)
    if refusal then return refusal end
    len = pushall('RPUSH', entries)
  end
end
local fields = {'b:' .. sid, sbytes + add}
local renew = len == n or sexp < now + ttl
local e = now + ttl + tonumber(ARGV[12])
if renew then
  fields[#fields + 1] = 'e:' .. sid
  fields[#fields + 1] = e
  if texp < e then
    fields[#fields + 1] = 't'
    fields[#fields + 1] = e
  end
end
redis.call('HSET', KEYS[3], unpack(fields))
if renew then
  redis.call('EXPIRE', KEYS[1], e - now)
  if texp < e then redis.call('EXPIRE', KEYS[3], e - now) end
end
if owner and ARGV[6] ~= '' then redis.call('PUBLISH', ARGV[6] .. owner, ARGV[4]) end
return {0, len, owner or ''}
"#;

/// Take entries from the head of a session's queue: about ARGV[1] bytes of them (at
/// least one) and at most ARGV[2], read in growing chunks (so a queue of large envelopes
/// is not read whole for a small budget); releases their bytes.
/// KEYS = queue, twin hash. ARGV = 1 byte budget, 2 most entries, 3 sid.
/// Returns {1 if the queue is empty now else 0, entries}.
pub const TAKE: &str = r#"
local budget = tonumber(ARGV[1])
local most = tonumber(ARGV[2])
local out = {}
local total = 0
local fetched = 0
local chunk = 32
local over = false
local ended = false
while fetched < most do
  local want = math.min(chunk, most - fetched)
  local items = redis.call('LRANGE', KEYS[1], fetched, fetched + want - 1)
  for i = 1, #items do
    local size = #items[i]
    if #out > 0 and total + size > budget then over = true break end
    out[#out + 1] = items[i]
    total = total + size
  end
  fetched = fetched + #items
  if over then break end
  if #items < want then ended = true break end
  chunk = chunk * 2
end
if #out == 0 then return {1, out} end
local emptied = false
if ended then
  redis.call('DEL', KEYS[1])
  emptied = true
else
  redis.call('LTRIM', KEYS[1], #out, -1)
  if not over then emptied = redis.call('LLEN', KEYS[1]) == 0 end
end
if emptied then
  redis.call('HDEL', KEYS[2], 'b:' .. ARGV[3], 'e:' .. ARGV[3])
else
  redis.call('HINCRBY', KEYS[2], 'b:' .. ARGV[3], -total)
end
if emptied then return {1, out} end
return {0, out}
"#;

/// Claim a session for a replica unless another replica holds it (renewal), or always
/// (ARGV[3] = 1, a fresh connection). KEYS[1] = presence; ARGV = replica, ttl s, force.
pub const CLAIM: &str = r#"
local owner = redis.call('GET', KEYS[1])
if ARGV[3] == '1' or not owner or owner == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
return 0
"#;

/// Release a session if this replica still holds it. KEYS[1] = presence; ARGV[1] = replica.
pub const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;
