"""The Lua scripts that make each multi-key step of a job atomic. `store` registers and
calls them with the keys of one job (one hash tag, so they are legal on a Cluster).

Times come from the server's clock (TIME), so workers on several machines agree. The
scripts that store inputs and index them are `index`'s; how small payloads are packed,
`chunks`'; those of per-key limits, `limits`'.
"""

from ..limits import BACKOFF_FIRST, BACKOFF_MAX
from . import limits
from .chunks import LUA as _CHUNKS

_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

# Retries that are due go back to the head of the queue (before a claim).
_DUE = """
local function move_due(delayed, queue, now)
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, 1000)
  if #due > 0 then
    redis.call('ZREM', delayed, unpack(due))
    redis.call('LPUSH', queue, unpack(due))
  end
end
"""

# KEYS owner queue claims inputs workers counts delayed
# ARGV token count wid
# Take up to `count` items for a worker, first moving retries that are due back to the
# head of the queue.
CLAIM = (
    _NOW
    + _CHUNKS
    + _DUE
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
move_due(KEYS[7], KEYS[2], now)
local idx = redis.call('LPOP', KEYS[2], ARGV[2])
if not idx then return {} end
redis.call('SADD', KEYS[5], ARGV[3])
local claimed, stamp = {}, string.format('%d', now)  -- (a number would be formatted once per item)
for _, i in ipairs(idx) do
  claimed[#claimed + 1] = i
  claimed[#claimed + 1] = stamp
end
redis.call('HSET', KEYS[3], unpack(claimed))
redis.call('HINCRBY', KEYS[6], 'running', #idx)
return {idx, read_items(KEYS[4], idx)}
"""
)

# KEYS done results failures counts claims attempts history delayed meta finished
# ARGV retries base_delay_ms results prefix, then per result: index payload; then per
# failure: index kind payload jitter line (kind 'r': may be retried, '0': final, 'b': a
# backoff, whose payload is the pause in ms, or -1 for the key's own).
# Idempotent: a result is stored only if its done bit was not set, so counters never
# double count when an item ran twice. A retry waits in the delayed set, not in a
# sleeping worker, with exponential backoff (jitter comes from the caller). A backoff
# is no attempt: the item waits first in its key's list, and the key pauses (an item
# without a key waits alone, in the delayed set).
RECORD = (
    _NOW
    + _CHUNKS
    + limits.RELEASE
    + f"local BACKOFF_FIRST, BACKOFF_MAX = {BACKOFF_FIRST * 1000:.0f}, {BACKOFF_MAX * 1000:.0f}\n"
    + """
local retries, base, P = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[4]
local done, failed, held, backed = 0, 0, 0, {}
local ok, settled, failures = {}, {}, {}
local first_failure = 5 + 2 * tonumber(ARGV[3])
local limited = keyed(P)
for i = 5, first_failure - 1, 2 do
  settled[#settled + 1] = ARGV[i]
  ok[#ok + 1] = i
end
for i = first_failure, #ARGV, 5 do
  settled[#settled + 1] = ARGV[i]
  failures[#failures + 1] = i
end
-- Results first, a whole batch per command: flip their bits in one BITFIELD, and store
-- the results whose bit was clear, small ones in their chunks (each chunk read and
-- written once), large ones in one HSET (a command per item cost more than the rest).
if #ok > 0 then
  local ops, chunks, fields = {}, {}, {}
  for _, i in ipairs(ok) do
    ops[#ops + 1], ops[#ops + 2], ops[#ops + 3], ops[#ops + 4] = 'SET', 'u1', '#' .. ARGV[i], 1
  end
  local before = redis.call('BITFIELD', KEYS[1], unpack(ops))
  local replaced = redis.call('HLEN', KEYS[3]) > 0
  for n, i in ipairs(ok) do
    if before[n] == 0 then
      place(chunks, fields, tonumber(ARGV[i]), ARGV[i + 1])
      done = done + 1
      -- a late success of an item recorded as failed replaces the failure
      if replaced then failed = failed - redis.call('HDEL', KEYS[3], ARGV[i]) end
    end
  end
  store_placed(KEYS[2], chunks, fields)
end
for _, i in ipairs(failures) do
  local idx, kind = ARGV[i], ARGV[i + 1]
  if kind == 'b' then
    if redis.call('GETBIT', KEYS[1], idx) == 0 and redis.call('HEXISTS', KEYS[5], idx) == 1 then
      local ms, key = tonumber(ARGV[i + 2]), limited and redis.call('HGET', P .. 'keyed', idx)
      if key then
        -- (items that were running when the key began to back off tell nothing new)
        local before = tonumber(redis.call('HGET', P .. 'keyhold', key)) or 0
        local streak = tonumber(redis.call('HGET', P .. 'keystreak', key)) or 0
        if before <= now or streak == 0 then streak = redis.call('HINCRBY', P .. 'keystreak', key, 1) end
        if ms < 0 then ms = math.min(BACKOFF_MAX, BACKOFF_FIRST * 2 ^ (streak - 1)) end
        local hold = math.max(now + ms, before)
        redis.call('HSET', P .. 'keyhold', key, string.format('%d', hold))
        redis.call('LPUSH', P .. 'held:' .. key, idx)
        redis.call('ZADD', P .. 'keywait', string.format('%d', hold), key)
        held, backed[key] = held + 1, true
      else
        if ms < 0 then ms = BACKOFF_FIRST end
        redis.call('ZADD', KEYS[8], now + ms, idx)
      end
    end
  elseif redis.call('GETBIT', KEYS[1], idx) == 0 then
    local n = redis.call('HINCRBY', KEYS[6], idx, 1)
    redis.call('HSET', KEYS[7], idx, (redis.call('HGET', KEYS[7], idx) or '') .. ARGV[i + 4] .. '\\n')
    if kind == 'r' and n <= retries then
      redis.call('ZADD', KEYS[8], now + base * 2 ^ (n - 1) * tonumber(ARGV[i + 3]), idx)
    else
      failed = failed + redis.call('HSETNX', KEYS[3], idx, ARGV[i + 2])
    end
  end
end
if limited then
  -- (one by one: only a claim of this worker gives a slot back)
  local n = 0
  for j, i in ipairs(settled) do
    if redis.call('HDEL', KEYS[5], i) == 1 then
      n = n + 1
      local key = release(P, i, now)
      -- (a result ends the key's backoffs in a row, unless one came in the same batch)
      if key and j <= #ok and not backed[key] then redis.call('HDEL', P .. 'keystreak', key) end
    end
  end
  settled = n
else
  settled = redis.call('HDEL', KEYS[5], unpack(settled))
end
if held ~= 0 then redis.call('HINCRBY', KEYS[4], 'held', held) end
if done ~= 0 then redis.call('HINCRBY', KEYS[4], 'done', done) end
if failed ~= 0 then redis.call('HINCRBY', KEYS[4], 'failed', failed) end
if settled ~= 0 then redis.call('HINCRBY', KEYS[4], 'running', -settled) end
if done + failed > 0 then
  -- The last result wakes the caller at once, rather than at its next poll.
  local c = redis.call('HMGET', KEYS[4], 'done', 'failed')
  if (tonumber(c[1]) or 0) + (tonumber(c[2]) or 0) >= tonumber(redis.call('HGET', KEYS[9], 'total') or 0) then
    redis.call('LPUSH', KEYS[10], 1)
  end
end
return {done, failed}
"""
)

# KEYS owner counts cancel meta delayed
# ARGV token ttl_ms workers
# The caller's heartbeat: refresh the owner key only while it is still ours, note how
# many workers it has alive, and tell it whether someone asked the job to stop, and
# which epoch of the job the server holds (none: it lost the job).
POLL = """
local owner = 'none'
local current = redis.call('GET', KEYS[1])
if redis.call('EXISTS', KEYS[3]) == 1 then
  owner = 'cancel'
elseif current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('HSET', KEYS[4], 'workers', ARGV[3])
  owner = 'us'
elseif current then
  owner = 'other'
end
local c = redis.call('HMGET', KEYS[2], 'done', 'failed', 'running')
return {owner, tonumber(c[1]) or 0, tonumber(c[2]) or 0, tonumber(c[3]) or 0, redis.call('ZCARD', KEYS[5]),
        redis.call('HGET', KEYS[4], 'epoch')}
"""

# KEYS claims queue done counts   ARGV prefix
# Put the unfinished claims of a worker that was stopped back at the head of the queue.
REQUEUE = (
    _NOW
    + limits.RELEASE
    + """
local idx = redis.call('HKEYS', KEYS[1])
local back, limited = {}, keyed(ARGV[1])
for _, i in ipairs(idx) do
  if limited then release(ARGV[1], i, now) end
  if redis.call('GETBIT', KEYS[3], i) == 0 then back[#back + 1] = i end
end
redis.call('DEL', KEYS[1])
if #idx > 0 then redis.call('HINCRBY', KEYS[4], 'running', -#idx) end  -- never '-0': not an integer to Redis
for s = 1, #back, 1000 do
  redis.call('LPUSH', KEYS[2], unpack(back, s, math.min(s + 999, #back)))
end
return #back
"""
)

# KEYS claims queue done counts; ARGV prefix, then indices
# A worker gives back items it claimed and has not started (see worker._wanted).
UNCLAIM = (
    _NOW
    + limits.RELEASE
    + """
local back, n, limited = {}, 0, keyed(ARGV[1])
for j = 2, #ARGV do
  local i = ARGV[j]
  if redis.call('HDEL', KEYS[1], i) == 1 then
    n = n + 1
    if limited then release(ARGV[1], i, now) end
    if redis.call('GETBIT', KEYS[3], i) == 0 then back[#back + 1] = i end
  end
end
if n > 0 then redis.call('HINCRBY', KEYS[4], 'running', -n) end
if #back > 0 then redis.call('LPUSH', KEYS[2], unpack(back)) end
return #back
"""
)

# KEYS claims queue done counts deaths failures history attempts
# ARGV culprit limit payload line prefix
# A worker died: its unfinished items go back to the head of the queue, except the one
# it was executing, whose death is counted as a failed attempt; an item whose worker
# died `limit` times is recorded as failed. The slots of its keys come back.
BURY = (
    _NOW
    + limits.RELEASE
    + """
local idx = redis.call('HKEYS', KEYS[1])
local failed, limited = 0, keyed(ARGV[5])
for _, i in ipairs(idx) do
  if limited then release(ARGV[5], i, now) end
  if redis.call('GETBIT', KEYS[3], i) == 0 then
    if i == ARGV[1] then
      redis.call('HINCRBY', KEYS[8], i, 1)
      redis.call('HSET', KEYS[7], i, (redis.call('HGET', KEYS[7], i) or '') .. ARGV[4] .. '\\n')
    end
    if i == ARGV[1] and redis.call('HINCRBY', KEYS[5], i, 1) >= tonumber(ARGV[2]) then
      failed = failed + redis.call('HSETNX', KEYS[6], i, ARGV[3])
    else
      redis.call('LPUSH', KEYS[2], i)
    end
  end
end
redis.call('DEL', KEYS[1])
if #idx > 0 then redis.call('HINCRBY', KEYS[4], 'running', -#idx) end  -- never '-0': not an integer to Redis
if failed ~= 0 then redis.call('HINCRBY', KEYS[4], 'failed', failed) end
return #idx
"""
)

# KEYS rate   ARGV interval_ms want window_ms
# A rate limit shared by every worker of a job, on any machine: grant the items whose
# turn falls within the next `window_ms`, or say how long to wait for the next turn.
TAKE = (
    _NOW
    + """
local interval, want, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local granted = math.min(want, math.floor((now + window - tat) / interval) + 1)
if granted > 0 then
  redis.call('SET', KEYS[1], tat + granted * interval, 'PX', 86400000)
  return {granted, 0}
end
return {0, math.max(1, math.ceil(tat - window - now))}
"""
)

# KEYS counts failures done   ARGV done seen
# A run's counters: its items with a result, as the caller counted them in the bitmap
# when `seen` bits were set (those set since then were recorded meanwhile by workers of
# the run), and the failures themselves.
SET_COUNTS = """
local done = tonumber(ARGV[1]) + redis.call('BITCOUNT', KEYS[3]) - tonumber(ARGV[2])
local failed = redis.call('HLEN', KEYS[2])
redis.call('HSET', KEYS[1], 'done', done, 'failed', failed, 'running', 0)
return {done, failed}
"""

# KEYS done results   ARGV indices
# Drop results that cannot be read back (see PayloadLost), from their chunks too: their
# items run again.
FORGET = (
    _CHUNKS
    + """
local chunks = {}
for _, i in ipairs(ARGV) do
  redis.call('SETBIT', KEYS[1], i, 0)
  redis.call('HDEL', KEYS[2], i)
  local index = tonumber(i)
  local k = math.floor(index / CHUNK)
  if not chunks[k] then chunks[k] = {} end
  chunks[k][#chunks[k] + 1] = index - k * CHUNK + 1
end
for k, slots in pairs(chunks) do
  local blob = redis.call('HGET', KEYS[2], 'c' .. k)
  if blob then
    local held = open_chunk(blob)
    for _, j in ipairs(slots) do held[j] = nil end
    put_chunk(KEYS[2], k, held)
  end
end
return #ARGV
"""
)

# KEYS owner cancel meta   ARGV token now
# Release the job if it is still ours: its workers see the owner gone and leave.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('HSET', KEYS[3], 'workers', 0, 'ended', ARGV[2])
  return redis.call('DEL', KEYS[1], KEYS[2])
end
return 0
"""

# KEYS owner, then every key of the job
# Delete the job unless a caller runs it: checked and done in one step, so that a run that
# begins meanwhile keeps its job. (DEL in slices: unpack has a limit on its arguments.)
DROP_IDLE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 2, #KEYS, 1000 do
  redis.call('DEL', unpack(KEYS, i, math.min(i + 999, #KEYS)))
end
return 1
"""

# KEYS meta   ARGV end
# Appended inputs up to index `end` are stored: raise the total to cover them (appends
# may finish out of order) and mark the job ready.
GROW = """
local total = tonumber(redis.call('HGET', KEYS[1], 'total') or 0)
if total < tonumber(ARGV[1]) then total = tonumber(ARGV[1]) end
redis.call('HSET', KEYS[1], 'total', total, 'ready', '1')
return total
"""

CLAIM_KEYED = _NOW + _CHUNKS + _DUE + limits.HELPERS + limits.CLAIM_KEYED
ADMIT = _NOW + limits.HELPERS + limits.ADMIT
CLEAR_KEYED = _NOW + limits.CLEAR
KEY_STATES = _NOW + limits.KEY_STATES
