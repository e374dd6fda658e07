"""A publisher that answers only once the broker has the message.

nameko's ``EventDispatcher`` publishes on a pooled connection with kombu's
retry policy: a worker may wait as long as the broker takes to come back,
and publishes are neither mandatory nor grouped. ConfirmedPublisher keeps
one Link (services.platform.amqp_layer) per round trip in flight, groups
concurrent callers into one message (services.platform.batching), and
answers within a fixed deadline: confirmed, or an error.
"""
import logging
import time
from functools import partial

import eventlet
from kombu import Queue
from kombu.exceptions import ChannelError
from nameko.extensions import DependencyProvider
from nameko.standalone.events import get_event_exchange

from services.platform import brokers, correlation
from services.platform.amqp_layer import Link
from services.platform.batching import Expired, GroupCommit
from services.settings import settings_of

_log = logging.getLogger(__name__)

# a caller waits in the group queue at most this share of the deadline, and
# the round trip takes at most the rest
QUEUED_SHARE = 0.4
# the deadline runs from the worker's start (the request's arrival), and
# this share of it (at most ANSWER_RESERVE_MAX seconds) is left for the
# answer's way out, so that a 503 is out within the deadline
ANSWER_RESERVE_SHARE = 0.05
ANSWER_RESERVE_MAX = 0.25


class ConfirmedPublisher(DependencyProvider):
    """Injects ``publish(item)``: returns once the item is in the broker
    (one confirmed, persistent, mandatory message per group of items, to
    the events exchange of ``source_service`` with ``routing_key``), or
    raises ``unavailable`` early enough that the worker can answer within
    the ``timeout_setting`` seconds of its start.

    ``queue`` (name) is declared, bound to that routing key, of the type
    AMQP_QUEUE_TYPE names, on every connect, so that nothing is dropped
    before its consumer has ever run; at start, a queue of another type
    stops the service (brokers.QueueTypeMismatch).
    A subclass sets the class attributes and ``message(groups)``, the body
    of one message from the items of a group."""

    source_service = None
    routing_key = None
    queue = None
    timeout_setting = "publish_timeout"  # the Settings attribute of the deadline
    max_group_weight = 1000
    weigh = staticmethod(len)
    links = 2  # round trips in flight at once
    # persistent: RabbitMQ confirms it once it is on disk, so an answered
    # publish survives a broker restart (bench.transient alone sets 1)
    delivery_mode = 2
    unavailable = ConnectionError  # what callers get when the broker fails
    what = "the message"  # in the error messages

    def message(self, groups):
        raise NotImplementedError

    def on_failure(self):
        """Called once per failed round trip (a metric, say)."""

    def on_published(self, body, groups):
        """Called once the broker has confirmed ``body``, the message of
        ``groups`` (a log line, say)."""

    @staticmethod
    def headers(groups):
        """The message's headers: the request ids of the groups that carry
        one (correlation.Tagged), or None."""
        ids = [group.request_id for group in groups
               if isinstance(group, correlation.Tagged)]
        return {correlation.MESSAGE_HEADER: ids} if ids else None

    def setup(self):
        config = self.container.config
        self.timeout = getattr(settings_of(self.container), self.timeout_setting)
        self.exchange = get_event_exchange(self.source_service, config)
        declare = [self.exchange]
        if self.queue is not None:
            declare.append(Queue(
                self.queue, exchange=self.exchange, routing_key=self.routing_key,
                durable=True, auto_delete=False, exclusive=False,
                queue_arguments=brokers.queue_arguments(config)))
        self.connections = [
            Link(config, declare=declare, confirms=True,
                 queue_type=brokers.queue_type(config))
            for _ in range(self.links)
        ]
        self.answer_within = self.timeout - min(
            ANSWER_RESERVE_MAX, self.timeout * ANSWER_RESERVE_SHARE)
        self.publish_time = self.answer_within * (1 - QUEUED_SHARE)
        self.group = GroupCommit(
            self._publish, max_weight=self.max_group_weight,
            max_wait=self.answer_within * QUEUED_SHARE, weigh=self.weigh,
            deadline=self.answer_within,
        )

    def start(self):
        self._check_queue()
        for link in self.connections:
            self.container.spawn_managed_thread(
                partial(self.group.run, partial(self._publish, link)))

    def _check_queue(self):
        """Connect and declare once: a queue of another type than
        configured raises QueueTypeMismatch, which stops the service. A
        broker that does not answer is left to the publishes (503s)."""
        link = self.connections[0]
        try:
            with link.lock:
                link.get_producer()
        except brokers.QueueTypeMismatch:
            raise
        except Exception as exc:
            _log.warning("RabbitMQ not reachable at start (%r): publishes "
                         "will be refused until it is", exc)
        finally:
            link.reset()

    def stop(self):
        for link in self.connections:
            link.reset()

    kill = stop

    def get_dependency(self, worker_ctx):
        # called as the worker starts: the request has arrived
        return partial(self.publish, ends=time.monotonic() + self.answer_within)

    def publish(self, item, ends=None):
        try:
            self.group.submit(item, None if ends is None else ends - time.monotonic())
        except Expired:
            raise self.unavailable(
                "RabbitMQ did not take {} in time".format(self.what)) from None

    def _publish(self, link, groups):
        body = self.message(groups)
        try:
            with link.lock:
                done = self._publish_message(link, body, len(groups),
                                             self.headers(groups))
        except self.unavailable:
            self.on_failure()
            raise
        self.on_published(body, groups)
        return done

    def _publish_message(self, link, body, groups, headers=None):
        deadline = time.monotonic() + self.publish_time
        # a connection that was already open may have died while idle:
        # then reconnect once (the message's consumer must bear a double)
        for attempt in (1, 2):
            was_open = link.producer is not None
            left = deadline - time.monotonic()
            try:
                link.publish(body, exchange=self.exchange,
                             routing_key=self.routing_key, timeout=left,
                             delivery_mode=self.delivery_mode, mandatory=True,
                             headers=headers)
                return [None] * groups
            except (ChannelError, brokers.QueueTypeMismatch) as exc:
                _log.error("%s publish refused: %s", self.routing_key, exc)
                raise self.unavailable(
                    "RabbitMQ refused {}".format(self.what)) from exc
            except (Exception, eventlet.Timeout) as exc:
                # the link is closed already: the retry reconnects
                if not was_open or attempt == 2 or time.monotonic() >= deadline:
                    _log.warning("%s publish failed: %r", self.routing_key, exc)
                    raise self.unavailable("RabbitMQ is unavailable") from None
