"""What a Redis error means to the store: "not now" (StoreUnavailable,
retried for as long as it lasts) or a mistake (dead-lettered), and its
count in the store_errors metric by kind."""
import re

import redis

from services.votes import metrics
from services.votes.exceptions import StoreUnavailable

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
