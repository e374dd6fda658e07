-- A post's creation time, set by the operator (PUT /posts/<postId>), and its
-- hot rank with it in the same step; a post with no votes is left alone
-- (false): a made-up id must not leave a key behind. KEYS: the post, its hot
-- ranking, the bucket's creation times (where data written before creation
-- times moved into each post's hash keeps them: the post's is removed);
-- ARGV: the post id, the time, the clock skew allowed (microseconds).
local created, skew = tonumber(ARGV[2]), tonumber(ARGV[3])
if not (created and skew) then return redis.error_reply('ERR set_created_at: bad arguments') end
local counts = redis.call('HMGET', KEYS[1], 'upvote', 'downvote')
if not (counts[1] or counts[2]) then return false end
-- not later than the store's clock allows (see the apply script)
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
if created > (now + skew) / 1000000 then created = math.floor(now / 1000000) end
-- first, so that one of another type fails the call before any write
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[1], 'createdAt', string.format('%.0f', created))
local u, d = tonumber(counts[1] or 0), tonumber(counts[2] or 0)
redis.call('ZADD', KEYS[2], key(hot(u, d, created), HOT_SCALE), ARGV[1])
return string.format('%.0f', created)
