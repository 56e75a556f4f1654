//! The Lua scripts that make a publish and a read atomic on the topic's shard.
//!
//! A topic is two keys with one hash tag: `meta` (a hash: `epoch`, `seq`,
//! the last sequence given out, and `acked`, the last its replicas are
//! known to hold when publishes wait for them: reads serve up to `acked`
//! only, so a position anyone was given survives a failover) and `stream` (entries with id
//! `<seq>-<published ms>` and fields `k` (`t` text / `j` JSON), `n` (event
//! name, empty for none) and `d` (data)). Both scripts start by checking the
//! epoch: when the metadata is missing, or the stream is gone while the
//! metadata says events were stored (Redis restarted without persistence, a
//! key was evicted), the topic starts a new epoch with the candidate the
//! caller passes, so clients holding older cursors are told they missed
//! events.
//!
//! Neither key lives forever: a publish sets both to expire after the
//! topic's time-to-live (at least the history age limit, so retained history
//! is never cut short), and a read that creates the metadata of a topic
//! never published gives it the same time-to-live. A topic unused for that
//! long is gone from Redis; used again, it starts a new epoch (the missing
//! metadata above), so an older cursor gets `herald.gap`.
//!
//! Presence (a sorted set of client ids scored by expiry and a hash of
//! their entries, see [`crate::keys::Keys::presence_members`]) has its own
//! scripts below; they read time from the Redis server, so that every node
//! agrees on what has expired.
//!
//! Numbers go through `string.format('%d')`: Lua's `tostring` switches to
//! exponent notation past 14 digits.

/// Shared by both scripts: epoch check, age trimming, the oldest retained seq.
const PRELUDE: &str = r#"
local meta, stream = KEYS[1], KEYS[2]

-- `ttl` (ms): how long new metadata lives unless a publish extends it.
-- `ephemeral`: the topic keeps no stream (history = 0), so a missing one
-- is no sign of lost history.
-- `floor_epoch`, `floor_seq`: the furthest position the calling node has
-- seen of the topic ('' and 0 for none). A shorter topic in the same epoch
-- lost writes (a failover promoted a replica that had not received them):
-- its next positions would repeat ones already handed out. It starts a new
-- epoch instead, so clients holding the lost positions get a gap, and its
-- sequence continues after the floor, so the retained history (the writes
-- that did survive) keeps its entries and no position is ever reused.
local function ensure_epoch(candidate, ttl, ephemeral, floor_epoch, floor_seq)
  local m = redis.call('HMGET', meta, 'epoch', 'seq')
  local epoch, seq = m[1], tonumber(m[2] or '0')
  if epoch and epoch == floor_epoch and seq < floor_seq then
    local resumed = string.format('%d', floor_seq)
    redis.call('HSET', meta, 'epoch', candidate, 'seq', resumed, 'acked', resumed)
    redis.call('PEXPIRE', meta, ttl)
    return candidate, floor_seq
  end
  if epoch and (ephemeral or not (seq > 0 and redis.call('EXISTS', stream) == 0)) then
    return epoch, seq
  end
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'epoch', candidate, 'seq', '0', 'acked', '0')
  redis.call('PEXPIRE', meta, ttl)
  return candidate, 0
end

local function parse_id(id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Drops entries older than `cutoff` ms from the front of the stream.
local function trim_age(cutoff)
  while true do
    local page = redis.call('XRANGE', stream, '-', '+', 'COUNT', 100)
    if #page == 0 then return end
    for i = 1, #page do
      local s, t = parse_id(page[i][1])
      if t >= cutoff then
        if i > 1 then redis.call('XTRIM', stream, 'MINID', string.format('%d', s)) end
        return
      end
    end
    local last = parse_id(page[#page][1])
    redis.call('XTRIM', stream, 'MINID', string.format('%d', last + 1))
  end
end

-- The oldest retained seq (head + 1 when nothing is): the stream is trimmed
-- approximately (MAXLEN ~), the count limit applies exactly here.
local function first_retained(head, maxlen)
  local first = head + 1
  local e = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
  if #e > 0 then first = parse_id(e[1][1]) end
  if head - maxlen + 1 > first then first = head - maxlen + 1 end
  return first
end
"#;

/// KEYS: meta, stream. ARGV: candidate epoch, max events, max age ms, channel,
/// time-to-live ms, notify (`1`: notify the channel here; `0`: the caller
/// notifies once the write reached its replicas), floor epoch, floor seq
/// (see `ensure_epoch`), then `k`, `n`, `d` of each event. Appends the
/// events, notifies the channel with each (when asked), trims, and sets
/// both keys to expire after the time-to-live. Returns `{epoch, first seq,
/// published ms}`.
///
/// With max events 0 (an ephemeral topic) nothing is appended: the events
/// get their sequences in `meta` and go to the channel only, and no stream
/// exists (one left by an earlier policy is deleted).
///
/// A notification is `epoch \n id \n k \n n \n d`: names hold no control
/// characters, so only the data may contain newlines, and it comes last.
const PUBLISH_BODY: &str = r#"
local maxlen, maxage, channel, ttl = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5]
local notify = ARGV[6] == '1'
local now = now_ms()
local ephemeral = maxlen == 0
local epoch, seq = ensure_epoch(ARGV[1], ttl, ephemeral, ARGV[7], tonumber(ARGV[8]))
if ephemeral then redis.call('DEL', stream) end
local first = seq + 1
local i = 9
while i + 2 <= #ARGV do
  seq = seq + 1
  local id = string.format('%d-%d', seq, now)
  if not ephemeral then
    redis.call('XADD', stream, 'MAXLEN', '~', ARGV[2], id, 'k', ARGV[i], 'n', ARGV[i + 1], 'd', ARGV[i + 2])
  end
  if notify then redis.call('SPUBLISH', channel, epoch .. '\n' .. id .. '\n' .. ARGV[i] .. '\n' .. ARGV[i + 1] .. '\n' .. ARGV[i + 2]) end
  i = i + 3
end
redis.call('HSET', meta, 'seq', string.format('%d', seq))
if notify then redis.call('HSET', meta, 'acked', string.format('%d', seq)) end
trim_age(now - maxage)
redis.call('PEXPIRE', meta, ttl)
redis.call('PEXPIRE', stream, ttl)
return {epoch, string.format('%d', first), string.format('%d', now)}
"#;

/// KEYS: meta, stream. ARGV: candidate epoch, after epoch, after seq, limit,
/// max events, max age ms, time-to-live ms (of metadata the read creates),
/// floor epoch, floor seq (see `ensure_epoch`).
/// "After epoch" is empty to read from now (no
/// events, just the head), `*` for the latest event alone, else a position.
/// Returns `{epoch, head, first retained, entries...}`, each entry
/// `{id, {k, kv, n, nv, d, dv}}`. Where the entries start follows the same
/// rule as `herald_core::engine::resolve_start`, which the caller applies.
const READ_BODY: &str = r#"
local after_epoch, after_seq, limit = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local maxlen, maxage = tonumber(ARGV[5]), tonumber(ARGV[6])
local epoch, head = ensure_epoch(ARGV[1], ARGV[7], maxlen == 0, ARGV[8], tonumber(ARGV[9]))
-- Only what its replicas hold is read: a position served to anyone
-- survives the master's loss (see `acked`).
local acked = tonumber(redis.call('HGET', meta, 'acked') or head)
if acked < head then head = acked end
trim_age(now_ms() - maxage)
local first = first_retained(head, maxlen)
local start = nil
if after_epoch == '*' then
  start = head
elseif after_epoch ~= '' then
  if after_epoch ~= epoch or after_seq > head or after_seq + 1 < first then
    start = first
  else
    start = after_seq + 1
  end
end
local out = {epoch, string.format('%d', head), string.format('%d', first)}
if start and start >= first and start <= head and limit > 0 then
  local entries = redis.call('XRANGE', stream, string.format('%d', start), string.format('%d', head), 'COUNT', limit)
  for i = 1, #entries do out[#out + 1] = entries[i] end
end
return out
"#;

/// KEYS: the topic's channel, meta, stream. ARGV: epoch, seq. Run once
/// writes up to `seq` reached the replicas (a `WAIT` covers every earlier
/// write of the master, so other publishers' pending events too): if the
/// topic is still in `epoch`, sends the notification of each stored event
/// after `acked` up to `seq` (at most 1000; subscribers read any others
/// from history), in position order, then raises `acked` (the furthest a
/// read serves) to `seq`. Returns how many were sent.
pub const NOTIFY: &str = r#"
local m = redis.call('HMGET', KEYS[2], 'epoch', 'acked')
if m[1] ~= ARGV[1] then return 0 end
-- A topic written before `acked` existed: only the newest is announced.
local from, to = tonumber(m[2] or (tonumber(ARGV[2]) - 1)) + 1, tonumber(ARGV[2])
if to < from then return 0 end
local entries = redis.call('XRANGE', KEYS[3], string.format('%d', from), ARGV[2], 'COUNT', 1000)
for i = 1, #entries do
  local f = entries[i][2]
  redis.call('SPUBLISH', KEYS[1], ARGV[1] .. '\n' .. entries[i][1] .. '\n' .. f[2] .. '\n' .. f[4] .. '\n' .. f[6])
end
redis.call('HSET', KEYS[2], 'acked', ARGV[2])
return #entries
"#;

/// KEYS: any key. Sets its time-to-live again, unchanged: a write that
/// changes nothing, so that a `WAIT` after it on the same connection
/// covers every earlier write of the master. Returns 1.
pub const RETOUCH: &str = r#"
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
"#;

/// KEYS: meta, stream. ARGV: time-to-live ms. Extends the life of a topic
/// that local clients are subscribed to, so a quiet topic keeps the epoch
/// its subscribers hold (else its next event would start a new one and they
/// would get a needless gap). Touches only keys that exist.
pub const TOUCH: &str = r#"
if redis.call('PEXPIRE', KEYS[1], ARGV[1]) == 1 then
  redis.call('PEXPIRE', KEYS[2], ARGV[1])
end
return 1
"#;

/// The publish script's Lua source: the prelude, then the body documented on
/// `PUBLISH_BODY` (KEYS: meta, stream; ARGV: candidate epoch, max events,
/// max age ms, channel, time-to-live ms, notify, floor epoch, floor seq,
/// then `k`, `n`, `d` of each event;
/// returns `{epoch, first seq, published ms}`).
pub fn publish() -> String {
    format!("{PRELUDE}{PUBLISH_BODY}")
}

/// The read script's Lua source: the prelude, then the body documented on
/// `READ_BODY` (returns `{epoch, head, first retained, entries...}`).
pub fn read() -> String {
    format!("{PRELUDE}{READ_BODY}")
}

/// Claims an idempotency key: KEYS: the record. ARGV: in-flight marker ttl
/// ms. Returns `owned`, `pending`, or the stored position.
pub const CLAIM: &str = r#"
if redis.call('SET', KEYS[1], 'pending', 'NX', 'PX', ARGV[1]) then return 'owned' end
return redis.call('GET', KEYS[1]) or 'pending'
"#;

/// Drops an in-flight claim, never a completed record. KEYS: the record.
pub const ABANDON: &str = r#"
if redis.call('GET', KEYS[1]) == 'pending' then redis.call('DEL', KEYS[1]) end
return 1
"#;

/// The Redis server's clock in ms, shared by the presence scripts: every
/// node compares expiries with the same clock.
const NOW: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"#;

/// KEYS: presence members (sorted set), presence info (hash). ARGV: client
/// id, entry (`<node id>\n<member JSON>`), time-to-live ms, key life ms.
/// Records the client as held by the entry's node, expiring after the
/// time-to-live, and extends both keys' life. Returns 1 when the client was
/// not listed before (a join is due), else 0 (an entry not yet swept after
/// expiring counts as listed: no leave was reported for it either).
const PRESENCE_JOIN_BODY: &str = r#"
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local new = redis.call('ZADD', KEYS[1], string.format('%d', now + tonumber(ARGV[3])), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return new
"#;

/// KEYS: presence members, presence info. ARGV: client id, node prefix
/// (`<node id>\n`). Removes the client only if the entry is this node's (a
/// long-polling client may have moved to another node, which holds it
/// now). Returns the removed entry, or nil.
pub const PRESENCE_LEAVE: &str = r#"
local entry = redis.call('HGET', KEYS[2], ARGV[1])
if not entry or string.sub(entry, 1, #ARGV[2]) ~= ARGV[2] then return false end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
return entry
"#;

/// KEYS: presence members, presence info. Returns the entries of the
/// clients whose expiry is still ahead, in no particular order.
const PRESENCE_MEMBERS_BODY: &str = r#"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. string.format('%d', now), '+inf')
local out = {}
for i = 1, #ids do
  local entry = redis.call('HGET', KEYS[2], ids[i])
  if entry then out[#out + 1] = entry end
end
return out
"#;

/// KEYS: presence members, presence info. ARGV: node prefix
/// (`<node id>\n`), time-to-live ms, key life ms, then client id and entry
/// of each client the node holds. Moves the expiry of the node's own
/// entries to now + time-to-live; enters again the clients that are not
/// listed at all (swept during a stall, or lost by Redis); leaves alone
/// clients another node holds now. Returns the ids entered again.
const PRESENCE_REFRESH_BODY: &str = r#"
local prefix = ARGV[1]
local expiry = string.format('%d', now + tonumber(ARGV[2]))
local added = {}
local i = 4
while i + 1 <= #ARGV do
  local client, entry = ARGV[i], ARGV[i + 1]
  local cur = redis.call('HGET', KEYS[2], client)
  if not cur then
    redis.call('HSET', KEYS[2], client, entry)
    redis.call('ZADD', KEYS[1], expiry, client)
    added[#added + 1] = client
  elseif string.sub(cur, 1, #prefix) == prefix then
    if cur ~= entry then redis.call('HSET', KEYS[2], client, entry) end
    redis.call('ZADD', KEYS[1], expiry, client)
  end
  i = i + 2
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return added
"#;

/// KEYS: presence members, presence info. ARGV: most entries to remove.
/// Removes clients whose expiry has passed (their node stopped refreshing
/// them: it died or lost Redis) and returns their entries. Atomic: when
/// several nodes sweep a topic, each expired entry is returned to one.
const PRESENCE_SWEEP_BODY: &str = r#"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now), 'LIMIT', 0, tonumber(ARGV[1]))
local out = {}
for i = 1, #ids do
  local entry = redis.call('HGET', KEYS[2], ids[i])
  redis.call('ZREM', KEYS[1], ids[i])
  if entry then
    redis.call('HDEL', KEYS[2], ids[i])
    out[#out + 1] = entry
  end
end
return out
"#;

/// KEYS: the topic's occupancy (sorted set). ARGV: node id, time-to-live
/// ms, key life ms. Records the node as having local subscribers for the
/// time-to-live from now. Returns 1 when the set was empty (the topic is
/// occupied now; an expired entry not yet swept still counts: its vacancy
/// was not reported either), else 0.
const OCCUPANCY_ENTER_BODY: &str = r#"
local had = redis.call('ZCARD', KEYS[1])
redis.call('ZADD', KEYS[1], string.format('%d', now + tonumber(ARGV[2])), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if had == 0 then return 1 end
return 0
"#;

/// KEYS: the topic's occupancy. ARGV: node id. Removes the node's entry.
/// Returns 1 when that emptied the set (the topic is vacated), else 0.
pub const OCCUPANCY_LEAVE: &str = r#"
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('ZCARD', KEYS[1]) == 0 then return 1 end
return 0
"#;

/// KEYS: the topic's occupancy. Removes the expired entries (nodes that
/// stopped refreshing: dead, or cut off from Redis). Returns `{vacated,
/// next}`: vacated 1 when that emptied the set (atomic, so one sweeper
/// reports it), and the latest expiry left (0 when none).
const OCCUPANCY_SWEEP_BODY: &str = r#"
local removed = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now))
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if #last == 0 then
  if removed > 0 then return {1, 0} end
  return {0, 0}
end
return {0, math.floor(tonumber(last[2]))}
"#;

/// KEYS: the occupancy index. ARGV: time-to-live ms, key life ms, then
/// topic names. Marks each topic to be swept once now + time-to-live has
/// passed (unless marked again before).
const OCCUPANCY_MARK_BODY: &str = r#"
local due = string.format('%d', now + tonumber(ARGV[1]))
for i = 3, #ARGV do
  redis.call('ZADD', KEYS[1], due, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#;

/// KEYS: the occupancy index. ARGV: most topics. Returns the topics due
/// for a sweep.
const OCCUPANCY_DUE_BODY: &str = r#"
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now), 'LIMIT', 0, tonumber(ARGV[1]))
"#;

/// KEYS: the occupancy index. ARGV: topic, next (ms; 0: none). After a
/// sweep: forgets the topic (next 0) or moves its mark to `next`, unless a
/// node marked it again meanwhile.
const OCCUPANCY_SETTLE_BODY: &str = r#"
local cur = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not cur or tonumber(cur) > now then return 0 end
if ARGV[2] == '0' then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
end
return 1
"#;

/// The occupancy enter script's Lua source (see `OCCUPANCY_ENTER_BODY`:
/// KEYS: occupancy; ARGV: node id, time-to-live ms, key life ms; returns 1
/// when the topic became occupied, else 0).
pub fn occupancy_enter() -> String {
    format!("{NOW}{OCCUPANCY_ENTER_BODY}")
}

/// The occupancy sweep script's Lua source (KEYS: occupancy; returns
/// `{vacated 0|1, latest expiry left or 0}`).
pub fn occupancy_sweep() -> String {
    format!("{NOW}{OCCUPANCY_SWEEP_BODY}")
}

/// The occupancy index marking script's Lua source (KEYS: index; ARGV:
/// time-to-live ms, key life ms, topics...).
pub fn occupancy_mark() -> String {
    format!("{NOW}{OCCUPANCY_MARK_BODY}")
}

/// The script listing topics due for a sweep (KEYS: index; ARGV: most
/// topics; returns topic names).
pub fn occupancy_due() -> String {
    format!("{NOW}{OCCUPANCY_DUE_BODY}")
}

/// The script settling a topic's mark after its sweep (KEYS: index; ARGV:
/// topic, next expiry ms or 0).
pub fn occupancy_settle() -> String {
    format!("{NOW}{OCCUPANCY_SETTLE_BODY}")
}

/// The presence join script's Lua source (see `PRESENCE_JOIN_BODY`: KEYS:
/// members, info; ARGV: client id, entry, time-to-live ms, key life ms;
/// returns 1 for a new client, else 0).
pub fn presence_join() -> String {
    format!("{NOW}{PRESENCE_JOIN_BODY}")
}

/// The presence listing script's Lua source (KEYS: members, info; returns
/// the entries of clients not expired, unordered).
pub fn presence_members() -> String {
    format!("{NOW}{PRESENCE_MEMBERS_BODY}")
}

/// The presence refresh script's Lua source (KEYS: members, info; ARGV:
/// node prefix, time-to-live ms, key life ms, then client id and entry
/// pairs; returns the ids it entered again).
pub fn presence_refresh() -> String {
    format!("{NOW}{PRESENCE_REFRESH_BODY}")
}

/// The presence sweep script's Lua source (KEYS: members, info; ARGV: most
/// entries to remove; returns the removed expired entries).
pub fn presence_sweep() -> String {
    format!("{NOW}{PRESENCE_SWEEP_BODY}")
}
