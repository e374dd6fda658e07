"""The votes service's Redis store.

- ``layout``: which keys each script and read names (the layout itself is
  in services/contracts.py);
- ``scripts`` and ``scripts/*.lua``: the Lua scripts, read once at import;
- ``errors``: what a Redis error means (StoreUnavailable or a mistake);
- ``verbs``: VoteStorage, the verbs over one Redis client;
- ``config``: the store's settings and its Redis client;
- ``provider``: VoteStore, the nameko dependency provider, and
  ``storage_of``, how the container's other extensions reach it.
"""
from services.votes.store.config import (
    DEFAULT_MARK_TTL,
    MARK_TTL_CONFIG_KEY,
    REDIS_KEY,
    REDIS_OPTIONS,
    Limits,
    connect,
    read_buckets,
    read_limits,
)
from services.votes.store.errors import OTHER_ERROR, TRANSIENT_CODES, store_error, store_error_kind
from services.votes.store.provider import NotConnected, VoteStore, storage_of
from services.votes.store.verbs import (
    APPLY_GROUP_VOTES,
    Applied,
    VoteStorage,
    counts_dict,
    rebuild_command,
)

__all__ = [
    "APPLY_GROUP_VOTES", "DEFAULT_MARK_TTL", "MARK_TTL_CONFIG_KEY", "OTHER_ERROR",
    "REDIS_KEY", "REDIS_OPTIONS", "TRANSIENT_CODES", "Applied", "Limits",
    "NotConnected", "VoteStorage", "VoteStore", "connect", "counts_dict",
    "read_buckets", "read_limits", "rebuild_command", "storage_of", "store_error",
    "store_error_kind",
]
