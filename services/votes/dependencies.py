"""Redis storage for vote counts, owned by the votes service alone.

Redis layout (every key starts with ``votes:``; ``{bN}`` is the hash tag of
bucket N, one of VOTE_BUCKETS, which a post id's CRC-32 picks; see
services/contracts.py):

    votes:{bN}:post:<postId>       hash    upvote, downvote (the apply script's)
    votes:{bN}:voters:<postId>     hash    voterId -> "<ts>:<voteId>:<score>"
    votes:{bN}:retracted:<postId>  hash    voterId -> "<ts>:<voteId>" of recent
                                           retractions; the key expires
                                           RETRACTION_TTL seconds after the last
    votes:{bN}:top                 zset    the bucket's postIds scored by
                                           downvote - upvote
    votes:{bN}:rank:<sort>         zset    the same, scored by minus the
                                           ranking's integer key (best,
                                           controversial, hot;
                                           services/rankings.py)
    votes:{bN}:created             hash    postId -> creation time (seconds)
    votes:{bN}:applied:<eventId>   string  exactly-once mark of the part of an
                                           event in the bucket, expires after
                                           APPLIED_MARK_TTL seconds
    votes:{bN}:once:<keyId>        string  an Idempotency-Key's votes in the
                                           bucket were applied (the request's
                                           fingerprint), IDEMPOTENCY_TTL
    votes:{bK}:claim:<keyId>       string  the fingerprint of the request that
                                           first used the key (bK: the key's
                                           own bucket), IDEMPOTENCY_TTL

All keys of one bucket share a hash slot, so the same layout serves one
Redis and a Redis Cluster: every script names every key in KEYS, and on a
cluster each call touches one bucket.
"""
import collections
import hashlib
import logging
import re

import eventlet
import orjson
import redis
from nameko.constants import DEFAULT_MAX_WORKERS, MAX_WORKERS_CONFIG_KEY
from nameko.exceptions import ConfigurationError
from nameko_redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from services import contracts, rankings
from services.platform import redis_nodes
from services.platform.batching import GroupCommit
from services.platform.brokers import redact
from services.platform.container import REDIS, done_waiting, waiting_for
from services.platform.dead_lettering import dead_letter_queue
from services.settings import number
from services.votes import metrics
from services.votes.exceptions import NotFound, StoreUnavailable

_log = logging.getLogger(__name__)

REDIS_KEY = "votes"  # the entry of REDIS_URIS this service uses
MARK_TTL_CONFIG_KEY = "APPLIED_MARK_TTL"
DEFAULT_MARK_TTL = 24 * 60 * 60
IDEMPOTENCY_TTL_CONFIG_KEY = "IDEMPOTENCY_TTL"
DEFAULT_IDEMPOTENCY_TTL = 24 * 60 * 60
CLOCK_SKEW_CONFIG_KEY = "MAX_CLOCK_SKEW"
DEFAULT_CLOCK_SKEW = 2.0
RETRACTION_TTL_CONFIG_KEY = "RETRACTION_TTL"
DEFAULT_RETRACTION_TTL = 60 * 60
BUCKETS_CONFIG_KEY = "VOTE_BUCKETS"
# replicas that must have an event's writes before it is acked, while its
# master has them (services/platform/redis_nodes.py, WriteRouter); unset: 1
# from the first time a master is seen with a replica, else 0
MIN_REPLICAS_CONFIG_KEY = "REDIS_MIN_REPLICAS"
WAIT_TIMEOUT_CONFIG_KEY = "REDIS_WAIT_TIMEOUT"  # milliseconds
DEFAULT_WAIT_TIMEOUT = 1000
# a master with fewer replicas in sync than wanted: "continue" acks its
# writes without them (reduced durability, reported), "hold" waits
REPLICA_LOSS_CONFIG_KEY = "REDIS_REPLICA_LOSS"
REPLICA_LOSS_CHOICES = ("continue", "hold")


# The rankings' sort keys (services/rankings.py holds the same arithmetic):
# integers, exact in a double, stored negated, so that Redis's order (score,
# then member ascending) is highest first, ties by postId. Integers, because
# a small sorted set (listpack) keeps an integer score as an integer, and
# compares it without parsing text: with 17-digit scores each ZADD took
# three times as long.
RANKINGS_LUA = """
local WILSON_Z, HOT_EPOCH, HOT_SECONDS = %r, %d, %d
local BEST_SCALE, CONTROVERSIAL_SCALE, HOT_SCALE = %r, %r, %r
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
-- order of rankings.SORTS; created_key, the bucket's creation times; ids,
-- the posts; counts[id] = {upvote, downvote, the creation time to record
-- if the post has none}. One HMGET, HSET and ZADD per ranking for all of
-- them: a call from Lua costs more than the work of most commands.
local function rank_posts(ranks, created_key, ids, counts)
  for first = 1, #ids, 500 do  -- unpack() has a bounded stack
    local chunk = {}
    for i = first, math.min(#ids, first + 499) do chunk[#chunk + 1] = ids[i] end
    local known = redis.call('HMGET', created_key, unpack(chunk))
    local new, top, b, c, h = {}, {}, {}, {}, {}
    for i, id in ipairs(chunk) do
      local u, d = counts[id][1], counts[id][2]
      local created = tonumber(known[i])
      if not created then
        created = counts[id][3]
        new[#new + 1] = id
        new[#new + 1] = string.format('%%.0f', created)
      end
      top[#top + 1] = d - u
      top[#top + 1] = id
      b[#b + 1] = key(best(u, d), BEST_SCALE)
      b[#b + 1] = id
      c[#c + 1] = key(controversial(u, d), CONTROVERSIAL_SCALE)
      c[#c + 1] = id
      h[#h + 1] = key(hot(u, d, created), HOT_SCALE)
      h[#h + 1] = id
    end
    if #new > 0 then redis.call('HSET', created_key, unpack(new)) end
    redis.call('ZADD', ranks[1], unpack(top))
    redis.call('ZADD', ranks[2], unpack(b))
    redis.call('ZADD', ranks[3], unpack(c))
    redis.call('ZADD', ranks[4], unpack(h))
  end
end
""" % (rankings.WILSON_Z, rankings.HOT_EPOCH, rankings.HOT_SECONDS,
       rankings.SCALES[rankings.BEST], rankings.SCALES[rankings.CONTROVERSIAL],
       rankings.SCALES[rankings.HOT])

# One atomic step for the parts of one or more events (a part: an event's
# votes in one bucket), each with its own mark. A redelivered part finds
# its mark and changes nothing (but rewrites the mark, so that a WAIT after
# it covers the write that set it); a vote sent with an Idempotency-Key
# counts once per key, in whichever event it comes. Per voter the vote with
# the latest (ts, voteId) wins, whatever order events arrive in. ARGV[2]:
# [[mark index, top index, votes], ...], the other rankings and the
# bucket's creation times right after top (in the order of rankings.SORTS),
# each vote naming its keys by index. On a cluster a call carries the parts
# of one bucket, on one server every part of a group of events. Each
# bucket's rankings move once per call, after its counts: a post voted on
# in several events of the group is ranked once. Returns applied, replayed
# and conflicts for each part, in order.
APPLY_SCRIPT = RANKINGS_LUA + """
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
local new_marks, old_marks, marked = {}, {}, {}
local once_values, new_once = {}, {}
local expiring, expiring_keys = {}, {}
-- count changes per post: id -> {up, down, post key, creation time,
-- stored up, stored down}
local deltas, posts = {}, {}
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
  if marked[mark] then
    -- the same event twice in one call: the second is a replay
  elseif redis.call('EXISTS', mark) == 1 then
    -- a replay rewrites its mark, so that a WAIT after it covers the
    -- write that set it
    marked[mark] = true
    old_marks[#old_marks + 1] = mark
  else
    marked[mark] = true
    new_marks[#new_marks + 1] = mark
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
            -- the counts now, read before any write: a key holding what
            -- this script never writes stops the call here (HMGET refuses
            -- another type), with nothing written
            local stored = redis.call('HMGET', KEYS[base], 'upvote', 'downvote')
            local stored_up, stored_down = count_of(stored[1]), count_of(stored[2])
            if not (stored_up and stored_down) then
              return redis.error_reply(
                'ERR apply: ' .. KEYS[base] .. ' holds a count that is no integer')
            end
            deltas[post_id] = {up, down, KEYS[base], created, stored_up, stored_down}
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
-- of a script is refused then) nothing is written. Every key written up to
-- the counts was read above, so none of them can fail on its type; only a
-- ranking or creation-times key of another type fails after the counts:
-- they stay exact (a retry finds the marks), those posts' ranks stale.
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
  redis.call('HSET', delta[3], 'upvote', up, 'downvote', down)
  counts[post_id] = {up, down, delta[4]}
end
for _, top in ipairs(buckets) do
  if #changed[top] > 0 then
    rank_posts({KEYS[top], KEYS[top + 1], KEYS[top + 2], KEYS[top + 3]},
               KEYS[top + 4], changed[top], counts)
  end
end
return results
"""

# A post's creation time, set by the operator (PUT /posts/<postId>), and its
# hot rank with it in the same step; a post with no votes is left alone
# (false): a made-up id must not leave a key behind.
SET_CREATED_SCRIPT = RANKINGS_LUA + """
local created, skew = tonumber(ARGV[2]), tonumber(ARGV[3])
if not (created and skew) then return redis.error_reply('ERR set_created_at: bad arguments') end
local counts = redis.call('HMGET', KEYS[1], 'upvote', 'downvote')
if not (counts[1] or counts[2]) then return false end
-- not later than the store's clock allows (see the apply script)
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
if created > (now + skew) / 1000000 then created = math.floor(now / 1000000) end
redis.call('HSET', KEYS[3], ARGV[1], string.format('%.0f', created))
local u, d = tonumber(counts[1] or 0), tonumber(counts[2] or 0)
redis.call('ZADD', KEYS[2], key(hot(u, d, created), HOT_SCALE), ARGV[1])
return string.format('%.0f', created)
"""

# A post's rankings rebuilt from its counts (services.votes.migrate), its
# creation time set to ARGV[2] if it has none. KEYS: the post, its
# rankings, the bucket's creation times.
REBUILD_SCRIPT = RANKINGS_LUA + """
local counts = redis.call('HMGET', KEYS[1], 'upvote', 'downvote')
if not (counts[1] or counts[2]) then return 0 end
rank_posts({KEYS[2], KEYS[3], KEYS[4], KEYS[5]}, KEYS[6], {ARGV[1]},
           {[ARGV[1]] = {tonumber(counts[1] or 0), tonumber(counts[2] or 0),
                         tonumber(ARGV[2])}})
return 1
"""


def rebuild_command(pipe, post_id, buckets, now):
    """Queue on ``pipe`` the rebuild of a post's rankings (REBUILD_SCRIPT)."""
    bucket = contracts.bucket_of(post_id, buckets)
    keys = [contracts.post_keys(bucket, post_id)[0]]
    keys += [contracts.rank_key(bucket, sort) for sort in rankings.SORTS]
    keys.append(contracts.created_key(bucket))
    pipe.execute_command("EVAL", REBUILD_SCRIPT, len(keys), *keys, post_id, int(now))


# the counts of many posts of one bucket, and a voter's entry where one is
# asked for (ARGV: a voter id or "" for each post; KEYS: each post's key,
# followed by its voters' key if a voter is asked for): [upvote, downvote,
# entry, ...]. A pipeline of HMGETs cost the client about 9 us a post, this
# about 0.6.
COUNTS_SCRIPT = """
local out, k = {}, 1
for i, voter in ipairs(ARGV) do
  local counts = redis.call('HMGET', KEYS[k], 'upvote', 'downvote')
  k = k + 1
  local mine = false
  if voter ~= '' then
    mine = redis.call('HGET', KEYS[k], voter)
    k = k + 1
  end
  out[3 * i - 2], out[3 * i - 1], out[3 * i] = counts[1], counts[2], mine
end
return out
"""

# The first ARGV[3] entries of the ranking KEYS[1] that come after
# (ARGV[1] score, ARGV[2] postId): past the ties of the score, a binary
# search of the members that share it (bytewise, as Redis orders them; Lua's
# own < follows the locale).
AFTER_SCRIPT = """
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
"""

# Redis replies that mean "not now", not "never": out of memory (OOM), cannot
# persist (MISCONF), running a slow script (BUSY), loading its data
# (LOADING), a replica or a failover (READONLY, MASTERDOWN, NOREPLICAS), a
# cluster in motion (TRYAGAIN, MOVED, ASK, CLUSTERDOWN), an ACL being
# changed (NOPERM). Each refuses a script before its first write, so a retry
# never half-applies. redis-py raises a class of its own for some of them,
# and a plain ResponseError holding the code for the others.
TRANSIENT_CODES = frozenset((
    "OOM", "MISCONF", "BUSY", "LOADING", "READONLY", "TRYAGAIN", "MOVED",
    "ASK", "CLUSTERDOWN", "MASTERDOWN", "NOREPLICAS", "NOPERM",
))
_TRANSIENT_CLASSES = (
    (redis.exceptions.BusyLoadingError, "LOADING"),
    (redis.exceptions.AuthenticationError, "AUTH"),
    (redis.exceptions.AuthorizationError, "AUTH"),
    (redis.ConnectionError, "CONNECTION"),
    (redis.TimeoutError, "TIMEOUT"),
    (redis.exceptions.OutOfMemoryError, "OOM"),
    (redis.exceptions.ReadOnlyError, "READONLY"),
    (redis.exceptions.TryAgainError, "TRYAGAIN"),
    (redis.exceptions.MovedError, "MOVED"),  # before AskError, its base
    (redis.exceptions.AskError, "ASK"),
    (redis.exceptions.MasterDownError, "MASTERDOWN"),  # before ClusterDownError
    (redis.exceptions.ClusterDownError, "CLUSTERDOWN"),
    (redis.exceptions.NoPermissionError, "NOPERM"),
)
# the code opens the reply; a pipeline puts its own words before it, and a
# script error of Redis < 7 quotes it after a dash
_CODE = re.compile(r"(?:^|caused error: |: -)([A-Z]+)(?= |$)")
OTHER_ERROR = "OTHER"


def store_error_kind(exc):
    """What a Redis error means: one of TRANSIENT_CODES, or CONNECTION,
    TIMEOUT, AUTH (all worth retrying for as long as it takes), or
    OTHER_ERROR (a mistake in the request or the script: never retried
    by the store, dead-lettered by the handler)."""
    for cls, kind in _TRANSIENT_CLASSES:
        if isinstance(exc, cls):
            return kind
    if isinstance(exc, redis.ResponseError):
        code = getattr(exc, "status_code", None)
        if code in TRANSIENT_CODES:
            return code
        match = _CODE.search(str(exc.args[0]) if exc.args else "")
        if match and match.group(1) in TRANSIENT_CODES:
            return match.group(1)
    return OTHER_ERROR


def store_error(exc):
    """Count a Redis error by kind; raise StoreUnavailable for one that
    means "not now". Returns (and the caller re-raises) any other."""
    kind = store_error_kind(exc)
    metrics.store_errors.labels(kind).inc()
    if kind != OTHER_ERROR:
        raise StoreUnavailable("{}: {}".format(kind, exc)) from exc
    return exc


REDIS_ERRORS = (redis.RedisError,)

Applied = collections.namedtuple("Applied", "votes replayed conflicts")
# min_replicas None: 1 from the first time a master is seen with a
# replica, else 0; replica_loss: one of REPLICA_LOSS_CHOICES
Limits = collections.namedtuple(
    "Limits", "mark_ttl idempotency_ttl clock_skew retraction_ttl buckets "
    "min_replicas wait_timeout replica_loss",
    defaults=(contracts.DEFAULT_BUCKETS, None, DEFAULT_WAIT_TIMEOUT,
              REPLICA_LOSS_CHOICES[0]))
TOP_READS = 3  # reads of the top until its order and its counts agree
# votes of the events applied in one script call, at most (an event larger
# than that goes alone); and calls in flight at once, so that one group is
# packed while Redis runs another
APPLY_GROUP_VOTES = 2000
APPLY_FLUSHERS = 2


def counts_dict(post_id, upvote, downvote, my_vote=None):
    upvote, downvote = int(upvote or 0), int(downvote or 0)
    counts = {
        "postId": post_id,
        "upvote": upvote,
        "downvote": downvote,
        "score": upvote - downvote,
    }
    if my_vote is not None:
        counts["myVote"] = my_vote
    return counts


def _pairs(ranks):
    """(member, score) pairs of a ZRANGE WITHSCORES, as redis-py gives them
    (pairs) or as a script returns them (flat)."""
    if ranks and not isinstance(ranks[0], (list, tuple)):
        return zip(ranks[0::2], ranks[1::2], strict=True)
    return ranks


def _agrees(sort, score, up, down, created):
    """Whether counts read after a ranking give the score it was read at."""
    if up is None and down is None:
        return False
    up, down = int(up or 0), int(down or 0)
    # one unit of leeway: another machine's libm may round differently
    return abs(score - rankings.stored(sort, up, down, int(created or 0))) <= (
        0 if sort == rankings.TOP else 1)


def _voter_score(entry):
    return int(entry.rsplit(":", 1)[1]) if entry else 0


class VoteStorage:
    """The domain verbs over one Redis client (a plain one or a
    RedisCluster); safe to share among workers."""

    def __init__(self, client, limits):
        self.client = client
        self.limits = limits
        self.buckets = limits.buckets
        self.writes = redis_nodes.WriteRouter(
            client, limits.min_replicas, limits.wait_timeout,
            on_redirect=lambda kind: metrics.redirects.labels(kind).inc(),
            hold=limits.replica_loss == "hold",
            on_replicas=lambda node, short: metrics.reduced_durability.labels(
                node).set(1 if short else 0),
            on_unreplicated=lambda node: metrics.unreplicated_writes.labels(node).inc())
        self._apply_sha = _sha(APPLY_SCRIPT)  # loaded on the first NOSCRIPT
        self._set_created_sha = _sha(SET_CREATED_SCRIPT)
        self.group = None  # a GroupCommit of apply_many, if set

    def _claims(self, votes):
        """{keyId: the fingerprint it is claimed for}: each Idempotency-Key
        of the event is claimed (SET NX GET) in its own bucket before any
        part is applied, so that another request under the same key is a
        conflict in every bucket, not only in those the first one used."""
        firsts = {}
        for vote in votes:
            if vote.key is not None:
                firsts.setdefault(vote.key, vote.fp or "")
        if not firsts:
            return {}
        ttl = self.limits.idempotency_ttl
        commands = [redis_nodes.Command(key, ("SET", key, fp, "NX", "GET", "EX", ttl),
                                        options={"get": True})
                    for key, fp in ((contracts.claim_key(k, self.buckets), fp)
                                    for k, fp in firsts.items())]
        prior = self.writes.run(commands)
        return {key_id: fp if old is None else old
                for (key_id, fp), old in zip(firsts.items(), prior, strict=True)}

    def _command(self, parts):
        """The apply script's command for parts [(event_id, bucket, votes),
        ...]: every key named once in KEYS, the votes as one JSON argument
        (far cheaper to pack than a few arguments each)."""
        keys = []
        once_slots = {}  # an Idempotency-Key's key -> its index in KEYS
        tops = {}   # bucket -> the index of its top key
        packed_parts = []
        # a post's voters and retracted keys only if a voter votes on it
        # (redis-py packs every key: about 2 us each)
        voted = {vote.postId for _, _, votes in parts for vote in votes if vote.voterId}
        bases = {}
        for event_id, bucket, votes in parts:
            mark = len(keys) + 1
            keys.append(contracts.applied_key(bucket, event_id))
            top = tops.get(bucket)
            if top is None:
                top = tops[bucket] = len(keys) + 1
                keys += [contracts.rank_key(bucket, sort) for sort in rankings.SORTS]
                keys.append(contracts.created_key(bucket))
            packed = []
            for vote in votes:
                base = bases.get(vote.postId)
                if base is None:
                    base = bases[vote.postId] = len(keys) + 1
                    post_keys = contracts.post_keys(bucket, vote.postId)
                    keys += post_keys if vote.postId in voted else post_keys[:1]
                slot = 0
                if vote.key is not None:
                    once_key = contracts.once_key(bucket, vote.key)
                    slot = once_slots.get(once_key)
                    if slot is None:
                        keys.append(once_key)
                        slot = once_slots[once_key] = len(keys)
                packed.append([vote.postId, vote.score, vote.voterId or "",
                               str(vote.ts), vote.voteId, slot, vote.fp or "", base,
                               -1 if vote.createdAt is None else vote.createdAt])
            packed_parts.append([mark, top, packed])
        limits = self.limits
        args = ("EVALSHA", self._apply_sha, len(keys), *keys,
                limits.mark_ttl, orjson.dumps(packed_parts),
                limits.idempotency_ttl, int(limits.clock_skew * 1_000_000),
                limits.retraction_ttl)
        return redis_nodes.Command(keys[0], args, APPLY_SCRIPT)

    def _part_results(self, reply, count):
        """(applied, replayed, conflicts) of each part, from the script's reply."""
        return [reply[i:i + 3] for i in range(0, 3 * count, 3)]

    def apply(self, event_id, votes):
        """Apply the votes of one event, once. Returns Applied: how many
        votes were applied, and how many keyed votes were skipped as
        replays of their key or as conflicts with it (all 0 when the event
        had been applied before).

        The event is split by bucket; each part is applied with a mark of
        its own, so that a retry after a failure part way applies only the
        parts still missing. It returns only when every part is applied
        (and, with REDIS_MIN_REPLICAS, on that many replicas); else it
        raises. With a ``group`` (the service's), concurrent workers'
        events share script calls (apply_many)."""
        if self.group is not None:
            result = self.group.submit((event_id, votes))
            if isinstance(result, Exception):
                raise result
            return result
        return self.apply_many([(event_id, votes)])[0]

    def apply_group(self, events):
        """apply_many for the group commit. If the shared call fails for
        another reason than the store being unavailable (an event the
        script cannot apply), each event is tried alone, so that its
        failure is its own and the others are applied: returns an Applied
        or the exception for each event. The marks make the retry safe. A
        call that fails has written nothing (the script works every vote
        out before its first write), so on one server, one call, each
        event's Applied is whole; on a cluster the calls of the other
        buckets may have succeeded, and an event's Applied then leaves out
        what they applied."""
        try:
            return self.apply_many(events)
        except StoreUnavailable:
            raise
        except Exception:
            if len(events) == 1:
                raise
            _log.warning("a group of %d events failed; applying each alone", len(events))
        results = []
        for event in events:
            try:
                results.append(self.apply_many([event])[0])
            except Exception as exc:
                results.append(exc)
        return results

    def apply_many(self, events):
        """apply() for [(event_id, votes), ...] in as few script calls as
        the layout allows: one on one server, one per bucket on a cluster.
        Returns an Applied per event, or raises for all of them (a retry
        re-applies only the parts that are missing)."""
        try:
            claims = self._claims([vote for _, votes in events for vote in votes])
            conflicts = [0] * len(events)
            by_bucket = collections.defaultdict(list)  # bucket -> [(event, part)]
            for number, (event_id, votes) in enumerate(events):
                parts = collections.defaultdict(list)
                for vote in votes:
                    if vote.key is not None and claims[vote.key] != (vote.fp or ""):
                        conflicts[number] += 1
                        continue
                    parts[contracts.bucket_of(vote.postId, self.buckets)].append(vote)
                for bucket, part in parts.items():
                    by_bucket[bucket].append((number, (event_id, bucket, part)))
            if self.writes.cluster:  # a script may touch one slot only
                calls = [by_bucket[bucket] for bucket in sorted(by_bucket)]
            else:  # one server: one call (none when every vote was a conflict)
                call = [part for bucket in sorted(by_bucket) for part in by_bucket[bucket]]
                calls = [call] if call else []
            replies = self.writes.run([self._command([part for _, part in call])
                                       for call in calls])
        except REDIS_ERRORS as exc:
            store_error(exc)
            raise
        totals = [[0, 0, c] for c in conflicts]
        for call, reply in zip(calls, replies, strict=True):
            for (number, _), result in zip(call, self._part_results(reply, len(call)),
                                           strict=True):
                total = totals[number]
                total[0] += max(result[0], 0)
                total[1] += result[1]
                total[2] += result[2]
        return [Applied(*total) for total in totals]

    def counts_many(self, queries):
        """[(post_id, voter_id or None), ...] -> [counts or None, ...]: one
        COUNTS_SCRIPT call per bucket, in one pipeline."""
        by_bucket = collections.defaultdict(list)  # bucket -> [query index]
        for index, (post_id, _) in enumerate(queries):
            by_bucket[contracts.bucket_of(post_id, self.buckets)].append(index)
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for bucket, indexes in by_bucket.items():
                    keys, voters = [], []
                    for index in indexes:
                        post_id, voter_id = queries[index]
                        post_key, voters_key, _ = contracts.post_keys(bucket, post_id)
                        keys.append(post_key)
                        if voter_id is not None:
                            keys.append(voters_key)
                        voters.append(voter_id or "")
                    # (a cluster pipeline has no eval())
                    pipe.execute_command("EVAL", COUNTS_SCRIPT, len(keys), *keys, *voters)
                replies = pipe.execute()
        except REDIS_ERRORS as exc:
            store_error(exc)
            raise
        results = [None] * len(queries)
        for indexes, reply in zip(by_bucket.values(), replies, strict=True):
            for index, k in zip(indexes, range(0, 3 * len(indexes), 3), strict=True):
                upvote, downvote, mine = reply[k:k + 3]
                if upvote is None and downvote is None:
                    continue
                post_id, voter_id = queries[index]
                results[index] = counts_dict(
                    post_id, upvote, downvote,
                    None if voter_id is None else _voter_score(mine))
        return results

    def counts(self, post_id, voter_id=None):
        (result,) = self.counts_many([(post_id, voter_id)])
        if result is None:
            raise NotFound("post {} has no votes".format(post_id))
        return result

    def ping(self):
        try:
            return bool(self.client.ping())
        except REDIS_ERRORS:
            return False

    def durability(self):
        """{"durability": ...} for the health report: "replicated" (every
        master's writes wait for REDIS_MIN_REPLICAS replicas), "reduced"
        (some masters, in "reducedNodes", have fewer in sync and ack
        without them), "held" (as reduced, REDIS_REPLICA_LOSS=hold: their
        writes wait) or "unreplicated" (no replica is waited for)."""
        wanted, short = self.writes.durability()
        if short:
            return {"durability": "held" if self.writes.hold else "reduced",
                    "reducedNodes": sorted(short)}
        return {"durability": "replicated" if wanted else "unreplicated"}

    def top(self, limit, reads=TOP_READS):
        """The top ``limit`` posts by score (see page)."""
        return self.page(rankings.TOP, limit, reads=reads)[0]

    def page(self, sort, limit, after=None, reads=TOP_READS):
        """(counts of up to ``limit`` posts, the cursor of the next page or
        None) in the ranking ``sort``: its value descending, ties by postId,
        starting right after ``after`` (stored score, postId), if given.
        Each bucket's first ``limit + 1`` after the cursor are merged, then
        the counts of the page read; if a vote came in between (a count that
        disagrees with its rank), it is read again, up to ``reads`` times."""
        try:
            for _ in range(reads):
                with self.client.pipeline(transaction=False) as pipe:
                    for bucket in range(self.buckets):
                        key = contracts.rank_key(bucket, sort)
                        if after is None:
                            pipe.zrange(key, 0, limit, withscores=True)
                        else:
                            # (a cluster pipeline has no eval())
                            pipe.execute_command("EVAL", AFTER_SCRIPT, 1, key,
                                                 repr(after[0]), after[1], limit + 1)
                    ranked = sorted(
                        (float(score), post_id) for ranks in pipe.execute()
                        for post_id, score in _pairs(ranks))
                more = len(ranked) > limit
                ranked = ranked[:limit]
                with self.client.pipeline(transaction=False) as pipe:
                    for _, post_id in ranked:
                        bucket = contracts.bucket_of(post_id, self.buckets)
                        pipe.hmget(contracts.post_keys(bucket, post_id)[0],
                                   "upvote", "downvote")
                        pipe.hget(contracts.created_key(bucket), post_id)
                    replies = pipe.execute()
                found = [(up, down, created) for (up, down), created
                         in zip(replies[0::2], replies[1::2], strict=True)]
                if all(_agrees(sort, score, up, down, created)
                       for (score, _), (up, down, created) in zip(ranked, found, strict=True)):
                    break
        except REDIS_ERRORS as exc:
            store_error(exc)
            raise
        counts = [counts_dict(post_id, up, down)
                  for (_, post_id), (up, down, _) in zip(ranked, found, strict=True)]
        cursor = rankings.encode_cursor(sort, *ranked[-1]) if more else None
        return counts, cursor

    def set_created_at(self, post_id, created_at):
        """Set a post's creation time and its hot rank; returns the time
        set (one ahead of the store's clock by more than MAX_CLOCK_SKEW
        becomes the store's time), or None, with nothing written, when
        the post has no votes."""
        bucket = contracts.bucket_of(post_id, self.buckets)
        keys = (contracts.post_keys(bucket, post_id)[0],
                contracts.rank_key(bucket, rankings.HOT), contracts.created_key(bucket))
        command = redis_nodes.Command(
            keys[0], ("EVALSHA", self._set_created_sha, len(keys), *keys,
                      post_id, created_at, int(self.limits.clock_skew * 1_000_000)),
            SET_CREATED_SCRIPT)
        try:
            (stored,) = self.writes.run([command])
        except REDIS_ERRORS as exc:
            store_error(exc)
            raise
        return None if stored is None else int(stored)

    def seal_marks(self, event_id, post_ids):
        """Whether any part of the event has its exactly-once mark, each
        mark made to last for good (PERSIST): see seal_applied_mark."""
        keys = sorted({contracts.applied_key(contracts.bucket_of(p, self.buckets), event_id)
                       for p in post_ids})
        with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.exists(key)
                pipe.persist(key)
            replies = pipe.execute()
        return any(replies[0::2])


def _sha(script):
    return hashlib.sha1(script.encode()).hexdigest()


def read_limits(config):
    """The store's settings, checked: a TTL of 0 would make Redis refuse
    every mark, and a negative skew would refuse every voter."""
    year = 366 * 24 * 60 * 60
    number(config, MAX_WORKERS_CONFIG_KEY, DEFAULT_MAX_WORKERS, 1, 10_000,
           integer=True)
    return Limits(
        mark_ttl=number(config, MARK_TTL_CONFIG_KEY, DEFAULT_MARK_TTL,
                        1, year, integer=True),
        idempotency_ttl=number(config, IDEMPOTENCY_TTL_CONFIG_KEY,
                               DEFAULT_IDEMPOTENCY_TTL, 1, year, integer=True),
        clock_skew=number(config, CLOCK_SKEW_CONFIG_KEY, DEFAULT_CLOCK_SKEW,
                          0, 3600),
        retraction_ttl=number(config, RETRACTION_TTL_CONFIG_KEY,
                              DEFAULT_RETRACTION_TTL, 1, year, integer=True),
        buckets=read_buckets(config),
        min_replicas=None if config.get(MIN_REPLICAS_CONFIG_KEY) is None else
        number(config, MIN_REPLICAS_CONFIG_KEY, 0, 0, 16, integer=True),
        wait_timeout=number(config, WAIT_TIMEOUT_CONFIG_KEY, DEFAULT_WAIT_TIMEOUT,
                            1, 60_000, integer=True),
        replica_loss=read_replica_loss(config),
    )


def read_replica_loss(config):
    """REDIS_REPLICA_LOSS, one of REPLICA_LOSS_CHOICES (unset: the first)."""
    value = config.get(REPLICA_LOSS_CONFIG_KEY)
    if value is None or value == "":
        return REPLICA_LOSS_CHOICES[0]
    if value not in REPLICA_LOSS_CHOICES:
        raise ConfigurationError("{} must be {} (got {!r})".format(
            REPLICA_LOSS_CONFIG_KEY, " or ".join(REPLICA_LOSS_CHOICES), value))
    return value


def read_buckets(config):
    """VOTE_BUCKETS, checked: it must be the same for every process and
    tool on one database (changing it moves every post)."""
    return number(config, BUCKETS_CONFIG_KEY, contracts.DEFAULT_BUCKETS, 1,
                  contracts.MAX_BUCKETS, integer=True)


REDIS_OPTIONS = dict(
    decode_responses=True,
    socket_connect_timeout=1,
    socket_timeout=2,
    # one quick retry covers a pooled connection Redis has closed;
    # longer outages are retried by the consumer, with back-off
    retry=Retry(NoBackoff(), 1),
)


def connect(uri, **options):
    """A client for ``uri``: redis-py's RedisCluster when it names a node
    of a Redis Cluster (INFO cluster), else a plain one."""
    return redis_nodes.connect(uri, **dict(REDIS_OPTIONS, **options))


class NotConnected:
    """The storage of a VoteStore that has not reached Redis yet: every
    call raises StoreUnavailable (an event is retried, an RPC call answered
    with the error), and ping() is False."""

    def __init__(self, address):
        self.address = address

    def ping(self):
        return False

    def __getattr__(self, name):
        def unavailable(*args, **kwargs):
            raise StoreUnavailable("waiting for Redis at {}".format(self.address))
        return unavailable


REDIS_RETRY_INTERVAL = 1.0  # seconds between attempts to reach Redis at start


class VoteStore(Redis):
    """nameko-redis provider that injects VoteStorage and closes its pool.
    REDIS_URIS.votes may name one Redis or any node of a Redis Cluster.

    It starts whether Redis answers or not (it asks Redis whether it is a
    cluster node, so it cannot make its client before): until Redis
    answers, it tries again every REDIS_RETRY_INTERVAL seconds, /health
    says the service waits for Redis, and workers get NotConnected."""

    def __init__(self):
        super().__init__(REDIS_KEY, **REDIS_OPTIONS)
        self.storage = None

    def setup(self):
        super().setup()
        self.limits = read_limits(self.container.config)
        self.address = redact(self.redis_uri)
        self.client = self.storage = None

    def start(self):
        if not self._connect():
            self.container.spawn_managed_thread(self._wait_for_redis,
                                                identifier="wait_for_redis")

    def _connect(self):
        try:
            client = redis_nodes.connect(self.redis_uri, **self.options)
        except redis.RedisError as exc:
            waiting_for(self.container, REDIS, "vote store", self.address, exc)
            return False
        done_waiting(self.container, REDIS, "vote store", self.address)
        storage = VoteStorage(client, self.limits)
        # the events that workers apply while a call is in flight share the
        # next call; a group stays small enough not to hold Redis long
        storage.group = GroupCommit(
            storage.apply_group, max_weight=APPLY_GROUP_VOTES,
            max_wait=float("inf"), weigh=lambda event: len(event[1]))
        for _ in range(APPLY_FLUSHERS):
            self.container.spawn_managed_thread(storage.group.run)
        self.client, self.storage = client, storage
        return True

    def _wait_for_redis(self):
        while True:
            eventlet.sleep(REDIS_RETRY_INTERVAL)
            if self._connect():
                return

    def stop(self):
        if self.client is not None:
            self.client.close()
        super().stop()

    def kill(self):
        if self.client is not None:
            self.client.close()
        super().kill()

    def get_dependency(self, worker_ctx):
        return self.storage or NotConnected(self.address)


# where the event handler puts what it cannot apply
DEAD_LETTER_QUEUE = dead_letter_queue(
    contracts.DEAD_LETTER_EXCHANGE, contracts.DEAD_LETTER_QUEUE,
    contracts.DEAD_LETTER_ROUTING_KEY)
DEAD_LETTER_EXCHANGE = DEAD_LETTER_QUEUE.exchange
# headers of an event dead-lettered after its handler kept failing (read by
# services.votes.dead_letters)
EVENT_ID_HEADER = "x-event-id"
APPLIED_MARK_HEADER = "x-applied-mark"
MARK_PRESENT = "present"  # applied (perhaps in part); the mark is kept for good
MARK_ABSENT = "absent"    # no mark: not applied, as far as Redis could tell
MARK_UNKNOWN = "unknown"  # Redis could not be asked


def seal_applied_mark(storage, event):
    """Whether the event's exactly-once marks exist (any of them: it may
    have been applied in part), each kept for good with PERSIST: an applied
    event that is dead-lettered keeps its marks, so that a replay, however
    late, applies no part twice."""
    if storage is None:
        return MARK_UNKNOWN
    try:
        found = storage.seal_marks(event.id, [vote.postId for vote in event.votes])
    except redis.RedisError as exc:
        _log.error("could not look up the marks of dead-lettered event %s: %r",
                   event.id, exc)
        return MARK_UNKNOWN
    return MARK_PRESENT if found else MARK_ABSENT


def failed_event_headers(container, event):
    """The event handler's ``failed_headers``: an event whose handler kept
    failing may have been applied, so its mark is looked up and sealed
    (seal_applied_mark), and the answer goes with it for the replay tool."""
    event_id = getattr(event, "id", None)
    if event_id is None:
        return {}
    storage = next((provider.storage for provider in container.dependencies
                    if isinstance(provider, VoteStore)), None)
    return {EVENT_ID_HEADER: event_id,
            APPLIED_MARK_HEADER: seal_applied_mark(storage, event)}
