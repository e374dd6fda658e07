-- A post's rankings rebuilt from its counts (services.votes.migrate), its
-- creation time set to ARGV[2] if it has none. KEYS: the post, its
-- rankings, the bucket's creation times; ARGV: the post id, the time.
local counts = redis.call('HMGET', KEYS[1], 'upvote', 'downvote')
if not (counts[1] or counts[2]) then return 0 end
rank_posts({KEYS[2], KEYS[3], KEYS[4], KEYS[5]}, KEYS[6], {ARGV[1]},
           {[ARGV[1]] = {tonumber(counts[1] or 0), tonumber(counts[2] or 0),
                         tonumber(ARGV[2])}})
return 1
