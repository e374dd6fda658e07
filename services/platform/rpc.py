"""nameko's ``rpc`` entrypoint, made safe against a lost broker and
malformed requests, and giving each worker a request id.

Its queue consumer is a ResilientQueueConsumer (services.platform.consumers);
its queue is of the type AMQP_QUEUE_TYPE names; a request that cannot be
answered is dead-lettered (services.platform.dead_lettering).
"""
import hashlib
import logging
import sys

import eventlet
import nameko.rpc
from kombu.exceptions import OperationalError
from kombu.serialization import registry
from nameko.constants import (
    AMQP_SSL_CONFIG_KEY,
    AMQP_URI_CONFIG_KEY,
    DEFAULT_SERIALIZER,
    LOGIN_METHOD_CONFIG_KEY,
    SERIALIZER_CONFIG_KEY,
)
from nameko.contextdata import ContextDataProvider
from nameko.exceptions import MalformedRequest
from nameko.rpc import get_rpc_exchange
from prometheus_client import Counter

from services.platform import brokers
from services.platform.consumers import LOST_CONNECTION, ResilientQueueConsumer
from services.platform.dead_lettering import (
    copy_to_dead_letters,
    dead_letter_link,
    dead_letter_queue,
)

_log = logging.getLogger(__name__)

RPC_DEAD_LETTER_EXCHANGE = "rpc.dead-letter"

rpc_requests_refused = Counter(
    "rpc_requests_refused_total",
    "RPC requests refused before any worker ran, by reason (no_reply_to, "
    "no_correlation_id, undecodable): dead-lettered, or answered with an "
    "error when they can be.", ["reason"])


class JsonFallbackResponder(nameko.rpc.Responder):
    """nameko's Responder, which answers in the request's content type:
    it raised KeyError for a request with none or one kombu does not know,
    and answered a pickle request (refused as undecodable) in pickle. A
    request in a content type the service does not accept is answered in
    JSON."""

    def __init__(self, *args, accept=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.accept = accept

    def send_response(self, result, exc_info):
        properties = self.message.properties
        if registry.type_to_name.get(properties.get("content_type")) not in self.accept:
            properties["content_type"] = "application/json"
        return super().send_response(result, exc_info)


class ResilientRpcConsumer(nameko.rpc.RpcConsumer):
    """nameko's RpcConsumer on a ResilientQueueConsumer, whose reply to a
    request does not kill the container when the broker has gone: upstream
    lets the publish error escape into the worker's result handling. Its
    queue is of the type AMQP_QUEUE_TYPE names.

    And a malformed request runs no worker and never ends the container
    (upstream's Responder raised KeyError on a request without
    ``reply_to``, which killed it, and the broker then redelivered the
    request to the next process): one without ``reply_to`` or
    ``correlation_id`` cannot be answered usefully, and goes to the
    dead-letter queue ``rpc-<service>.dead-letter`` with the reason; one
    whose body cannot be decoded is answered with a MalformedRequest error
    if it can be, else dead-lettered. Each is logged and counted
    (rpc_requests_refused_total)."""

    queue_consumer = ResilientQueueConsumer()

    def setup(self):
        super().setup()
        config = self.container.config
        # the votes service's RPC queue carries votes too (its vote method)
        self.queue = brokers.typed(self.queue, config)
        name = "{}.dead-letter".format(self.queue.name)
        self.dead_letter_queue = brokers.typed(
            dead_letter_queue(RPC_DEAD_LETTER_EXCHANGE, name, name), config)
        self.also_declares = (self.dead_letter_queue,)
        self.dead_letter_publisher = dead_letter_link(config, self.dead_letter_queue)

    def kill(self):
        super().kill()
        self.dead_letter_publisher.reset()

    def handle_message(self, body, message):
        problem = unanswerable(message)
        if problem is not None:
            self._refuse(message, *problem)
            return
        super().handle_message(body, message)

    def dead_letter(self, message, reason):
        """The queue consumer's hook for a body it cannot decode."""
        self._refuse(message, UNDECODABLE, reason)

    def _refuse(self, message, kind, reason):
        """Answer the request with an error if it can be answered, else
        copy it to the dead-letter queue; then ack it. A copy that fails
        requeues the message, never drops it."""
        routing_key = message.delivery_info.get("routing_key")
        if unanswerable(message) is None:
            _log.warning("refused an RPC request to %s: %s", routing_key, reason)
            rpc_requests_refused.labels(kind).inc()
            self.handle_result(message, None, _failure(MalformedRequest(reason)))
            return
        try:
            copy_to_dead_letters(self.dead_letter_publisher,
                                 self.dead_letter_queue, message, reason)
        except Exception as exc:
            _log.error("could not dead-letter an RPC request (%s); requeued", exc)
            eventlet.sleep(1)
            self.queue_consumer.requeue_message(message)
            return
        rpc_requests_refused.labels(kind).inc()
        _log.warning("dead-lettered an RPC request to %s: %s", routing_key, reason)
        self.queue_consumer.ack_message(message)

    def handle_result(self, message, result, exc_info):
        # no reply while the broker is away; the request stays unacked and
        # is redelivered, or expires. Raising here killed the container.
        config = self.container.config
        responder = JsonFallbackResponder(
            config[AMQP_URI_CONFIG_KEY], get_rpc_exchange(config),
            config.get(SERIALIZER_CONFIG_KEY, DEFAULT_SERIALIZER), message,
            ssl=config.get(AMQP_SSL_CONFIG_KEY),
            login_method=config.get(LOGIN_METHOD_CONFIG_KEY),
            accept=self.container.accept)
        try:
            result, exc_info = responder.send_response(result, exc_info)
        except (OperationalError,) + LOST_CONNECTION as exc:
            _log.warning("could not send an RPC reply: %r", exc)
            return result, exc_info
        self.queue_consumer.ack_message(message)
        return result, exc_info


NO_REPLY_TO = "no_reply_to"
NO_CORRELATION_ID = "no_correlation_id"
UNDECODABLE = "undecodable"


def unanswerable(message):
    """(kind, reason) when no reply to ``message`` could reach its caller,
    else None."""
    properties = message.properties
    reply_to = properties.get("reply_to")
    if not isinstance(reply_to, str) or not reply_to:
        return NO_REPLY_TO, "no reply_to: the request cannot be answered"
    if not properties.get("correlation_id"):
        return NO_CORRELATION_ID, ("no correlation_id: the request can be neither "
                                   "answered nor told from a redelivery")
    return None


def _failure(exc):
    try:
        raise exc
    except type(exc):
        return sys.exc_info()


REQUEST_ID_CONTEXT_KEY = "rpc_request_id"


class Rpc(nameko.rpc.Rpc):
    """nameko's ``rpc`` on a ResilientQueueConsumer, which also hands the
    worker a request id: the request's correlation id, the same on every
    delivery of one request (nameko passes it to the responder alone)."""

    rpc_consumer = ResilientRpcConsumer()

    def unpack_message_headers(self, message):
        context_data = super().unpack_message_headers(message)
        correlation_id = message.properties.get("correlation_id")
        if correlation_id:
            context_data[REQUEST_ID_CONTEXT_KEY] = hashlib.sha256(
                str(correlation_id).encode()).hexdigest()[:32]
        return context_data


class RequestId(ContextDataProvider):
    """Injects the id of the RPC request being served (None if the caller
    sent no correlation id)."""

    context_key = REQUEST_ID_CONTEXT_KEY


rpc = Rpc.decorator
