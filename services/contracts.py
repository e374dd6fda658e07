"""The wire contract between the gateway, the votes service, their tests and
the bench: exchange, event, queue and RPC names and the Redis key layout,
each defined here once.

The gateway never imports the votes service's code; both import this.
"""

# the vote_cast event: published by the gateway, handled by the votes service
GATEWAY_SERVICE = "gateway"
VOTES_SERVICE = "votes"
VOTE_CAST = "vote_cast"
VOTE_CAST_HANDLER = "handle_vote_cast"
EVENTS_EXCHANGE = "{}.events".format(GATEWAY_SERVICE)  # nameko's rule


def event_queue(source_service, event_type, service_name, method_name):
    """The durable queue nameko's event_handler consumes (nameko 2.14,
    EventHandler.setup); tests/unit/test_contracts.py checks this against
    nameko itself."""
    return "evt-{}-{}--{}.{}".format(
        source_service, event_type, service_name, method_name)


# declared by the gateway too, so that no vote is dropped before the votes
# service has ever run
VOTES_QUEUE = event_queue(GATEWAY_SERVICE, VOTE_CAST, VOTES_SERVICE,
                          VOTE_CAST_HANDLER)

# RPC: nameko's exchange and the votes service's queue and methods
RPC_EXCHANGE = "nameko-rpc"
RPC_QUEUE = "rpc-{}".format(VOTES_SERVICE)
RPC_VOTE = "vote"
RPC_GET_COUNTS = "get_counts"
RPC_GET_COUNTS_MANY = "get_counts_many"
RPC_TOP = "top"
RPC_HEALTH = "health"
RPC_METHODS = (RPC_VOTE, RPC_GET_COUNTS, RPC_GET_COUNTS_MANY, RPC_TOP, RPC_HEALTH)


def rpc_routing_key(method):
    return "{}.{}".format(VOTES_SERVICE, method)


# where the votes service puts messages it cannot apply
DEAD_LETTER_EXCHANGE = "votes.dead-letter"
DEAD_LETTER_QUEUE = "votes.dead-letter"
DEAD_LETTER_ROUTING_KEY = "votes.dead-letter"

# Redis: every key starts with "votes:" (layout in services/votes/dependencies.py)
KEY_PREFIX = "votes:"
KEY_TOP = KEY_PREFIX + "top"
_POST = KEY_PREFIX + "post:"
_VOTERS = KEY_PREFIX + "voters:"
_RETRACTED = KEY_PREFIX + "retracted:"
_APPLIED = KEY_PREFIX + "applied:"
_ONCE = KEY_PREFIX + "once:"


def post_key(post_id):
    return _POST + post_id


def voters_key(post_id):
    return _VOTERS + post_id


def retracted_key(post_id):
    return _RETRACTED + post_id


def applied_key(event_id):
    return _APPLIED + event_id


def once_key(key_id):
    return _ONCE + key_id


def post_id_of(key):
    """The post id in a post_key."""
    return key[len(_POST):]


POST_KEY_PATTERN = post_key("*")       # for SCAN MATCH
APPLIED_KEY_PATTERN = applied_key("*")

# the counts_changed event: published by the votes service after it applied
# votes, {"posts": [counts, ...], "top": [counts, ...]}, best effort (not
# persistent, not mandatory); every gateway process reads every one
COUNTS_CHANGED = "counts_changed"
VOTES_EVENTS_EXCHANGE = "{}.events".format(VOTES_SERVICE)  # nameko's rule
LIVE_COUNTS_CONSUMER = "live_counts"


def broadcast_queue(source_service, event_type, service_name, method_name,
                    identifier):
    """The queue of one process of a broadcast handler, by nameko's rule
    for ``handler_type=BROADCAST`` (nameko 2.14, EventHandler.setup); with
    reliable_delivery=False it is exclusive, non-durable and auto-deleted."""
    return "{}-{}".format(
        event_queue(source_service, event_type, service_name, method_name),
        identifier)


def counts_changed_queue(identifier):
    """The counts_changed queue of one gateway process."""
    return broadcast_queue(VOTES_SERVICE, COUNTS_CHANGED, GATEWAY_SERVICE,
                           LIVE_COUNTS_CONSUMER, identifier)
