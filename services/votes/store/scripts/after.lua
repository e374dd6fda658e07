-- The first ARGV[3] entries of the ranking KEYS[1] that come after
-- (ARGV[1] score, ARGV[2] postId): past the ties of the score, a binary
-- search of the members that share it (bytewise, as Redis orders them;
-- Lua's own < follows the locale).
local key, score, after, count = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3])
local function greater(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x > y end
  end
  return #a > #b
end
local lo = redis.call('ZCOUNT', key, '-inf', '(' .. score)
local hi = redis.call('ZCOUNT', key, '-inf', score)
while lo < hi do
  local mid = math.floor((lo + hi) / 2)
  if greater(redis.call('ZRANGE', key, mid, mid)[1], after) then hi = mid else lo = mid + 1 end
end
return redis.call('ZRANGE', key, lo, lo + count - 1, 'WITHSCORES')
