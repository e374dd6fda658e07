"""Request ids: each HTTP request has one, taken from its ``X-Request-Id``
or made, answered in the same header, and carried by the messages it
causes, so that a vote can be followed from the gateway's log to the votes
service's log and into the dead letters.

A client's id is taken as it is when it is 1 to 128 visible ASCII
characters (what a proxy or a client library makes: a uuid, a trace id);
any other value is replaced by a fresh id rather than refused, so that no
vote is lost for a header that only serves the logs, and no control
character or oversized value reaches a log line.

A message carries the ids of every request whose items it holds (one
vote_cast event groups several requests' votes) in ``x-request-ids``.
"""
import logging
import re
import uuid

HEADER = "X-Request-Id"
ENVIRON_KEY = "HTTP_X_REQUEST_ID"
MESSAGE_HEADER = "x-request-ids"  # a list of ids
MAX_LENGTH = 128
_VALID = re.compile(r"[\x21-\x7e]{1,%d}\Z" % MAX_LENGTH)
REQUEST_ID = "request.id"  # the WSGI environ key the id is kept under

# one line per message, at INFO, for the request ids it carries; its own
# logger so that an operator can turn it down alone
log = logging.getLogger("votes.requests")


def request_id(environ):
    """The request's id: set on its first call (the client's if valid,
    else a new uuid4 hex), the same after."""
    found = environ.get(REQUEST_ID)
    if found is None:
        given = environ.get(ENVIRON_KEY)
        found = given if given is not None and _VALID.match(given) else uuid.uuid4().hex
        environ[REQUEST_ID] = found
    return found


def ids_of(headers):
    """The request ids a message's headers carry: those of the valid form
    (a message is not trusted to be the gateway's: nothing else reaches a
    log line); [] if none or not a list."""
    ids = (headers or {}).get(MESSAGE_HEADER)
    if not isinstance(ids, list):
        return []
    return [value for value in ids if isinstance(value, str) and _VALID.match(value)]


class Tagged(list):
    """Items of one request (a list), with its ``request_id``: what a
    grouping publisher is given, so that it can name the requests of a
    group."""

    __slots__ = ("request_id",)

    def __init__(self, items, request_id):
        super().__init__(items)
        self.request_id = request_id
