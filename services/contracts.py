"""The wire contract between the gateway, the votes service, their tests and
the bench: exchange, event, queue and RPC names and the Redis key layout,
each defined here once.

The gateway never imports the votes service's code; both import this.
"""
import functools
import zlib

from kombu import Exchange

# the vote_cast event: published by the gateway, handled by the votes service
GATEWAY_SERVICE = "gateway"
VOTES_SERVICE = "votes"
VOTE_CAST = "vote_cast"
VOTE_CAST_HANDLER = "handle_vote_cast"
EVENTS_EXCHANGE = "{}.events".format(GATEWAY_SERVICE)  # nameko's rule


def event_queue(source_service, event_type, service_name, method_name):
    """The durable queue nameko's event_handler consumes (nameko 2.14,
    EventHandler.setup); tests/unit/test_contracts.py checks this against
    nameko itself."""
    return "evt-{}-{}--{}.{}".format(
        source_service, event_type, service_name, method_name)


# declared by the gateway too, so that no vote is dropped before the votes
# service has ever run
VOTES_QUEUE = event_queue(GATEWAY_SERVICE, VOTE_CAST, VOTES_SERVICE,
                          VOTE_CAST_HANDLER)

# RPC: nameko's exchange and the votes service's queue and methods
RPC_EXCHANGE = "nameko-rpc"
RPC_QUEUE = "rpc-{}".format(VOTES_SERVICE)
RPC_VOTE = "vote"
RPC_GET_COUNTS = "get_counts"
RPC_GET_COUNTS_MANY = "get_counts_many"
RPC_TOP = "top"
RPC_SET_CREATED_AT = "set_created_at"
RPC_HEALTH = "health"
RPC_METHODS = (RPC_VOTE, RPC_GET_COUNTS, RPC_GET_COUNTS_MANY, RPC_TOP,
               RPC_SET_CREATED_AT, RPC_HEALTH)


def rpc_routing_key(method):
    return "{}.{}".format(VOTES_SERVICE, method)


# where the votes service puts messages it cannot apply
DEAD_LETTER_EXCHANGE = "votes.dead-letter"
DEAD_LETTER_QUEUE = "votes.dead-letter"
DEAD_LETTER_ROUTING_KEY = "votes.dead-letter"

# the most posts a top or a ranking page holds (the votes service's top
# RPC, the gateway's /posts/top and the live counts' top)
MAX_TOP = 100

# an Idempotency-Key counts once for this long (seconds): the gateway
# remembers it, the votes service keeps its claim and marks
IDEMPOTENCY_TTL_CONFIG_KEY = "IDEMPOTENCY_TTL"
DEFAULT_IDEMPOTENCY_TTL = 24 * 60 * 60

# the entry of REDIS_URIS naming the votes service's Redis (the gateway's
# rate limits keep their counts in it too)
VOTES_REDIS = VOTES_SERVICE

# Redis: every key starts with "votes:" (docs/architecture.md, Redis layout;
# the keys each script names: services/votes/store/layout.py).
# Each post lives in one of ``buckets`` buckets (VOTE_BUCKETS, the same for
# every process on one database), and every key of a bucket carries the
# bucket's hash tag, so that Redis Cluster keeps a bucket in one hash slot
# and one script may touch all of it.
KEY_PREFIX = "votes:"
DEFAULT_BUCKETS = 16
MAX_BUCKETS = 1024


def bucket_of(post_id, buckets=DEFAULT_BUCKETS):
    """The bucket (0 .. buckets-1) of a post id, or of an Idempotency-Key's
    id: CRC-32 of its text, stable across processes and versions."""
    return zlib.crc32(post_id.encode()) % buckets


@functools.lru_cache(maxsize=MAX_BUCKETS)  # built for every key of every vote
def _tagged(bucket):
    return "{}{{b{}}}:".format(KEY_PREFIX, bucket)


def post_key(post_id, buckets=DEFAULT_BUCKETS):
    return _tagged(bucket_of(post_id, buckets)) + "post:" + post_id


def voters_key(post_id, buckets=DEFAULT_BUCKETS):
    return _tagged(bucket_of(post_id, buckets)) + "voters:" + post_id


def retracted_key(post_id, buckets=DEFAULT_BUCKETS):
    return _tagged(bucket_of(post_id, buckets)) + "retracted:" + post_id


def post_keys(bucket, post_id):
    """post_key, voters_key and retracted_key of a post in ``bucket`` (its
    bucket_of), for the apply script, which names them all."""
    tag = _tagged(bucket)
    return tag + "post:" + post_id, tag + "voters:" + post_id, tag + "retracted:" + post_id


def top_key(bucket):
    """The leaderboard of one bucket."""
    return _tagged(bucket) + "top"


def rank_key(bucket, sort):
    """The ranking ``sort`` (services.rankings.SORTS) of one bucket; "top"
    is the leaderboard."""
    return top_key(bucket) if sort == "top" else _tagged(bucket) + "rank:" + sort


def created_key(bucket):
    """postId -> the post's creation time (seconds since the epoch), for
    the posts of one bucket."""
    return _tagged(bucket) + "created"


def applied_key(bucket, event_id):
    """The exactly-once mark of the part of an event in one bucket."""
    return _tagged(bucket) + "applied:" + event_id


def once_key(bucket, key_id):
    """An Idempotency-Key's mark in one bucket: the votes of its request in
    that bucket were applied."""
    return _tagged(bucket) + "once:" + key_id


def claim_key(key_id, buckets=DEFAULT_BUCKETS):
    """An Idempotency-Key's claim: the fingerprint of the request that
    first used it, in the bucket of the key's id."""
    return _tagged(bucket_of(key_id, buckets)) + "claim:" + key_id


def rate_key(kind, seconds, identity):
    """The count of one rate limit (``kind``: address or voter; its window
    in seconds) for one client address or voter (the gateway's)."""
    return "{}rate:{}:{}:{}".format(KEY_PREFIX, kind, seconds, identity)


def post_id_of(key):
    """The post id in a post_key."""
    return key.split(":post:", 1)[1]


def bucket_of_key(key):
    """The bucket in a key's hash tag."""
    return int(key[key.index("{b") + 2:key.index("}")])


# for SCAN MATCH ("{" and "}" are plain characters in a pattern)
POST_KEY_PATTERN = KEY_PREFIX + "{b*}:post:*"
APPLIED_KEY_PATTERN = KEY_PREFIX + "{b*}:applied:*"

# The layout before buckets (one key per post, one leaderboard), which
# services.votes.migrate moves to the one above; nothing else reads it.
LEGACY_TOP = KEY_PREFIX + "top"
LEGACY_POST = KEY_PREFIX + "post:"
LEGACY_VOTERS = KEY_PREFIX + "voters:"
LEGACY_RETRACTED = KEY_PREFIX + "retracted:"
LEGACY_APPLIED = KEY_PREFIX + "applied:"
LEGACY_ONCE = KEY_PREFIX + "once:"
MIGRATED_KEY = KEY_PREFIX + "migrated"  # where a migration has got to

# the counts_changed event: published by the votes service after it applied
# votes, {"posts": [counts, ...], "top": [counts, ...]}, best effort (not
# persistent, not mandatory); every gateway process reads every one
COUNTS_CHANGED = "counts_changed"
VOTES_EVENTS_EXCHANGE = "{}.events".format(VOTES_SERVICE)  # nameko's rule
# as nameko declares it (nameko.events: a durable topic exchange), for the
# counts feed's publisher and the gateway's live counts consumer
VOTES_EVENTS = Exchange(VOTES_EVENTS_EXCHANGE, type="topic", durable=True,
                        auto_delete=False)
LIVE_COUNTS_CONSUMER = "live_counts"


def broadcast_queue(source_service, event_type, service_name, method_name,
                    identifier):
    """The queue of one process of a broadcast handler, by nameko's rule
    for ``handler_type=BROADCAST`` (nameko 2.14, EventHandler.setup); with
    reliable_delivery=False it is exclusive, non-durable and auto-deleted."""
    return "{}-{}".format(
        event_queue(source_service, event_type, service_name, method_name),
        identifier)


def counts_changed_queue(identifier):
    """The counts_changed queue of one gateway process."""
    return broadcast_queue(VOTES_SERVICE, COUNTS_CHANGED, GATEWAY_SERVICE,
                           LIVE_COUNTS_CONSUMER, identifier)
