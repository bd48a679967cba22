"""Per-key limits in Redis (see `nbtasks.limits`): which items of a key may start now,
the items waiting for their key, backoffs, and what status shows of them.

A worker claims items (`CLAIM_KEYED`): first those waiting for a key that may start
one now, then new ones from the queue, whose keys only the worker can compute (it has
the key function and the input); it hands their keys to `ADMIT`, which lets each start
or puts it to wait under its key. An item that starts takes a slot of its key (``keyed``
says whose), and gives it back when its claim ends in any way: recorded, given back, or
its worker dead (`RELEASE`, shared by the scripts of `lua`). So a slot lives exactly as
long as the claim, which the caller already takes back from dead workers.

Keys of a job that holds limits (all under its prefix P; held lists are named from the
key, so scripts build those names from P):

    P..keyed       hash   index -> the key of an item running under it
    P..keyrun      hash   key -> its items running now
    P..keywait     zset   keys with items waiting, by when one may start (ms; +inf: its slots are taken)
    P..held:<key>  list   items waiting for their key, in order
    P..keytat      hash   key -> its rate limit's next free turn (ms)
    P..keyhold     hash   key -> until when it backs off (ms)
    P..keystreak   hash   key -> backoffs in a row (since its last result)

A score in keywait is a hint of when to look: the claim that looks decides, and scores
the key again.
"""

from __future__ import annotations

# Helpers for scripts that begin with lua._NOW. `grant` lets up to n items of a key start
# (taking slots and turns): how many, and when it may start more (math.huge: when a slot
# comes back). While a key backs off in a row, its concurrency is halved for each backoff.
HELPERS = """
local INF = math.huge
local function score(t) if t == INF then return '+inf' end return string.format('%.3f', t) end
local function grant(P, key, n, now, cap, interval, tau)
  local hold = tonumber(redis.call('HGET', P .. 'keyhold', key)) or 0
  if hold > now then return 0, hold end
  local running = tonumber(redis.call('HGET', P .. 'keyrun', key)) or 0
  local c = INF
  if cap > 0 then c = cap end
  local streak = tonumber(redis.call('HGET', P .. 'keystreak', key)) or 0
  if streak > 0 then
    if cap > 0 then c = math.max(1, math.floor(cap / 2 ^ streak)) else c = 1 end
  end
  if running >= c then return 0, INF end
  n = math.min(n, c - running)
  local tat = now
  if interval > 0 then
    tat = math.max(tonumber(redis.call('HGET', P .. 'keytat', key)) or now, now)
    local turns = math.floor((now + tau - tat) / interval) + 1
    if turns <= 0 then return 0, tat - tau end
    n = math.min(n, turns)
  end
  redis.call('HINCRBY', P .. 'keyrun', key, n)
  local after = now
  if interval > 0 then
    redis.call('HSET', P .. 'keytat', key, string.format('%.3f', tat + n * interval))
    after = tat + n * interval - tau
  end
  if running + n >= c then after = INF end
  return n, after
end
"""

# Shared by every script that ends claims (record, requeue, unclaim, bury): the item's
# slot goes back, and a key that waited for a slot may start an item now.
RELEASE = """
local function release(P, i, now)
  local key = redis.call('HGET', P .. 'keyed', i)
  if not key then return false end
  redis.call('HDEL', P .. 'keyed', i)
  if redis.call('HINCRBY', P .. 'keyrun', key, -1) <= 0 then redis.call('HDEL', P .. 'keyrun', key) end
  if redis.call('ZSCORE', P .. 'keywait', key) == 'inf' then
    redis.call('ZADD', P .. 'keywait', string.format('%d', now), key)
  end
  return key
end
local function keyed(P) return redis.call('EXISTS', P .. 'keyed') == 1 end
"""

# (after lua's move_due and chunks' read_items)
# KEYS owner queue claims inputs workers counts delayed
# ARGV token count wid prefix cap interval_ms tau_ms
# Take up to `count` items: first those waiting for a key that may start one now (their
# slots taken), then new ones from the queue (their keys unknown: see ADMIT). Returns
# the started indices, the new ones, both's inputs, ms until a key may start an item
# (-1: none is due) and how many items wait for their key.
CLAIM_KEYED = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
move_due(KEYS[7], KEYS[2], now)
local want, P = tonumber(ARGV[2]), ARGV[4]
local cap, interval, tau = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local started, taken = {}, 0
for _, key in ipairs(redis.call('ZRANGEBYSCORE', P .. 'keywait', '-inf', now, 'LIMIT', 0, want)) do
  local left = want - #started
  if left <= 0 then break end
  local list = P .. 'held:' .. key
  local n, after, held = 0, now, redis.call('LLEN', list)
  if held > 0 then n, after = grant(P, key, math.min(left, held), now, cap, interval, tau) end
  if n > 0 then
    for _, i in ipairs(redis.call('LPOP', list, n)) do
      started[#started + 1] = i
      redis.call('HSET', P .. 'keyed', i, key)
    end
    taken = taken + n
  end
  if redis.call('EXISTS', list) == 0 then
    redis.call('ZREM', P .. 'keywait', key)
  else
    redis.call('ZADD', P .. 'keywait', score(after), key)
  end
end
local fresh = {}
if want > #started then fresh = redis.call('LPOP', KEYS[2], want - #started) or {} end
local all = {}
for _, i in ipairs(started) do all[#all + 1] = i end
for _, i in ipairs(fresh) do all[#all + 1] = i end
if #all > 0 then
  local claimed, stamp = {}, string.format('%d', now)
  for _, i in ipairs(all) do
    claimed[#claimed + 1] = i
    claimed[#claimed + 1] = stamp
  end
  redis.call('SADD', KEYS[5], ARGV[3])
  redis.call('HSET', KEYS[3], unpack(claimed))
  redis.call('HINCRBY', KEYS[6], 'running', #all)
end
if taken > 0 then redis.call('HINCRBY', KEYS[6], 'held', -taken) end
local wake = -1
local first = redis.call('ZRANGE', P .. 'keywait', 0, 0, 'WITHSCORES')
if first[2] and first[2] ~= 'inf' then wake = math.max(0, math.ceil(tonumber(first[2]) - now)) end
return {started, fresh, read_items(KEYS[4], all), wake, tonumber(redis.call('HGET', KEYS[6], 'held') or 0)}
"""

# KEYS claims counts   ARGV prefix cap interval_ms tau_ms, then per item: index key
# New items with their keys: each starts (taking a slot of its key) if its key may start
# one now and has none waiting; else it waits at the end of its key's list, unclaimed.
# Returns the indices that start.
ADMIT = """
local P, cap, interval, tau = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local started, waits = {}, 0
for j = 5, #ARGV, 2 do
  local i, key = ARGV[j], ARGV[j + 1]
  if redis.call('HEXISTS', KEYS[1], i) == 1 then
    local list = P .. 'held:' .. key
    local n, after = 0, now
    if redis.call('EXISTS', list) == 0 then n, after = grant(P, key, 1, now, cap, interval, tau) end
    if n == 1 then
      started[#started + 1] = i
      redis.call('HSET', P .. 'keyed', i, key)
    else
      if redis.call('EXISTS', list) == 0 then redis.call('ZADD', P .. 'keywait', score(after), key) end
      redis.call('RPUSH', list, i)
      redis.call('HDEL', KEYS[1], i)
      waits = waits + 1
    end
  end
end
if waits > 0 then
  redis.call('HINCRBY', KEYS[2], 'running', -waits)
  redis.call('HINCRBY', KEYS[2], 'held', waits)
end
return started
"""

# KEYS counts   ARGV prefix full
# A run begins: items waiting for their keys go (the run queues every pending item
# again), and so do the slots (the claims went); a new run (`full`) also forgets the
# keys' turns and backoffs in a row, and backoffs that are over.
CLEAR = """
local P = ARGV[1]
local waiting = redis.call('ZRANGE', P .. 'keywait', 0, -1)
for s = 1, #waiting, 500 do
  local lists = {}
  for j = s, math.min(s + 499, #waiting) do lists[#lists + 1] = P .. 'held:' .. waiting[j] end
  redis.call('DEL', unpack(lists))
end
redis.call('DEL', P .. 'keywait', P .. 'keyed', P .. 'keyrun')
redis.call('HSET', KEYS[1], 'held', 0)
if ARGV[2] == '1' then
  redis.call('DEL', P .. 'keytat', P .. 'keystreak')
  local holds = redis.call('HGETALL', P .. 'keyhold')
  for j = 1, #holds, 2 do
    if tonumber(holds[j + 1]) <= now then redis.call('HDEL', P .. 'keyhold', holds[j]) end
  end
end
return #waiting
"""

# ARGV prefix top
# What status shows: the `top` keys with the most items running and waiting (key,
# running, waiting), and every key backing off now (key, ms left, backoffs in a row).
KEY_STATES = """
local P, top = ARGV[1], tonumber(ARGV[2])
local load = {}
local run = redis.call('HGETALL', P .. 'keyrun')
for j = 1, #run, 2 do load[run[j]] = {tonumber(run[j + 1]), 0} end
for _, key in ipairs(redis.call('ZRANGE', P .. 'keywait', 0, 9999)) do
  local n = redis.call('LLEN', P .. 'held:' .. key)
  if load[key] then load[key][2] = n else load[key] = {0, n} end
end
local busy = {}
for key, c in pairs(load) do busy[#busy + 1] = {key, c[1], c[2]} end
table.sort(busy, function(a, b)
  if a[2] + a[3] ~= b[2] + b[3] then return a[2] + a[3] > b[2] + b[3] end
  return a[1] < b[1]
end)
local out = {}
for j = 1, math.min(top, #busy) do out[#out + 1] = busy[j] end
local holding = {}
local holds = redis.call('HGETALL', P .. 'keyhold')
for j = 1, #holds, 2 do
  local left = math.ceil(tonumber(holds[j + 1]) - now)
  if left > 0 then
    holding[#holding + 1] = {holds[j], left, tonumber(redis.call('HGET', P .. 'keystreak', holds[j]) or 0)}
  end
end
return {out, holding}
"""
