"""Several RabbitMQ nodes: failover connections and quorum queues.

``AMQP_URI`` may name several nodes of one cluster in kombu's failover
form, ``amqp://a;amqp://b;amqp://c``. kombu (5.x) splits it into
``Connection.alt`` and moves to the next alternate on a failed connect
(``maybe_switch_next``), but ``Connection.connect()`` gives up after two
attempts and ``ensure_connection(max_retries=0)`` never moves at all; so
with the first node dead, nameko's consumer (and ours, before this) kept
knocking on that node. ``connect()`` here tries every node once, in turn,
without sleeping between them.

``AMQP_QUEUE_TYPE`` (config.yml) makes every queue that carries votes a
``quorum`` queue (replicated by Raft, a message confirmed once a majority
of nodes has it) instead of a ``classic`` one (on one node). RabbitMQ
refuses to redeclare a queue as another type (PRECONDITION_FAILED,
"inequivalent arg 'x-queue-type'"): ``declare()`` turns that into
QueueTypeMismatch, whose message says what to do, and the services check
their queues when they start, so that a mismatch stops them at once with
that message instead of retrying for ever.

``unserved()`` tells a consumer the broker has stopped serving (see
services.platform.consumers and services.platform.amqp_layer, STALL_AFTER).
"""
import copy
import logging
import socket
import time
from urllib.parse import urlsplit, urlunsplit

import amqp
import eventlet
from nameko.exceptions import ConfigurationError
from prometheus_client import Counter

from services import settings

_log = logging.getLogger(__name__)

QUEUE_TYPE_CONFIG_KEY = "AMQP_QUEUE_TYPE"
CLASSIC = "classic"
QUORUM = "quorum"
QUEUE_TYPES = (CLASSIC, QUORUM)
QUEUE_TYPE_ARGUMENT = "x-queue-type"
MIGRATION = ("drain it and declare it again as the new type: README, "
             "'Moving a queue to another type'")


class QueueTypeMismatch(ConfigurationError):
    """A queue exists on the broker with another type than configured."""


def queue_type(config):
    """The configured queue type; ConfigurationError if unknown."""
    return settings.read(config, QUEUE_TYPE_CONFIG_KEY)


def queue_arguments(config):
    """The x-arguments of a queue that carries votes. A classic queue is
    declared as before, with none, so that existing queues stay equal."""
    if queue_type(config) == QUORUM:
        return {QUEUE_TYPE_ARGUMENT: QUORUM}
    return {}


def typed(queue, config):
    """A copy of kombu ``queue`` of the configured type."""
    queue = copy.copy(queue)
    queue.queue_arguments = dict(queue.queue_arguments or {},
                                 **queue_arguments(config))
    return queue


def declare(entities, channel, config_type=None):
    """Declare kombu entities on ``channel``; a queue of another type than
    declared raises QueueTypeMismatch (the channel is closed then)."""
    for entity in entities:
        try:
            entity.bind(channel).declare()
        except amqp.exceptions.PreconditionFailed as exc:
            problem = mismatch(exc, entity.name, config_type)
            if problem is None:
                raise
            raise problem from exc


def mismatch(exc, name, config_type=None):
    """A QueueTypeMismatch for a broker refusal ``exc`` about queue
    ``name``, or None if ``exc`` is about something else."""
    text = str(exc)
    if QUEUE_TYPE_ARGUMENT not in text:
        return None
    return QueueTypeMismatch(
        "queue {!r} exists on the broker as another type than {}={}: {}. "
        "To change its type, {}. (RabbitMQ: {})".format(
            name, QUEUE_TYPE_CONFIG_KEY, config_type or "?",
            "set it back" if config_type else "align the configuration",
            MIGRATION, text))


def connect(connection):
    """Connect kombu ``connection`` to the first of its nodes that
    answers, trying each once in turn (from the one it is at) with no pause
    in between; raises the last node's error if none answers."""
    attempts = max(len(connection.alt or ()), 1)
    connection.ensure_connection(max_retries=attempts - 1,
                                 reraise_as_library_errors=False)
    return connection


def redact(uri):
    """``uri`` (one node or several, ``;``-separated) without passwords."""
    return ";".join(_redact_one(part) for part in uri.split(";"))


def _redact_one(uri):
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = "{}:***@{}".format(parts.username, parts.netloc.rsplit("@", 1)[-1])
    return urlunsplit(parts._replace(netloc=netloc))


# a consumer with room for more that got nothing for STALL_AFTER seconds asks
# the broker (on its own channel) whether its queue holds messages; an
# answer of some, or none within STALL_ANSWER_TIMEOUT, and it consumes anew
STALL_AFTER = 5.0
STALL_ANSWER_TIMEOUT = 3.0
STALL_CHECK_INTERVAL = 1.0  # seconds between two looks at the quiet time

class Quiet:
    """How long a consumer has had no delivery. ``due()``, looked at no
    more than once a STALL_CHECK_INTERVAL, is true once that reaches
    STALL_AFTER seconds, and again each STALL_AFTER after: when to ask the
    broker whether it still serves the consumer (unserved()). The votes
    service's consumers keep their own per-queue times, which also wait for
    a free prefetch slot, with one look for all queues per turn of their
    loop (services.platform.consumers)."""

    def __init__(self):
        self.since = time.monotonic()
        self.next_look = 0.0

    def heard(self):
        self.since = time.monotonic()

    def due(self):
        now = time.monotonic()
        if now < self.next_look:
            return False
        self.next_look = now + STALL_CHECK_INTERVAL
        if now - self.since < STALL_AFTER:
            return False
        self.since = now
        return True


consumer_stalls = Counter(
    "amqp_consumer_stalls_total",
    "Consumers found not served by the broker and started anew, by queue "
    "and reason (ready: messages ready and none delivered; no_answer: the "
    "broker did not answer on the consumer's channel).", ["queue", "reason"])


def unserved(channel, queue, quiet, timeout, label=None):
    """Why the broker is not serving ``channel``'s consumer of ``queue``,
    which got nothing for ``quiet`` seconds while it had room, or None if
    it is. Asks on that channel how many messages are ready (a passive
    declare): some, or no answer within ``timeout`` seconds, and the
    consumer is not served; that is logged and counted (as ``label``, or
    the queue's name) and the channel's socket shut down, with no close
    handshake on a stalled connection, before the caller consumes anew."""
    try:
        with eventlet.Timeout(timeout):
            ready = channel.queue_declare(queue, passive=True).message_count
    except eventlet.Timeout:
        kind = "no_answer"
        reason = "no answer on the consumer's channel within {}s".format(timeout)
    else:
        if not ready:
            return None
        kind = "ready"
        reason = "{} messages ready and none delivered for {}s".format(ready, quiet)
    consumer_stalls.labels(label or queue, kind).inc()
    _log.warning("the broker stopped serving the consumer of %s (%s): "
                 "consuming anew", queue, reason)
    try:  # the framing may be cut mid-frame
        channel.connection.sock.shutdown(socket.SHUT_RDWR)
    except (OSError, AttributeError):
        pass
    return reason
