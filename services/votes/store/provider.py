"""The nameko dependency provider of the store (VoteStore), and how the
container's other extensions reach it (``storage_of``)."""
import eventlet
import redis
from nameko_redis import Redis

from services.platform import redis_nodes
from services.platform.batching import GroupCommit
from services.platform.brokers import redact
from services.platform.container import REDIS, done_waiting, waiting_for
from services.settings import settings_of
from services.votes.exceptions import StoreUnavailable
from services.votes.store.config import REDIS_KEY, REDIS_OPTIONS, limits_from
from services.votes.store.verbs import APPLY_FLUSHERS, APPLY_GROUP_VOTES, VoteStorage

REDIS_RETRY_INTERVAL = 1.0  # seconds between attempts to reach Redis at start
# The container's attribute naming its VoteStore, set once by the store's
# setup. nameko binds a copy of each declared provider per container, so a
# provider cannot be handed its sibling when the service class is declared;
# this one name is how the counts feed and the dead-letter headers reach it.
CONTAINER_ATTRIBUTE = "vote_store"


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


def storage_of(container):
    """The VoteStorage of the container's VoteStore, or None: before it
    reached Redis, or in a container without one."""
    store = getattr(container, CONTAINER_ATTRIBUTE, None)
    return None if store is None else store.storage


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
        self.limits = limits_from(settings_of(self.container))
        self.address = redact(self.redis_uri)
        self.client = self.storage = None
        other = getattr(self.container, CONTAINER_ATTRIBUTE, None)
        if other is not None and other is not self:
            raise RuntimeError("a service has one VoteStore")
        setattr(self.container, CONTAINER_ATTRIBUTE, self)

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
