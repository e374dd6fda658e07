class ValidationError(ValueError):
    """A request field breaks the API rules."""


class PostNotFound(LookupError):
    """No vote has ever been recorded for the post."""


class BrokerUnavailable(Exception):
    """A vote could not be made durable in RabbitMQ in time."""


class ServiceUnavailable(Exception):
    """The votes service did not answer in time."""


class IdempotencyKeyReused(Exception):
    """An Idempotency-Key came back with a different request."""
