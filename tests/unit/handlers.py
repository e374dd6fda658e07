"""The votes service's event handler bound to nameko's mock container, with
a fake queue consumer and dead-letter publisher (no broker)."""
from unittest import mock

from services import contracts
from services.votes import schemas
from services.votes.dead_letters import DEAD_LETTER_QUEUE
from services.votes.exceptions import StoreUnavailable


def bound_event_handler(container, cls, setup=False, **options):
    """A ``cls`` (ReliableEventHandler or a subclass) as the votes service
    declares it, bound to ``container``; ``setup`` runs its setup() too."""
    container.config["AMQP_URI"] = "memory://"
    container.shared_extensions = {}
    container.service_name = "votes"
    handler = cls(
        contracts.GATEWAY_SERVICE, contracts.VOTE_CAST, schema=schemas.parse_event,
        dead_letter_queue=DEAD_LETTER_QUEUE, retry_on=(StoreUnavailable,), **options,
    ).bind(container, contracts.VOTE_CAST_HANDLER)
    handler.queue_consumer = mock.Mock()
    if setup:
        handler.setup()
    handler.dead_letter_publisher = mock.MagicMock()  # an amqp_layer.Link
    return handler
