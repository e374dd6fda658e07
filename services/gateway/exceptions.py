import math

from services.platform import operator
from services.platform.web import TooManyFields


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


class VoterTokenError(Exception):
    """A request names a voter without a token that proves it."""


class VoterTokenMissing(VoterTokenError):
    pass


class VoterTokenExpired(VoterTokenError):
    pass


class VoterTokenInvalid(VoterTokenError):
    """Malformed, badly signed, or without a required claim."""


class VoterTokenWrongAudience(VoterTokenError):
    pass


class VoterTokenWrongVoter(VoterTokenError):
    pass


class VoterTokenWrongPost(VoterTokenError):
    pass


class VoteByGetOff(Exception):
    """GET /vote where VOTE_BY_GET is off: a vote is a POST there."""

    headers = {"Allow": "POST"}


class RateLimited(Exception):
    """A vote or read request over a rate limit (services.gateway.rate_limits);
    ``headers``: Retry-After and the IETF RateLimit headers (draft 7's
    separate fields)."""

    def __init__(self, rate, used, ttl_ms):
        super().__init__("more than {} {} in {} s from this {}".format(
            rate.limit, "reads" if rate.name == "read" else "votes", rate.seconds,
            "voter" if rate.name == "voter" else "client address"))
        reset = str(max(1, math.ceil(ttl_ms / 1000)))
        self.headers = {
            "Retry-After": reset,
            "RateLimit-Limit": str(rate.limit),
            "RateLimit-Remaining": str(max(0, rate.limit - used)),
            "RateLimit-Reset": reset,
            "RateLimit-Policy": "{};w={}".format(rate.limit, rate.seconds),
        }


class RateLimitsUnavailable(ServiceUnavailable):
    """Redis is up but did not answer a rate limit check in time: that
    request is refused (503), not let through unchecked."""


# The gateway's answers: exception -> (status, error code), matched with
# isinstance, in order. This table alone decides what is a 4xx (or 503)
# and what is an unexpected 500 (services.platform.web).
ERRORS = (
    ((ValidationError, TooManyFields), 400, "VALIDATION_ERROR"),
    (VoterTokenMissing, 401, "VOTER_TOKEN_MISSING"),
    (VoterTokenExpired, 401, "VOTER_TOKEN_EXPIRED"),
    (VoterTokenInvalid, 401, "VOTER_TOKEN_INVALID"),
    (VoterTokenWrongAudience, 401, "VOTER_TOKEN_WRONG_AUDIENCE"),
    (VoterTokenWrongVoter, 401, "VOTER_TOKEN_WRONG_VOTER"),
    (VoterTokenWrongPost, 401, "VOTER_TOKEN_WRONG_POST"),
    *operator.ERRORS,
    (PostNotFound, 404, "POST_NOT_FOUND"),
    (VoteByGetOff, 405, "METHOD_NOT_ALLOWED"),
    (IdempotencyKeyReused, 422, "IDEMPOTENCY_KEY_REUSED"),
    (RateLimited, 429, "RATE_LIMITED"),
    (BrokerUnavailable, 503, "BROKER_UNAVAILABLE"),
    (ServiceUnavailable, 503, "SERVICE_UNAVAILABLE"),
)
