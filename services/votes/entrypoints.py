"""An ``event_handler`` that neither loses nor jams on a message.

Nameko's own handler acks a message whose handler raised, so a vote is lost
whenever Redis is down, and a body that cannot be decoded stops the consumer.
This one:

* validates the payload before any worker runs; a message that fails (or
  cannot be decoded at all) goes to the dead-letter queue with the reason,
  and is acked;
* retries a worker that failed with a transient error (``retry_on``) with
  capped exponential back-off, keeping the message unacked meanwhile, so a
  crash during the wait redelivers it; on shutdown it requeues instead;
* dead-letters a message whose worker kept failing with anything else.
"""
import logging
import random
import time
from functools import partial

import eventlet
from kombu import Exchange, Queue
from nameko.amqp.publish import Publisher
from nameko.constants import AMQP_URI_CONFIG_KEY
from nameko.events import EventHandler
from nameko.messaging import QueueConsumer

_log = logging.getLogger(__name__)

DEAD_LETTER_EXCHANGE = Exchange("votes.dead-letter", type="direct", durable=True)
DEAD_LETTER_QUEUE = Queue(
    "votes.dead-letter", exchange=DEAD_LETTER_EXCHANGE,
    routing_key="votes.dead-letter", durable=True, auto_delete=False,
)
RETRY_BASE_DELAY = 0.1
RETRY_MAX_DELAY = 5.0
MAX_UNEXPECTED_FAILURES = 5


def backoff(attempt):
    """Seconds before retry ``attempt`` (1, 2, ...): exponential, capped,
    jittered so that waiting workers do not retry in step."""
    delay = min(RETRY_MAX_DELAY, RETRY_BASE_DELAY * 2 ** (attempt - 1))
    return delay * random.uniform(0.5, 1.0)


class DeadLetteringQueueConsumer(QueueConsumer):
    """Hands a message kombu cannot decode to its provider, instead of
    letting the decode error escape into the consume loop."""

    def get_consumers(self, consumer_cls, channel):
        consumers = super().get_consumers(consumer_cls, channel)
        for provider, consumer in self._consumers.items():
            consumer.on_decode_error = partial(self._on_decode_error, provider)
        return consumers

    def _on_decode_error(self, provider, message, exc):
        # runs in the consume loop: publish from a thread of its own
        reason = "undecodable body: {}: {}".format(type(exc).__name__, exc)
        self.container.spawn_managed_thread(
            partial(provider.dead_letter, message, reason))


class ReliableEventHandler(EventHandler):

    queue_consumer = DeadLetteringQueueConsumer()

    def __init__(self, source_service, event_type, schema, retry_on=(),
                 **kwargs):
        """``schema(body)`` returns what the handler receives, or raises
        ValueError to dead-letter the message."""
        self.schema = schema
        self.retry_on = tuple(retry_on)
        self._stopping = False
        super().__init__(source_service, event_type, **kwargs)

    def setup(self):
        super().setup()
        self._stopping = False
        self.dead_letter_publisher = Publisher(
            self.container.config[AMQP_URI_CONFIG_KEY],
            declare=[DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE],
        )

    def stop(self):
        self._stopping = True
        super().stop()

    def handle_message(self, body, message):
        try:
            payload = self.schema(body)
        except ValueError as exc:
            self.dead_letter(message, "invalid payload: {}".format(exc))
            return
        self._spawn(payload, message, attempt=1)

    def _spawn(self, payload, message, attempt):
        if self._stopping:
            self.queue_consumer.requeue_message(message)
            return
        self.container.spawn_worker(
            self, (payload,), {},
            context_data=self.unpack_message_headers(message),
            handle_result=partial(self._handle_result, message, attempt),
        )

    def _handle_result(self, message, attempt, worker_ctx, result=None,
                       exc_info=None):
        if exc_info is None:
            self.queue_consumer.ack_message(message)
            return result, exc_info

        exc = exc_info[1]
        transient = isinstance(exc, self.retry_on)
        if not transient and attempt >= MAX_UNEXPECTED_FAILURES:
            self.dead_letter(message, "handler failed {} times: {}: {}".format(
                attempt, type(exc).__name__, exc))
        else:
            self.container.spawn_managed_thread(
                partial(self._retry, worker_ctx.args[0], message, attempt + 1))
        return result, exc_info

    def _retry(self, payload, message, attempt):
        eventlet.sleep(backoff(attempt - 1))
        self._spawn(payload, message, attempt)

    def dead_letter(self, message, reason):
        """Copy the message to the dead-letter queue with the reason, then
        ack it. If the copy fails the message is requeued, never dropped."""
        delivery = message.delivery_info
        headers = dict(message.headers or {})
        headers.update({
            "x-dead-letter-reason": reason[:1000],
            "x-original-exchange": delivery.get("exchange"),
            "x-original-routing-key": delivery.get("routing_key"),
            "x-dead-lettered-at": int(time.time()),
        })
        try:
            self.dead_letter_publisher.publish(
                message.body,
                exchange=DEAD_LETTER_EXCHANGE,
                routing_key=DEAD_LETTER_QUEUE.routing_key,
                headers=headers,
                content_type=message.content_type,
                content_encoding=message.content_encoding,
                retry=False,
            )
        except Exception as exc:
            _log.error("could not dead-letter a message (%s); requeued", exc)
            eventlet.sleep(1)
            self.queue_consumer.requeue_message(message)
            return
        _log.warning("dead-lettered a %s message: %s",
                     delivery.get("routing_key"), reason)
        self.queue_consumer.ack_message(message)


event_handler = ReliableEventHandler.decorator
