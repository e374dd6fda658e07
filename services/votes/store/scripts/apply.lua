-- One atomic step for the parts of one or more events (a part: an event's
-- votes in one bucket). On a cluster each part has a mark of its own; on
-- one server, where every part of an event is in the same call, an event
-- has one mark (in the lowest bucket of its posts), and a mark of any of
-- its other buckets, as an older version wrote them, counts as its mark
-- too. A redelivered part finds its mark and changes nothing (but rewrites
-- the mark, so that a WAIT after it covers the write that set it); a vote
-- sent with an Idempotency-Key
-- counts once per key, in whichever event it comes. Per voter the vote with
-- the latest (ts, voteId) wins, whatever order events arrive in.
-- ARGV: the marks' TTL, the parts, the keys' TTL, the clock skew allowed
-- (microseconds), the retractions' TTL (then the rankings' constants).
-- ARGV[2]: [[mark index, top index, votes, [index of another mark of the
-- event, ...]], ...], the other rankings and
-- the bucket's creation times right after top (in the order of
-- rankings.SORTS), each vote naming its keys by index. On a cluster a call
-- carries the parts of one bucket, on one server every part of a group of
-- events. Each bucket's rankings move once per call, after its counts: a
-- post voted on in several events of the group is ranked once. Returns
-- applied, replayed and conflicts for each part, in order.
-- Every input is checked, and every vote worked out, before the first
-- write: Redis does not undo a script that stops with an error, so an
-- error of any kind, foreseen or not, must find nothing written, or a
-- retry could skip or double a vote. The writes follow, each key once.
local mark_ttl, once_ttl = tonumber(ARGV[1]), tonumber(ARGV[3])
local skew, retract_ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
if not (mark_ttl and mark_ttl >= 1 and once_ttl and once_ttl >= 1
        and skew and skew >= 0 and retract_ttl and retract_ttl >= 1) then
  return redis.error_reply('ERR apply: bad arguments')
end
local parts = cjson.decode(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local function later(ts, id, than_ts, than_id)
  return ts > than_ts or (ts == than_ts and id > than_id)
end
-- a stored count: none is 0; anything but an integer of at most 15 digits
-- (exact in Lua's numbers) is nil
local function count_of(value)
  if value == false then return 0 end
  if #value <= 15 and string.match(value, '^-?%d+$') then return tonumber(value) end
  return nil
end
-- The store as this call leaves it: hash fields read or written (false:
-- none), and the fields to write at the end, in order.
local fields, dirty, dirty_keys = {}, {}, {}
local function known_of(key)
  local known = fields[key]
  if not known then
    known = {}
    fields[key] = known
  end
  return known
end
local function hget(key, field)
  local known = known_of(key)
  local value = known[field]
  if value == nil then
    value = redis.call('HGET', key, field)
    known[field] = value
  end
  return value
end
local function hset(key, field, value)  -- value false: deleted
  known_of(key)[field] = value
  local changed = dirty[key]
  if not changed then
    changed = {}
    dirty[key] = changed
    dirty_keys[#dirty_keys + 1] = key
  end
  if not changed[field] then
    changed[field] = true
    changed[#changed + 1] = field
  end
end
-- marked: an event's state in this call by its mark, "new" (applied in
-- this call) or "replay"; taken: the parts applied (by mark and bucket),
-- so that an event twice in one call counts once
local new_marks, old_marks, marked, taken = {}, {}, {}, {}
local once_values, new_once = {}, {}
local expiring, expiring_keys = {}, {}
-- count changes per post: id -> {up, down, post key, creation time,
-- stored up, stored down, whether the creation time is to be written}
local deltas, posts = {}, {}
-- the creation times found in a bucket's creation-times hash (data written
-- before they moved into each post's hash), to be removed from it:
-- key -> ids, in order
local moved, moved_keys = {}, {}
local results = {}
-- the posts whose counts changed, per bucket (by the index of its top key);
-- a post id is in one bucket only
local changed, buckets = {}, {}
for _, part in ipairs(parts) do
  local mark = KEYS[part[1]]
  local applied, replayed, conflicts = 0, 0, 0
  local bucket_changed = changed[part[2]]
  if not bucket_changed then
    bucket_changed = {}
    changed[part[2]] = bucket_changed
    buckets[#buckets + 1] = part[2]
  end
  local state = marked[mark]
  if not state then
    local found = redis.call('EXISTS', mark) == 1 and mark
    for _, other in ipairs(part[4]) do
      if found then break end
      if redis.call('EXISTS', KEYS[other]) == 1 then found = KEYS[other] end
    end
    if found then
      -- a replay rewrites its mark, so that a WAIT after it covers the
      -- write that set it
      state = 'replay'
      old_marks[#old_marks + 1] = found
    else
      state = 'new'
      new_marks[#new_marks + 1] = mark
    end
    marked[mark] = state
  end
  local part_key = part[1] .. ':' .. part[2]
  if state == 'new' and not taken[part_key] then
    taken[part_key] = true
    local once, seen = {}, {}
    for _, vote in ipairs(part[3]) do
      local post_id, score, voter, vote_id = vote[1], vote[2], vote[3], vote[5]
      -- the post's key; for a voter's vote its voters and retracted keys follow
      local base = vote[8]
      local fresh = true
      if vote[6] > 0 then
        -- a vote sent with an Idempotency-Key: applied once per key, whatever
        -- event carries it; copies of one request share their vote ids
        local once_key = KEYS[vote[6]]
        local state = once[once_key]
        if state == nil then
          local prior = once_values[once_key]
          if prior == nil then prior = redis.call('GET', once_key) end
          if prior == false then
            once_values[once_key] = vote[7]
            new_once[#new_once + 1] = once_key
            state = 'new'
          else
            once_values[once_key] = prior
            if prior == vote[7] then state = 'replay' else state = 'conflict' end
          end
          once[once_key] = state
        end
        if state == 'new' and not seen[vote_id] then
          seen[vote_id] = true
        else
          fresh = false
          if state == 'conflict' then conflicts = conflicts + 1 else replayed = replayed + 1 end
        end
      end
      if fresh then
        applied = applied + 1
        local up, down = 0, 0
        if voter == '' then
          if score == 1 then up = 1 else down = 1 end
        else
          -- a time ahead of the store's clock by more than the allowed skew is
          -- not trusted: the vote takes the store's time instead
          local voters_key, retracted_key = KEYS[base + 1], KEYS[base + 2]
          local ts = tonumber(vote[4])
          if ts > now + skew then ts = now end
          local ts_text = string.format('%.0f', ts)
          local newer, prev_score = true, 0
          local prev = hget(voters_key, voter)
          if prev then
            local pts, pid, ps = string.match(prev, '^(%d+):([^:]+):(-?%d)$')
            if pts then
              newer = later(ts, vote_id, tonumber(pts), pid)
              prev_score = tonumber(ps)
            end
          else
            -- a recent retraction outranks an older vote that arrives late
            local gone = hget(retracted_key, voter)
            if gone then
              local gts, gid = string.match(gone, '^(%d+):([^:]+)$')
              if gts then newer = later(ts, vote_id, tonumber(gts), gid) end
              if newer and score ~= 0 then hset(retracted_key, voter, false) end
            end
          end
          if newer then
            if score == 0 then
              if prev then hset(voters_key, voter, false) end
              hset(retracted_key, voter, ts_text .. ':' .. vote_id)
              if not expiring[retracted_key] then
                expiring[retracted_key] = true
                expiring_keys[#expiring_keys + 1] = retracted_key
              end
            else
              hset(voters_key, voter, ts_text .. ':' .. vote_id .. ':' .. score)
            end
            if prev_score == 1 then up = -1 elseif prev_score == -1 then down = -1 end
            if score == 1 then up = up + 1 elseif score == -1 then down = down + 1 end
          end
        end
        -- no change, no write: retracting nothing creates no post
        if up ~= 0 or down ~= 0 then
          local delta = deltas[post_id]
          if delta then
            delta[1], delta[2] = delta[1] + up, delta[2] + down
          else
            -- the creation time is set once: by the first vote that counts
            -- (its own createdAt, else its time), or by set_created_at
            -- a creation time ahead of the store's clock by more than the
            -- allowed skew is not trusted (it would pin the post atop hot)
            local created = vote[9]
            if created > (now + skew) / 1000000 then created = -1 end
            if created < 0 then
              created = math.floor(math.min(tonumber(vote[4]), now) / 1000000)
            end
            -- the counts and creation time now, read before any write: a
            -- key holding what this script never writes stops the call here
            -- (HMGET refuses another type), with nothing written
            local stored = redis.call('HMGET', KEYS[base], 'upvote', 'downvote', 'createdAt')
            local stored_up, stored_down = count_of(stored[1]), count_of(stored[2])
            if not (stored_up and stored_down) then
              return redis.error_reply(
                'ERR apply: ' .. KEYS[base] .. ' holds a count that is no integer')
            end
            local own = tonumber(stored[3])
            local known = own
            if not known and (stored[1] or stored[2]) then
              -- a post counted before creation times moved into its hash:
              -- its time is in the bucket's creation times, moved from there
              local times = KEYS[part[2] + 4]  -- after the four rankings
              local old = redis.call('HGET', times, post_id)
              known = tonumber(old)
              if old then
                if not moved[times] then
                  moved[times] = {}
                  moved_keys[#moved_keys + 1] = times
                end
                moved[times][#moved[times] + 1] = post_id
              end
            end
            if known then created = known end
            deltas[post_id] = {up, down, KEYS[base], created, stored_up, stored_down,
                               own == nil}
            posts[#posts + 1] = post_id
            bucket_changed[#bucket_changed + 1] = post_id
          end
        end
      end
    end
  end
  results[#results + 1] = applied
  results[#results + 1] = replayed
  results[#results + 1] = conflicts
end
-- the writes; the marks first, so that if memory is short (the first write
-- of a script is refused then) nothing is written. Every key written was
-- read above, so none of them can fail on its type, but the rankings: one
-- of another type fails after the counts, which stay exact (a retry finds
-- the marks), those posts' ranks stale.
-- unpack() has a bounded stack; 1,000 arguments, an even number, never
-- split a field from its value
local function call_chunked(command, key, args)
  for first = 1, #args, 1000 do
    redis.call(command, key, unpack(args, first, math.min(#args, first + 999)))
  end
end
for _, mark in ipairs(new_marks) do redis.call('SET', mark, '1', 'EX', mark_ttl) end
for _, mark in ipairs(old_marks) do redis.call('SET', mark, '1', 'XX', 'KEEPTTL') end
for _, key in ipairs(new_once) do redis.call('SET', key, once_values[key], 'EX', once_ttl) end
for _, key in ipairs(dirty_keys) do
  local set, gone, known = {}, {}, fields[key]
  for _, field in ipairs(dirty[key]) do
    local value = known[field]
    if value then
      set[#set + 1] = field
      set[#set + 1] = value
    else
      gone[#gone + 1] = field
    end
  end
  if #set > 0 then call_chunked('HSET', key, set) end
  if #gone > 0 then call_chunked('HDEL', key, gone) end
end
for _, key in ipairs(expiring_keys) do redis.call('EXPIRE', key, retract_ttl) end
local counts = {}
for _, post_id in ipairs(posts) do
  local delta = deltas[post_id]
  local up, down = delta[5] + delta[1], delta[6] + delta[2]
  if delta[7] then
    redis.call('HSET', delta[3], 'upvote', up, 'downvote', down,
               'createdAt', string.format('%.0f', delta[4]))
  else
    redis.call('HSET', delta[3], 'upvote', up, 'downvote', down)
  end
  counts[post_id] = {up, down, delta[4]}
end
for _, times in ipairs(moved_keys) do call_chunked('HDEL', times, moved[times]) end
for _, top in ipairs(buckets) do
  if #changed[top] > 0 then
    rank_posts({KEYS[top], KEYS[top + 1], KEYS[top + 2], KEYS[top + 3]}, changed[top], counts)
  end
end
return results
