"""The store's settings, read from the service's config and checked at
start, and the Redis client they make (services.votes.migrate and
services.votes.dead_letters read the same)."""
import collections

from nameko.constants import DEFAULT_MAX_WORKERS, MAX_WORKERS_CONFIG_KEY
from nameko.exceptions import ConfigurationError
from redis.backoff import NoBackoff
from redis.retry import Retry

from services import contracts
from services.platform import redis_nodes
from services.settings import number

REDIS_KEY = contracts.VOTES_REDIS  # the entry of REDIS_URIS this service uses
MARK_TTL_CONFIG_KEY = "APPLIED_MARK_TTL"
DEFAULT_MARK_TTL = 24 * 60 * 60
# the gateway's Idempotency-Key claims live as long (contracts)
IDEMPOTENCY_TTL_CONFIG_KEY = contracts.IDEMPOTENCY_TTL_CONFIG_KEY
DEFAULT_IDEMPOTENCY_TTL = contracts.DEFAULT_IDEMPOTENCY_TTL
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


# min_replicas None: 1 from the first time a master is seen with a
# replica, else 0; replica_loss: one of REPLICA_LOSS_CHOICES
Limits = collections.namedtuple(
    "Limits", "mark_ttl idempotency_ttl clock_skew retraction_ttl buckets "
    "min_replicas wait_timeout replica_loss",
    defaults=(contracts.DEFAULT_BUCKETS, None, DEFAULT_WAIT_TIMEOUT,
              REPLICA_LOSS_CHOICES[0]))


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
