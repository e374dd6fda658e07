"""The gateway's dependencies: vote publishing and counts reads (thin
configurations of services.platform's publisher and RPC client), and the
memory of recent Idempotency-Keys.
"""
import itertools
import logging
import time
import uuid

from nameko.extensions import DependencyProvider

from services import contracts
from services.gateway import metrics
from services.gateway.exceptions import BrokerUnavailable, ServiceUnavailable
from services.platform import correlation
from services.platform.publisher import ConfirmedPublisher
from services.platform.rpc_client import RpcClient
from services.settings import settings_of


class VotePublisher(ConfirmedPublisher):
    """Injects ``cast(votes)``: returns once the votes are in RabbitMQ (one
    confirmed, persistent, mandatory ``vote_cast`` event per group, in the
    votes queue even before the votes service has ever run), or raises
    BrokerUnavailable in time for the 503 to be out within PUBLISH_TIMEOUT
    seconds of the request's arrival."""

    source_service = contracts.GATEWAY_SERVICE
    routing_key = contracts.VOTE_CAST
    queue = contracts.VOTES_QUEUE
    timeout_setting = "publish_timeout"
    max_group_weight = 1000  # votes per event
    unavailable = BrokerUnavailable
    what = "the vote"

    def message(self, groups):
        # the event id makes a second publish of it harmless
        body = {
            "id": uuid.uuid4().hex,
            "votes": list(itertools.chain.from_iterable(groups)),
        }
        metrics.publish_group_votes.observe(len(body["votes"]))
        return body

    def on_failure(self):
        metrics.publish_failures.inc()

    def on_published(self, body, groups):
        if correlation.log.isEnabledFor(logging.INFO):
            correlation.log.info("vote_cast %s published: %s", body["id"], "; ".join(
                "request {} votes {}".format(group.request_id, _vote_ids(group))
                for group in groups if isinstance(group, correlation.Tagged)))


MOST_VOTE_IDS_LOGGED = 10  # per request, in the line of its event


def _vote_ids(votes, most=MOST_VOTE_IDS_LOGGED):
    ids = " ".join(vote["voteId"] for vote in votes[:most])
    return ids if len(votes) <= most else "{} (+{} more)".format(ids, len(votes) - most)


class VotesReader(RpcClient):
    """Injects a client of the votes service's RPC methods. Concurrent
    counts reads go out as one ``get_counts_many`` call; every call fails
    with ServiceUnavailable after READ_TIMEOUT seconds."""

    target_service = contracts.VOTES_SERVICE
    timeout_setting = "read_timeout"
    group_method = contracts.RPC_GET_COUNTS_MANY
    max_group = 500
    unavailable = ServiceUnavailable

    def counts(self, post_id, voter_id=None):
        """Counts of one post, or None when it has no votes."""
        return self.call_grouped([post_id, voter_id])

    def counts_many(self, post_ids):
        """Counts of each post, in order; None for a post with no votes."""
        return self.call(contracts.RPC_GET_COUNTS_MANY,
                         [[post_id, None] for post_id in post_ids])

    def top(self, limit):
        return self.call(contracts.RPC_TOP, limit)

    def top_page(self, limit, sort, after):
        """{"posts": [counts, ...], "next": cursor or None}"""
        return self.call(contracts.RPC_TOP, limit, sort, after)

    def set_created_at(self, post_id, created_at):
        return self.call(contracts.RPC_SET_CREATED_AT, post_id, created_at)

    def readiness(self):
        """(ready, checks): the broker, the votes service and its Redis, and
        how many votes wait in the queue."""
        checks = {"broker": "ok", "votes": "ok", "redis": "unknown"}
        try:
            waiting, consumers = self.queue_state(contracts.VOTES_QUEUE)
            checks["queue"] = {"waiting": waiting, "consumers": consumers}
        except Exception as exc:
            if "NOT_FOUND" not in str(exc):  # no vote was ever sent: still ok
                checks["broker"] = "unavailable"
        try:
            health = self.call(contracts.RPC_HEALTH)
            checks["redis"] = health["redis"]
            # reduced durability is reported, not failed: votes are counted
            checks.update((key, health[key]) for key in ("durability", "reducedNodes")
                          if key in health)
        except ServiceUnavailable:
            checks["votes"] = "unavailable"
        ready = all(checks[name] == "ok" for name in ("broker", "votes", "redis"))
        return ready, checks


MAX_RECENT_KEYS = 50_000  # about 13 MB at most


class RecentKeys(DependencyProvider):
    """Injects this process's memory of the Idempotency-Keys it answered
    202 lately: key id -> the request's fingerprint. A retry it knows is
    answered again without a publish; a key it knows coming back with
    another request is refused. Keys it does not know (another gateway's,
    or from before a restart) are published: the votes service counts a
    key once whatever it gets."""

    def setup(self):
        # as long as the votes service's claims (contracts)
        self.ttl = settings_of(self.container).idempotency_ttl
        self.entries = {}  # key id -> (expires, fingerprint), oldest first

    def get_dependency(self, worker_ctx):
        return self

    def get(self, key_id):
        """The fingerprint of the request answered 202 for ``key_id``, or
        None."""
        entry = self.entries.get(key_id)
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            del self.entries[key_id]
            return None
        return entry[1]

    def remember(self, key_id, fingerprint):
        self.entries.pop(key_id, None)
        self.entries[key_id] = (time.monotonic() + self.ttl, fingerprint)
        while len(self.entries) > MAX_RECENT_KEYS:
            del self.entries[next(iter(self.entries))]
