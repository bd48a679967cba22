"""The Lua scripts that make each multi-key step of a job atomic. `store` registers and
calls them with the keys of one job (one hash tag, so they are legal on a Cluster).

Times come from the server's clock (TIME), so workers on several machines agree.
"""

_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

CHUNK = 256  # items per chunk: indices [k * CHUNK, (k + 1) * CHUNK) share field "c<k>"
SMALL = 256  # payloads shorter than this are kept in chunks; longer ones in a field of their own

# Small inputs and results are kept in chunks rather than a hash field each (a field costs
# about 70 bytes besides its value): field "c<k>" of the job's inputs or results holds a
# flag, CHUNK bytes of lengths (0: no payload in that slot), then the payloads in slot
# order. Flag 1: each payload is a pickle kept without the 3 bytes every pickle of
# protocol 5 begins and ends with (most of a small int's 5 to 8). A chunk is read and
# written whole by each call that adds to it (ADD, RECORD): a few hundred bytes to a few
# KB, where a field per item would cost a hash entry each. Fields named by an index hold
# one payload each: large ones, and every payload of a job stored in format 2.
_CHUNKS = f"""
local CHUNK, SMALL, HEAD, STOP = {CHUNK}, {SMALL}, '\\128\\5', '.'
local function open_chunk(blob)
  local slots = {{}}
  if not blob then return slots end
  local bare, pos = string.byte(blob, 1) == 1, CHUNK + 2
  for j = 1, CHUNK do
    local n = string.byte(blob, j + 1)
    if n > 0 then
      local p = string.sub(blob, pos, pos + n - 1)
      slots[j] = bare and (HEAD .. p .. STOP) or p
      pos = pos + n
    end
  end
  return slots
end
-- One slot's payload (nil if none), without reading the others: a claim of a few items
-- of a chunk need not split all of it. `at` caches each chunk's offsets.
local function slot(blob, j, at)
  if not blob then return nil end
  local offsets = at[blob]
  if not offsets then
    offsets = {{CHUNK + 2}}
    local lengths = {{string.byte(blob, 2, CHUNK + 1)}}
    for i = 1, CHUNK do offsets[i + 1] = offsets[i] + lengths[i] end
    at[blob] = offsets
  end
  local from, to = offsets[j], offsets[j + 1]
  if from == to then return nil end
  local p = string.sub(blob, from, to - 1)
  if string.byte(blob, 1) == 1 then return HEAD .. p .. STOP end
  return p
end
local function close_chunk(slots)
  local bare = 1
  for j = 1, CHUNK do
    local p = slots[j]
    if p and (#p < 4 or string.sub(p, 1, 2) ~= HEAD or string.sub(p, -1) ~= STOP) then
      bare = 0
      break
    end
  end
  local lengths, data = {{}}, {{}}
  for j = 1, CHUNK do
    local p = slots[j]
    if p then
      if bare == 1 then p = string.sub(p, 3, -2) end
      lengths[j] = #p
      data[#data + 1] = p
    else
      lengths[j] = 0
    end
  end
  return string.char(bare, unpack(lengths)) .. table.concat(data)
end
local function put_chunk(key, k, slots)
  if next(slots) then redis.call('HSET', key, 'c' .. k, close_chunk(slots)) else redis.call('HDEL', key, 'c' .. k) end
end
"""

# KEYS owner queue claims inputs workers counts delayed
# ARGV token count wid
# Take up to `count` items for a worker, first moving retries that are due back to the
# head of the queue.
CLAIM = (
    _NOW
    + _CHUNKS
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
local due = redis.call('ZRANGEBYSCORE', KEYS[7], '-inf', now, 'LIMIT', 0, 1000)
if #due > 0 then
  redis.call('ZREM', KEYS[7], unpack(due))
  redis.call('LPUSH', KEYS[2], unpack(due))
end
local idx = redis.call('LPOP', KEYS[2], ARGV[2])
if not idx then return {} end
redis.call('SADD', KEYS[5], ARGV[3])
local claimed, at = {}, string.format('%d', now)  -- (a number would be formatted once per item)
for _, i in ipairs(idx) do
  claimed[#claimed + 1] = i
  claimed[#claimed + 1] = at
end
redis.call('HSET', KEYS[3], unpack(claimed))
redis.call('HINCRBY', KEYS[6], 'running', #idx)
local inputs, chunks, at = redis.call('HMGET', KEYS[4], unpack(idx)), {}, {}
for n, i in ipairs(idx) do
  if not inputs[n] then
    local index = tonumber(i)
    local k = math.floor(index / CHUNK)
    if chunks[k] == nil then chunks[k] = redis.call('HGET', KEYS[4], 'c' .. k) end
    inputs[n] = slot(chunks[k], index - k * CHUNK + 1, at) or false
  end
end
return {idx, inputs}
"""
)

# KEYS done results failures counts claims attempts history delayed meta finished
# ARGV retries base_delay_ms results, then per result: index payload; then per failure:
# index kind payload jitter line (kind 'r': may be retried, '0': final).
# Idempotent: a result is stored only if its done bit was not set, so counters never
# double count when an item ran twice. A retry waits in the delayed set, not in a
# sleeping worker, with exponential backoff (jitter comes from the caller).
RECORD = (
    _NOW
    + _CHUNKS
    + """
local retries, base = tonumber(ARGV[1]), tonumber(ARGV[2])
local done, failed = 0, 0
local ok, settled, failures = {}, {}, {}
local first_failure = 4 + 2 * tonumber(ARGV[3])
for i = 4, first_failure - 1, 2 do
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
  local ops, fields, chunks = {}, {}, {}
  for _, i in ipairs(ok) do
    ops[#ops + 1], ops[#ops + 2], ops[#ops + 3], ops[#ops + 4] = 'SET', 'u1', '#' .. ARGV[i], 1
  end
  local before = redis.call('BITFIELD', KEYS[1], unpack(ops))
  local replaced = redis.call('HLEN', KEYS[3]) > 0
  for n, i in ipairs(ok) do
    if before[n] == 0 then
      local payload = ARGV[i + 1]
      if #payload < SMALL then
        local index = tonumber(ARGV[i])
        local k = math.floor(index / CHUNK)
        if not chunks[k] then chunks[k] = {} end
        chunks[k][index - k * CHUNK + 1] = payload
      else
        fields[#fields + 1], fields[#fields + 2] = ARGV[i], payload
      end
      done = done + 1
      -- a late success of an item recorded as failed replaces the failure
      if replaced then failed = failed - redis.call('HDEL', KEYS[3], ARGV[i]) end
    end
  end
  if #fields > 0 then redis.call('HSET', KEYS[2], unpack(fields)) end
  for k, new in pairs(chunks) do
    local slots = open_chunk(redis.call('HGET', KEYS[2], 'c' .. k))
    for j, payload in pairs(new) do slots[j] = payload end
    put_chunk(KEYS[2], k, slots)
  end
end
for _, i in ipairs(failures) do
  local idx, kind = ARGV[i], ARGV[i + 1]
  if redis.call('GETBIT', KEYS[1], idx) == 0 then
    local n = redis.call('HINCRBY', KEYS[6], idx, 1)
    redis.call('HSET', KEYS[7], idx, (redis.call('HGET', KEYS[7], idx) or '') .. ARGV[i + 4] .. '\\n')
    if kind == 'r' and n <= retries then
      redis.call('ZADD', KEYS[8], now + base * 2 ^ (n - 1) * tonumber(ARGV[i + 3]), idx)
    else
      failed = failed + redis.call('HSETNX', KEYS[3], idx, ARGV[i + 2])
    end
  end
end
settled = redis.call('HDEL', KEYS[5], unpack(settled))
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

# KEYS claims queue done counts
# Put the unfinished claims of a worker that was stopped back at the head of the queue.
REQUEUE = """
local idx = redis.call('HKEYS', KEYS[1])
local back = {}
for _, i in ipairs(idx) do
  if redis.call('GETBIT', KEYS[3], i) == 0 then back[#back + 1] = i end
end
redis.call('DEL', KEYS[1])
if #idx > 0 then redis.call('HINCRBY', KEYS[4], 'running', -#idx) end  -- never '-0': not an integer to Redis
for s = 1, #back, 1000 do
  redis.call('LPUSH', KEYS[2], unpack(back, s, math.min(s + 999, #back)))
end
return #back
"""

# KEYS claims queue done counts; ARGV indices
# A worker gives back items it claimed and has not started (see worker._wanted).
UNCLAIM = """
local back, n = {}, 0
for _, i in ipairs(ARGV) do
  if redis.call('HDEL', KEYS[1], i) == 1 then
    n = n + 1
    if redis.call('GETBIT', KEYS[3], i) == 0 then back[#back + 1] = i end
  end
end
if n > 0 then redis.call('HINCRBY', KEYS[4], 'running', -n) end
if #back > 0 then redis.call('LPUSH', KEYS[2], unpack(back)) end
return #back
"""

# KEYS claims queue done counts deaths failures history attempts
# ARGV culprit limit payload line
# A worker died: its unfinished items go back to the head of the queue, except the one
# it was executing, whose death is counted as a failed attempt; an item whose worker
# died `limit` times is recorded as failed.
BURY = """
local idx = redis.call('HKEYS', KEYS[1])
local failed = 0
for _, i in ipairs(idx) do
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

# The index (an input's digest -> its index) is spread over small hashes, so that each
# stays in Redis's compact encoding (about 25 bytes an entry rather than 80): linear
# hashing on the digest's first 4 bytes, growing one bucket at a time. `ix_level` and
# `ix_split` in the job's meta say where a digest lives; every key is under the job's
# hash tag (ARGV[1] is the buckets' prefix).
_BUCKET = """
local function bucket(digest, size, split)  -- (size: 2 ^ level)
  local a, b, c, d = string.byte(digest, 1, 4)
  local h = ((a * 256 + b) * 256 + c) * 256 + d
  local at = h % size
  if at < split then at = h % (size * 2) end
  return at
end
local level, split = 0, 0
do
  local found = redis.call('HMGET', KEYS[1], 'ix_level', 'ix_split')
  level, split = tonumber(found[1]) or 0, tonumber(found[2]) or 0
end
"""
# (store.lookup computes the same address in Python.)
INDEX_LOAD = 40  # entries per bucket on average: well under the compact encoding's 128

# KEYS meta (for a Cluster's routing)   ARGV prefix, then per bucket: its number, n, then n digests
# The index entries of the digests, bucket by bucket, in one call (a command per bucket
# from the client would cost more than the look-ups); nil for a digest not held.
READ_BUCKETS = """
local out, i = {}, 2
while i <= #ARGV do
  local n = tonumber(ARGV[i + 1])
  local found = redis.call('HMGET', ARGV[1] .. ARGV[i], unpack(ARGV, i + 2, i + 1 + n))
  for j = 1, n do out[#out + 1] = found[j] end
  i = i + 2 + n
end
return out
"""

# KEYS meta inputs
# ARGV prefix expect first width indices digests tags, then per input: its payload
# The inputs come packed, as four arguments per input would cost more to send than to
# store: `digests` holds each input's digest (`width` bytes), `indices` each one's index
# (4 bytes, big-endian; '': first, first + 1...), `tags` each one's signature (all of one
# length; '': no secret).
# Store inputs not held yet: the payload at its index (none for ''; a small one in its
# chunk, see _CHUNKS), then the digest pointing to it (its entry: the index, then ':'
# and its signature with a secret). An input held already (another caller stored it
# meanwhile) keeps its index. Returns each input's entry.
# Buckets split first, as if every input were new, so that the new entries land in
# buckets of INDEX_LOAD entries on average and no bucket ever gets large. An empty index
# is sized at once for `expect` inputs (the caller's whole list): its buckets are empty,
# so splitting them moves nothing, where later splits would move what earlier calls added.
ADD = (
    _BUCKET
    + _CHUNKS
    + f"""
local first, width, indices, digests, tags = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5], ARGV[6], ARGV[7]
local n = #ARGV - 7
local tag = #tags / n
local count = tonumber(redis.call('HGET', KEYS[1], 'ix_count')) or 0
local adding, size = n, 2 ^ level
if count == 0 then adding = math.max(adding, tonumber(ARGV[2])) end
while count + adding > {INDEX_LOAD} * (size + split) do
  local from, to = ARGV[1] .. split, ARGV[1] .. (split + size)
  local all, moved, names = redis.call('HGETALL', from), {{}}, {{}}
  for j = 1, #all, 2 do
    if bucket(all[j], size * 2, 0) ~= split then
      moved[#moved + 1], moved[#moved + 2] = all[j], all[j + 1]
      names[#names + 1] = all[j]
    end
  end
  if #names > 0 then
    redis.call('HSET', to, unpack(moved))
    redis.call('HDEL', from, unpack(names))
  end
  split = split + 1
  if split == size then level, split, size = level + 1, 0, size * 2 end
end
-- The inputs by bucket (the first of equal digests only), looked up a bucket at a time.
local ds, groups, order, first_of = {{}}, {{}}, {{}}, {{}}
for j = 1, n do
  local d = string.sub(digests, (j - 1) * width + 1, j * width)
  ds[j] = d
  if not first_of[d] then
    first_of[d] = j
    local at = bucket(d, size, split)
    local group = groups[at]
    if not group then
      group = {{}}
      groups[at] = group
      order[#order + 1] = at
    end
    group[#group + 1] = j
  end
end
local function index_of(j)
  if indices == '' then return first + j - 1 end
  local a, b, c, d = string.byte(indices, 4 * j - 3, 4 * j)
  return ((a * 256 + b) * 256 + c) * 256 + d
end
local entries, inputs, chunks = {{}}, {{}}, {{}}
for _, at in ipairs(order) do
  local key, group, names = ARGV[1] .. at, groups[at], {{}}
  for m, j in ipairs(group) do names[m] = ds[j] end
  local held, fields = redis.call('HMGET', key, unpack(names)), {{}}
  for m, j in ipairs(group) do
    local d = ds[j]
    if held[m] then
      entries[d] = held[m]
    else
      local index = index_of(j)
      local entry = string.format('%d', index)
      if tag > 0 then entry = entry .. ':' .. string.sub(tags, (j - 1) * tag + 1, j * tag) end
      entries[d] = entry
      fields[#fields + 1], fields[#fields + 2] = d, entry
      local payload = ARGV[7 + j]
      if payload ~= '' then
        local k = math.floor(index / CHUNK)
        if not chunks[k] then chunks[k] = {{}} end
        chunks[k][index - k * CHUNK + 1] = payload
      end
      count = count + 1
    end
  end
  if #fields > 0 then redis.call('HSET', key, unpack(fields)) end
end
for k, new in pairs(chunks) do
  local slots = nil
  for j, payload in pairs(new) do
    if #payload < SMALL then
      slots = slots or open_chunk(redis.call('HGET', KEYS[2], 'c' .. k))
      slots[j] = payload
    else
      inputs[#inputs + 1], inputs[#inputs + 2] = k * CHUNK + j - 1, payload
    end
  end
  if slots then put_chunk(KEYS[2], k, slots) end
end
for at = 1, #inputs, 1000 do
  redis.call('HSET', KEYS[2], unpack(inputs, at, math.min(at + 999, #inputs)))
end
local out = {{}}
for j = 1, n do out[j] = entries[ds[j]] end
redis.call('HSET', KEYS[1], 'ix_level', level, 'ix_split', split, 'ix_count', count)
return out
"""
)


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
