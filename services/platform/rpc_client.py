"""A client of nameko's RPC protocol with a deadline on every call.

nameko's ``RpcProxy`` waits for a reply for as long as it takes (no
timeout in nameko 2), sends one request per call, and starts its reply
consumer inside the container's QueueConsumer, whose reconnects are
kombu's. RpcClient speaks the same wire protocol (requests to nameko's RPC
exchange with ``reply_to`` and ``correlation_id``, JSON ``{"args",
"kwargs"}`` in, ``{"result", "error"}`` out) on a Link and a ConsumeLoop
of its own (services.platform.amqp_layer), fails every call within its
timeout, drops requests nobody took in time (per-message expiry), and can
group concurrent calls of one method into one request
(services.platform.batching).
"""
import logging
import uuid

import eventlet
from kombu import Queue
from nameko.extensions import DependencyProvider
from nameko.rpc import get_rpc_exchange

from services.platform.amqp_layer import ConsumeLoop, Link
from services.platform.batching import Expired, GroupCommit
from services.platform.publisher import QUEUED_SHARE
from services.settings import settings_of

_log = logging.getLogger(__name__)


class RpcClient(DependencyProvider):
    """Calls the RPC methods of ``target_service``; every call raises
    ``unavailable`` after the ``timeout_setting`` seconds, or when the
    method raised. With ``group_method`` set, ``call_grouped(item)`` joins
    concurrent callers into one call of that method with the list of their
    items (it must return one result per item, in order). A subclass sets
    the class attributes and adds the verbs its service uses."""

    target_service = None
    timeout_setting = "read_timeout"  # the Settings attribute of the deadline
    group_method = None
    max_group = 500
    readers = 2  # grouped calls in flight at once
    unavailable = ConnectionError

    def setup(self):
        config = self.container.config
        settings = settings_of(self.container)
        self.amqp_uri = settings.amqp_uri
        self.broker = config  # its AMQP_URI and TLS settings (amqp_layer.connection)
        self.heartbeat = settings.amqp_heartbeat
        self.timeout = getattr(settings, self.timeout_setting)
        self.exchange = get_rpc_exchange(config)
        self.reply_queue_name = "rpc.reply-{}-{}".format(
            self.container.service_name, uuid.uuid4())
        self.link = Link(config, declare=(self.exchange,))
        self.replies = {}  # correlation id -> Event
        self.replies_loop = self.reply_loop()
        self.group = GroupCommit(
            self._call_group, max_weight=self.max_group,
            max_wait=self.timeout * QUEUED_SHARE, deadline=self.timeout,
        )

    def reply_loop(self):
        """The reply listener: a consumer of the reply queue, watched for
        stalls while calls wait (amqp_layer.ConsumeLoop)."""
        queue = Queue(
            self.reply_queue_name, exchange=self.exchange,
            routing_key=self.reply_queue_name, exclusive=True, auto_delete=True,
        )
        return ConsumeLoop(
            self.broker, queue, self._on_reply, heartbeat=self.heartbeat,
            label="rpc.reply-{}".format(self.container.service_name),
            what="reply consumer", watch=lambda: bool(self.replies),
            container=self.container, who="rpc replies")

    @property
    def listening(self):
        """Replies can come: a call sent now can be answered."""
        return self.replies_loop.consuming

    @listening.setter
    def listening(self, value):
        self.replies_loop.consuming = value

    def start(self):
        self.replies_loop.start(self.container.spawn_managed_thread)
        if self.group_method is not None:
            for _ in range(self.readers):
                self.container.spawn_managed_thread(self.group.run)

    def stop(self):
        self.replies_loop.stop()
        self.link.reset()

    kill = stop

    def get_dependency(self, worker_ctx):
        return self

    def _late(self):
        return self.unavailable(
            "the {} service did not answer in time".format(self.target_service))

    def call_grouped(self, item):
        try:
            return self.group.submit(item)
        except Expired:
            raise self._late() from None

    def _call_group(self, items):
        return self.call(self.group_method, list(items),
                         timeout=self.timeout * (1 - QUEUED_SHARE))

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
                    _log.warning("%s.%s failed: %s", self.target_service,
                                 method, error)
                    raise self.unavailable("the {} service could not answer".format(
                        self.target_service))
                return body["result"]
            raise self._late() from None
        finally:
            self.replies.pop(correlation_id, None)

    def _request(self, method, args, correlation_id, timeout):
        try:
            with self.link.lock:
                self.link.publish(
                    {"args": args, "kwargs": {}}, exchange=self.exchange,
                    routing_key="{}.{}".format(self.target_service, method),
                    timeout=timeout, delivery_mode=1,
                    reply_to=self.reply_queue_name,
                    correlation_id=correlation_id,
                    # a request nobody took in time is dropped by the broker
                    expiration=timeout,
                )
        except Exception as exc:
            raise self.unavailable("no connection to RabbitMQ") from exc

    def queue_state(self, queue):
        """(messages waiting, consumers) of ``queue``; raises if the broker
        does not answer, or (NOT_FOUND) the queue does not exist."""
        try:
            with self.link.lock:
                channel = self.link.get_producer().channel
                _, waiting, consumers = channel.queue_declare(queue, passive=True)
            return waiting, consumers
        except Exception:
            self.link.reset()
            raise

    def _on_reply(self, body, message):
        # a reply to a call that gave up (or never was) finds no Event
        reply = self.replies.get(message.properties.get("correlation_id"))
        if reply is not None and not reply.ready():
            reply.send(body)
