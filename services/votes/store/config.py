"""The store's settings (from the service's Settings: a TTL of 0 would
make Redis refuse every mark, and a negative skew would refuse every
voter), and the Redis client they make (services.votes.migrate and
services.votes.dead_letters read the same)."""
import collections

from redis.backoff import NoBackoff
from redis.retry import Retry

from services import contracts, settings
from services.platform import redis_nodes
from services.settings.table import BY_VARIABLE, VOTES

REDIS_KEY = contracts.VOTES_REDIS  # the entry of REDIS_URIS this service uses
MARK_TTL_CONFIG_KEY = "APPLIED_MARK_TTL"
DEFAULT_MARK_TTL = BY_VARIABLE[MARK_TTL_CONFIG_KEY].default


# min_replicas (REDIS_MIN_REPLICAS): replicas that must have an event's
# writes before it is acked, while its master has them
# (services/platform/redis_nodes.py, WriteRouter); None: 1 from the first
# time a master is seen with a replica, else 0. wait_timeout: milliseconds.
# replica_loss: a master with fewer replicas in sync than wanted: "continue"
# acks its writes without them (reduced durability, reported), "hold" waits
Limits = collections.namedtuple(
    "Limits", "mark_ttl idempotency_ttl clock_skew retraction_ttl buckets "
    "min_replicas wait_timeout replica_loss",
    defaults=tuple(BY_VARIABLE[name].default for name in (
        "VOTE_BUCKETS", "REDIS_MIN_REPLICAS", "REDIS_WAIT_TIMEOUT", "REDIS_REPLICA_LOSS")))


def limits_from(values):
    """The store's Limits from the service's Settings."""
    return Limits(
        mark_ttl=values.applied_mark_ttl, idempotency_ttl=values.idempotency_ttl,
        clock_skew=values.max_clock_skew, retraction_ttl=values.retraction_ttl,
        buckets=values.vote_buckets, min_replicas=values.redis_min_replicas,
        wait_timeout=values.redis_wait_timeout, replica_loss=values.redis_replica_loss)


def read_limits(config):
    """The store's Limits from a config, checked."""
    return limits_from(settings.Settings(config, VOTES))


def read_buckets(config):
    """VOTE_BUCKETS, checked: it must be the same for every process and
    tool on one database (changing it moves every post)."""
    return settings.read(config, "VOTE_BUCKETS")


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
