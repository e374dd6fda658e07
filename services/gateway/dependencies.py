"""The gateway's links to RabbitMQ: vote publishing and counts reads.

Both keep one long-lived connection per process (never one per request),
group concurrent callers into one round trip, fail within a fixed time when
the broker or the votes service does not answer, and reconnect by
themselves.
"""
import itertools
import logging
import socket
import time
import uuid
from functools import partial

import eventlet
from eventlet.semaphore import Semaphore
from kombu import Connection, Consumer, Producer, Queue
from kombu.exceptions import ChannelError
from nameko.constants import (
    AMQP_URI_CONFIG_KEY,
    DEFAULT_HEARTBEAT,
    DEFAULT_MAX_WORKERS,
    HEARTBEAT_CONFIG_KEY,
    MAX_WORKERS_CONFIG_KEY,
)
from nameko.extensions import DependencyProvider
from nameko.rpc import get_rpc_exchange
from nameko.standalone.events import get_event_exchange

from services import contracts
from services.gateway import metrics
from services.gateway.batching import Expired, GroupCommit
from services.gateway.exceptions import BrokerUnavailable, ServiceUnavailable
from services.settings import number

_log = logging.getLogger(__name__)


PUBLISH_TIMEOUT_CONFIG_KEY = "PUBLISH_TIMEOUT"
READ_TIMEOUT_CONFIG_KEY = "READ_TIMEOUT"
DEFAULT_PUBLISH_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 2.0
MAX_GROUP_VOTES = 1000
MAX_GROUP_READS = 500
RECONNECT_PAUSE = 0.5  # after a failed connect, fail fast for this long
# round trips in flight at once: while one group waits for RabbitMQ, the
# next is already on its way
PUBLISHERS = 2
READERS = 2


class _Link:
    """One AMQP connection, made on demand; hold ``lock`` to use it, since
    frames of two threads must not interleave on one socket."""

    def __init__(self, amqp_uri, declare=(), confirms=False):
        self.lock = Semaphore()
        self.amqp_uri = amqp_uri
        self.declare = declare
        self.confirms = confirms
        self.connection = None
        self.producer = None
        self._failed_at = 0.0

    def get_producer(self):
        """The producer, connecting first if needed; raises on failure."""
        if self.producer is not None:
            return self.producer
        if time.monotonic() - self._failed_at < RECONNECT_PAUSE:
            raise ConnectionError("broker unreachable a moment ago")
        connection = Connection(
            # no heartbeat: nothing reads this connection between publishes;
            # a dead one fails the next publish, which reconnects once
            self.amqp_uri, connect_timeout=2, heartbeat=0,
            transport_options={"confirm_publish": self.confirms},
        )
        try:
            connection.connect()
            channel = connection.channel()
            for entity in self.declare:
                entity.bind(channel).declare()
        except BaseException:
            self._failed_at = time.monotonic()
            _close(connection)
            raise
        self.connection = connection
        self.producer = Producer(channel)
        return self.producer

    def reset(self):
        _close(self.connection)
        self.connection = self.producer = None


def _close(connection):
    if connection is not None:
        try:
            connection.close()
        except Exception:  # already broken: nothing to release
            pass


class VotePublisher(DependencyProvider):
    """Injects ``cast(votes)``: returns once the votes are in RabbitMQ (one
    confirmed, persistent, mandatory ``vote_cast`` event per group), or
    raises BrokerUnavailable within PUBLISH_TIMEOUT seconds."""

    def setup(self):
        config = self.container.config
        self.timeout = number(config, PUBLISH_TIMEOUT_CONFIG_KEY,
                              DEFAULT_PUBLISH_TIMEOUT, 0.1, 60)
        number(config, MAX_WORKERS_CONFIG_KEY, DEFAULT_MAX_WORKERS, 1, 10_000,
               integer=True)
        self.exchange = get_event_exchange(contracts.GATEWAY_SERVICE, config)
        queue = Queue(
            contracts.VOTES_QUEUE, exchange=self.exchange,
            routing_key=contracts.VOTE_CAST,
            durable=True, auto_delete=False, exclusive=False,
        )
        self.links = [
            _Link(config[AMQP_URI_CONFIG_KEY], declare=(self.exchange, queue),
                  confirms=True)
            for _ in range(PUBLISHERS)
        ]
        # a vote waits in the group queue at most 40% of the bound, and a
        # publish takes at most the rest: 202 or 503 within the bound
        self.publish_time = self.timeout * 0.6
        self.group = GroupCommit(
            self._publish, max_weight=MAX_GROUP_VOTES,
            max_wait=self.timeout * 0.4, weigh=len, deadline=self.timeout,
        )

    def start(self):
        for link in self.links:
            self.container.spawn_managed_thread(
                partial(self.group.run, partial(self._publish, link)))

    def stop(self):
        for link in self.links:
            link.reset()

    kill = stop

    def get_dependency(self, worker_ctx):
        return self.cast

    def cast(self, votes):
        try:
            self.group.submit(votes)
        except Expired:
            raise BrokerUnavailable("RabbitMQ did not take the vote in time") from None

    def _publish(self, link, groups):
        body = {
            "id": uuid.uuid4().hex,
            "votes": list(itertools.chain.from_iterable(groups)),
        }
        metrics.publish_group_votes.observe(len(body["votes"]))
        try:
            with link.lock:
                return self._publish_event(link, body, len(groups))
        except BrokerUnavailable:
            metrics.publish_failures.inc()
            raise

    def _publish_event(self, link, body, groups):
        deadline = time.monotonic() + self.publish_time
        # a connection that was already open may have died while idle:
        # then reconnect once; the event id makes a double publish harmless
        for attempt in (1, 2):
            was_open = link.producer is not None
            left = deadline - time.monotonic()
            try:
                with eventlet.Timeout(left):
                    link.get_producer().publish(
                        body, exchange=self.exchange, routing_key=contracts.VOTE_CAST,
                        serializer="json", delivery_mode=2, mandatory=True,
                        retry=False, confirm_timeout=left,
                    )
                return [None] * groups
            except ChannelError as exc:
                link.reset()
                _log.error("vote_cast publish refused: %s", exc)
                raise BrokerUnavailable("RabbitMQ refused the vote") from exc
            except (Exception, eventlet.Timeout) as exc:
                link.reset()
                if not was_open or attempt == 2 or time.monotonic() >= deadline:
                    _log.warning("vote_cast publish failed: %r", exc)
                    raise BrokerUnavailable(
                        "RabbitMQ is unavailable") from None


class VotesReader(DependencyProvider):
    """Injects a client of the votes service's RPC methods. Concurrent
    counts reads go out as one ``get_counts_many`` call; every call fails
    with ServiceUnavailable after READ_TIMEOUT seconds."""

    def setup(self):
        config = self.container.config
        self.amqp_uri = config[AMQP_URI_CONFIG_KEY]
        self.heartbeat = number(config, HEARTBEAT_CONFIG_KEY, DEFAULT_HEARTBEAT,
                                0, 3600)
        self.timeout = number(config, READ_TIMEOUT_CONFIG_KEY,
                              DEFAULT_READ_TIMEOUT, 0.1, 60)
        self.exchange = get_rpc_exchange(config)
        self.reply_queue_name = "rpc.reply-gateway-{}".format(uuid.uuid4())
        self.link = _Link(self.amqp_uri, declare=(self.exchange,))
        self.replies = {}
        self.listening = False
        self._running = True
        # as for publishing: queued at most 40% of the bound, in flight
        # at most the rest
        self.group = GroupCommit(
            self._read_group, max_weight=MAX_GROUP_READS,
            max_wait=self.timeout * 0.4, deadline=self.timeout,
        )

    def start(self):
        self._running = True
        self.container.spawn_managed_thread(self._listen)
        for _ in range(READERS):
            self.container.spawn_managed_thread(self.group.run)

    def stop(self):
        self._running = False
        self.link.reset()

    kill = stop

    def get_dependency(self, worker_ctx):
        return self

    # the interface the service uses

    def counts(self, post_id, voter_id=None):
        """Counts of one post, or None when it has no votes."""
        try:
            return self.group.submit((post_id, voter_id))
        except Expired:
            raise ServiceUnavailable("the votes service did not answer in time") from None

    def top(self, limit):
        return self.call(contracts.RPC_TOP, limit)

    def readiness(self):
        """(ready, checks): the broker, the votes service and its Redis, and
        how many votes wait in the queue."""
        checks = {"broker": "ok", "votes": "ok", "redis": "unknown"}
        try:
            with self.link.lock:
                channel = self.link.get_producer().channel
                _, waiting, consumers = channel.queue_declare(
                    contracts.VOTES_QUEUE, passive=True)
            checks["queue"] = {"waiting": waiting, "consumers": consumers}
        except Exception as exc:
            self.link.reset()
            if "NOT_FOUND" not in str(exc):  # no vote was ever sent: still ok
                checks["broker"] = "unavailable"
        try:
            checks["redis"] = self.call(contracts.RPC_HEALTH)["redis"]
        except ServiceUnavailable:
            checks["votes"] = "unavailable"
        ready = all(checks[name] == "ok" for name in ("broker", "votes", "redis"))
        return ready, checks

    # RPC over nameko's wire protocol

    def _read_group(self, queries):
        return self.call(
            contracts.RPC_GET_COUNTS_MANY, [list(query) for query in queries],
            timeout=self.timeout * 0.6)

    def call(self, method, *args, timeout=None):
        timeout = timeout or self.timeout
        correlation_id = uuid.uuid4().hex
        reply = self.replies[correlation_id] = eventlet.event.Event()
        try:
            with eventlet.Timeout(timeout, False):
                while not self.listening:  # (re)connecting: a reply needs it
                    eventlet.sleep(0.05)
                self._request(method, args, correlation_id, timeout)
                body = reply.wait()
                error = body.get("error")
                if error:
                    _log.warning("votes.%s failed: %s", method, error)
                    raise ServiceUnavailable(
                        "the votes service could not answer")
                return body["result"]
            raise ServiceUnavailable("the votes service did not answer in time") from None
        finally:
            self.replies.pop(correlation_id, None)

    def _request(self, method, args, correlation_id, timeout):
        try:
            with self.link.lock:
                self.link.get_producer().publish(
                    {"args": args, "kwargs": {}},
                    exchange=self.exchange,
                    routing_key=contracts.rpc_routing_key(method),
                    serializer="json", delivery_mode=1, retry=False,
                    reply_to=self.reply_queue_name,
                    correlation_id=correlation_id,
                    # a request nobody took in time is dropped by the broker
                    expiration=timeout,
                )
        except Exception as exc:
            self.link.reset()
            raise ServiceUnavailable("no connection to RabbitMQ") from exc

    def _on_reply(self, body, message):
        reply = self.replies.get(message.properties.get("correlation_id"))
        if reply is not None and not reply.ready():
            reply.send(body)

    def _listen(self):
        """Consume replies for as long as the service runs, reconnecting."""
        while self._running:
            queue = Queue(
                self.reply_queue_name, exchange=self.exchange,
                routing_key=self.reply_queue_name, exclusive=True,
                auto_delete=True,
            )
            connection = Connection(
                self.amqp_uri, connect_timeout=2, heartbeat=self.heartbeat)
            try:
                connection.connect()
                with Consumer(connection.channel(), queues=[queue],
                              callbacks=[self._on_reply], accept=["json"],
                              no_ack=True):
                    self.listening = True
                    while self._running:
                        try:
                            connection.drain_events(timeout=1)
                        except socket.timeout:
                            pass
                        connection.heartbeat_check()
            except Exception as exc:
                if self.listening:
                    _log.warning("lost the RPC reply connection: %r", exc)
                eventlet.sleep(1)
            finally:
                self.listening = False
                _close(connection)


IDEMPOTENCY_TTL_CONFIG_KEY = "IDEMPOTENCY_TTL"
DEFAULT_IDEMPOTENCY_TTL = 24 * 60 * 60
MAX_RECENT_KEYS = 50_000  # about 13 MB at most


class RecentKeys(DependencyProvider):
    """Injects this process's memory of the Idempotency-Keys it answered
    202 lately: key id -> the request's fingerprint. A retry it knows is
    answered again without a publish; a key it knows coming back with
    another request is refused. Keys it does not know (another gateway's,
    or from before a restart) are published: the votes service counts a
    key once whatever it gets."""

    def setup(self):
        self.ttl = number(self.container.config, IDEMPOTENCY_TTL_CONFIG_KEY,
                          DEFAULT_IDEMPOTENCY_TTL, 1, 366 * 24 * 60 * 60,
                          integer=True)
        self.entries = {}  # key id -> (expires, fingerprint), oldest first

    def get_dependency(self, worker_ctx):
        return self

    def get(self, key_id):
        """The fingerprint of the request answered 202 for ``key_id``, or
        None."""
        entry = self.entries.get(key_id)
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            del self.entries[key_id]
            return None
        return entry[1]

    def remember(self, key_id, fingerprint):
        self.entries.pop(key_id, None)
        self.entries[key_id] = (time.monotonic() + self.ttl, fingerprint)
        while len(self.entries) > MAX_RECENT_KEYS:
            del self.entries[next(iter(self.entries))]
