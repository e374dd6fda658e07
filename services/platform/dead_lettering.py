"""Dead letters: a message a service will not handle is copied, with
headers that say why and where it came from, to a durable queue of its own
(read and replayed by services.votes.dead_letters), then acked.
"""
import time

from kombu import Exchange, Queue

from services.platform import brokers
from services.platform.amqp_layer import Link

# headers of a dead-lettered message (read by a replay tool)
REASON_HEADER = "x-dead-letter-reason"
ORIGIN_EXCHANGE_HEADER = "x-original-exchange"
ORIGIN_ROUTING_KEY_HEADER = "x-original-routing-key"
DEAD_LETTERED_AT_HEADER = "x-dead-lettered-at"


def dead_letter_queue(exchange, queue, routing_key):
    """A durable dead-letter queue on a direct exchange of its own."""
    return Queue(queue, exchange=Exchange(exchange, type="direct", durable=True),
                 routing_key=routing_key, durable=True, auto_delete=False)


def dead_letter_link(config, queue):
    """The Link a service's dead letters to ``queue`` go out on: confirmed,
    the queue and its exchange declared on every connect (as nameko's
    Publisher did on its pooled connections)."""
    return Link(config, declare=[queue.exchange, queue], confirms=True,
                queue_type=brokers.queue_type(config))


def copy_to_dead_letters(link, queue, message, reason, extra=None):
    """Publish a copy of ``message`` to the dead-letter ``queue`` on
    ``link`` (persistent, confirmed, waiting for the confirm as long as it
    takes, as nameko's Publisher did) with headers that say why
    (``reason``) and where it came from; raises what the publish raises."""
    delivery = message.delivery_info
    headers = dict(message.headers or {})
    headers.update({
        REASON_HEADER: reason[:1000],
        ORIGIN_EXCHANGE_HEADER: delivery.get("exchange"),
        ORIGIN_ROUTING_KEY_HEADER: delivery.get("routing_key"),
        DEAD_LETTERED_AT_HEADER: int(time.time()),
    })
    headers.update(extra or {})
    with link.lock:
        link.publish(
            message.body,
            exchange=queue.exchange,
            routing_key=queue.routing_key,
            timeout=None,
            delivery_mode=2,
            headers=headers,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
        )

