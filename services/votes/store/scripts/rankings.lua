-- The rankings' arithmetic (services/rankings.py holds the same), shared by
-- the scripts that rank: scripts.py puts it before apply.lua,
-- set_created.lua and rebuild.lua, and appends its constants to their
-- arguments (the last six: WILSON_Z, HOT_EPOCH, HOT_SECONDS and the scales
-- of best, controversial and hot), so that they are written once, in Python.
local RANKING_ARGS = #ARGV - 5
local WILSON_Z, HOT_EPOCH = tonumber(ARGV[RANKING_ARGS]), tonumber(ARGV[RANKING_ARGS + 1])
local HOT_SECONDS, BEST_SCALE = tonumber(ARGV[RANKING_ARGS + 2]), tonumber(ARGV[RANKING_ARGS + 3])
local CONTROVERSIAL_SCALE, HOT_SCALE = tonumber(ARGV[RANKING_ARGS + 4]), tonumber(ARGV[RANKING_ARGS + 5])
if not (RANKING_ARGS >= 1 and WILSON_Z and HOT_EPOCH and HOT_SECONDS and BEST_SCALE
        and CONTROVERSIAL_SCALE and HOT_SCALE) then
  return redis.error_reply('ERR rankings: bad arguments')
end
-- The sort keys: integers, exact in a double, stored negated, so that
-- Redis's order (score, then member ascending) is highest first, ties by
-- postId. Integers, because a small sorted set (listpack) keeps an integer
-- score as an integer, and compares it without parsing text: with 17-digit
-- scores each ZADD took three times as long.
-- a number, not text: Redis passes it on exactly (every key is an integer
-- below 2^53), and string.format cost a third of a microsecond a key
local function key(value, scale)
  local k = math.floor(value * scale + 0.5)
  if k == 0 then return 0 end
  return -k
end
local function best(up, down)
  local n = up + down
  if n == 0 or up == 0 then return 0 end
  local p, z = up / n, WILSON_Z
  return (p + z * z / (2 * n) - z * math.sqrt((p * (1 - p) + z * z / (4 * n)) / n))
    / (1 + z * z / n)
end
-- the logarithm of (up + down) ^ (min / max): the same order, and bounded
local function controversial(up, down)
  if up == 0 or down == 0 then return 0 end
  return math.min(up, down) / math.max(up, down) * math.log(up + down)
end
local function hot(up, down, created)
  local s = up - down
  local order = math.log10(math.max(math.abs(s), 1))
  local sign = 0
  if s > 0 then sign = 1 elseif s < 0 then sign = -1 end
  return sign * order + (created - HOT_EPOCH) / HOT_SECONDS
end
-- Rank posts whose counts changed: ranks, the keys of the rankings in the
-- order of rankings.SORTS; ids, the posts; counts[id] = {upvote, downvote,
-- creation time}. One ZADD per ranking for all of them: a call from Lua
-- costs more than the work of most commands.
local function rank_posts(ranks, ids, counts)
  for first = 1, #ids, 500 do  -- unpack() has a bounded stack
    local top, b, c, h = {}, {}, {}, {}
    for i = first, math.min(#ids, first + 499) do
      local id = ids[i]
      local u, d, created = counts[id][1], counts[id][2], counts[id][3]
      top[#top + 1] = d - u
      top[#top + 1] = id
      b[#b + 1] = key(best(u, d), BEST_SCALE)
      b[#b + 1] = id
      c[#c + 1] = key(controversial(u, d), CONTROVERSIAL_SCALE)
      c[#c + 1] = id
      h[#h + 1] = key(hot(u, d, created), HOT_SCALE)
      h[#h + 1] = id
    end
    redis.call('ZADD', ranks[1], unpack(top))
    redis.call('ZADD', ranks[2], unpack(b))
    redis.call('ZADD', ranks[3], unpack(c))
    redis.call('ZADD', ranks[4], unpack(h))
  end
end
