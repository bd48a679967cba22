"""How small payloads are kept: packed by CHUNK in one hash field rather than a field each
(a field costs about 70 bytes besides its value).

Field "c<k>" of a job's inputs or results hash holds the items k * CHUNK to
(k + 1) * CHUNK - 1: a flag, CHUNK bytes of lengths (0: no payload in that slot), then the
payloads in slot order. Flag 1: each payload is a pickle kept without the 3 bytes every
pickle of protocol 5 begins and ends with (most of a small int's 5 to 8). Each script
that adds to a chunk (index.ADD, lua.RECORD) reads and writes it whole: a few hundred
bytes to a few KB. Fields named by an index hold one payload each: those of SMALL bytes
or more, and every payload of a job stored in format 2.

`LUA` holds the helpers those scripts share; `open_chunk` reads a chunk in Python.
"""

from __future__ import annotations

CHUNK = 256  # items per chunk: indices [k * CHUNK, (k + 1) * CHUNK) share field "c<k>"
SMALL = 256  # payloads shorter than this are kept in chunks; longer ones in a field of their own

# (open_chunk, slot, close_chunk, put_chunk, place, store_placed and read_items, in Lua)
LUA = f"""
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
-- Gather a payload for `store_placed`: a small one under its chunk and slot, a large one
-- as a field of its own.
local function place(chunks, fields, index, payload)
  if #payload < SMALL then
    local k = math.floor(index / CHUNK)
    if not chunks[k] then chunks[k] = {{}} end
    chunks[k][index - k * CHUNK + 1] = payload
  else
    fields[#fields + 1], fields[#fields + 2] = index, payload
  end
end
-- Write what `place` gathered into the hash `key`: each chunk read and written once.
local function store_placed(key, chunks, fields)
  for k, new in pairs(chunks) do
    local slots = open_chunk(redis.call('HGET', key, 'c' .. k))
    for j, payload in pairs(new) do slots[j] = payload end
    put_chunk(key, k, slots)
  end
  for at = 1, #fields, 1000 do
    redis.call('HSET', key, unpack(fields, at, math.min(at + 999, #fields)))
  end
end
-- The payloads of `items` (indices, as strings) in the hash `key`, in their order (false
-- for none): from their chunks, then from fields of their own for those not found there.
local function read_items(key, items)
  local out, chunks, at, missing = {{}}, {{}}, {{}}, {{}}
  for n, i in ipairs(items) do
    local index = tonumber(i)
    local k = math.floor(index / CHUNK)
    if chunks[k] == nil then chunks[k] = redis.call('HGET', key, 'c' .. k) end
    out[n] = slot(chunks[k], index - k * CHUNK + 1, at) or false
    if not out[n] then missing[#missing + 1] = n end
  end
  if #missing > 0 then
    local names = {{}}
    for m, n in ipairs(missing) do names[m] = items[n] end
    local own = redis.call('HMGET', key, unpack(names))
    for m, n in ipairs(missing) do out[n] = own[m] end
  end
  return out
end
"""


def open_chunk(blob: bytes | None) -> list[bytes | None]:
    """The payload in each slot of a chunk, None where there is none."""
    slots: list[bytes | None] = [None] * CHUNK
    if blob:
        bare, pos = blob[0] == 1, CHUNK + 1
        for j, n in enumerate(blob[1 : CHUNK + 1]):
            if n:
                slots[j] = b"\x80\x05" + blob[pos : pos + n] + b"." if bare else blob[pos : pos + n]
                pos += n
    return slots
