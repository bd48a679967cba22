"""The Lua scripts of a job's index (an input's digest -> its index) and of storing its
inputs. `store.jobs` calls them; `store.bits.by_bucket` computes a digest's bucket as
they do."""

from __future__ import annotations

from .chunks import LUA as _CHUNKS

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
local entries, chunks, inputs = {{}}, {{}}, {{}}
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
      if ARGV[7 + j] ~= '' then place(chunks, inputs, index, ARGV[7 + j]) end
      count = count + 1
    end
  end
  if #fields > 0 then redis.call('HSET', key, unpack(fields)) end
end
store_placed(KEYS[2], chunks, inputs)
local out = {{}}
for j = 1, n do out[j] = entries[ds[j]] end
redis.call('HSET', KEYS[1], 'ix_level', level, 'ix_split', split, 'ix_count', count)
return out
"""
)
