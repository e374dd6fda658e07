"""Redis storage for vote counts, owned by the votes service alone.

Redis layout (every key starts with ``votes:``):

    votes:post:<postId>      hash    upvote, downvote (HINCRBY only)
    votes:voters:<postId>    hash    voterId -> "<ts>:<voteId>:<score>"
    votes:top                zset    postId scored by downvote - upvote
    votes:applied:<eventId>  string  exactly-once mark, expires after
                                     APPLIED_MARK_TTL seconds
"""
import json
import re

import redis
from nameko_redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from services.votes import metrics
from services.votes.exceptions import NotFound, StoreUnavailable

REDIS_KEY = "votes"  # the entry of REDIS_URIS this service uses
MARK_TTL_CONFIG_KEY = "APPLIED_MARK_TTL"
DEFAULT_MARK_TTL = 24 * 60 * 60

KEY_POST = "votes:post:{}"
KEY_VOTERS = "votes:voters:{}"
KEY_TOP = "votes:top"
KEY_APPLIED = "votes:applied:{}"

# One atomic step per event: the mark, every vote and the leaderboard.
# A redelivered event finds its mark and changes nothing.  Per voter the
# vote with the latest (ts, voteId) wins, whatever order events arrive in.
APPLY_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local votes = cjson.decode(ARGV[2])
for i, vote in ipairs(votes) do
  local post_key, voters_key = KEYS[1 + 2 * i], KEYS[2 + 2 * i]
  local post_id, score, voter = vote[1], vote[2], vote[3]
  local up, down = 0, 0
  if voter == '' then
    if score == 1 then up = 1 else down = 1 end
  else
    -- ts travels as text: a Lua number would print as 1.7e+15
    local ts, vote_id = vote[4], vote[5]
    local newer, prev_score = true, 0
    local prev = redis.call('HGET', voters_key, voter)
    if prev then
      local pts, pid, ps = string.match(prev, '^(%d+):([^:]+):(-?%d)$')
      pts = tonumber(pts)
      local t = tonumber(ts)
      if pts > t or (pts == t and pid >= vote_id) then newer = false end
      prev_score = tonumber(ps)
    end
    if newer then
      redis.call('HSET', voters_key, voter, ts .. ':' .. vote_id .. ':' .. score)
      if prev_score == 1 then up = -1 elseif prev_score == -1 then down = -1 end
      if score == 1 then up = up + 1 elseif score == -1 then down = down + 1 end
    end
  end
  local u = redis.call('HINCRBY', post_key, 'upvote', up)
  local d = redis.call('HINCRBY', post_key, 'downvote', down)
  redis.call('ZADD', KEYS[2], d - u, post_id)
end
redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
return #votes
"""

# ZRANGE and the counts in one step, so the list is never torn.
TOP_SCRIPT = """
local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
local out = {}
for _, id in ipairs(ids) do
  local c = redis.call('HMGET', ARGV[2] .. id, 'upvote', 'downvote')
  table.insert(out, id)
  table.insert(out, c[1])
  table.insert(out, c[2])
end
return out
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


REDIS_ERRORS = (redis.RedisError,)  # passed through store_error()


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


def _voter_score(entry):
    return int(entry.rsplit(":", 1)[1]) if entry else 0


class VoteStorage:
    """The domain verbs over one Redis client; safe to share among workers."""

    def __init__(self, client, mark_ttl):
        self.client = client
        self.mark_ttl = mark_ttl
        self._apply = client.register_script(APPLY_SCRIPT)
        self._top = client.register_script(TOP_SCRIPT)

    def apply(self, event_id, votes):
        """Apply the votes of one event, once. Returns how many were applied
        (0 when the event had been applied before)."""
        # every key is named in KEYS (as Redis Cluster requires); the votes
        # travel as one JSON argument, far cheaper to pack than five each
        keys = [KEY_APPLIED.format(event_id), KEY_TOP]
        for vote in votes:
            keys += [KEY_POST.format(vote.postId), KEY_VOTERS.format(vote.postId)]
        packed = json.dumps([
            [vote.postId, vote.score, vote.voterId or "", str(vote.ts), vote.voteId]
            for vote in votes
        ], separators=(",", ":"))
        try:
            applied = self._apply(keys=keys, args=[self.mark_ttl, packed])
        except REDIS_ERRORS as exc:
            store_error(exc)
            raise
        return max(applied, 0)

    def counts_many(self, queries):
        """[(post_id, voter_id or None), ...] -> [counts or None, ...]"""
        try:
            with self.client.pipeline(transaction=True) as pipe:
                for post_id, voter_id in queries:
                    pipe.hmget(KEY_POST.format(post_id), "upvote", "downvote")
                    if voter_id is not None:
                        pipe.hget(KEY_VOTERS.format(post_id), voter_id)
                replies = iter(pipe.execute())
        except REDIS_ERRORS as exc:
            store_error(exc)
            raise
        results = []
        for post_id, voter_id in queries:
            upvote, downvote = next(replies)
            my_vote = None
            if voter_id is not None:
                my_vote = _voter_score(next(replies))
            if upvote is None and downvote is None:
                results.append(None)
            else:
                results.append(counts_dict(post_id, upvote, downvote, my_vote))
        return results

    def counts(self, post_id, voter_id=None):
        (result,) = self.counts_many([(post_id, voter_id)])
        if result is None:
            raise NotFound("post {} has no votes".format(post_id))
        return result

    def ping(self):
        try:
            return self.client.ping()
        except REDIS_ERRORS:
            return False

    def top(self, limit):
        try:
            flat = self._top(keys=[KEY_TOP], args=[limit, KEY_POST.format("")])
        except REDIS_ERRORS as exc:
            store_error(exc)
            raise
        return [
            counts_dict(flat[i], flat[i + 1], flat[i + 2])
            for i in range(0, len(flat), 3)
        ]


class VoteStore(Redis):
    """nameko-redis provider that injects VoteStorage and closes its pool."""

    def __init__(self):
        super().__init__(
            REDIS_KEY,
            socket_connect_timeout=1,
            socket_timeout=2,
            # one quick retry covers a pooled connection Redis has closed;
            # longer outages are retried by the consumer, with back-off
            retry=Retry(NoBackoff(), 1),
        )
        self.storage = None

    def setup(self):
        super().setup()
        self.mark_ttl = int(
            self.container.config.get(MARK_TTL_CONFIG_KEY, DEFAULT_MARK_TTL))

    def start(self):
        super().start()
        self.storage = VoteStorage(self.client, self.mark_ttl)

    def stop(self):
        self.client.close()
        super().stop()

    def kill(self):
        self.client.close()
        super().kill()

    def get_dependency(self, worker_ctx):
        return self.storage
