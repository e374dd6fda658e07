-- A post's rankings rebuilt from its counts (services.votes.migrate), its
-- creation time set if it has none: the one the bucket's creation times
-- hold for it (data written before creation times moved into each post's
-- hash), moved, else ARGV[2]. KEYS: the post, its rankings, the bucket's
-- creation times; ARGV: the post id, the time.
local counts = redis.call('HMGET', KEYS[1], 'upvote', 'downvote', 'createdAt')
if not (counts[1] or counts[2]) then return 0 end
local created = tonumber(counts[3])
if not created then
  local old = redis.call('HGET', KEYS[6], ARGV[1])
  created = tonumber(old) or tonumber(ARGV[2])
  redis.call('HSET', KEYS[1], 'createdAt', string.format('%.0f', created))
  if old then redis.call('HDEL', KEYS[6], ARGV[1]) end
end
rank_posts({KEYS[2], KEYS[3], KEYS[4], KEYS[5]}, {ARGV[1]},
           {[ARGV[1]] = {tonumber(counts[1] or 0), tonumber(counts[2] or 0), created}})
return 1
